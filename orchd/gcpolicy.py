"""How ``orchd serve`` sets up Python's cyclic garbage collector, in one place, so that
``orchd bench`` measures the engine as the daemon runs it.

A daemon keeps thousands of long-lived objects (actors, their State, futures, the imported
workflows), and at thousands of steps a second CPython's default thresholds (700, 10, 10)
make the collector walk them again and again, holding the interpreter lock while it does:
measured on two cores, it cost sync steps 15-19 % more CPU per step and about a sixth of
their throughput, as their threads waited for the lock. So: collect once, freeze what
start-up made (modules, config, workflows never become garbage), and collect young objects
less often.
"""

from __future__ import annotations

import gc

#: Allocations before a young collection, and how many of each generation before the next.
THRESHOLDS = (50_000, 20, 100)


def apply() -> None:
    """Freeze what exists now out of the collector's sight; set the daemon's thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
