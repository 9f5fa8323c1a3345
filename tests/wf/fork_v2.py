"""Version 2: apply renamed with its key kept, a step added before it."""

from __future__ import annotations

from fork_common import apply_renamed, confirm, reserve

from orchd import Target, begin, done, foreach, init, workflow


@workflow("Apply each, version 2", target=Target.SYSTEM)
def apply_each():  # type: ignore[no-untyped-def]
    branch = begin >> confirm >> reserve >> apply_renamed
    return init >> foreach("Each", "items", branch, into="out") >> done
