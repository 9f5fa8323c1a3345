"""Version 3: apply is gone from the branch."""

from __future__ import annotations

from fork_common import confirm, reserve

from orchd import Target, begin, done, foreach, init, workflow


@workflow("Apply each, version 3", target=Target.SYSTEM)
def apply_each():  # type: ignore[no-untyped-def]
    return init >> foreach("Each", "items", begin >> reserve >> confirm, into="out") >> done
