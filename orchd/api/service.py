"""What of the control API another front end may use: the web console (README "Web console").

The console is composed beside the JSON routes (``orchd.api.app``) and reads and acts through
the same engine; of the API it uses only what `Service` names (the identity check, the event
streams, the health report, the scheduler), never the routes' handlers or private names, so
a change to a route cannot quietly change the console. ``routes.ControlApi`` is the one
implementation.
"""

from __future__ import annotations

from typing import Protocol

from orchd.api.identity import Identity
from orchd.api.shapes import Health
from orchd.api.sse import EventStreams
from orchd.engine import Engine
from orchd.model import ScheduleInfo

__all__ = ["SchedulerLike", "Service"]


class SchedulerLike(Protocol):
    """What the API needs of the scheduler (``orchd.engine.scheduler``).

    A scheduler may also offer ``run_counts() -> Mapping[str, int]`` (processes started per
    schedule), exported as ``orchd_schedule_runs_total``.
    """

    async def entries(self) -> list[ScheduleInfo]: ...

    async def run_now(self, name: str) -> str:
        """Start the schedule's workflow now; raises ScheduleNotFound or ScheduleRunning."""
        ...


class Service(Protocol):
    """The control API's parts the console may call."""

    @property
    def engine(self) -> Engine: ...

    @property
    def scheduler(self) -> SchedulerLike | None: ...

    @property
    def identity(self) -> Identity:
        """Who asks: the token, the socket peer, the label."""
        ...

    @property
    def streams(self) -> EventStreams:
        """The event streams, their caps counted over the API and the console together."""
        ...

    @property
    def max_body(self) -> int:
        """The largest request body, in bytes."""
        ...

    async def health_report(self, *, full: bool) -> tuple[Health, int]:
        """The daemon's health and its HTTP status; ``full=False``: the status only."""
        ...
