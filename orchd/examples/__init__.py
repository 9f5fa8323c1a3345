"""Bundled example workflows: a small "node" product provisioned through an OSS.

The daemon loads them by default (``workflows = ["orchd.examples"]``); run ``orchd fake-oss``
next to it so they have an OSS to talk to (``ORCHD_OSS_URL``, default
``http://127.0.0.1:8471``). Their steps ask for the daemon's shared ``orchd.http.HttpClient``.

- ``create_node`` (CREATE), ``modify_node`` (MODIFY), ``terminate_node`` (TERMINATE):
  ``orchd.examples.node``
- ``provision_port`` (MODIFY, waits for the OSS to call back): ``orchd.examples.ports``
- ``validate_subscriptions`` (SYSTEM task, schedulable): ``orchd.examples.tasks``
"""

from orchd.examples import node, ports, tasks
from orchd.examples.oss import callback_url, node_url, oss_url

__all__ = ["callback_url", "node", "node_url", "oss_url", "ports", "tasks"]
