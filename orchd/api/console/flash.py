"""What an action's redirect shows once (post/redirect/get, README "Web console").

Every console action answers ``303 See Other`` to the page that shows its outcome, so a reload
of that page only reads it again: it never posts the action a second time. A success is named
in the address (``?done=retried``: a fixed notice, nothing the address could make the page say
otherwise). A refusal carries more: the engine's problem, and what the operator typed with the
errors beside it (a skip's reason, a callback's answer, a form's fields). That stays here, in
the daemon's memory, under a random one-time token the redirect names (``?flash=``), for the
session that posted it only; the page that shows it takes it, so a reload shows the page as it
is now. ``static/console.js`` drops both parameters from the address once the page is shown.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Any

#: Outcomes kept for their pages at most (the oldest go first): a redirect is followed at once,
#: so only a browser that never follows one leaves its outcome here until it is pushed out.
MAX_FLASHES = 1024


class Flashes:
    """Outcomes waiting for the page their redirect names."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()

    def put(self, session: str, **shown: Any) -> str:
        """Keep ``shown`` (the page's keyword arguments) for ``session``; the token to name."""
        token = secrets.token_urlsafe(16)
        self._kept[token] = (session, shown)
        while len(self._kept) > MAX_FLASHES:
            self._kept.popitem(last=False)
        return token

    def take(self, session: str, token: str | None) -> dict[str, Any]:
        """What ``token`` kept for ``session``, once; nothing for another session's token."""
        if not token:
            return {}
        kept = self._kept.get(token)
        if kept is None or kept[0] != session:
            return {}
        del self._kept[token]
        return kept[1]
