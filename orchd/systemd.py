"""The small part of the systemd service protocol orchd speaks, without libsystemd.

sd_notify is one datagram to ``$NOTIFY_SOCKET``; socket activation is a few environment
variables and inherited file descriptors. Both are simple enough that a dependency (and
its C extension) would cost more than it saves. Nothing here raises when orchd is not
run by systemd: every call then does nothing and says so in its return value.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping, MutableMapping

__all__ = [
    "LISTEN_FDS_START",
    "listen_fds",
    "notify",
    "notify_ready",
    "notify_reloading",
    "notify_status",
    "notify_stopping",
    "notify_watchdog",
    "under_journald",
    "under_systemd",
    "watchdog_interval",
]

#: The first file descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3


def under_systemd(env: Mapping[str, str] = os.environ) -> bool:
    """True when systemd started this process (as a service or with ``systemd-run``)."""
    return bool(env.get("INVOCATION_ID") or env.get("NOTIFY_SOCKET"))


def under_journald(env: Mapping[str, str] = os.environ, stream: int | None = None) -> bool:
    """True when stderr is the journal's stream, so log lines need no timestamps.

    ``$JOURNAL_STREAM`` alone is not enough: it is inherited by children whose stderr was
    redirected elsewhere, so compare its ``device:inode`` with the fd itself.
    """
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno() if stream is None else stream)
    except (OSError, ValueError, AttributeError):
        # A closed or replaced sys.stderr (pytest's capture) has no usable fd.
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def notify(env: Mapping[str, str] = os.environ, **fields: str | int) -> bool:
    """Send ``KEY=value`` lines to ``$NOTIFY_SOCKET``; False when there is none or it fails.

    Keys are upper-cased (``notify(ready=1)`` sends ``READY=1``). A failed send is reported,
    not raised: systemd going away must not take the daemon down with it.
    """
    address = env.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        # Abstract namespace: the leading "@" stands for a NUL byte.
        target: str | bytes = b"\0" + address[1:].encode()
    elif address.startswith("/"):
        target = address
    else:
        # vsock (vsock:CID:PORT) and other forms are for VMs; orchd does not need them.
        return False
    message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def notify_ready(status: str | None = None, env: Mapping[str, str] = os.environ) -> bool:
    """Tell systemd start-up is complete: call only once every listener is bound."""
    if status is None:
        return notify(env, ready=1)
    return notify(env, ready=1, status=status)


def notify_status(text: str, env: Mapping[str, str] = os.environ) -> bool:
    """Set the one-line status ``systemctl status`` shows."""
    return notify(env, status=text.replace("\n", " "))


def notify_stopping(env: Mapping[str, str] = os.environ) -> bool:
    """Say that a graceful stop has begun, so systemd waits instead of reporting a failure."""
    return notify(env, stopping=1)


def notify_watchdog(env: Mapping[str, str] = os.environ) -> bool:
    """Keep-alive ping; send it at half of `watchdog_interval` from the event loop."""
    return notify(env, watchdog=1)


def notify_reloading(env: Mapping[str, str] = os.environ) -> bool:
    """Announce a reload (follow with `notify_ready` when done).

    ``MONOTONIC_USEC`` lets systemd ≥ 253 (Type=notify-reload) match this message to the
    reload it asked for; older versions ignore it.
    """
    return notify(
        env, reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    )


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds within which systemd expects a WATCHDOG=1, or None when no watchdog applies.

    ``$WATCHDOG_PID`` names the process the watchdog is meant for; a child that merely
    inherited the variables must not ping in our place.
    """
    usec = env.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


def listen_fds(
    env: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[socket.socket]:
    """Sockets passed by socket activation (``$LISTEN_FDS`` from fd 3 on), usually none.

    The variables are removed afterwards (``unset``) so that a child process cannot believe
    the descriptors are its own. The sockets are made close-on-exec for the same reason.
    """
    if env is None:
        env = os.environ
    count, pid = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    if unset:
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if not count.isdigit() or not pid.isdigit() or int(pid) != os.getpid():
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets
