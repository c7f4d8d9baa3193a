"""One IMAP session as a popflow :class:`~popflow.sources.base.SourceSession`.

Per folder: ``SELECT`` (UIDVALIDITY, EXISTS), ``UID FETCH 1:* (UID RFC822.SIZE FLAGS)`` to list,
``UID FETCH <set> (UID BODY.PEEK[])`` in batches to retrieve (no ``\\Seen`` side effect), and,
only for messages the poller reports handled:

* ``after: delete`` — ``UID STORE +FLAGS.SILENT (\\Deleted)`` then ``UID EXPUNGE`` of exactly those
  UIDs (UIDPLUS). Never a bare ``EXPUNGE``: it would also remove what other clients flagged. A server
  without UIDPLUS keeps them flagged ``\\Deleted`` (they are no longer listed by popflow);
* ``after: move:FOLDER`` — ``UID MOVE`` (RFC 6851), else ``UID COPY`` + the delete above;
* ``after: seen`` — ``UID STORE +FLAGS.SILENT (\\Seen)`` (:meth:`keep`).

Each message's key is ``FOLDER;UIDVALIDITY=V;UID=U`` (RFC 5092's words): unique for as long as the
server keeps its promise, and a new UIDVALIDITY gives every message of the folder a new key (see
the README on how popflow then tells old mail from new).

Retrieving (``UID FETCH`` of bodies and headers) is in :mod:`popflow_imap.fetch`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from popflow import (
    Listing,
    RuntimeContext,
    ServerMisbehaved,
    SessionInfo,
    SourceConnectionError,
    SourceFatalError,
    SourceSession,
)
from popflow.sources.keys import uidl_text
from popflow.sources.pop3_auth import AuthRequest
from popflow.sources.pop3_listing import MAX_SIZE_VALUE
from popflow.sources.tls import make_ssl_context
from popflow_imap.auth import authenticate
from popflow_imap.fetch import FetchCommands
from popflow_imap.parse import fetch_items
from popflow_imap.wire import ImapWire, Reply, quote, uid_set

if TYPE_CHECKING:
    from popflow_imap.config import ImapConfig

log = logging.getLogger("popflow_imap")

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


def parse_capabilities(words: Iterable[Any]) -> dict[str, list[str]]:
    """``IMAP4rev1 IDLE AUTH=PLAIN …`` → ``{"IMAP4REV1": [], "IDLE": [], "AUTH=PLAIN": [], …}``."""
    return {str(word).upper(): [] for word in words if isinstance(word, str) and word}


class ImapSession(FetchCommands, SourceSession):
    """A connected, authenticated IMAP session over one or more folders."""

    def __init__(self, config: ImapConfig, context: RuntimeContext, name: str = "imap", *,
                 password: Callable[[], str] | None = None, token: Callable[[], str] | None = None) -> None:
        self.config = config
        self.context = context
        self.name = name
        self.info = SessionInfo()
        self.auth_method: str | None = None
        self.folders: dict[str, FolderState] = {}
        self._password = password
        self._token = token
        self._wire: ImapWire | None = None
        self._selected: str | None = None
        self._where: dict[int, tuple[str, int]] = {}
        """Listing number → (folder, UID)."""
        self._broken = False
        self._closed = False

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
    def capabilities(self) -> dict[str, list[str]]:
        """The server's capabilities after login."""
        return self.info.capabilities

    @property
    def broken(self) -> bool:
        """True once the connection failed (or a reply was not read to its end)."""
        return self._broken

    def has(self, capability: str) -> bool:
        """True when the server announced ``capability``."""
        return capability.upper() in self.info.capabilities

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
        self.info.capabilities = self._capability()
        if cfg.tls == "starttls":
            assert context is not None
            if not self.has("STARTTLS"):
                raise SourceFatalError(f"{self.label}: tls: starttls, but the server does not offer STARTTLS; "
                                       "refusing to continue unencrypted")
            reply = self.run("STARTTLS")
            if not reply.ok:
                raise SourceFatalError(f"{self.label}: STARTTLS refused: {reply.message}")
            wire.start_tls(context)
            self.info.capabilities = self._capability()  # RFC 3501: capabilities change after STARTTLS
        request = AuthRequest(username=cfg.username, host=cfg.host, capabilities={}, encrypted=wire.encrypted,
                              allow_insecure=cfg.allow_insecure, password=self._password, token=self._token)
        try:
            self.auth_method = authenticate(wire, request, cfg.auth, self.info.capabilities)
        except SourceConnectionError:
            raise
        self.info.capabilities = self._capability()  # may grow after login (MOVE, UIDPLUS on some servers)
        if not wire.encrypted:
            self.info.notes.append("connection is NOT encrypted")
        self.info.notes.append(f"auth {self.auth_method}")
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
        if "uidvalidity" not in values:
            raise SourceFatalError(f"{self.label}: folder {folder!r} has no UIDVALIDITY; cannot identify messages")
        state = FolderState(folder, values["uidvalidity"], values.get("exists", 0))
        self.folders[folder] = state
        self._selected = folder
        self.info.message_count = sum(item.exists for item in self.folders.values())
        note = f"{folder}: {state.exists} message(s), UIDVALIDITY {state.uidvalidity}"
        self.info.notes = [n for n in self.info.notes if not n.startswith(f"{folder}: ")] + [note]
        return state

    def _folder_arg(self, folder: str) -> bytes:
        try:
            return quote(folder)
        except ValueError:
            raise SourceFatalError(f"{self.label}: folder name {folder!r} cannot be sent") from None

    def _ensure_selected(self, folder: str) -> None:
        if self._selected != folder:
            self.select(folder)

    # -- listing -------------------------------------------------------------------------------

    def list_messages(self) -> list[Listing]:
        """Every message of every folder (UID order within a folder, folders in config order).

        Messages flagged ``\\Deleted`` are on their way out (by popflow on a server without UIDPLUS,
        or by another client) and are not listed.
        """
        listings: list[Listing] = []
        for folder in self.config.folders:
            state = self.select(folder)
            if state.exists == 0:
                continue
            found: dict[int, tuple[int, bool]] = {}

            def seen(reply: Reply, found: dict[int, tuple[int, bool]] = found) -> None:
                parsed = fetch_items(reply.values)
                if parsed is None:
                    return
                items = parsed[1]
                uid, size = items.get("UID"), items.get("RFC822.SIZE")
                flags = items.get("FLAGS") or []
                if not isinstance(uid, int) or uid < 1:
                    return
                deleted = isinstance(flags, list) and any(str(f).upper() == "\\DELETED" for f in flags)
                found[uid] = (size if isinstance(size, int) and 0 <= size < MAX_SIZE_VALUE else -1, deleted)

            reply = self.run("UID FETCH 1:* (UID RFC822.SIZE FLAGS)", on_untagged=seen, limit=state.exists)
            if not reply.ok:
                raise SourceFatalError(f"{self.label}: listing {folder!r} failed: {reply.message[:200]}")
            for uid in sorted(found):
                size, deleted = found[uid]
                if deleted:
                    continue
                number = len(self._where) + 1
                self._where[number] = (folder, uid)
                problem = None if size >= 0 else "the server announced no usable RFC822.SIZE"
                listings.append(Listing(number=number, uidl=message_key(folder, state.uidvalidity, uid),
                                        size=max(size, 0), problem=problem))
        return listings

    # -- after a message is handled --------------------------------------------------------------

    def delete(self, listings: Iterable[Listing]) -> list[Listing]:
        """``after: delete`` or ``move:FOLDER`` for handled messages; returns the ones the server refused."""
        failed: list[Listing] = []
        target = self.config.move_to
        for folder, group in self._by_folder(list(listings)):
            self._ensure_selected(folder)
            uids = uid_set(self._where[item.number][1] for item in group)
            ok = self._move(uids, target) if target is not None else self._expunge(uids)
            if not ok:
                failed += group
        return failed

    def _store(self, uids: str, flag: str) -> bool:
        reply = self.run(f"UID STORE {uids} +FLAGS.SILENT ({flag})")
        if not reply.ok:
            log.warning("%s: setting %s on UIDs %s refused: %s", self.label, flag, uids, reply.message[:200])
        return reply.ok

    def _expunge(self, uids: str) -> bool:
        if not self._store(uids, "\\Deleted"):
            return False
        if not self.has("UIDPLUS"):
            return True  # flagged; expunging here could also remove other clients' flagged mail
        reply = self.run(f"UID EXPUNGE {uids}")
        if not reply.ok:
            log.warning("%s: UID EXPUNGE %s refused: %s", self.label, uids, reply.message[:200])
        return reply.ok

    def _move(self, uids: str, target: str) -> bool:
        verb = "MOVE" if self.has("MOVE") else "COPY"
        command = f"UID {verb} {uids} ".encode() + self._folder_arg(target)
        reply = self.run(command)
        if not reply.ok and reply.code[0] == "TRYCREATE":
            created = self.run(b"CREATE " + self._folder_arg(target))
            log.info("%s: created folder %r for after: move (%s)", self.label, target,
                     "ok" if created.ok else created.message[:200])
            reply = self.run(command)
        if not reply.ok:
            log.warning("%s: %s of UIDs %s to %r refused: %s", self.label, verb, uids, target, reply.message[:200])
            return False
        return verb == "MOVE" or self._expunge(uids)

    def keep(self, listings: Iterable[Listing]) -> None:
        """``after: seen``: flag the handled messages ``\\Seen`` (the ledger already keeps them as handled)."""
        for folder, group in self._by_folder(list(listings)):
            self._ensure_selected(folder)
            self._store(uid_set(self._where[item.number][1] for item in group), "\\Seen")

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

    def __enter__(self) -> ImapSession:
        return self

    def __repr__(self) -> str:
        return f"<ImapSession {self.label} {'closed' if self._closed else 'open'}>"
