"""Finding the workflows a config names: import each module, and a package's submodules too.

A package named in ``workflows`` is walked: every submodule is imported, so its ``@workflow``
functions register without the package having to import them itself (README: "every
``@workflow`` in it and its submodules"). Any failure of workflow code at import is a config
error naming the module.
"""

from __future__ import annotations

import importlib
import pkgutil
import traceback
from collections.abc import Iterable
from types import ModuleType

from orchd.dsl import Workflow, workflows_of
from orchd.errors import ConfigError


def load_workflows(sources: Iterable[str | Workflow]) -> dict[str, Workflow]:
    """Import workflow modules (and their submodules) and collect their workflows, by name."""
    found: dict[str, Workflow] = {}
    for source in sources:
        if isinstance(source, Workflow):
            found[source.name] = source
            continue
        _import_tree(source)  # for the @workflow registrations it makes
        entries = workflows_of(source)
        if not entries:
            raise ConfigError(f"workflows: module {source!r} defines no @workflow")
        for name, wf in entries.items():
            if name in found and found[name] is not wf:
                raise ConfigError(
                    f"workflows: two workflows are named {name!r}, in modules "
                    f"{found[name].module!r} and {wf.module!r}"
                )
            found[name] = wf
    return found


def _import_tree(name: str) -> None:
    path = getattr(_import(name), "__path__", None)
    if path is None:
        return  # a plain module

    def failed(subpackage: str) -> None:  # walk_packages imports subpackages to look inside
        _import(subpackage)

    found = pkgutil.walk_packages(path, prefix=f"{name}.", onerror=failed)
    for info in sorted(found, key=lambda i: i.name):
        if not info.name.rpartition(".")[2].startswith("_"):  # private modules stay out
            _import(info.name)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # any failure of workflow code at import is a config error
        where = _raised_at(exc)
        raise ConfigError(
            f"workflows: cannot import module {name!r}: {type(exc).__name__}: {exc}{where}"
        ) from exc


def _raised_at(exc: BaseException) -> str:
    """`` (file.py, line 12)``: where workflow code raised, the last frame of its traceback."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({exc.filename}, line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    user = [
        f for f in frames
        if f.filename != __file__ and "importlib" not in f.filename and "<frozen" not in f.filename
    ]  # fmt: skip
    if not user:
        return ""
    return f" ({user[-1].filename}, line {user[-1].lineno})"
