"""orchd.errors: the tree in its docstring is the tree of its classes."""

from __future__ import annotations

import re

from orchd import errors


def classes_of_the_module() -> dict[str, type[errors.OrchdError]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.OrchdError)
    }


def test_the_docstring_draws_every_error_under_its_parent() -> None:
    drawn: dict[str, str] = {}
    parents: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        found = re.match(r"^\s*((?:[│ ]   )*)(?:├── |└── )?([A-Z]\w+)(\s|$)", line)
        if found is None or not line.startswith("    "):
            continue
        depth = len(found.group(1)) // 4 + (1 if re.search(r"[├└]── ", line) else 0)
        while parents and parents[-1][0] >= depth:
            parents.pop()
        drawn[found.group(2)] = parents[-1][1] if parents else ""
        parents.append((depth, found.group(2)))
    classes = classes_of_the_module()
    assert set(drawn) == set(classes)
    for name, parent in drawn.items():
        base = classes[name].__bases__[0]
        assert (base.__name__ if base is not Exception else "") == parent, name
