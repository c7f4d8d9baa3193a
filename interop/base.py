"""What every server of the interop suite is: :class:`Mode` (one way in) and :class:`Server`.

A server class names its Debian package and the modes it supports (a :class:`Mode` is an auth
mechanism over plain, STLS or implicit TLS). To add one: subclass :class:`Server`, implement
``start`` / ``fill`` / ``stop``, and list it in ``interop.servers.SERVERS`` (see docs/interop.md).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from interop.common import (
    PREFIX,
    STATE,
    MailUser,
    TestCA,
    Unavailable,
)
from interop.messages import Message


@dataclass(frozen=True)
class Mode:
    """One way into a server: ``auth`` (popflow's setting) over ``tls`` (none, starttls, implicit)."""

    auth: str
    tls: str = "none"
    check: str = "keep-delete"
    """What interop/check.py runs: ``keep-delete`` (keep twice, then delete) or ``login-delay``."""

    @property
    def name(self) -> str:
        name = self.auth if self.tls == "none" else f"{self.auth}+{'STLS' if self.tls == 'starttls' else 'TLS'}"
        return name if self.check == "keep-delete" else f"{name} {self.check}"


@dataclass
class Server:
    """A running server (after :meth:`start`): where it listens and whom it serves."""

    name: ClassVar[str]
    package: ClassVar[str]
    modes: ClassVar[list[Mode]]
    user: MailUser
    ca: TestCA
    work: Path
    port: int = 0
    tls_port: int = 0
    version: str = "?"
    notes: list[str] = field(default_factory=list)
    """Quirks or limits of this setup, for the matrix."""
    unservable: ClassVar[dict[str, str]] = {}
    """Messages (by name) this server refuses to serve at all, and what it does: the driver checks
    that claim with the full set first, then runs the modes without them."""

    def start(self) -> None:
        raise NotImplementedError

    def fill(self, messages: list[Message]) -> None:
        """Replace the maildrop with ``messages`` (only between sessions)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def wait_idle(self) -> None:
        """Return once no session runs (a server may rewrite its store as a session ends)."""

    def prefix(self) -> Path:
        path = PREFIX / self.name
        if not (path / ".popflow-interop").is_file():
            raise Unavailable(f"not unpacked in {path} (run interop/fetch.sh {self.name})")
        return path

    def deb_version(self) -> str:
        for line in (self.prefix() / ".popflow-interop").read_text().splitlines():
            if line.startswith(self.package + "_"):
                return line.split("_")[1]
        return "?"

    def store(self) -> Path:
        """This server's mail folder (owned by the mail user)."""
        return self.user.own_dir(STATE / self.name, 0o700)


def write_maildir(user: MailUser, folder: Path, messages: list[Message]) -> None:
    """``folder`` as a fresh Maildir holding ``messages`` in ``new/``, in order."""
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("", "tmp", "new", "cur"):
        user.own_dir(folder / sub)
    for index, message in enumerate(messages):
        user.write(folder / "new" / f"{1796300000 + index}.P{index}Q1.interop", message.data)


