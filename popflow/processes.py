"""Which process owns something: ``host:pid:random`` owner strings, and whether a local owner still lives.

Spool folders, partial message-store files, source leases and replay claims each name the process
that made them, so a second popflow process on the same ``data_dir`` or state store can tell what
a dead process left (and clean or take it over) from what a live one is still using.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
from dataclasses import dataclass
from functools import cache


@cache
def this_host() -> str:
    """This machine's host name, without ``:`` (the owner string's separator)."""
    return (socket.gethostname() or "localhost").replace(":", "_")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (signal 0 probes without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        # EPERM: it exists but belongs to another user, so it is alive.
        return exc.errno == errno.EPERM
    return True


def new_owner() -> str:
    """A fresh owner string for this process: ``host:pid:random`` (unique per call)."""
    return f"{this_host()}:{os.getpid()}:{secrets.token_hex(6)}"


@dataclass(frozen=True)
class Owner:
    """A parsed owner string."""

    host: str
    pid: int
    token: str

    @classmethod
    def parse(cls, text: str | None) -> Owner | None:
        """``host:pid:random`` → Owner; None when the text is not in that form."""
        if not text:
            return None
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    @property
    def local(self) -> bool:
        """Whether the owner runs (or ran) on this machine."""
        return self.host == this_host()

    @property
    def dead(self) -> bool:
        """True only when certain: the owner ran on this machine and its pid is gone."""
        return self.local and not pid_alive(self.pid)

    def shown(self) -> str:
        """``host:pid``, for messages (the random part means nothing to a reader)."""
        return f"{self.host}:{self.pid}"


def owner_is_dead(text: str | None) -> bool:
    """Whether an owner string names a process of this machine that no longer runs."""
    owner = Owner.parse(text)
    return owner is not None and owner.dead
