"""The examples' checks against the outside world.

- ``validate_node`` (VALIDATE, product ``node``): asks the OSS for the node a subscription
  names; a node the OSS does not know, or shows in ``error``, fails the validation, and the
  subscription stays not insync (drift) until the validation is retried or aborted. The
  built-in task ``validate_subscriptions`` with ``{"product": "node"}`` runs it for every
  active node; schedule it in the config.
- ``find_faulty_nodes`` (SYSTEM task, schedulable): asks the OSS for every node
  (``GET /nodes``) and reports those in status ``error`` in its State: ``{"checked": <nodes
  seen>, "out_of_sync": [{"node_id", "name", "customer_id", "status"}]}``, including nodes no
  subscription knows of.
"""

from __future__ import annotations

from orchd import State, StepList, Target, done, init, step, workflow
from orchd.examples.oss import NodeFault, node_url
from orchd.examples.products import Node
from orchd.http import HttpClient

FAULTY = frozenset({"error"})


@step("check_nodes")
async def check_nodes(http: HttpClient) -> State:
    answer = await http.get_json(node_url())
    nodes = answer.get("items", []) if isinstance(answer, dict) else answer
    faulty = [
        {
            "node_id": n.get("id"),
            "name": n.get("name"),
            "customer_id": n.get("customer_id"),
            "status": n.get("status"),
        }
        for n in nodes
        if n.get("status") in FAULTY
    ]
    return {"checked": len(nodes), "out_of_sync": faulty}


@workflow("Report nodes the OSS shows as faulty", target=Target.SYSTEM)
def find_faulty_nodes() -> StepList:
    return init >> check_nodes >> done


@step("compare_with_oss")
async def compare_with_oss(subscription: Node, http: HttpClient) -> State:
    if subscription.node_id is None:
        raise NodeFault(f"node {subscription.name} has no OSS id")
    answer = await http.request("GET", node_url(subscription.node_id), expect=(200, 404))
    if answer.status == 404:
        raise NodeFault(f"the OSS does not know node {subscription.node_id} any more")
    status = answer.json().get("status")
    if status in FAULTY:
        raise NodeFault(f"the OSS shows node {subscription.node_id} as {status}")
    return {"oss_status": status}


@workflow("Check a node against the OSS", target=Target.VALIDATE, product=Node)
def validate_node() -> StepList:
    return init >> compare_with_oss >> done
