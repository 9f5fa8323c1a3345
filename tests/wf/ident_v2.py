"""Version 2: steps added before and after the approval, one removed, one moved."""

from __future__ import annotations

from ident_common import apply, approve, check, extra, new_first, report

from orchd import Target, done, init, workflow


@workflow("Provision, version 2", target=Target.SYSTEM)
def provision():  # type: ignore[no-untyped-def]
    return init >> new_first >> check >> approve >> extra >> report >> apply >> done


@workflow("Two approvals, version 2", target=Target.SYSTEM)
def twice():  # type: ignore[no-untyped-def]
    return init >> approve >> approve >> extra >> done
