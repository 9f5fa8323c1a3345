"""Version 3: the approval is gone."""

from __future__ import annotations

from ident_common import apply, check, prepare, report

from orchd import Target, done, init, workflow


@workflow("Provision, version 3", target=Target.SYSTEM)
def provision():  # type: ignore[no-untyped-def]
    return init >> prepare >> check >> apply >> report >> done


@workflow("Two approvals, version 3", target=Target.SYSTEM)
def twice():  # type: ignore[no-untyped-def]
    return init >> check >> report >> done
