"""Server policies of :class:`~popflow.testing.POP3TestServer`, scripted to behave as real servers do.

* ``utf8=True`` — as Courier POP3 1.0.16: CAPA offers ``UTF8``; the ``UTF8`` command (RFC 6856)
  is accepted after login; until a session sends it, a message whose header block holds 8-bit
  bytes is served (RETR, TOP) as a generated substitute: "Cannot display Unicode content", from
  postmaster, the original attached as ``message/global``, a new MIME boundary each session.
* ``login_delay=n`` — as Cyrus pop3d with a minimum poll interval: CAPA says ``LOGIN-DELAY n``
  and a login within ``n`` seconds of the user's previous login is refused with
  ``-ERR [LOGIN-DELAY] ...``.
* ``expire="0"`` (any text) — CAPA says ``EXPIRE <text>``; with ``"0"`` a QUIT also deletes every
  message the session retrieved with RETR, as RFC 2449 allows such a server to do.
* ``capabilities=[...]`` — extra CAPA lines exactly as given (e.g. mailutils' ``EXPIRENEVER``);
  ``capabilities_after_login=[...]`` replaces them after login (RFC 2449's per-user values:
  ``LOGIN-DELAY 900 USER`` before login, ``LOGIN-DELAY 60`` after).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable

from popflow.testing.mailbox import StoredMessage, to_wire

SUBSTITUTE_SUBJECT = b"Cannot display Unicode content"


def has_8bit_headers(wire: bytes) -> bool:
    """True when the header block (up to the first empty line) holds a byte above 127."""
    head = wire.split(b"\r\n\r\n", 1)[0]
    return any(byte > 127 for byte in head)


def unicode_substitute(original: bytes, tag: str) -> bytes:
    """What Courier serves a client that did not send ``UTF8``: a notice with the original attached.

    ``tag`` goes into the MIME boundary (Courier's changes every session).
    """
    boundary = f"=_popflow-testing-{tag}".encode()
    text = (b"From: Mail Delivery Subsystem <postmaster@popflow-testing>\r\n"
            b"Subject: " + SUBSTITUTE_SUBJECT + b"\r\n"
            b"Mime-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n"
            b"\r\n"
            b"--" + boundary + b"\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            b"This message has Unicode content that your E-mail reader cannot display\r\n"
            b"(it did not enable POP3 UTF8). The original message is attached.\r\n"
            b"\r\n--" + boundary + b"\r\n"
            b"Content-Type: message/global\r\n\r\n"
            + original +
            b"\r\n--" + boundary + b"--\r\n")
    return to_wire(text)


class ServerPolicies:
    """The scripted policies of one server (see the module docstring); thread-safe."""

    def __init__(self, *, utf8: bool = False, login_delay: float = 0.0, expire: str | None = None,
                 capabilities: Iterable[str] = (), capabilities_after_login: Iterable[str] | None = None) -> None:
        if login_delay < 0:
            raise ValueError("login_delay cannot be negative")
        self.utf8 = utf8
        self.login_delay = login_delay
        self.expire = expire
        self.extra = list(capabilities)
        self.extra_after_login = self.extra if capabilities_after_login is None else list(capabilities_after_login)
        if any("\r" in line or "\n" in line for line in self.extra + self.extra_after_login):
            raise ValueError("a capability line cannot contain CR or LF")
        self._last_login: dict[str, float] = {}
        self._salt = secrets.token_hex(8)
        self._lock = threading.Lock()

    def capa_lines(self, logged_in: bool = False) -> list[str]:
        """The CAPA lines these policies add (before or after login)."""
        lines = []
        if self.utf8:
            lines.append("UTF8")
        if self.login_delay:
            lines.append(f"LOGIN-DELAY {int(self.login_delay)}")
        if self.expire is not None:
            lines.append(f"EXPIRE {self.expire}")
        return lines + (self.extra_after_login if logged_in else self.extra)

    def login_refusal(self, user: str) -> str | None:
        """The ``-ERR`` text for a login too soon after the last one (None: allowed, and recorded)."""
        if not self.login_delay:
            return None
        now = time.monotonic()
        with self._lock:
            last = self._last_login.get(user)
            if last is not None and now - last < self.login_delay:
                return (f"[LOGIN-DELAY] Logins must be at least {int(self.login_delay)} seconds apart "
                        f"(wait {self.login_delay - (now - last):.0f}s)")
            self._last_login[user] = now
        return None

    @property
    def expunges_retrieved(self) -> bool:
        """``EXPIRE 0``: QUIT deletes what was retrieved too."""
        return self.expire is not None and self.expire.strip() == "0"

    def served(self, message: StoredMessage, session: int, utf8_on: bool) -> bytes:
        """The bytes RETR and TOP serve for ``message`` in this session."""
        if self.utf8 and not utf8_on and has_8bit_headers(message.wire):
            tag = hashlib.sha256(f"{self._salt}:{session}:{message.uidl}".encode()).hexdigest()[:16]
            return unicode_substitute(message.wire, tag)
        return message.wire
