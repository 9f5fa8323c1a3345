"""Steps shared by the versions of the ``provision`` workflow in ident_v*.py (step identity)."""

from __future__ import annotations

from pathlib import Path

from orchd import Form, State, inputstep, retrystep, step


class Approval(Form):
    ok: bool = True


@inputstep("approve")
def approve() -> type[Form]:
    return Approval


@inputstep("Approve the change", key="approve")
def approve_renamed() -> type[Form]:
    return Approval


def _mark(name: str) -> State:
    return {f"ran_{name}": True}


@step("prepare")
def prepare() -> State:
    return _mark("prepare")


@step("check")
def check() -> State:
    return _mark("check")


@step("apply")
def apply(fail_apply: str = "") -> State:
    if fail_apply and not Path(fail_apply).exists():
        Path(fail_apply).write_text("failed once")
        raise RuntimeError("apply failed")
    return _mark("apply")


@step("report")
def report() -> State:
    return _mark("report")


@step("new first")
def new_first() -> State:
    return _mark("new_first")


@step("extra")
def extra() -> State:
    return _mark("extra")


@retrystep("flaky", backoff=3600.0)
def flaky() -> State:
    raise RuntimeError("the OSS is down")
