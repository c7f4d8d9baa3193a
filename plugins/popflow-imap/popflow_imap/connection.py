"""An IMAP connection as far as popflow needs it before mail moves: connect, TLS, login, commands.

:class:`ImapConnection` opens the connection (implicit TLS or STARTTLS, with the STARTTLS
injection check of popflow's wire), logs in (:mod:`popflow_imap.auth`), runs one command at a
time with every untagged response bounded, SELECTs folders (their UIDVALIDITY and message count,
both checked against RFC 3501's ranges), and logs out. :class:`popflow_imap.session.ImapSession`
adds listing, fetching and what happens to a handled message; the IDLE watcher uses this part alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from popflow import (
    RuntimeContext,
    ServerMisbehaved,
    SessionInfo,
    SourceConnectionError,
    SourceFatalError,
    SourceSession,
)
from popflow.sources.keys import uidl_text
from popflow.sources.pop3_auth import AuthRequest
from popflow.sources.tls import make_ssl_context
from popflow_imap.auth import authenticate
from popflow_imap.wire import ImapWire, Reply, quote

if TYPE_CHECKING:
    from popflow_imap.config import ImapConfig

log = logging.getLogger("popflow_imap")

MAX_SIZE_VALUE = 2**63
MAX_UID = 2**32 - 1
"""UIDs and UIDVALIDITY are 32-bit non-zero numbers (RFC 3501 ``nz-number``)."""
MAX_FOLDER_MESSAGES = 1_000_000
"""A folder claiming more (``* N EXISTS``) is refused: its listing would be held in memory."""
UNTAGGED_SLACK = 10_000
"""Untagged responses beyond what a command can cause (EXISTS, FLAGS updates) before we give up."""

@dataclass(frozen=True)
class FolderState:
    """What ``SELECT`` told about one folder."""

    name: str
    uidvalidity: int
    exists: int


def message_key(folder: str, uidvalidity: int, uid: int) -> str:
    """The ledger key of a message: ``FOLDER;UIDVALIDITY=V;UID=U`` (the folder as exact printable text)."""
    return f"{uidl_text(folder.encode('utf-8'))};UIDVALIDITY={uidvalidity};UID={uid}"


def uid_set(uids: Iterable[int]) -> str:
    """``1:3,7,9:10`` for a set of UIDs."""
    ordered = sorted(set(uids))
    ranges: list[str] = []
    index = 0
    while index < len(ordered):
        end = index
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        ranges.append(str(ordered[index]) if end == index else f"{ordered[index]}:{ordered[end]}")
        index = end + 1
    return ",".join(ranges)


def parse_capabilities(words: Iterable[Any]) -> dict[str, list[str]]:
    """``IMAP4rev1 IDLE AUTH=PLAIN …`` → ``{"IMAP4REV1": [], "IDLE": [], "AUTH=PLAIN": [], …}``."""
    return {str(word).upper(): [] for word in words if isinstance(word, str) and word}


class ImapConnection(SourceSession):
    """A connected, authenticated IMAP session over one or more folders (no mail handling yet)."""

    def __init__(self, config: ImapConfig, context: RuntimeContext, name: str = "imap", *,
                 password: Callable[[], str] | None = None, token: Callable[[], str] | None = None) -> None:
        self.config = config
        self.context = context
        self.name = name
        self._info = SessionInfo()
        self.auth_method: str | None = None
        self.folders: dict[str, FolderState] = {}
        self._password = password
        self._token = token
        self._wire: ImapWire | None = None
        self._selected: str | None = None
        self._broken = False
        self._closed = False
        self._sized = False

    # -- connecting ----------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """``user@host:port`` for messages (no secrets)."""
        return f"{self.config.username}@{self.config.host}:{self.config.server_port}"

    @property
    def wire(self) -> ImapWire:
        """The open connection."""
        if self._wire is None or self._closed or self._broken:
            raise SourceConnectionError(f"{self.label}: the session is closed")
        return self._wire

    @property
    def info(self) -> SessionInfo:
        """What the login found (``popflow check --connect`` shows it): capabilities, per folder its
        message count and UIDVALIDITY, and the folders' total size where the server has STATUS=SIZE
        (RFC 8438; asked only here, so a poll never pays for it)."""
        if not self._sized and self._wire is not None and not self._closed and not self._broken:
            self._sized = True
            if self.has("STATUS=SIZE"):
                self._info.total_size = sum(self._status_size(folder) for folder in self.folders)
            else:
                self._info.notes.append("total size unknown (the server has no STATUS=SIZE)")
        return self._info

    @info.setter
    def info(self, value: SessionInfo) -> None:
        self._info = value

    def _status_size(self, folder: str) -> int:
        sizes: list[int] = []

        def seen(reply: Reply) -> None:
            values = reply.values
            if len(values) >= 3 and str(values[0]).upper() == "STATUS" and isinstance(values[-1], list):
                items = values[-1]
                for index in range(0, len(items) - 1, 2):
                    size = items[index + 1]
                    if str(items[index]).upper() == "SIZE" and isinstance(size, int) and 0 <= size < MAX_SIZE_VALUE:
                        sizes.append(size)

        self.run(b"STATUS " + self._folder_arg(folder) + b" (SIZE)", on_untagged=seen)
        return sizes[0] if sizes else 0

    @property
    def capabilities(self) -> dict[str, list[str]]:
        """The server's capabilities after login."""
        return self._info.capabilities

    @property
    def broken(self) -> bool:
        """True once the connection failed (or a reply was not read to its end)."""
        return self._broken

    def has(self, capability: str) -> bool:
        """True when the server announced ``capability``."""
        return capability.upper() in self._info.capabilities

    def open(self, *, select: bool = True) -> None:
        """Connect, TLS, login, and (``select``) SELECT every folder. On failure the socket is closed."""
        try:
            self._open()
            if select:
                for folder in self.config.folders:
                    self.select(folder)
        except BaseException:
            if self._wire is not None:
                self._wire.close()
            self._closed = True
            raise

    def _open(self) -> None:
        cfg = self.config
        context = None
        if cfg.tls != "none":
            if not cfg.tls_verify:
                log.warning("%s: tls_verify is false: the server's certificate is NOT checked", self.label)
            context = make_ssl_context(self.context.resolve(cfg.ca_file) if cfg.ca_file else None,
                                       verify=cfg.tls_verify)
        self._wire = wire = ImapWire.open(cfg.host, cfg.server_port, cfg.timeout)  # type: ignore[assignment]
        assert isinstance(wire, ImapWire)
        wire.stop = self.context.stop
        if cfg.tls == "implicit":
            assert context is not None
            wire.start_tls(context)
        greeting = wire.read_reply()
        if greeting.tag != "*" or greeting.status not in ("OK", "PREAUTH"):
            raise SourceConnectionError(f"{self.label}: the server refused the connection: {greeting.text[:200]}")
        self._info.capabilities = self._capability()
        if cfg.tls == "starttls":
            assert context is not None
            if not self.has("STARTTLS"):
                raise SourceFatalError(f"{self.label}: tls: starttls, but the server does not offer STARTTLS; "
                                       "refusing to continue unencrypted")
            reply = self.run("STARTTLS")
            if not reply.ok:
                raise SourceFatalError(f"{self.label}: STARTTLS refused: {reply.message}")
            wire.start_tls(context)
            self._info.capabilities = self._capability()  # RFC 3501: capabilities change after STARTTLS
        request = AuthRequest(username=cfg.username, host=cfg.host, capabilities={}, encrypted=wire.encrypted,
                              allow_insecure=cfg.allow_insecure, password=self._password, token=self._token)
        try:
            self.auth_method = authenticate(wire, request, cfg.auth, self._info.capabilities)
        except SourceConnectionError:
            raise
        self._info.capabilities = self._capability()  # may grow after login (MOVE, UIDPLUS on some servers)
        if not wire.encrypted:
            self._info.notes.append("connection is NOT encrypted")
        self._info.notes.append(f"auth {self.auth_method}")
        log.debug("%s: logged in (auth %s, %s)", self.label, self.auth_method, "TLS" if wire.encrypted else "plain")

    def _capability(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}

        def seen(reply: Reply) -> None:
            if reply.values and str(reply.values[0]).upper() == "CAPABILITY":
                found.update(parse_capabilities(reply.values[1:]))

        self.run("CAPABILITY", on_untagged=seen)
        return found

    # -- commands ------------------------------------------------------------------------------

    def run(self, command: str | bytes, on_untagged: Callable[[Reply], None] | None = None,
            on_literal: Any = None, limit: int = UNTAGGED_SLACK) -> Reply:
        """Send one command and read its responses up to its completion (returned).

        Untagged responses go to ``on_untagged``; more than ``limit`` of them, a ``BYE`` or a
        broken connection raise :class:`SourceConnectionError` (the session is then unusable).
        """
        try:
            tag = self.wire.command(command)
            for _ in range(limit + UNTAGGED_SLACK):
                reply = self.wire.read_reply(on_literal)
                if reply.tag == tag:
                    return reply
                if reply.tag == "*" and reply.status == "BYE":
                    raise SourceConnectionError(f"{self.label}: the server ended the session: {reply.message[:200]}")
                if reply.tag == "*" and on_untagged is not None:
                    on_untagged(reply)
            raise ServerMisbehaved(f"{self.label}: no end to the responses to one command; connection dropped")
        except (SourceConnectionError, ValueError) as exc:
            self._broken = True
            if self._wire is not None:
                self._wire.close()
            if isinstance(exc, SourceConnectionError):
                raise
            raise SourceConnectionError(f"{self.label}: unreadable response: {exc}") from None

    def select(self, folder: str) -> FolderState:
        """``SELECT`` a folder (read-write); remembers its UIDVALIDITY and message count."""
        values: dict[str, int] = {}

        def seen(reply: Reply) -> None:
            code, args = reply.code
            if code == "UIDVALIDITY" and args.strip().isdigit():
                values["uidvalidity"] = int(args.strip())
            elif len(reply.values) >= 2 and isinstance(reply.values[0], int) \
                    and str(reply.values[1]).upper() == "EXISTS":
                values["exists"] = reply.values[0]

        reply = self.run(b"SELECT " + self._folder_arg(folder), on_untagged=seen)
        if not reply.ok:
            raise SourceFatalError(f"{self.label}: cannot open folder {uidl_text(folder.encode())!r}: "
                                   f"{reply.message[:200]}")
        if not 1 <= values.get("uidvalidity", 0) <= MAX_UID:
            shown = values.get("uidvalidity", "none")
            raise SourceFatalError(f"{self.label}: folder {folder!r} has no valid UIDVALIDITY ({str(shown)[:30]}; "
                                   "RFC 3501: 1 to 4294967295); cannot identify messages")
        if values.get("exists", 0) > MAX_FOLDER_MESSAGES:
            raise SourceFatalError(f"{self.label}: folder {folder!r} claims {values['exists']} messages, more than "
                                   f"{MAX_FOLDER_MESSAGES} popflow lists at once; not polled")
        state = FolderState(folder, values["uidvalidity"], values.get("exists", 0))
        self.folders[folder] = state
        self._selected = folder
        self._info.message_count = sum(item.exists for item in self.folders.values())
        note = f"{folder}: {state.exists} message(s), UIDVALIDITY {state.uidvalidity}"
        self._info.notes = [n for n in self._info.notes if not n.startswith(f"{folder}: ")] + [note]
        return state

    def _folder_arg(self, folder: str) -> bytes:
        try:
            return quote(folder)
        except ValueError:
            raise SourceFatalError(f"{self.label}: folder name {folder!r} cannot be sent") from None

    def _ensure_selected(self, folder: str) -> None:
        if self._selected != folder:
            self.select(folder)
    def close(self, commit: bool = True) -> None:
        """``LOGOUT`` (expunges already ran by UID); without ``commit`` just drop the connection."""
        if self._closed or self._wire is None:
            self._closed = True
            return
        wire = self._wire
        self._closed = True
        if not commit or self._broken:
            wire.close()
            if commit:
                raise SourceConnectionError(f"{self.label}: the connection was lost")
            return
        try:
            wire.command("LOGOUT")
            for _ in range(16):
                reply = wire.read_reply()
                if reply.tag != "*":
                    break
        except SourceConnectionError as exc:
            log.debug("%s: LOGOUT: %s", self.label, exc)  # every change was already applied by UID
        finally:
            wire.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} {'closed' if self._closed else 'open'}>"
