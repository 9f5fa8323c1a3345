"""Failed logins over TCP: logged, and throttled per address (issue 26 item 6).

A wrong token counts against the address it came from, wherever it was given: a bearer token
on the API (health's included, whose answer would otherwise tell a right token from a wrong
one), the token typed at the console's login, and one in a request that asks for a reserved
TCP slot (``orchd.api.guard``). Each is logged as a warning naming the address and the route,
never the token (``msg="failed login" address=192.0.2.7 route=/api/processes``).

The address is the peer's IPv4 address, or its IPv6 /64 (one host may pick any address in
its /64). Each may fail ``failed_logins`` times at once, and regains one try every
``failed_login_window / failed_logins`` seconds (a token bucket: ``failed_logins`` tries per
window in the long run). An address with no tries left is throttled: a request of it that
needs the token is answered 429 with ``Retry-After`` before the token is compared, the right
token too (else a guesser would just keep guessing), and health answers it as it answers a
request without a token. The first refusal is logged, the rest only counted. The Unix socket
is never throttled: it needs no token, and it is how an operator gets in during an attack.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable

from orchd.errors import TooManyRequests
from orchd.settings import TcpSettings

__all__ = ["FailedLogins", "address_key", "ip_of"]

log = logging.getLogger("orchd.api.logins")

#: Addresses remembered at most; past it, those whose tries are all back are forgotten.
MAX_TRACKED = 10_000


def ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address as the host it is: an IPv4-mapped IPv6 address is its IPv4 one, an
    IPv6 zone (``%eth0``) is dropped; None for what is no IP address."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_key(address: str) -> str:
    """What one client is: an IPv4 address (an IPv4-mapped IPv6 one too), an IPv6 /64."""
    ip = ip_of(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailedLogins:
    """The tries left to each address, and the counters for metrics."""

    def __init__(
        self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: Failures allowed at once (0: no throttling, failures are still logged).
        self.limit = limit
        self.window = window
        self.clock = clock
        self._tries: dict[str, tuple[float, float]] = {}  # key -> (tries left, when)
        self._throttled: set[str] = set()
        self.failures_total = 0
        self.refused_total = 0

    @classmethod
    def of(cls, settings: TcpSettings) -> FailedLogins:
        return cls(settings.failed_logins, settings.failed_login_window)

    @property
    def _rate(self) -> float:
        """Tries regained per second."""
        return self.limit / self.window

    def _left(self, key: str, now: float) -> float:
        tries, at = self._tries.get(key, (float(self.limit), now))
        return min(float(self.limit), tries + (now - at) * self._rate)

    def wait(self, address: str) -> float:
        """Seconds until ``address`` may have a token checked again; 0: now."""
        if self.limit == 0 or not self._tries:
            return 0.0  # the usual case: nobody has given a wrong token lately
        key = address_key(address)
        left = self._left(key, self.clock())
        if left >= 1.0:
            self._throttled.discard(key)
            if left >= self.limit:
                self._tries.pop(key, None)  # all its tries are back: forget it
            return 0.0
        return (1.0 - left) / self._rate

    def check(self, address: str, route: str) -> None:
        """Raise TooManyRequests (with ``retry_after``) while ``address`` is throttled."""
        wait = self.wait(address)
        if wait <= 0:
            return
        self.refused_total += 1
        retry_after = max(1, math.ceil(wait))
        key = address_key(address)
        if key not in self._throttled:
            self._throttled.add(key)
            log.warning(
                "failed logins throttled address=%s route=%s retry_after=%d",
                key,
                route,
                retry_after,
            )
        raise TooManyRequests(
            f"too many wrong tokens from {key}; try again in {retry_after} s",
            retry_after=retry_after,
        )

    def failed(self, address: str, route: str) -> None:
        """A wrong token from ``address`` on ``route``: logged, and one try fewer."""
        self.failures_total += 1
        key = address_key(address)
        log.warning("failed login address=%s route=%s", address, route)
        if self.limit == 0:
            return
        now = self.clock()
        self._tries[key] = (self._left(key, now) - 1.0, now)
        if len(self._tries) > MAX_TRACKED:
            self._forget(now)

    def _forget(self, now: float) -> None:
        full = [k for k in self._tries if self._left(k, now) >= self.limit]
        for key in full:
            del self._tries[key]
            self._throttled.discard(key)
