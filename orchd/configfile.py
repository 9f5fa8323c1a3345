"""Which config file is read: the one rule the daemon, the CLI and the maintenance tools share.

Standard library only: the CLI asks this on every call. The rule, first match wins:

1. an explicit path (``--config``);
2. ``$ORCHD_CONFIG``;
3. `SYSTEM_CONFIG` (``/etc/orchd/orchd.toml``) if it is a file, and only when the caller says
   so: the daemon only when systemd started it (README "The daemon"; a developer's ``orchd serve``
   must not pick up the machine's service config), clients (the CLI, ``orchd backup``,
   ``orchd check``) always, so an operator's ``orchd ps`` finds the service's socket;
4. none: the embedded defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["SYSTEM_CONFIG", "find_config"]

#: The service's config file, installed by the README's systemd steps.
SYSTEM_CONFIG = "/etc/orchd/orchd.toml"


def find_config(
    given: str | os.PathLike[str] | None,
    environ: Mapping[str, str],
    *,
    system_default: bool,
) -> str | None:
    """The config file to read, or None for the embedded defaults (see the module docstring).

    ``system_default`` says whether `SYSTEM_CONFIG` may be used when nothing names a file.
    """
    if given is not None:
        return os.fspath(given)
    if environ.get("ORCHD_CONFIG"):
        return environ["ORCHD_CONFIG"]
    if system_default and os.path.isfile(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    return None
