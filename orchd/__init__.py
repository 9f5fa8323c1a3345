"""orchd: a durable workflow-orchestration daemon.

Workflow code imports everything it needs from here::

    from orchd import State, Target, begin, done, init, step, workflow

The names load on first use, so the CLI, which imports this package on every call from
scripts, does not pay for the engine's imports.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

logging.getLogger("orchd").addHandler(logging.NullHandler())

_EXPORTS = {
    "Engine": "orchd.engine",
    "OrchdError": "orchd.errors",
    "Process": "orchd.model",
    "ProcessStatus": "orchd.model",
    "StepStatus": "orchd.model",
    "Target": "orchd.model",
    "Form": "orchd.dsl",
    "State": "orchd.dsl",
    "Step": "orchd.dsl",
    "StepList": "orchd.dsl",
    "Workflow": "orchd.dsl",
    "abort": "orchd.dsl",
    "begin": "orchd.dsl",
    "callback_step": "orchd.dsl",
    "children": "orchd.dsl",
    "conditional": "orchd.dsl",
    "done": "orchd.dsl",
    "foreach": "orchd.dsl",
    "init": "orchd.dsl",
    "inputstep": "orchd.dsl",
    "parallel": "orchd.dsl",
    "retrystep": "orchd.dsl",
    "step": "orchd.dsl",
    "workflow": "orchd.dsl",
    "Block": "orchd.products",
    "Product": "orchd.products",
    "Ref": "orchd.products",
    "product": "orchd.products",
    "required": "orchd.products",
    "choices": "orchd.pages",
    "Subscriptions": "orchd.engine.builtins",
}

__all__ = [
    "Block",
    "Engine",
    "Form",
    "OrchdError",
    "Process",
    "ProcessStatus",
    "Product",
    "Ref",
    "State",
    "Step",
    "StepList",
    "StepStatus",
    "Subscriptions",
    "Target",
    "Workflow",
    "abort",
    "begin",
    "callback_step",
    "children",
    "choices",
    "conditional",
    "done",
    "foreach",
    "init",
    "inputstep",
    "parallel",
    "product",
    "required",
    "retrystep",
    "step",
    "workflow",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'orchd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from orchd.dsl import (
        Form,
        State,
        Step,
        StepList,
        Workflow,
        abort,
        begin,
        callback_step,
        children,
        conditional,
        done,
        foreach,
        init,
        inputstep,
        parallel,
        retrystep,
        step,
        workflow,
    )
    from orchd.engine import Engine
    from orchd.engine.builtins import Subscriptions
    from orchd.errors import OrchdError
    from orchd.model import Process, ProcessStatus, StepStatus, Target
    from orchd.pages import choices
    from orchd.products import Block, Product, Ref, product, required
