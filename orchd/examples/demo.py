"""What `make run` shows a new user: a few example processes started once the daemon answers.

Run beside ``orchd serve`` (embedded default) and ``orchd fake-oss``; it talks to the daemon
through the same client as the CLI, starts some processes, and says what to try next.
"""

from __future__ import annotations

import sys
import time

from orchd.client import Client, ClientError, DaemonUnreachable, Endpoint


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
        started = [
            client.post("/api/processes/create_node", {"name": f"demo-{n}", "role": role})["id"]
            for n, role in enumerate(("edge", "core", "access"), start=1)
        ]
        client.post("/api/processes/validate_subscriptions", {})
    except ClientError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    print(
        "\ndemo: started 3 create_node processes and a validate_subscriptions task.\n"
        "  Try, in another terminal (the fake OSS fails 5% of requests, so some retry):\n"
        "    .venv/bin/orchd ps\n"
        f"    .venv/bin/orchd show {started[1]}\n"
        "    .venv/bin/orchd subscriptions\n"
        '    .venv/bin/orchd start modify_node --input \'{"subscription_id": "<id>", '
        '"role": "core"}\' --wait\n'
        '    .venv/bin/orchd start provision_ports --input \'{"subscription_id": "<id>", '
        '"ports": [{"port": "ge-0/0/1", "vlan": 10}, {"port": "ge-0/0/2", "vlan": 20}]}\' '
        "--wait   (one branch per port)\n",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
