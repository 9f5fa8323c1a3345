"""Version 1 of the workflows of tests/test_step_identity.py."""

from __future__ import annotations

from ident_common import apply, approve, check, flaky, prepare, report

from orchd import Target, done, init, workflow


@workflow("Provision, version 1", target=Target.SYSTEM)
def provision():  # type: ignore[no-untyped-def]
    return init >> prepare >> check >> approve >> apply >> report >> done


@workflow("Two approvals, version 1", target=Target.SYSTEM)
def twice():  # type: ignore[no-untyped-def]
    return init >> approve >> check >> approve >> report >> done


@workflow("A retrystep that keeps failing", target=Target.SYSTEM)
def keeps_failing():  # type: ignore[no-untyped-def]
    return init >> flaky >> report >> done
