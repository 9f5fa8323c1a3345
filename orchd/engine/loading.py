"""Finding the workflows a config names: import each module, and a package's submodules too.

A package named in ``workflows`` is walked: every submodule is imported, so its ``@workflow``
functions register without the package having to import them itself (README: "every
``@workflow`` in it and its submodules"). Any failure of workflow code at import is a config
error naming the module; one that Python cannot find says where it looked (``search_path``):
workflow modules are found like any import, on the ``sys.path`` of the Python running orchd.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
import sys
import sysconfig
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from orchd.dsl import StepKind, Workflow, workflows_of
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
    _check_children(found)
    return found


def _check_children(found: dict[str, Workflow]) -> None:
    """A ``children`` step that names a workflow no loaded module defines is refused at load,
    naming the user's file and line, not when a process first reaches it (a name in braces is
    read from State then, and checked then)."""
    for wf in found.values():
        for step in wf.steps:
            child = step.child_workflow
            if step.kind is not StepKind.CHILDREN or child.startswith("{") or child in found:
                continue
            near = difflib.get_close_matches(child, [n for n in found if n != wf.name], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(
                f"workflows: workflow {wf.name!r}{_defined_at(wf)}: step {step.name!r} starts "
                f"children of {child!r}, which no loaded module defines{hint}"
            )


def _defined_at(wf: Workflow) -> str:
    """`` (file.py, line 12)``: where the workflow's function is defined, when known."""
    code = getattr(wf.func, "__code__", None)
    return f" ({code.co_filename}, line {code.co_firstlineno})" if code is not None else ""


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
        raise ConfigError(
            f"workflows: cannot import module {name!r}: {import_failure(name, exc)}"
        ) from exc


def import_failure(name: str, exc: BaseException, near: Iterable[Path] = ()) -> str:
    """What went wrong importing the workflow module ``name``, on one line: the exception and
    where workflow code raised it (once); for a module Python did not find, which Python looked
    where, and a file of that name in one of the folders ``near`` (beside the config, say)
    that is not on its path."""
    if isinstance(exc, SyntaxError) and exc.filename:
        message = exc.msg  # str() would name the file and line again
    else:
        message = str(exc).splitlines()[0] if str(exc) else ""
    detail = f"{type(exc).__name__}: {message}{_raised_at(exc)}"
    if not isinstance(exc, ModuleNotFoundError):
        return detail
    path = search_path()
    detail += f"; {sys.executable} looked in: {', '.join(path)}"
    missing = exc.name or ""
    if missing and (name == missing or name.startswith(missing + ".")):
        top = missing.partition(".")[0]
        for folder in dict.fromkeys(Path(os.path.abspath(f)) for f in near):
            found = [f for f in (folder / f"{top}.py", folder / top) if f.exists()]
            if found and str(folder) not in path:
                detail += (
                    f"; {found[0]} is not on that path: install it into that Python's "
                    "environment (README: Where workflow modules are found)"
                )
                break
    return detail


def search_path() -> list[str]:
    """The folders on ``sys.path`` a workflow module may come from: those that exist, not the
    standard library's, each once, the current directory (``""``) by its name."""
    stdlib = {
        os.path.abspath(p)
        for p in (sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib"))
        if p
    }
    found: list[str] = []
    for entry in sys.path:
        path = os.path.abspath(entry or os.getcwd())
        if path in stdlib or os.path.basename(path) == "lib-dynload" or not os.path.isdir(path):
            continue  # a zip, an import hook's marker or a folder that is not there
        if path not in found:
            found.append(path)
    return found


def module_file(name: str) -> str:
    """Where an imported module came from: its file, or its package's folders."""
    module = sys.modules.get(name)
    if module is None:
        return "not imported"
    file = getattr(module, "__file__", None)
    if file:
        return str(file)
    return ", ".join(getattr(module, "__path__", [])) or "built in"


#: orchd's own code (the importer that called the import), and its examples, which are not.
_ORCHD = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_EXAMPLES = os.path.join(_ORCHD, "examples") + os.sep


def _orchd_itself(filename: str) -> bool:
    return filename.startswith(_ORCHD) and not filename.startswith(_EXAMPLES)


def _raised_at(exc: BaseException) -> str:
    """`` (file.py, line 12)``: where workflow code raised, the last frame of its traceback."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({exc.filename}, line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    user = [
        f for f in frames
        if "importlib" not in f.filename and "<frozen" not in f.filename
        and not _orchd_itself(f.filename)
    ]  # fmt: skip
    if not user:
        return ""
    return f" ({user[-1].filename}, line {user[-1].lineno})"
