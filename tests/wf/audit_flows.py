"""Workflows for the audit-trail and callback tests (tests/test_audit.py).

The callback action hands its token to "the external system": a file in the daemon's test
directory (``outbox``), one line per token issued, as a real OSS would receive it.
"""

from __future__ import annotations

from pathlib import Path

from orchd import Form, State, Target, callback_step, done, init, inputstep, step, workflow


class Approval(Form):
    approved: bool


@inputstep("approve")
def approve() -> type[Form]:
    return Approval


@step("fail once")
def fail_once(outbox: str, failed: bool = False) -> State:
    marker = Path(outbox + ".failed")
    if not marker.exists():
        marker.write_text("x")
        raise RuntimeError("first attempt fails")
    return {"failed": True}


@workflow("Resume, retry: the actions an operator takes", target=Target.SYSTEM)
def operated():  # type: ignore[no-untyped-def]
    return init >> approve >> fail_once >> done


class Outbox(Form):
    outbox: str


@step("hand over the token")
def hand_over(outbox: str, callback_token: str) -> State:
    with open(outbox, "a", encoding="utf-8") as f:
        f.write(callback_token + "\n")
    return {"handed_over": True}


@step("check the answer")
def check_answer(callback_result: dict) -> State:  # type: ignore[type-arg]
    if callback_result.get("ok") is not True:
        raise RuntimeError(f"the OSS said no: {callback_result}")
    return {"answered": True}


@workflow("Waits for an external system", initial_input_form=Outbox)
def asks_oss():  # type: ignore[no-untyped-def]
    return init >> callback_step("oss answers", hand_over, check_answer, timeout=30) >> done


@workflow("Waits briefly for an external system", initial_input_form=Outbox)
def asks_oss_briefly():  # type: ignore[no-untyped-def]
    return init >> callback_step("oss answers", hand_over, check_answer, timeout=0.3) >> done


class Early(Form):
    outbox: str
    socket: str


@step("answer before returning")
def answer_early(socket: str, outbox: str, callback_token: str) -> State:
    """A fast OSS: its answer arrives while the action step still runs."""
    import http.client
    import threading
    import time

    from orchd.client import UnixHTTPConnection

    def post() -> None:
        conn: http.client.HTTPConnection = UnixHTTPConnection(socket, timeout=30)
        conn.request(
            "POST",
            f"/api/callbacks/{callback_token}",
            body=b'{"ok": true}',
            headers={"Content-Type": "application/json"},
        )
        conn.getresponse().read()
        conn.close()

    threading.Thread(target=post, daemon=True).start()
    time.sleep(0.5)
    with open(outbox, "a", encoding="utf-8") as f:
        f.write(callback_token + "\n")
    return {}


@workflow("A fast first answer, then a second wait", initial_input_form=Early)
def asks_twice():  # type: ignore[no-untyped-def]
    first = callback_step("first answer", answer_early, check_answer)
    second = callback_step("second answer", hand_over, check_answer)
    return init >> first >> second >> done
