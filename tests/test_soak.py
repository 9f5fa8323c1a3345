"""Soak: a real daemon SIGKILLed again and again while it runs many mixed processes.

The default size runs in ``make test`` (about 20 s); ``ORCHD_SOAK=long`` (``make soak``) runs the
long one and prints its figures. ``ORCHD_SOAK_SEED`` replays a seed. tests/support/soak.py says
what is driven and what is checked.
"""

from __future__ import annotations

import os

import pytest
from support.daemons import DaemonFactory
from support.soak import Figures, Params, run_soak

SEED = int(os.environ.get("ORCHD_SOAK_SEED", "20260101"))
LONG = os.environ.get("ORCHD_SOAK") == "long"


def soak(factory: DaemonFactory, params: Params) -> Figures:
    figures = run_soak(factory, params)
    assert figures.kills >= params.kills
    # Every planned start exists, but those whose answer a kill swallowed (perhaps created).
    assert figures.processes >= params.processes - figures.lost_starts
    return figures


def test_soak_kills_and_restarts_keep_every_process_and_subscription_consistent(
    daemon_factory: DaemonFactory,
) -> None:
    print(soak(daemon_factory, Params(seed=SEED, processes=200, kills=12)).summary())


@pytest.mark.soak
@pytest.mark.skipif(not LONG, reason="the long soak runs with ORCHD_SOAK=long (make soak)")
def test_long_soak(daemon_factory: DaemonFactory, capsys: pytest.CaptureFixture[str]) -> None:
    params = Params(seed=SEED, processes=5000, kills=100, settle_timeout=600.0, max_kill_delay=4.0)
    figures = soak(daemon_factory, params)
    with capsys.disabled():
        print("\n" + figures.summary(), flush=True)
