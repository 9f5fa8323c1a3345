"""The fake OSS itself: its API, its command line and its signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support.common import wait_until

from orchd.http import HttpClient
from orchd.testing.fakeoss import FakeOss, main, parse_duration


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient(backoff=0.01) as client:
        yield client


def test_parse_duration() -> None:
    assert parse_duration("200ms") == pytest.approx(0.2)
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("2") == 2.0
    for bad in ("", "fast", "-1s", "nan"):
        with pytest.raises(ValueError):
            parse_duration(bad)


async def test_node_lifecycle(http: HttpClient) -> None:
    async with FakeOss(provision_time=0.1) as oss:
        nodes = f"{oss.url}/nodes"
        created = await http.request("POST", nodes, json={"name": "n1", "customer_id": "c1"})
        node = created.json()
        assert created.status == 201 and created.headers["Location"] == f"/nodes/{node['id']}"
        assert node["status"] == "provisioning" and node["name"] == "n1"

        async def shows(expected: Any) -> bool:
            answer = await http.request("GET", f"{nodes}/{node['id']}", expect=(200, 404))
            found = answer.json()["status"] if answer.status == 200 else answer.status
            return bool(found == expected)

        # Provisioned after provision_time (0.1 s), as a poll shows it.
        await wait_until(lambda: shows("active"), "the node active")
        assert (await http.get_json(f"{nodes}/{node['id']}"))["status"] == "active"
        updated = await http.put_json(f"{nodes}/{node['id']}", {"role": "core", "id": "x"})
        assert updated["role"] == "core" and updated["id"] == node["id"]
        listed = await http.get_json(nodes, params={"status": "active"})
        assert listed["count"] == 1
        deleted = await http.delete(f"{nodes}/{node['id']}")
        assert deleted.status == 202 and deleted.json()["status"] == "deleting"
        await wait_until(lambda: shows(404), "the node gone")
        gone = await http.request("GET", f"{nodes}/{node['id']}", expect=(404,))
        assert gone.status == 404
        assert (await http.get_json(nodes))["items"] == []
        bad = await http.request("POST", nodes, json={"name": ""}, expect=(400,))
        assert "name" in bad.json()["error"]


async def test_job_calls_back(http: HttpClient) -> None:
    received: list[tuple[Any, str | None]] = []
    arrived = asyncio.Event()

    async def callback(request: web.Request) -> web.Response:
        received.append((await request.json(), request.headers.get("Authorization")))
        arrived.set()
        return web.json_response({}, status=202)

    app = web.Application()
    app.router.add_post("/cb", callback)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        receiver = f"http://127.0.0.1:{runner.addresses[0][1]}/cb"
        async with FakeOss(job_time=0.01, callback_token="s3cret") as oss:
            job = await http.post_json(f"{oss.url}/jobs", {"callback_url": receiver})
            assert job["status"] == "accepted"
            await asyncio.wait_for(arrived.wait(), 5)
            assert received == [({"result": "ok", "job_id": job["id"]}, "Bearer s3cret")]
            # The job is marked once the receiver's answer is read.
            await wait_until(lambda: oss.jobs[job["id"]]["status"] != "accepted", "the job marked")
            assert (await http.get_json(f"{oss.url}/jobs/{job['id']}"))["status"] == "called_back"
    finally:
        await runner.cleanup()


async def test_job_calls_back_over_the_callback_socket(http: HttpClient, tmp_path: Path) -> None:
    arrived: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def callback(request: web.Request) -> web.Response:
        arrived.put_nowait((request.path, await request.json()))
        return web.json_response({}, status=202)

    app = web.Application()
    app.router.add_post("/api/callbacks/{token}", callback)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    path = str(tmp_path / "daemon.sock")
    try:
        await web.UnixSite(runner, path).start()
        async with FakeOss(job_time=0.01, callback_socket=path) as oss:
            # Nothing listens on that port: only the path of the URL is used.
            url = "http://127.0.0.1:9/api/callbacks/tok"
            job = await http.post_json(f"{oss.url}/jobs", {"callback_url": url})
            got = await asyncio.wait_for(arrived.get(), 5)
            assert got == ("/api/callbacks/tok", {"result": "ok", "job_id": job["id"]})
    finally:
        await runner.cleanup()


async def test_an_undelivered_callback_is_logged_with_the_job_and_the_reason(
    http: HttpClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = str(tmp_path / "nobody.sock")
    async with FakeOss(job_time=0.01, callback_socket=missing) as oss:
        url = "http://127.0.0.1:8470/api/callbacks/secret-token"
        job = await http.post_json(f"{oss.url}/jobs", {"callback_url": url})
        # Three attempts, 1.5 s of pauses between them.
        await wait_until(lambda: oss.stats.callbacks_failed, "the callback given up")
    [record] = [r for r in caplog.records if r.name == "orchd.fakeoss"]
    assert record.levelname == "WARNING"
    message = record.getMessage()
    assert f"job={job['id']}" in message and f"to={missing}" in message
    assert "callback failed: " in message
    # The token in the URL is a capability: it stays out of the log.
    assert "secret-token" not in message


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--latency", "soon"]) == 2
    assert main(["--error-rate", "2"]) == 2
    assert "error-rate" in capsys.readouterr().err
    assert main(["--help"]) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_command_serves_until_signalled(sig: signal.Signals) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchd.testing.fakeoss",
            "--port",
            "0",
            "--latency",
            "1ms",
            "--seed",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fake-oss listening on http://127.0.0.1:")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
