"""Who did what, and callback tokens as capabilities (README "The HTTP API"), against a real
daemon."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.common import block_until
from support.daemons import DaemonFactory, DaemonProcess, free_port, tcp_request

TOKEN = "b4c2f0e8a7d94e1fa3c6b5d8e9f01234"
ME = f"uid:{os.getuid()}"


@pytest.fixture
def daemon(daemon_factory: DaemonFactory, tmp_path: Path) -> Iterator[DaemonProcess]:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    port = free_port()
    d = daemon_factory(
        {"workflows": ["audit_flows"], "listen": f"127.0.0.1:{port}", "token_file": str(token)}
    )
    d.port = port  # type: ignore[attr-defined]
    yield d


def tcp(d: DaemonProcess, method: str, path: str, body: Any = None, **headers: str) -> Any:
    return tcp_request("127.0.0.1", d.port, method, path, body, headers=headers)  # type: ignore[attr-defined]


def bearer(label: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if label:
        headers["X-Orchd-Reporter"] = label
    return headers


def outbox(d: DaemonProcess, name: str = "outbox") -> str:
    return str(d.test_dir / name)


def tokens(path: str, count: int, timeout: float = 10.0) -> list[str]:
    """The tokens "the external system" received, once there are ``count`` of them."""

    def handed_over() -> list[str] | None:
        lines = Path(path).read_text().split() if Path(path).exists() else []
        return lines if len(lines) >= count else None

    found: list[str] = block_until(handed_over, f"{count} token(s) handed over", within=timeout)
    return found


def actions(process: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["action"], a["actor"]) for a in process["actions"]]


def test_every_action_is_recorded_with_its_actor(daemon: DaemonProcess) -> None:
    status, answer = daemon.request(
        "POST",
        "/api/processes/operated",
        {"outbox": outbox(daemon)},
        headers={"X-Orchd-Reporter": "alice"},
    )
    assert status == 201
    pid = answer["id"]
    daemon.wait_process(pid, ("suspended",))
    status, _ = tcp(daemon, "POST", f"/api/processes/{pid}/resume", {"approved": True}, **bearer())
    assert status == 202
    daemon.wait_process(pid, ("failed",))
    assert daemon.cli("retry", pid).returncode == 0
    process = daemon.wait_process(pid, ("completed",))
    assert actions(process) == [
        ("start", f"{ME} (alice)"),
        ("resume", "token"),
        ("retry", ME),
    ]
    assert process["reporter"] == f"{ME} (alice)"
    assert all(a["at"] for a in process["actions"])


def test_a_reporter_header_cannot_pose_as_another_user(daemon: DaemonProcess) -> None:
    status, answer = daemon.request(
        "POST", "/api/processes/operated", {"outbox": outbox(daemon)},
        headers={"X-Orchd-Reporter": "uid:0"},
    )  # fmt: skip
    assert status == 201
    [(_, actor)] = actions(daemon.get_process(answer["id"]))
    assert actor == f"{ME} (uid:0)"


def test_an_abort_records_who_asked(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("operated", {"outbox": outbox(daemon)})
    daemon.wait_process(pid, ("suspended",))
    assert tcp(daemon, "POST", f"/api/processes/{pid}/abort", **bearer("bob"))[0] == 202
    process = daemon.wait_process(pid, ("aborted",))
    assert actions(process)[-1] == ("abort", "token (bob)")


def test_a_callback_over_tcp_needs_no_bearer_token_but_other_routes_do(
    daemon: DaemonProcess,
) -> None:
    box = outbox(daemon)
    pid = daemon.start_process("asks_oss", {"outbox": box})
    daemon.wait_process(pid, ("awaiting_callback",))
    [token] = tokens(box, 1)
    assert tcp(daemon, "POST", f"/api/processes/{pid}/abort")[0] == 401
    status, answer = tcp(daemon, "POST", f"/api/callbacks/{token}", {"ok": True})
    assert (status, answer["id"]) == (202, pid)
    process = daemon.wait_process(pid, ("completed",))
    assert actions(process)[-1] == ("callback", "tcp:127.0.0.1")


def test_a_callback_token_never_appears_in_state_steps_api_or_database(
    daemon: DaemonProcess,
) -> None:
    box = outbox(daemon)
    pid = daemon.start_process("asks_oss", {"outbox": box})
    daemon.wait_process(pid, ("awaiting_callback",))
    [token] = tokens(box, 1)
    _, listing = daemon.request("GET", "/api/processes")
    _, waiting = daemon.request("GET", f"/api/processes/{pid}")
    assert token not in repr(waiting) and token not in repr(listing)
    assert daemon.request("POST", f"/api/callbacks/{token}", {"ok": True})[0] == 202
    done = daemon.wait_process(pid, ("completed",))
    assert token not in repr(done)
    daemon.stop()
    stored = b"".join(
        Path(daemon.db + suffix).read_bytes()
        for suffix in ("", "-wal")
        if Path(daemon.db + suffix).exists()
    )
    assert token.encode() not in stored


def test_a_used_token_is_404(daemon: DaemonProcess) -> None:
    box = outbox(daemon)
    pid = daemon.start_process("asks_oss", {"outbox": box})
    daemon.wait_process(pid, ("awaiting_callback",))
    [token] = tokens(box, 1)
    assert daemon.request("POST", f"/api/callbacks/{token}", {"ok": True})[0] == 202
    daemon.wait_process(pid, ("completed",))
    assert daemon.request("POST", f"/api/callbacks/{token}", {"ok": True})[0] == 404


def test_an_old_token_cannot_answer_a_newer_wait(daemon: DaemonProcess) -> None:
    box = outbox(daemon)
    pid = daemon.start_process("asks_oss_briefly", {"outbox": box})
    daemon.wait_process(pid, ("failed",))  # no answer within 0.3 s
    [old] = tokens(box, 1)
    assert daemon.request("POST", f"/api/processes/{pid}/retry")[0] == 202
    [_, new] = tokens(box, 2)
    assert daemon.request("POST", f"/api/callbacks/{old}", {"ok": True})[0] == 404
    assert daemon.request("POST", f"/api/callbacks/{new}", {"ok": True})[0] == 202
    assert daemon.wait_process(pid, ("completed", "failed"))["status"] == "completed"


def test_an_operator_answers_a_callback_by_process_id(daemon: DaemonProcess) -> None:
    box = outbox(daemon)
    pid = daemon.start_process("asks_oss", {"outbox": box})
    daemon.wait_process(pid, ("awaiting_callback",))
    done = daemon.cli("callback", pid, "--input", '{"ok": true}')
    assert done.returncode == 0, done.stderr
    process = daemon.wait_process(pid, ("completed",))
    assert process["state"]["callback_result"] == {"ok": True}
    assert actions(process)[-1] == ("callback", ME)
    again = daemon.cli("callback", pid, "--input", '{"ok": true}')
    assert again.returncode == 1 and "completed" in again.stderr


def test_the_callback_cli_answers_with_a_token_too(daemon: DaemonProcess) -> None:
    box = outbox(daemon)
    pid = daemon.start_process("asks_oss", {"outbox": box})
    daemon.wait_process(pid, ("awaiting_callback",))
    [token] = tokens(box, 1)
    done = daemon.cli("callback", token, "--input", '{"ok": true}')
    assert done.returncode == 0, done.stderr
    assert daemon.wait_process(pid, ("completed",))["state"]["answered"] is True


def test_retry_reissue_asks_the_external_system_again(daemon: DaemonProcess) -> None:
    box = outbox(daemon)
    pid = daemon.start_process("asks_oss", {"outbox": box})
    daemon.wait_process(pid, ("awaiting_callback",))
    [first] = tokens(box, 1)
    daemon.request("POST", f"/api/callbacks/{first}", {"ok": False})
    daemon.wait_process(pid, ("failed",))
    # A plain retry validates the same stored answer again, and fails again.
    assert daemon.cli("retry", pid).returncode == 0
    daemon.wait_process(pid, ("failed",))
    assert len(tokens(box, 1)) == 1
    assert daemon.cli("retry", pid, "--reissue").returncode == 0
    [_, second] = tokens(box, 2)
    assert daemon.request("POST", f"/api/callbacks/{second}", {"ok": True})[0] == 202
    process = daemon.wait_process(pid, ("completed",))
    assert ("retry", ME) in actions(process)
    assert [a["detail"] for a in process["actions"] if a["action"] == "retry"] == [None, "reissue"]


def test_reissue_of_a_step_outside_a_callback_is_refused(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("operated", {"outbox": outbox(daemon)})
    daemon.wait_process(pid, ("suspended",))
    daemon.request("POST", f"/api/processes/{pid}/resume", {"approved": True})
    daemon.wait_process(pid, ("failed",))
    refused = daemon.cli("retry", pid, "--reissue")
    assert refused.returncode == 1 and "callback_step" in refused.stderr
    assert daemon.get_process(pid)["status"] == "failed"


def test_health_over_tcp_without_the_token_tells_only_the_status(daemon: DaemonProcess) -> None:
    assert tcp(daemon, "GET", "/api/health") == (200, {"status": "ok"})
    status, full = tcp(daemon, "GET", "/api/health", **bearer())
    assert status == 200 and full["database"] == "ok" and "processes" in full


def test_head_is_answered_on_get_routes(daemon: DaemonProcess) -> None:
    assert tcp(daemon, "HEAD", "/api/health") == (200, None)
    assert tcp(daemon, "HEAD", "/api/processes")[0] == 401
    assert tcp(daemon, "HEAD", "/api/processes", **bearer()) == (200, None)
    assert daemon.request("HEAD", "/api/workflows") == (200, None)


def test_a_token_that_answered_early_cannot_answer_the_next_wait(daemon: DaemonProcess) -> None:
    box = outbox(daemon)
    pid = daemon.start_process("asks_twice", {"outbox": box, "socket": daemon.socket})
    process = daemon.wait_process(pid, ("awaiting_callback",))
    [first, second] = tokens(box, 2)
    assert [s["name"] for s in process["steps"]].count("first answer") == 1
    assert daemon.request("POST", f"/api/callbacks/{first}", {"ok": True})[0] == 404
    assert daemon.get_process(pid)["status"] == "awaiting_callback"
    assert daemon.request("POST", f"/api/callbacks/{second}", {"ok": True})[0] == 202
    assert daemon.wait_process(pid, ("completed",))["status"] == "completed"


def test_skip_over_the_api_and_the_cli(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("operated", {"outbox": outbox(daemon)})
    daemon.wait_process(pid, ("suspended",))
    assert daemon.request("POST", f"/api/processes/{pid}/skip", {"reason": "x"})[0] == 409
    daemon.request("POST", f"/api/processes/{pid}/resume", {"approved": True})
    daemon.wait_process(pid, ("failed",))
    status, problem = daemon.request("POST", f"/api/processes/{pid}/skip", {})
    assert status == 422 and problem["errors"][0]["loc"] == ["reason"]
    assert daemon.request("POST", f"/api/processes/{pid}/skip", {"reason": ""})[0] == 422
    done = daemon.cli("skip", pid, "--reason", "done by hand")
    assert done.returncode == 0, done.stderr
    process = daemon.wait_process(pid, ("completed",))
    skipped = [s for s in process["steps"] if s["status"] == "skipped"]
    assert [(s["name"], s["reason"], s["actor"]) for s in skipped] == [
        ("fail once", "done by hand", ME)
    ]
    assert actions(process)[-1] == ("skip", ME)
    assert "failed" not in process["state"]
