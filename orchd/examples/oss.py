"""Where the example workflows find the OSS, and what they share about talking to it.

Addresses are read from the environment when a step runs, not at import, so a test (or an
operator restarting the OSS elsewhere) can change them without reloading the workflows.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

#: Polling a node: first check after POLL_INTERVAL s, growing to POLL_MAX_INTERVAL s.
POLL_INTERVAL = 0.25
POLL_MAX_INTERVAL = 5.0
#: How long one attempt of a waiting step polls before it gives up (the retrystep retries).
POLL_DEADLINE = 300.0


def oss_url() -> str:
    """The OSS base URL: ``$ORCHD_OSS_URL``, default ``http://127.0.0.1:8471``."""
    return os.environ.get("ORCHD_OSS_URL", "http://127.0.0.1:8471").rstrip("/")


def node_url(node_id: str = "") -> str:
    """``/nodes`` or ``/nodes/{id}`` on the OSS."""
    base = f"{oss_url()}/nodes"
    return f"{base}/{quote(node_id, safe='')}" if node_id else base


def callback_url(token: str) -> str:
    """Where the OSS should post its answer for ``token``: the daemon's callback route.

    The base is ``$ORCHD_CALLBACK_URL``, default ``http://127.0.0.1:8470`` (the daemon's
    optional TCP listener, which the OSS must be able to reach). Without a TCP listener, as
    under ``make run``, ``orchd fake-oss --callback-socket PATH`` posts to this URL's path
    over the daemon's Unix socket instead.
    """
    base = os.environ.get("ORCHD_CALLBACK_URL", "http://127.0.0.1:8470").rstrip("/")
    return f"{base}/api/callbacks/{quote(token, safe='')}"


class NodeFault(Exception):
    """Raised when the OSS reports a node in a state the workflow cannot continue from."""


def node_id_of(subscription: dict[str, Any]) -> str:
    """The OSS node id a node subscription refers to."""
    node_id = (subscription.get("attributes") or {}).get("node_id")
    if not isinstance(node_id, str) or not node_id:
        raise NodeFault(f"subscription {subscription.get('id')} has no attributes.node_id")
    return node_id
