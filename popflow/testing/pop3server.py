"""popflow's own POP3 server, in-process and threaded, for the demo, fault-injection tests and plugin authors.

::

    from popflow.testing import POP3TestServer

    with POP3TestServer([b"Subject: hello\\r\\n\\r\\nHi!\\r\\n"]) as server:
        ...  # connect to server.host:server.port as user "user", password "pass"
        assert server.messages() == []  # after a client RETR + DELE + QUIT

It serves one maildrop (:class:`~popflow.testing.mailbox.Mailbox`) with real POP3 semantics: one
session at a time holds the lock, DELE only marks, and deletions apply only at QUIT. Faults are
scripted with :class:`~popflow.testing.faults.FaultScript`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from popflow.testing.faults import FaultScript
from popflow.testing.mailbox import Mailbox, load_folder
from popflow.testing.pop3_server_session import ServerSession
from popflow.testing.pop3policy import ServerPolicies

log = logging.getLogger("popflow.testing")

OAUTH_SCOPES = {"gmail": "https://mail.google.com/", "microsoft": "https://outlook.office.com/POP.AccessAsUser.All",
                "dovecot": "mail"}
"""The ``scope`` each server style puts in its XOAUTH2 error challenge."""

TokenCheck = Callable[[str, str], bool]


@dataclass
class ServerStats:
    """Counters of what clients did; ``retrieved`` counts RETRs per UIDL (spot double fetches)."""

    connections: int = 0
    logins: int = 0
    failed_logins: int = 0
    delayed_logins: int = 0
    """Logins refused with ``[LOGIN-DELAY]`` (too soon after the previous one)."""
    retr: int = 0
    top: int = 0
    dele: int = 0
    expunged: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    retrieved: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def bump(self, name: str, key: str | None = None, count: int = 1) -> None:
        """Add ``count`` to a counter; ``commands`` and ``retr`` also count per ``key``."""
        with self._lock:
            if name == "commands":
                self.commands[key or ""] += count
                return
            setattr(self, name, getattr(self, name) + count)
            if name == "retr" and key is not None:
                self.retrieved[key] += count


class POP3TestServer:
    """A POP3 server on a loopback port, run by threads of this process.

    ``messages`` is an iterable of raw messages, or a :class:`~pathlib.Path` to a folder (every
    file, sorted by name), a Maildir (``new/`` and ``cur/``) or a single file. The folder is read
    once; deletions change only the in-memory maildrop.

    ``tls`` is a server-side :class:`ssl.SSLContext`: with ``implicit_tls`` every connection starts
    with a TLS handshake (like port 995), otherwise STLS is offered (``starttls``).
    ``xoauth2_tokens`` is a set of accepted bearer tokens for ``username`` or a callable
    ``(user, token) -> bool``; when ``None`` the password is accepted as the token.
    ``style`` mimics a provider's XOAUTH2 quirks: ``"microsoft"`` refuses the one-step form.
    ``auth_failure_delay`` (seconds) delays every failed login, as Dovecot does.
    ``greeting`` replaces the greeting's text (the APOP timestamp is still appended); one starting
    with ``-ERR`` is sent as it is and the connection closed, as a server refusing service does.
    ``maildrop_lock=False`` lets several sessions open the maildrop at once (no ``[IN-USE]``), as
    some real servers do; each session still sees the messages present at its login.
    ``utf8``, ``login_delay``, ``expire`` and ``capabilities`` script the policies of Courier (RFC 6856
    UTF8 and its substitutes for 8-bit headers), Cyrus (LOGIN-DELAY) and others: see
    :mod:`popflow.testing.pop3policy`.
    """

    def __init__(self, messages: Iterable[bytes] | Path | str | None = None, *, username: str = "user",
                 password: str = "pass", host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None, implicit_tls: bool = False, starttls: bool | None = None,
                 uidl: bool = True, pipelining: bool = True, apop: bool = True,
                 sasl: Iterable[str] = ("PLAIN", "XOAUTH2"),
                 xoauth2_tokens: set[str] | TokenCheck | None = None, faults: FaultScript | None = None,
                 style: Literal["gmail", "microsoft", "dovecot"] = "gmail",
                 auth_failure_delay: float = 0.0, greeting: str | None = None,
                 maildrop_lock: bool = True, utf8: bool = False, login_delay: float = 0.0,
                 expire: str | None = None, capabilities: Iterable[str] = (),
                 capabilities_after_login: Iterable[str] | None = None) -> None:
        if isinstance(messages, (str, Path)):
            messages = load_folder(Path(messages))
        if implicit_tls and tls is None:
            raise ValueError("implicit_tls needs a tls context")
        if style not in OAUTH_SCOPES:
            raise ValueError(f"unknown style {style!r}; known: {', '.join(OAUTH_SCOPES)}")
        self.mailbox = Mailbox(messages or (), locking=maildrop_lock)
        self.username, self.password = username, password
        self.host, self.port = host, port
        self.tls, self.implicit_tls = tls, implicit_tls
        self.starttls = (tls is not None and not implicit_tls) if starttls is None else starttls
        if self.starttls and tls is None:
            raise ValueError("starttls needs a tls context")
        self.uidl, self.pipelining, self.apop = uidl, pipelining, apop
        self.sasl = tuple(m.upper() for m in sasl)
        unknown = set(self.sasl) - {"PLAIN", "XOAUTH2"}
        if unknown:
            raise ValueError(f"unsupported SASL mechanisms: {sorted(unknown)}")
        self.xoauth2_tokens = xoauth2_tokens
        self.faults = faults
        self.style = style
        self.auth_failure_delay = auth_failure_delay
        self.greeting = greeting
        self.policies = ServerPolicies(utf8=utf8, login_delay=login_delay, expire=expire, capabilities=capabilities,
                                       capabilities_after_login=capabilities_after_login)
        self.stats = ServerStats()
        self.stopping = threading.Event()
        """Set by :meth:`stop`; stalled sessions wake up on it."""
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._sessions: dict[ServerSession, threading.Thread] = {}
        self._sessions_changed = threading.Condition()
        self._connections = 0

    # -- lifecycle -------------------------------------------------------

    def start(self) -> POP3TestServer:
        """Bind and start accepting; ``port=0`` picks a free port (read it from :attr:`port`).

        After :meth:`stop`, ``start()`` listens again on the same port with the same mailbox,
        which is how a test simulates a server restart.
        """
        if self._listener is not None:
            raise RuntimeError("server already started")
        self.stopping.clear()
        self._listener = socket.create_server((self.host, self.port), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._listener.settimeout(0.5)  # a fallback: stop() also shuts the socket down to wake accept()
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"pop3-accept-{self.port}",
                                               daemon=True)
        self._accept_thread.start()
        log.debug("POP3 test server listening on %s:%d", self.host, self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every client connection and wait for the threads to end."""
        if self._listener is None:
            return
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        self._listener.close()
        self._listener = None
        with self._sessions_changed:
            sessions = list(self._sessions.items())
        for session, _ in sessions:
            session.abort()
        for _, thread in sessions:
            if thread is not threading.current_thread():  # stop() may be called from a fault callback
                thread.join(timeout)

    def drop_all(self) -> int:
        """Cut every open client connection (as a server crash would) but keep listening; returns how many."""
        with self._sessions_changed:
            sessions = list(self._sessions)
        for session in sessions:
            session.abort()
        return len(sessions)

    def __enter__(self) -> POP3TestServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        return self.host, self.port

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self.stopping.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            if self.stopping.is_set():
                sock.close()
                break
            sock.settimeout(None)
            self._connections += 1
            self.stats.bump("connections")
            session = ServerSession(self, sock, self._connections)
            thread = threading.Thread(target=self._serve, args=(session,), daemon=True,
                                      name=f"pop3-session-{self.port}-{self._connections}")
            with self._sessions_changed:
                self._sessions[session] = thread
            thread.start()

    def _serve(self, session: ServerSession) -> None:
        try:
            session.run()
        finally:
            with self._sessions_changed:
                self._sessions.pop(session, None)
                self._sessions_changed.notify_all()

    # -- the mailbox -----------------------------------------------------

    def add(self, raw: bytes, uidl: str | None = None) -> str:
        """Add a message (also while running; sessions see it from their next login). Returns its UIDL."""
        return self.mailbox.add(raw, uidl)

    def messages(self) -> list[bytes]:
        """The raw bytes of every message still in the maildrop, as stored."""
        return self.mailbox.messages()

    def uidls(self) -> list[str]:
        """The UIDLs of every message still in the maildrop."""
        return self.mailbox.uidls()

    @property
    def active_sessions(self) -> int:
        """How many client connections are open."""
        with self._sessions_changed:
            return len(self._sessions)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every client connection has ended (e.g. after a client dropped); False on timeout."""
        with self._sessions_changed:
            return self._sessions_changed.wait_for(lambda: not self._sessions, timeout)

    # -- credentials -----------------------------------------------------

    def check_password(self, user: str, password: str) -> bool:
        """USER/PASS and SASL PLAIN credentials."""
        return user == self.username and hmac.compare_digest(password.encode(), self.password.encode())

    def check_token(self, user: str, token: str) -> bool:
        """An XOAUTH2 bearer token for ``user``."""
        tokens = self.xoauth2_tokens
        if callable(tokens):
            return bool(tokens(user, token))
        if user != self.username:
            return False
        if tokens is None:
            return hmac.compare_digest(token.encode(), self.password.encode())
        return token in tokens

    @property
    def oauth_scope(self) -> str:
        """The scope named in the XOAUTH2 error challenge of this server's style."""
        return OAUTH_SCOPES[self.style]

    def __repr__(self) -> str:
        state = "running" if self._listener is not None else "stopped"
        return f"<POP3TestServer {self.host}:{self.port} {state}, {len(self.mailbox)} messages>"
