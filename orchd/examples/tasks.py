"""``validate_subscriptions``: a scheduled task that looks for faulty nodes in the OSS.

Limitation, on purpose: a step sees only its process's State and the engine's resources, not
the subscription table, so this task cannot compare subscriptions with the OSS one by one.
It asks the OSS for every node (``GET /nodes``) and reports those in status ``error`` in its
State: ``{"checked": <nodes seen>, "out_of_sync": [{"node_id", "name", "customer_id",
"status"}]}``. An operator (or a MODIFY workflow) takes it from there.
"""

from __future__ import annotations

from orchd import State, StepList, Target, done, init, step, workflow
from orchd.examples.oss import node_url
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
def validate_subscriptions() -> StepList:
    return init >> check_nodes >> done
