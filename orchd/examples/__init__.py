"""Bundled example workflows: a small network (nodes provisioned through an OSS, ports on
them, core links and L2VPNs between ports), its products typed in ``orchd.examples.products``.

The daemon loads them by default (``workflows = ["orchd.examples"]``); run ``orchd fake-oss``
next to it so they have an OSS to talk to (``ORCHD_OSS_URL``, default
``http://127.0.0.1:8471``). Their steps ask for the daemon's shared ``orchd.http.HttpClient``.

- ``create_node`` (CREATE), ``modify_node`` (MODIFY), ``terminate_node`` (TERMINATE):
  ``orchd.examples.node``
- ``provision_port`` (MODIFY, waits for the OSS to call back): ``orchd.examples.ports``
- ``create_port``, ``terminate_port``, ``create_core_link``, ``terminate_core_link``,
  ``create_l2vpn``, ``modify_l2vpn_speed``, ``terminate_l2vpn``, ``validate_l2vpn``:
  ``orchd.examples.network``
- ``validate_node`` (VALIDATE; the built-in ``validate_subscriptions`` runs it for every
  active node) and ``find_faulty_nodes`` (SYSTEM task, schedulable): ``orchd.examples.tasks``
"""

from orchd.examples import network, node, ports, products, tasks
from orchd.examples.oss import callback_url, node_url, oss_url

__all__ = [
    "callback_url",
    "network",
    "node",
    "node_url",
    "oss_url",
    "ports",
    "products",
    "tasks",
]
