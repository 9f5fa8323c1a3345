"""What `make run` shows a new user: a small network built once the daemon answers.

Run beside ``orchd serve`` (embedded default) and ``orchd fake-oss``; it talks to the daemon
through the same client as the CLI. It builds two nodes, four ports, a core link and an L2VPN,
one workflow after the other (each needs the one before), then starts the built-in
``validate_subscriptions`` task for the nodes and says what to try next. Each piece is looked
up first (an active subscription of its product and description): what a ``make run`` built
is used as it is, so a second ``make run`` adds nothing, and one that was stopped halfway
builds only what is missing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from orchd.client import Client, ClientError, DaemonUnreachable, Endpoint

#: How long one demo process may take (the fake OSS fails some requests: retries back off).
PROCESS_TIMEOUT = 90.0


class DemoError(Exception):
    """Raised when a demo process does not complete."""


def main(socket_path: str = "./orchd.sock") -> int:
    client = Client(Endpoint(socket_path=socket_path), timeout=10)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.get("/api/health")
            break
        except DaemonUnreachable:
            if time.monotonic() > deadline:
                print("demo: the daemon did not answer within 30 s", file=sys.stderr)
                return 1
            time.sleep(0.3)
    try:
        built = Builder(client).build()
    except (ClientError, DemoError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    hints(built)
    return 0


class Builder:
    """The demo's network, each piece found or built."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.new = 0

    def build(self) -> dict[str, str]:
        say("demo: a small network (nodes in the fake OSS, ports, a core link, an L2VPN)")
        n1 = self.piece(
            "node", "core node ams-core-1", "create_node", {"name": "ams-core-1", "role": "core"}
        )
        n2 = self.piece(
            "node", "edge node lon-edge-1", "create_node", {"name": "lon-edge-1", "role": "edge"}
        )
        p1 = self.piece(
            "port", "ams-core-1 xe-0/0/1", "create_port", {"node": n1, "name": "xe-0/0/1"}
        )
        p2 = self.piece(
            "port", "lon-edge-1 xe-0/0/1", "create_port", {"node": n2, "name": "xe-0/0/1"}
        )
        p3 = self.piece(
            "port",
            "ams-core-1 xe-0/0/2",
            "create_port",
            {"node": n1, "name": "xe-0/0/2", "speed": 1000},
        )
        p4 = self.piece(
            "port",
            "lon-edge-1 xe-0/0/2",
            "create_port",
            {"node": n2, "name": "xe-0/0/2", "speed": 1000},
        )
        link = self.piece(
            "core_link", "core link", "create_core_link", {"port_a": p1, "port_b": p2}
        )
        # create_l2vpn asks in three pages: the size, the ports (unused ones), the VLAN.
        vpn = self.piece("l2vpn", "L2VPN vlan 100 over 2 ports", "create_l2vpn",
                         [{"sap_count": 2}, {"ports": [p3, p4]}, {"vlan": 100}])  # fmt: skip
        if self.new:
            self.client.post("/api/processes/validate_subscriptions", {"product": "node"})
        else:
            say("demo: the database has this network already; nothing new is built.")
        return {"node": n1, "port": p2, "core_link": link, "l2vpn": vpn}

    def piece(self, product: str, description: str, workflow: str, given: Any) -> str:
        """The active subscription of ``product`` described so, or the one ``workflow``
        builds."""
        found = self.client.get(
            "/api/subscriptions",
            {"product": product, "status": "active", "q": description, "limit": 100},
        )["items"]
        for sub in found:
            if sub["description"] == description:
                say(f"  {workflow:<17} {sub['id']}  {description} (built before)")
                return str(sub["id"])
        self.new += 1
        return run(self.client, workflow, given)


def run(client: Client, workflow: str, given: Any) -> str:
    """Start ``workflow`` and wait until it completes; its subscription's id."""
    pid = client.post(f"/api/processes/{workflow}", given)["id"]
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while True:
        process = client.get(f"/api/processes/{pid}")
        if process["status"] == "completed":
            sid = str(process["state"]["subscription_id"])
            say(f"  {workflow:<17} {sid}  {process['state']['subscription']['description']}")
            return sid
        if process["status"] in ("failed", "aborted", "suspended") or (time.monotonic() > deadline):
            raise DemoError(f"{workflow} ({pid}) is {process['status']}: {process.get('error')}")
        time.sleep(0.2)


def hints(built: dict[str, str] | None) -> None:
    orchd = ".venv/bin/orchd"
    port = built["port"] if built else "<a port's id>"
    node = built["node"] if built else "<a node's id>"
    say(
        "\ndemo: try, in another terminal:\n"
        f"    {orchd} products\n"
        f"    {orchd} subscriptions\n"
        f"    {orchd} subscription {port}      (what it depends on, what uses it)\n"
        f'    {orchd} start terminate_port --input \'{{"subscription_id": "{port}"}}\'\n'
        "        (refused: the core link uses it)\n"
        f"    {orchd} start create_l2vpn --interactive      (three pages: size, ports, VLAN)\n"
        f'    {orchd} start modify_node --input \'{{"subscription_id": "{node}", '
        '"role": "edge"}\' --wait\n'
        f"    {orchd} ps\n"
        f"    {orchd} schedules      (validate_nodes validates the nodes every 10 minutes)\n"
        "  and the console at http://localhost:<port>/ui/ through the tunnel the README shows.\n"
    )


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
