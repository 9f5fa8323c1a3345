"""The engine layer: the Engine façade, process actors, the event hub and the scheduler."""

from orchd.engine.engine import Engine
from orchd.engine.loading import load_workflows

__all__ = ["Engine", "load_workflows"]
