"""HttpClient and poll against a real fake OSS (latency, injected errors), no mocks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from support.daemons import free_port

from orchd import http as http_module
from orchd.http import (
    HttpClient,
    HttpError,
    OssError,
    OssUnavailable,
    PollTimeout,
    poll,
)
from orchd.testing.fakeoss import FakeOss


@pytest.fixture
async def oss() -> AsyncIterator[FakeOss]:
    async with FakeOss(latency=0.005, provision_time=0.2, seed=1) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient(backoff=0.01, timeout=5.0) as client:
        yield client


async def test_get_is_retried_on_503_and_succeeds(oss: FakeOss, http: HttpClient) -> None:
    oss.fail_next(2)
    assert await http.get_json(f"{oss.url}/ping") == {"pong": True}
    assert oss.stats.injected_errors == 2
    assert (http.stats.requests, http.stats.retries, http.stats.failures) == (3, 2, 0)
    assert http.stats.in_flight == 0


async def test_each_retry_is_logged_at_info_with_status_and_attempt(
    oss: FakeOss, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    oss.fail_next(2)
    with caplog.at_level(logging.INFO, logger="orchd.http"):
        await http.get_json(f"{oss.url}/ping")
    retries = [r for r in caplog.records if r.name == "orchd.http" and "retrying" in r.message]
    assert [r.levelno for r in retries] == [logging.INFO, logging.INFO]
    attempts = f"of {1 + http.retries}"
    assert f"attempt 1 {attempts} failed status=503" in retries[0].message
    assert f"attempt 2 {attempts} failed status=503" in retries[1].message
    assert f"GET {oss.url}/ping" in retries[0].message


async def test_get_gives_up_after_the_retries(oss: FakeOss, http: HttpClient) -> None:
    oss.fail_next(10)
    with pytest.raises(OssUnavailable) as caught:
        await http.get_json(f"{oss.url}/ping")
    assert caught.value.status == 503
    assert "503" in str(caught.value)
    assert oss.stats.requests == 1 + http.retries
    assert http.stats.failures == 1


async def test_post_is_not_retried(oss: FakeOss, http: HttpClient) -> None:
    oss.fail_next(1)
    with pytest.raises(OssUnavailable):
        await http.post_json(f"{oss.url}/nodes", {"name": "n1", "customer_id": "c1"})
    assert oss.stats.requests == 1
    assert http.stats.retries == 0
    assert oss.nodes == {}  # the 503 came before anything changed


async def test_post_with_idempotency_key_may_be_retried(oss: FakeOss, http: HttpClient) -> None:
    body = {"name": "n1", "customer_id": "c1"}
    headers = {"Idempotency-Key": "k1"}
    oss.fail_next(1)
    first = await http.request(
        "POST", f"{oss.url}/nodes", json=body, headers=headers, idempotent=True
    )
    assert first.status == 201 and http.stats.retries == 1
    again = await http.request("POST", f"{oss.url}/nodes", json=body, headers=headers)
    assert again.status == 200 and again.json()["id"] == first.json()["id"]
    assert len(oss.nodes) == 1


async def test_unexpected_status_raises_oss_error_without_retry(
    oss: FakeOss, http: HttpClient
) -> None:
    with pytest.raises(OssError) as caught:
        await http.get_json(f"{oss.url}/nodes/nope")
    assert caught.value.status == 404
    assert "no such node" in caught.value.body
    assert isinstance(caught.value, HttpError)
    assert oss.stats.requests == 1
    answer = await http.request("GET", f"{oss.url}/nodes/nope", expect=(200, 404))
    assert answer.status == 404 and answer.json() == {"error": "no such node"}
    content_type = answer.header("content-type")
    assert content_type == answer.header("Content-Type")
    assert content_type is not None and content_type.startswith("application/json")


async def test_per_host_limit_is_honoured() -> None:
    async with (
        FakeOss(latency=0.05) as server,
        HttpClient(limit_per_host=3) as client,
    ):
        answers = await asyncio.gather(*(client.get_json(f"{server.url}/ping") for _ in range(20)))
        assert len(answers) == 20
        assert server.stats.max_in_flight == 3
        assert client.stats.in_flight == 0


async def test_timeout_raises_oss_unavailable() -> None:
    async with (
        FakeOss(latency=1.0) as server,
        HttpClient(timeout=0.1, retries=1, backoff=0.01) as client,
    ):
        started = time.monotonic()
        with pytest.raises(OssUnavailable, match="timed out") as caught:
            await client.get_json(f"{server.url}/ping")
        assert time.monotonic() - started < 0.9
        assert caught.value.status is None
        assert client.stats.retries == 1


async def test_connection_refused_raises_oss_unavailable() -> None:
    async with HttpClient(retries=2, backoff=0.01) as client:
        with pytest.raises(OssUnavailable) as caught:
            await client.get_json(f"http://127.0.0.1:{free_port()}/ping")
        assert client.stats.retries == 2
        assert "ClientConnectorError" in caught.value.reason


async def test_seeded_error_rate_is_absorbed_by_retries() -> None:
    async with (
        FakeOss(error_rate=0.3, seed=42) as server,
        HttpClient(retries=8, backoff=0.001) as client,
    ):
        for _ in range(40):
            assert await client.get_json(f"{server.url}/ping") == {"pong": True}
        assert server.stats.injected_errors > 0
        assert client.stats.retries == server.stats.injected_errors
        assert (await client.get_json(f"{server.url}/health"))["status"] == "ok"


async def test_retry_after_header() -> None:
    client = HttpClient(max_retry_after=10.0)
    assert client._retry_after("0") == 0.0
    assert client._retry_after(" 3 ") == 3.0
    assert client._retry_after("120") == 10.0  # capped
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    delay = client._retry_after(later)
    assert delay is not None and 3.0 < delay <= 5.0
    assert client._retry_after("soon") is None
    assert client._retry_after(None) is None


async def test_request_needs_an_open_client() -> None:
    client = HttpClient()
    with pytest.raises(RuntimeError, match="not open"):
        await client.get_json("http://127.0.0.1:1/")
    await client.open()
    assert not client.closed
    await client.close()
    assert client.closed


async def test_poll_returns_when_ready(oss: FakeOss, http: HttpClient) -> None:
    node = await http.post_json(f"{oss.url}/nodes", {"name": "n1", "customer_id": "c1"})
    assert node["status"] == "provisioning"

    async def active() -> dict[str, object] | None:
        current = await http.get_json(f"{oss.url}/nodes/{node['id']}")
        return current if current["status"] == "active" else None

    started = time.monotonic()
    result = await poll(active, interval=0.02, deadline=5.0)
    assert result["id"] == node["id"] and result["status"] == "active"
    assert 0.15 < time.monotonic() - started < 2.0


async def test_poll_backs_off_and_raises_at_the_deadline() -> None:
    calls: list[float] = []

    async def never() -> None:
        calls.append(time.monotonic())
        return None

    started = time.monotonic()
    with pytest.raises(PollTimeout, match=r"0\.3 s deadline") as caught:
        await poll(never, interval=0.02, backoff=2.0, max_interval=0.1, deadline=0.3, what="x")
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.6
    assert caught.value.deadline == 0.3 and caught.value.attempts == len(calls)
    assert not isinstance(caught.value, TimeoutError)
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert gaps[1] > gaps[0]  # the interval grows
    assert max(gaps) < 0.15  # up to max_interval


async def test_poll_lets_check_errors_through() -> None:
    async def broken() -> None:
        raise ValueError("bad answer")

    with pytest.raises(ValueError, match="bad answer"):
        await poll(broken, interval=0.01, deadline=1.0)
    with pytest.raises(ValueError):
        await poll(broken, interval=0, deadline=1.0)


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(http_module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == "orchd.http"
        and name not in ("T", "log")
    }
    assert public <= set(http_module.__all__)
