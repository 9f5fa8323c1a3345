"""Branch paths ("Ports/0", nested "Each/1/Halves/0", README "Parallel branches"): which path lies
inside
which, written once for the CLI and the console. Standard library only: the CLI imports it."""

from __future__ import annotations

from typing import Any

__all__ = ["path_order", "within"]


def within(path: str | None, branch: str) -> bool:
    """Whether the branch at ``path`` is ``branch`` or one nested under it ("A/10" is not
    under "A/1"); ``None``, the main line, is in no branch."""
    return path is not None and (path == branch or path.startswith(branch.rstrip("/") + "/"))


def path_order(path: str) -> list[tuple[int, Any]]:
    """A sort key putting branch paths in their natural order: "A/2" before "A/10", a nested
    branch right after the one it runs in."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in path.split("/")]
