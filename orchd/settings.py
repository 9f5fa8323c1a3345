"""Settings as the running code reads them: frozen values with durations already in seconds.

The config file (``orchd.config``) is what an operator writes; these are what the engine and the
daemon use. They are built from a config in one place, so a duration is parsed once, and a
reload swaps one object instead of assigning fields one by one.
"""

from __future__ import annotations

import msgspec


class EngineSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the engine runs steps; a reload (SIGHUP) may replace the whole object."""

    #: Seconds running steps get to finish when the engine stops.
    grace_period: float = 10.0
    #: Default per-step timeout in seconds (None: no limit); a step's own ``timeout`` wins.
    step_timeout: float | None = None
    #: Automatic retries of a retrystep: first delay, the cap, and attempts before ``failed``.
    retry_delay: float = 5.0
    retry_max_delay: float = 600.0
    retry_max_attempts: int = 10
    #: Warn when workflow code blocks the event loop longer than this (None: off).
    block_warning: float | None = 1.0
