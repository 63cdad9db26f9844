"""Where a step on the queue came from, for the audit: the web page, or the CLI and who ran it.

A moderator name says who acted; the origin says through what. For the CLI
the operating-system user is kept too, since several people may share a
moderator name from one admin host, and a terminal is not signed in the way
the web page is.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass

__all__ = ["WEB", "Origin", "cli_origin"]


@dataclass(frozen=True)
class Origin:
    """`via` is `web` or `cli`; `os_user` is the operating-system user, for the CLI only."""

    via: str
    os_user: str | None = None


WEB = Origin("web")


def cli_origin() -> Origin:
    """The CLI as run by this process's operating-system user (None if it has no name)."""
    try:
        user: str | None = getpass.getuser()
    except (OSError, KeyError):
        user = None
    return Origin("cli", user)
