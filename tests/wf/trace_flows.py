"""Workflows of the trace tests (tests/test_tracing.py, tests/test_tracing_daemon.py).

Each step that talks HTTP calls the test's recording server at ``url`` with the daemon's (or
the engine's) ``HttpClient``; steps also keep in State the ``traceparent`` they saw, so a test
can compare it with the spans and the server's log.
"""

from __future__ import annotations

from orchd import (
    State,
    Target,
    begin,
    callback_step,
    children,
    done,
    init,
    parallel,
    retrystep,
    step,
    workflow,
)
from orchd.http import HttpClient
from orchd.tracing import traceparent


class Flaky(dict[str, int]):
    """Step name -> how many more times it fails before it succeeds."""


@step("call oss")
async def call_oss(url: str, http: HttpClient) -> State:
    await http.get_json(f"{url}/call")
    return {"call_seen": traceparent()}


@step("in a thread")
def in_a_thread() -> State:  # a plain function: runs in the step threads
    return {"thread_seen": traceparent()}


@retrystep("flaky", max_attempts=3)
def flaky(flakes: Flaky) -> State:
    if flakes.get("flaky", 0) > 0:
        flakes["flaky"] -= 1
        raise RuntimeError("flaky failed on purpose")
    return {"flaky_seen": traceparent()}


@step("branch call")
async def branch_call(url: str, http: HttpClient) -> State:
    await http.get_json(f"{url}/branch")
    return {"branch_seen": traceparent()}


@step("branch thread")
def branch_thread() -> State:
    return {"branch_thread_seen": traceparent()}


@workflow("Steps, a retry and branches, each traced", target=Target.SYSTEM)
def traced():  # type: ignore[no-untyped-def]
    gather = parallel("Gather", begin >> branch_call, begin >> branch_thread)
    return init >> call_oss >> in_a_thread >> flaky >> gather >> done


@step("child step")
async def child_step() -> State:
    return {"child_seen": traceparent()}


@workflow("A child of traced_parent", target=Target.SYSTEM)
def traced_child():  # type: ignore[no-untyped-def]
    return init >> child_step >> done


@workflow("Fans out to traced_child", target=Target.SYSTEM)
def traced_parent():  # type: ignore[no-untyped-def]
    return init >> children("Fan out", workflow="traced_child", inputs="inputs") >> done


@step("ask oss")
def ask_oss(callback_token: str) -> State:
    return {"asked_with": callback_token}


@step("check answer")
def check_answer(callback_result: dict) -> State:  # type: ignore[type-arg]
    return {"answer": callback_result}


@workflow("Waits for a callback", target=Target.SYSTEM)
def traced_callback():  # type: ignore[no-untyped-def]
    return init >> callback_step("wait for oss", ask_oss, check_answer) >> done


# -- the daemon test: a process SIGKILLed while its second request is in flight --------------


@step("first")
async def first(url: str, http: HttpClient) -> State:
    await http.get_json(f"{url}/first")
    return {}


@step("held")
async def held(url: str, http: HttpClient) -> State:
    # The test's server holds this request until the daemon has been killed and restarted.
    await http.get_json(f"{url}/held", timeout=60)
    return {}


@step("last")
async def last(url: str, http: HttpClient) -> State:
    await http.get_json(f"{url}/last")
    return {}


@workflow("Three calls, the second held", target=Target.SYSTEM)
def traced_calls():  # type: ignore[no-untyped-def]
    return init >> first >> held >> last >> done
