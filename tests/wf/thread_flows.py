"""Sync steps that hang in their thread (tests/test_step_threads.py).

The test hands the steps a ``Release`` resource: they hang until it is set, and it counts how
many copies run at once.
"""

from __future__ import annotations

import threading

from orchd import State, Target, done, init, retrystep, step, workflow


class Release:
    """Holds the hanging steps until ``event`` is set; counts the copies running at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.runs = 0
        self.failures = 0

    def hang(self) -> None:
        with self.lock:
            self.running += 1
            self.runs += 1
            self.most = max(self.most, self.running)
        try:
            self.event.wait(30)
        finally:
            with self.lock:
                self.running -= 1


@step("hang", timeout=0.2)
def hang(release: Release) -> State:
    release.hang()
    return {"hung": True}


@workflow("A sync step that outlives its timeout", target=Target.SYSTEM)
def hangs():  # type: ignore[no-untyped-def]
    return init >> hang >> done


@step("hang without a timeout")
def hang_untimed(release: Release) -> State:
    release.hang()
    return {"hung": True}


@workflow("A sync step that hangs, with no timeout", target=Target.SYSTEM)
def hangs_untimed():  # type: ignore[no-untyped-def]
    return init >> hang_untimed >> done


@retrystep("hang and retry", timeout=0.2, backoff=0.05, max_attempts=3)
def hang_and_retry(release: Release) -> State:
    release.hang()
    return {"hung": True}


@workflow("A retrystep that outlives its timeout", target=Target.SYSTEM)
def hangs_and_retries():  # type: ignore[no-untyped-def]
    return init >> hang_and_retry >> done


@retrystep("fail once", backoff=0.05, max_attempts=3)
async def fail_once(release: Release) -> State:
    # Its retry is due a backoff after the failure is committed, like hang_and_retry's.
    release.failures += 1
    if release.failures == 1:
        raise RuntimeError("not yet")
    return {"failed_once": True}


@workflow("A retrystep that fails once, then succeeds", target=Target.SYSTEM)
def fails_once():  # type: ignore[no-untyped-def]
    return init >> fail_once >> done


@step("quick")
def quick() -> State:
    return {"quick": True}


@workflow("A quick sync step", target=Target.SYSTEM)
def quick_sync():  # type: ignore[no-untyped-def]
    return init >> quick >> done
