"""Branch paths ("Ports/0", nested "Each/1/Halves/0", README "Parallel branches"): which path lies
inside
which, written once for the CLI and the console. Standard library only: the CLI imports it."""

from __future__ import annotations

__all__ = ["within"]


def within(path: str | None, branch: str) -> bool:
    """Whether the branch at ``path`` is ``branch`` or one nested under it ("A/10" is not
    under "A/1"); ``None``, the main line, is in no branch."""
    return path is not None and (path == branch or path.startswith(branch.rstrip("/") + "/"))
