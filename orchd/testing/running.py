"""Run workflows in-process for tests: a throw-away engine, ``run_to`` and ``assert_steps``.

::

    async with workflow_engine(workflows=["mypkg.workflows"], resources={Gate: gate}) as engine:
        process = await run_to(engine, "create_node", {"name": "n1"})
        assert_steps(process, [("init", "success"), ("create", "success"), ("done", "success")])

Built only on the public ``Engine`` API, so a test written with it keeps meaning the same
thing whatever the engine does inside.
"""

from __future__ import annotations

import difflib
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from orchd.dsl import Workflow
from orchd.engine import Engine
from orchd.engine.formpages import FormPage
from orchd.model import Process
from orchd.testing.gate import Gate
from orchd.testing.subscriptions import SAVE


@asynccontextmanager
async def workflow_engine(
    workflows: Sequence[str | Workflow],
    *,
    resources: Mapping[Any, Any] | None = None,
    database: str | Path | None = None,
    **settings: Any,
) -> AsyncIterator[Engine]:
    """An open ``Engine`` on a private temporary SQLite file, closed (and the file removed)
    on exit.

    ``resources`` are handed to steps by annotation (``{Gate: gate}``); ``settings`` are
    fields of ``EngineSettings`` (``retry_delay=0.05``). Give ``database`` to keep the file,
    e.g. to open a second engine on it as a restart would. On exit every ``Gate`` among the
    resources is opened first, so held steps finish instead of waiting out the grace period.
    """
    with tempfile.TemporaryDirectory(prefix="orchd-test-") as folder:
        path = str(database) if database is not None else str(Path(folder) / "orchd.db")
        # The kit's own workflow rides along, for ``orchd.testing.subscription``.
        every = [*workflows, SAVE]
        engine = Engine(database=path, workflows=every, resources=resources, **settings)
        await engine.open()
        try:
            yield engine
        finally:
            for resource in engine.resources.values():
                if isinstance(resource, Gate):
                    resource.open()
            await engine.close()


async def run_to(
    engine: Engine,
    workflow: str,
    input: Any = None,
    *,
    status: str = "completed",
    timeout: float = 10.0,  # noqa: ASYNC109
    reporter: str | None = None,
) -> Process:
    """Start ``workflow``, wait until it stops running and check it ended in ``status``.

    Returns the process. When the status differs, or it still runs after ``timeout``
    seconds, raises AssertionError with the process's error and step log.
    """
    pid = await engine.start(workflow, input, reporter=reporter)
    try:
        process = await engine.wait(pid, timeout=timeout)
    except TimeoutError:
        process = await engine.get(pid)
        raise AssertionError(
            f"still {process.status} after {timeout:g} s, expected {status}\n" + describe(process)
        ) from None
    if process.status != status:
        raise AssertionError(f"ended {process.status}, expected {status}\n" + describe(process))
    return process


async def walk_form(
    engine: Engine, workflow: str, answers: Sequence[Any], *, process: str | None = None
) -> list[FormPage]:
    """Answer a form page by page as a person would: the page shown before each answer, then
    what follows the last one (``done``, or the page still to answer). A refused answer
    raises the engine's ``FormValidationError`` (its ``errors`` located by page and field).
    With ``process``: the form that suspended process waits for."""
    shown = []
    for n in range(len(answers) + 1):
        given = list(answers[:n])
        if process is None:
            shown.append(await engine.form_page(workflow, given))
        else:
            shown.append(await engine.process_form_page(process, given))
        if shown[-1].done:
            break
    return shown


def assert_steps(process: Process, expected: Sequence[tuple[str, str]]) -> None:
    """Check the step log, oldest first, as ``(name, status)`` pairs; a diff when it differs."""
    actual = [f"{s.name}: {s.status}" for s in process.steps]
    wanted = [f"{name}: {status}" for name, status in expected]
    if actual == wanted:
        return
    diff = difflib.unified_diff(wanted, actual, "expected", "actual", lineterm="", n=len(wanted))
    raise AssertionError(
        "the step log differs (- expected, + actual)\n"
        + "\n".join(diff)
        + (f"\nprocess error: {process.error}" if process.error else "")
    )


def describe(process: Process) -> str:
    """The process's status, error and step log, for a failure message."""
    lines = [f"process {process.id} ({process.workflow}) is {process.status}"]
    if process.error:
        lines.append(f"error: {process.error}")
    lines.append("steps:")
    width = max((len(s.name) for s in process.steps), default=0)
    for record in process.steps:
        line = f"  {record.name:<{width}}  {record.status}"
        lines.append(line + (f"  {record.error}" if record.error else ""))
    last = process.steps[-1] if process.steps else None
    if last is not None and last.traceback:
        lines.append("traceback of the last step:")
        lines.append(last.traceback.rstrip())
    return "\n".join(lines)
