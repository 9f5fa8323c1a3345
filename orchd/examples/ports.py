"""``provision_port``: a callback step, where the OSS answers when it is done.

The action asks the OSS to configure a port on the node (``POST /jobs``) and hands it a
callback URL holding the process's ``callback_token``; the process then waits, as
``awaiting_callback``, without polling and without holding a task. The OSS is expected to
post its outcome (``{"result": "ok"}`` or ``{"result": "error", "reason": ...}``) to that URL,
the daemon's ``POST /api/callbacks/{token}``; ``orchd fake-oss`` does so after ``--job-time``.
With no answer within an hour the wait fails, and a retry posts a new job with a new token.

``provision_ports`` does the same for many ports of one node at once: a ``foreach`` with one
branch per port, each waiting for its own job's callback, four jobs at the OSS at a time.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from msgspec import Meta

from orchd import (
    Form,
    State,
    StepList,
    Target,
    callback_step,
    done,
    foreach,
    init,
    step,
    workflow,
)
from orchd.examples.oss import callback_url, node_id_of, oss_url
from orchd.http import HttpClient

Vlan = Annotated[int, Meta(ge=1, le=4094)]


class ProvisionPortForm(Form):
    subscription_id: UUID
    port: Annotated[str, Meta(min_length=1, max_length=64)]
    vlan: Vlan


class PortProvisioningFailed(Exception):
    """Raised when the OSS reports that it could not configure the port."""


async def _post_job(
    http: HttpClient,
    subscription: dict[str, Any],
    port: str,
    vlan: int,
    process_id: str,
    token: str,
) -> State:
    """Ask the OSS to configure ``port``; it posts the outcome to the token's callback URL."""
    job = await http.post_json(
        f"{oss_url()}/jobs",
        {
            "kind": "provision_port",
            "node_id": node_id_of(subscription),
            "port": port,
            "vlan": vlan,
            "callback_url": callback_url(token),
        },
        # One job per token: a retry of this request is safe, a new token is a new job.
        headers={"Idempotency-Key": f"{process_id}:{token}"},
        idempotent=True,
    )
    return {"job_id": job["id"]}


def _check_job(callback_result: Any, port: str) -> None:
    """Raise unless the OSS's callback says the port is configured."""
    result = callback_result.get("result") if isinstance(callback_result, dict) else None
    if result != "ok":
        raise PortProvisioningFailed(f"the OSS did not configure port {port}: {callback_result}")


@step("request_port")
async def request_port(
    subscription: dict[str, Any],
    port: str,
    vlan: int,
    process_id: str,
    callback_token: str,
    http: HttpClient,
) -> State:
    return await _post_job(http, subscription, port, vlan, process_id, callback_token)


@step("confirm_port")
async def confirm_port(
    subscription: dict[str, Any], callback_result: Any, port: str, vlan: int
) -> State:
    _check_job(callback_result, port)
    attributes = dict(subscription.get("attributes") or {})
    ports = [p for p in attributes.get("ports", []) if p.get("port") != port]
    attributes["ports"] = [*ports, {"port": port, "vlan": vlan}]
    return {"subscription": {**subscription, "attributes": attributes}, "port_status": "up"}


@workflow(
    "Configure a port on a node",
    initial_input_form=ProvisionPortForm,
    target=Target.MODIFY,
    product="node",
)
def provision_port() -> StepList:
    return init >> callback_step("await_port", request_port, confirm_port, timeout=3600.0) >> done


# -- provision_ports: many ports of one node at once (README "Parallel branches") ------------------


class PortSpec(Form):
    port: Annotated[str, Meta(min_length=1, max_length=64)]
    vlan: Vlan


class ProvisionPortsForm(Form):
    subscription_id: UUID
    ports: Annotated[list[PortSpec], Meta(min_length=1, max_length=256)]


@step("request_port_job")
async def request_port_job(
    subscription: dict[str, Any],
    port: str,
    vlan: int,
    process_id: str,
    callback_token: str,
    http: HttpClient,
) -> State:
    return await _post_job(http, subscription, port, vlan, process_id, callback_token)


@step("check_port_job")
async def check_port_job(callback_result: Any, port: str, vlan: int) -> State:
    _check_job(callback_result, port)
    return {"configured": {"port": port, "vlan": vlan}}


@step("record_ports")
async def record_ports(subscription: dict[str, Any], port_results: list[dict[str, Any]]) -> State:
    attributes = dict(subscription.get("attributes") or {})
    done_ports = {r["configured"]["port"]: r["configured"] for r in port_results}
    kept = [p for p in attributes.get("ports", []) if p.get("port") not in done_ports]
    attributes["ports"] = [*kept, *done_ports.values()]
    return {"subscription": {**subscription, "attributes": attributes}}


@workflow(
    "Configure many ports of a node at once",
    initial_input_form=ProvisionPortsForm,
    target=Target.MODIFY,
    product="node",
)
def provision_ports() -> StepList:
    # One branch per port (each element's "port" and "vlan" are in its branch's State), four
    # jobs at the OSS at once; each branch waits for its own job's callback.
    each = callback_step("await_port_job", request_port_job, check_port_job, timeout=3600.0)
    configure = foreach("configure_ports", "ports", each, into="port_results", max_concurrency=4)
    return init >> configure >> record_ports >> done
