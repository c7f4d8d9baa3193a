"""One POP3 session: connect, TLS, CAPA, login, STAT, LIST/UIDL, RETR, DELE, QUIT.

Commands are pipelined (RFC 2449 PIPELINING) when the server advertises it and the source allows
it: a sliding window of up to ``pipeline_window`` commands is in flight, refilled when half of it
has been answered, so neither side ever blocks on a full socket buffer. Otherwise every command
waits for its reply (lock-step). Both give the same bytes.

Retrieval runs ahead of the consumer, and DELEs queue behind it: :mod:`popflow.sources.pop3_stream`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import TYPE_CHECKING

from popflow.context import RuntimeContext
from popflow.errors import SourceConnectionError, SourceFatalError
from popflow.raw import RawMessage
from popflow.sources.base import Listing, SessionInfo, SourceSession
from popflow.sources.keys import header_digest, uidl_text
from popflow.sources.pop3_auth import AuthRequest, authenticate
from popflow.sources.pop3_caps import ServerPolicy, ServerPolicyHandling, parse_capabilities
from popflow.sources.pop3_listing import HEADER_KEY_PREFIX, listing_limit, make_listings, numbered_lines
from popflow.sources.pop3_stream import DRAIN_LIMIT, RetrievalStream
from popflow.sources.pop3_wire import Pop3Wire, Response
from popflow.sources.tls import make_ssl_context

if TYPE_CHECKING:
    from popflow.sources.pop3 import Pop3Config

log = logging.getLogger("popflow.sources.pop3")

_APOP_TIMESTAMP = re.compile(rb"<[^<>\s]+@[^<>\s]+>")


CAPA_LIMIT = 64 * 1024
"""Longest CAPA reply accepted."""
HEADER_LIMIT = 4 * 1024 * 1024
"""Longest ``TOP n 0`` reply (a header block) accepted."""


class Pop3Session(RetrievalStream, ServerPolicyHandling, SourceSession):
    """A connected, authenticated POP3 session (see :class:`~popflow.sources.base.SourceSession`)."""

    def __init__(self, config: Pop3Config, context: RuntimeContext, name: str = "pop3", *,
                 password: Callable[[], str] | None = None, token: Callable[[], str] | None = None) -> None:
        self.config = config
        self.context = context
        self.name = name
        self.info = SessionInfo()
        self.auth_method: str | None = None
        self.greeting = ""
        self._password = password
        self._token = token
        self._wire: Pop3Wire | None = None
        self._broken = False
        self._closed = False
        self._pipelining = False
        self.policy = ServerPolicy()
        """What the server's CAPA announced: LOGIN-DELAY, EXPIRE, UTF8 (:mod:`popflow.sources.pop3_caps`)."""
        self.utf8 = False
        """True once the server accepted RFC 6856 ``UTF8``: messages are served as stored, UTF-8 headers too."""
        self._retrieved: set[int] = set()
        self._deleted: set[int] = set()
        self._init_stream()

    # -- connecting ----------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """``user@host:port`` for messages (no secrets)."""
        return f"{self.config.username}@{self.config.host}:{self.config.server_port}"

    @property
    def wire(self) -> Pop3Wire:
        """The open connection."""
        if self._wire is None or self._closed:
            raise SourceConnectionError(f"{self.label}: the session is closed")
        return self._wire

    @property
    def capabilities(self) -> dict[str, list[str]]:
        """The server's CAPA answer (after STLS, the second one)."""
        return self.info.capabilities

    @property
    def pipelining(self) -> bool:
        """True when commands are pipelined in this session."""
        return self._pipelining

    def open(self) -> None:
        """Connect, TLS, CAPA, login, STAT. On failure the socket is closed and the error raised."""
        cfg = self.config
        try:
            self._open(cfg)
        except BaseException:
            if self._wire is not None:
                self._wire.close()
            self._closed = True
            raise

    def _open(self, cfg: Pop3Config) -> None:
        host, port = cfg.host, cfg.server_port
        context = None
        if cfg.tls != "none":
            if not cfg.tls_verify:
                log.warning("%s: tls_verify is false: the server's certificate is NOT checked", self.label)
            context = make_ssl_context(self.context.resolve(cfg.ca_file) if cfg.ca_file else None,
                                       verify=cfg.tls_verify)
        self._wire = wire = Pop3Wire.open(host, port, cfg.timeout)
        wire.stop = self.context.stop
        if cfg.tls == "implicit":
            assert context is not None
            wire.start_tls(context)
        greeting = wire.read_response()
        self.greeting = greeting.text
        if not greeting.ok:
            raise SourceConnectionError(f"{self.label}: the server refused the connection: {greeting.text}")
        found = _APOP_TIMESTAMP.findall(greeting.line)
        apop_timestamp = found[-1] if found else None
        connected_at = time.time()
        self.info.capabilities = self._capa()
        if cfg.tls == "starttls":
            assert context is not None
            if "STLS" not in self.info.capabilities:
                raise SourceFatalError(f"{self.label}: tls: starttls, but the server does not offer STLS; "
                                       "refusing to continue unencrypted")
            wire.send_line(b"STLS")
            reply = wire.read_response()
            if not reply.ok:
                raise SourceFatalError(f"{self.label}: STLS refused: {reply.text}")
            wire.start_tls(context)
            self.info.capabilities = self._capa()  # RFC 2595: capabilities may change after STLS
        self._note_policy(connected_at)  # before login: a refused login still teaches the delay
        request = AuthRequest(
            username=cfg.username, host=host, capabilities=self.info.capabilities,
            encrypted=wire.encrypted, allow_insecure=cfg.allow_insecure,
            password=self._password, token=self._token, apop_timestamp=apop_timestamp,
        )
        self.auth_method = authenticate(wire, request, cfg.auth)
        if self.policy.per_user:  # RFC 2449: "USER" before login; the user's own values come now
            self.info.capabilities = self._capa()
            self._note_policy(connected_at)
        if self.policy.utf8:
            self._enable_utf8()
        self._pipelining = cfg.pipelining and "PIPELINING" in self.info.capabilities
        if not wire.encrypted:
            self.info.notes.append("connection is NOT encrypted")
        self.info.notes.append(f"auth {self.auth_method}")
        self.info.notes.append("pipelining" if self._pipelining else "lock-step")
        self._check_policy()
        self.info.message_count, self.info.total_size = self.stat()
        log.debug("%s: logged in (auth %s, %s), %d messages", self.label, self.auth_method,
                  "TLS" if wire.encrypted else "plain", self.info.message_count)

    def _capa(self) -> dict[str, list[str]]:
        self.wire.send_line(b"CAPA")
        reply = self.wire.read_response()
        if not reply.ok:
            return {}
        return parse_capabilities(self._read_small_body(CAPA_LIMIT, "the CAPA reply"))

    # -- commands ------------------------------------------------------------------------------

    def _command(self, line: bytes) -> Response:
        """One single-line command in lock-step."""
        try:
            self.wire.send_line(line)
            self._park_retrievals()
            return self.wire.read_response()
        except SourceConnectionError:
            self._broken = True
            raise

    def _exchange(self, commands: Sequence[bytes], multiline: bool) -> Generator[tuple[int, Response], None, None]:
        """Send ``commands`` (windowed when pipelining) and yield ``(index, reply)`` in order.

        For ``multiline`` commands the caller reads (or skips) the body of every ``+OK`` reply
        before advancing. Closing the generator early drains the replies still in flight.
        """
        total = len(commands)
        window = self.config.pipeline_window if self._pipelining else 1
        sent = done = 0
        try:
            while done < total:
                if sent < total and sent - done <= window // 2:
                    upto = min(total, done + window)
                    self.wire.send(b"".join(commands[sent:upto]))
                    sent = upto
                    self._park_retrievals()  # RETR replies sent before these commands come first
                reply = self.wire.read_response()
                done += 1
                yield done - 1, reply
        except SourceConnectionError:
            self._broken = True
            raise
        finally:
            # Closed early: the replies still in flight must be read, or the next command would
            # read them as its own. (A body left half-read has already marked the session broken.)
            if done < sent and not self._broken:
                try:
                    for _ in range(sent - done):
                        if self.wire.read_response().ok and multiline:
                            self.wire.skip_body(DRAIN_LIMIT)
                except SourceConnectionError:
                    self._broken = True
                    raise

    def stat(self) -> tuple[int, int]:
        """``STAT``: (message count, total octets)."""
        reply = self._command(b"STAT")
        if not reply.ok:
            raise SourceFatalError(f"{self.label}: STAT failed: {reply.text}")
        try:
            count, size = reply.text.split()[:2]
            return int(count), int(size)
        except ValueError:
            raise SourceConnectionError(f"{self.label}: malformed STAT reply {reply.text[:80]!r}") from None

    def list_messages(self) -> list[Listing]:
        """Every message with its UIDL and size: one LIST and one UIDL (pipelined together if allowed).

        An entry the server lists unusably (an impossible size, no UIDL) comes back with its
        ``problem`` set; the poller skips that message and the others flow.
        """
        limit = listing_limit(self.info.message_count)
        sizes: dict[int, bytes] = {}
        uids: dict[int, str] | None = None
        for index, reply in self._exchange([b"LIST\r\n", b"UIDL\r\n"], multiline=True):
            if index == 0:
                if not reply.ok:
                    raise SourceFatalError(f"{self.label}: LIST failed: {reply.text}")
                sizes = numbered_lines(self._read_small_body(limit, "the LIST reply"), "LIST", self.label)
            elif reply.ok:
                uids = {number: uidl_text(value) for number, value in
                        numbered_lines(self._read_small_body(limit, "the UIDL reply"), "UIDL", self.label).items()}
        if uids is None:
            uids = self._header_keys(sorted(sizes))
        return make_listings(sizes, uids)

    def _read_small_body(self, limit: int, what: str, number: int | None = None) -> bytes:
        try:
            return self.wire.read_body(limit, what=what, message_number=number)
        except SourceConnectionError:
            self._broken = True
            raise

    def _header_keys(self, numbers: list[int]) -> dict[int, str]:
        """Fallback message keys for servers without UIDL: SHA-256 of each message's header block."""
        note = (f"the server does not support UIDL; messages are keyed by {HEADER_KEY_PREFIX}"
                "<sha256 of the header block> (TOP n 0); identical headers count as one message")
        log.warning("%s: %s", self.label, note)
        self.info.notes.append(note)
        keys: dict[int, str] = {}
        commands = [b"TOP %d 0\r\n" % n for n in numbers]
        for index, reply in self._exchange(commands, multiline=True):
            if not reply.ok:
                raise SourceFatalError(f"{self.label}: the server supports neither UIDL nor TOP "
                                       f"({reply.text}); cannot identify messages safely")
            digest = hashlib.sha256()
            try:
                for chunk in self.wire.iter_body(HEADER_LIMIT, what=f"TOP {numbers[index]} 0",
                                                 message_number=numbers[index]):
                    digest.update(chunk)
            except SourceConnectionError:
                self._broken = True
                raise
            keys[numbers[index]] = HEADER_KEY_PREFIX + digest.hexdigest()
        return keys

    # -- retrieving ----------------------------------------------------------------------------

    def retrieve(self, listing: Listing) -> RawMessage:
        """``RETR``: the message's bytes, dot-unstuffed, exactly as the server sends them."""
        reply = self._command(b"RETR %d" % listing.number)
        if not reply.ok:
            raise self._refused(listing, reply)
        self._retrieved.add(listing.number)
        return self._collect(listing)

    def header_digests(self, listings: Iterable[Listing]) -> dict[int, str]:
        """``TOP n 0`` of each listing (pipelined) → its header digest; a refused TOP leaves it out."""
        wanted = list(listings)
        digests: dict[int, str] = {}
        for index, reply in self._exchange([b"TOP %d 0\r\n" % item.number for item in wanted], multiline=True):
            if reply.ok:
                number = wanted[index].number
                digests[number] = header_digest(self._read_small_body(HEADER_LIMIT, f"TOP {number} 0", number))
        return digests

    def delete(self, listings: Iterable[Listing]) -> list[Listing]:
        """Mark messages deleted (applied at QUIT); returns the listings whose DELE was refused.

        While retrievals run ahead, the DELEs are queued behind them instead of waiting a round
        trip for their replies: they are settled as the stream reads past them, and any refusal is
        reported by :meth:`refused_deletions` (at the latest after :meth:`close`).
        """
        wanted = list(listings)
        if self._queue_deletions(wanted):
            return []
        failed = []
        for index, reply in self._exchange([b"DELE %d\r\n" % item.number for item in wanted], multiline=False):
            if not self._settle_dele(wanted[index], reply):
                failed.append(wanted[index])
        return failed

    def close(self, commit: bool = True) -> None:
        """``commit``: QUIT and check its reply (deletions apply); else drop the connection."""
        if self._closed or self._wire is None:
            self._closed = True
            return
        wire = self._wire
        self._closed = True
        if not commit:
            wire.close()
            return
        if not self._broken:
            with contextlib.suppress(SourceConnectionError):  # it marks the session broken
                self._abandon_retrievals()  # replies still in flight come before QUIT's
        if self._broken:
            wire.close()
            raise SourceConnectionError(f"{self.label}: the connection was lost; deletions were not applied")
        if self._quit_would_expunge(self._retrieved - self._deleted, len(self._deleted)):
            wire.close()
            return
        try:
            wire.send_line(b"QUIT")
            reply = wire.read_response()
        except SourceConnectionError as exc:
            raise SourceConnectionError(f"{exc}; deletions may not have been applied") from None
        finally:
            wire.close()
        if not reply.ok:
            raise SourceConnectionError(f"{self.label}: QUIT failed ({reply.text}); "
                                        "deletions may not have been applied")

    def __enter__(self) -> Pop3Session:
        return self

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Pop3Session {self.label} {state}>"
