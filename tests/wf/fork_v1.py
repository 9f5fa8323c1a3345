"""Version 1: a foreach of reserve >> apply."""

from __future__ import annotations

from fork_common import apply, reserve

from orchd import Target, begin, done, foreach, init, workflow


@workflow("Apply each, version 1", target=Target.SYSTEM)
def apply_each():  # type: ignore[no-untyped-def]
    return init >> foreach("Each", "items", begin >> reserve >> apply, into="out") >> done
