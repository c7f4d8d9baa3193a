"""The POP3 line protocol over a socket: commands out, responses and dot-stuffed bodies in.

Written for throughput and exactness rather than on top of :mod:`poplib` (which refuses lines longer
than 2048 bytes and reads one line per call):

* reads are buffered (``recv`` of up to 256 KB into one ``bytearray``) and never limited per line;
* a multi-line body is cut into chunks at CRLF boundaries; each chunk is searched for the terminator
  ``CRLF . CRLF`` and unstuffed with one ``bytes.replace(b"\\r\\n..", b"\\r\\n.")``, so the per-line
  cost stays in C;
* bytes are passed on exactly as received (nothing decoded, line endings untouched).

The chunking keeps one invariant: a pending region either starts just after a line ending (the CRLF
that ended the previous line is kept in the buffer as the region's first two bytes, already
delivered) or in the middle of a line. A terminator or a stuffed dot always starts with a CRLF, so
searching the region finds every one of them, even across ``recv`` boundaries.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from popflow.errors import ServerMisbehaved, SourceConnectionError
from popflow.sources.tls import wrap_socket

RECV_SIZE = 256 * 1024
MAX_BODY = 64 * 1024 * 1024
"""Hard ceiling of a multi-line reply that is not a message (LIST and UIDL of a huge mailbox fit)."""
MAX_STATUS_LINE = 64 * 1024
"""A status line longer than this is not POP3: give up instead of buffering without end."""
LONG_LINE_FLUSH = 256 * 1024
"""Inside a very long body line, hand out what we have once the buffer holds this much."""
MIN_RATE = 64 * 1024
"""Bytes per second a body must at least arrive at: its deadline is ``timeout + size / MIN_RATE``."""
RECV_SLICE = 1.0
"""Longest single wait in ``recv``, so a stop request and the deadlines are noticed within a second."""
STOP_GRACE = 5.0
"""After a stop request, how long a read may still wait (a message arriving at normal speed finishes)."""

_CRLF = b"\r\n"
_TERMINATOR = b"\r\n.\r\n"
_STUFFED = b"\r\n.."
_UNSTUFFED = b"\r\n."


@dataclass(frozen=True)
class Response:
    """A single-line reply: ``+OK``/``-ERR``/``+`` (SASL continuation) and the text after it."""

    ok: bool
    text: str
    line: bytes
    continuation: bool = False

    @property
    def code(self) -> str | None:
        """The RFC 2449 response code, e.g. ``IN-USE`` or ``AUTH`` in ``-ERR [IN-USE] ...``."""
        if self.text.startswith("[") and "]" in self.text:
            return self.text[1:self.text.index("]")].upper()
        return None


class Pop3Wire:
    """A buffered POP3 connection (plain or TLS). Every failure raises SourceConnectionError."""

    def __init__(self, sock: socket.socket, host: str, port: int, timeout: float,
                 recv_size: int = RECV_SIZE) -> None:
        self.sock = sock
        self.host = host
        self.port = port
        self.timeout = timeout
        self.recv_size = recv_size
        self._buf = bytearray()
        self._pos = 0
        self.stop: threading.Event | None = None
        """Set by a stop request (SIGTERM): waits end within :data:`STOP_GRACE` seconds."""
        self._deadline: float | None = None
        self._deadline_text = ""
        self._stop_seen: float | None = None
        sock.settimeout(timeout)

    @classmethod
    def open(cls, host: str, port: int, timeout: float) -> Pop3Wire:
        """Connect over TCP (no TLS yet)."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise SourceConnectionError(f"cannot connect to {host}:{port}: timed out after {timeout:g}s") from None
        except OSError as exc:
            raise SourceConnectionError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, host, port, timeout)

    @property
    def encrypted(self) -> bool:
        """True once the connection runs over TLS."""
        return isinstance(self.sock, ssl.SSLSocket)

    @property
    def buffered(self) -> int:
        """Bytes received but not consumed yet."""
        return len(self._buf) - self._pos

    def start_tls(self, context: ssl.SSLContext) -> None:
        """Upgrade to TLS (implicit TLS, or after STLS). Refuses bytes the server sent too early."""
        if self.buffered:
            # Plaintext sent after the STLS reply would be read as if it came over TLS (a known
            # injection attack): refuse it.
            self.close()
            raise SourceConnectionError(f"{self.host}:{self.port}: the server sent data before the TLS handshake")
        self.sock.settimeout(self.timeout)
        self.sock = wrap_socket(self.sock, context, self.host, self.port)
        self.sock.settimeout(self.timeout)

    def close(self) -> None:
        """Close the socket (no QUIT)."""
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- sending -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send raw bytes (one or more complete command lines)."""
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise self._timeout_error("sending") from None
        except OSError as exc:
            raise SourceConnectionError(f"{self.host}:{self.port}: connection lost while sending: {exc}") from None

    def send_line(self, line: str | bytes) -> None:
        """Send one command line; CRLF is appended."""
        data = line.encode("utf-8") if isinstance(line, str) else line
        if b"\r" in data or b"\n" in data:
            raise ValueError("a POP3 command line cannot contain CR or LF")
        self.send(data + _CRLF)

    # -- receiving -----------------------------------------------------------------------------

    def _timeout_error(self, doing: str) -> SourceConnectionError:
        return SourceConnectionError(
            f"{self.host}:{self.port}: timed out after {self.timeout:g}s {doing}"
        )

    def set_deadline(self, seconds: float, what: str) -> None:
        """The current reply must be complete within ``seconds`` (a trickling server is cut off)."""
        self._deadline = time.monotonic() + seconds
        self._deadline_text = f"timed out after {seconds:g}s {what}"

    def _recv(self) -> bytes:
        """One ``recv`` bounded by the idle timeout, the reply's deadline and a stop request."""
        idle_until = time.monotonic() + self.timeout
        while True:
            now = time.monotonic()
            until, why = idle_until, None
            if self._deadline is not None and self._deadline < until:
                until, why = self._deadline, self._deadline_text
            if self.stop is not None and self.stop.is_set():
                if self._stop_seen is None:
                    self._stop_seen = now
                if self._stop_seen + STOP_GRACE < until:
                    until, why = self._stop_seen + STOP_GRACE, "stop requested"
            if now >= until:
                if why is None:
                    raise self._timeout_error("waiting for the server")
                self.close()  # the reply was not read to its end: this connection is done
                raise SourceConnectionError(f"{self.host}:{self.port}: {why}; connection dropped")
            self.sock.settimeout(min(until - now, RECV_SLICE))
            try:
                return self.sock.recv(self.recv_size)
            except TimeoutError:
                continue

    def _fill(self) -> None:
        """Receive more bytes into the buffer (compacting what was consumed)."""
        if self._pos:
            del self._buf[:self._pos]  # cheap: CPython trims a bytearray's front in place
            self._pos = 0
        try:
            data = self._recv()
        except OSError as exc:
            raise SourceConnectionError(f"{self.host}:{self.port}: connection lost: {exc}") from None
        if not data:
            raise SourceConnectionError(f"{self.host}:{self.port}: the server closed the connection")
        self._buf += data

    def read_line(self) -> bytes:
        """One line, without its CRLF (a bare LF also ends a status line)."""
        while True:
            end = self._buf.find(b"\n", self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos:end])
                self._pos = end + 1
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buf) - self._pos > MAX_STATUS_LINE:
                raise SourceConnectionError(f"{self.host}:{self.port}: reply line too long; not a POP3 server?")
            self._fill()

    def read_response(self) -> Response:
        """A single-line response; anything not ``+OK``/``-ERR``/``+`` is a protocol error."""
        self.set_deadline(self.timeout, "waiting for the server")
        line = self.read_line()
        text = line.decode("utf-8", "replace")
        if line.startswith(b"+OK"):
            return Response(True, text[3:].strip(), line)
        if line.startswith(b"-ERR"):
            return Response(False, text[4:].strip(), line)
        if line == b"+" or line.startswith(b"+ "):
            return Response(True, text[2:].strip(), line, continuation=True)
        raise SourceConnectionError(f"{self.host}:{self.port}: unexpected reply {text[:80]!r}")

    def _status_then_body_start(self) -> None:
        """Position the buffer so that the body region starts with the status line's CRLF."""
        # The status line was consumed by read_response; keep a virtual CRLF before the body by
        # stepping back over it when it is still in the buffer, else inserting one.
        if self._pos >= 2 and self._buf[self._pos - 2:self._pos] == _CRLF:
            self._pos -= 2
        else:
            self._buf[self._pos:self._pos] = _CRLF

    def iter_body(self, limit: int = MAX_BODY, *, what: str = "a reply", message_number: int | None = None,
                  expected: int | None = None) -> Iterator[bytes]:
        """The unstuffed body of a multi-line response, in chunks, up to its terminator.

        Call right after a ``+OK`` from :meth:`read_response`. The generator must be exhausted
        before the next response is read (use :meth:`skip_body` to discard one). A body longer than
        ``limit`` bytes, or slower than ``timeout + (expected or limit) / MIN_RATE`` seconds, raises
        :class:`~popflow.errors.ServerMisbehaved` (naming ``message_number``); the connection is
        then unusable.
        """
        seconds = self.timeout + (expected if expected is not None else limit) / MIN_RATE
        self.set_deadline(round(seconds, 1), f"receiving {what} (too slow: under {MIN_RATE // 1024} KB/s)")
        self._status_then_body_start()
        lead = 2  # the region starts with an already-consumed CRLF
        received = 0
        while True:
            buf = self._buf
            start = self._pos
            end_term = buf.find(_TERMINATOR, start)
            if end_term >= 0:
                if received + end_term - start - lead > limit:
                    raise self._too_long(what, limit, message_number)
                self._pos = end_term + 5
                if end_term + 2 - start > lead:
                    yield self._unstuff(buf, start, end_term + 2, lead)
                return
            if received + len(buf) - start - lead > limit:
                raise self._too_long(what, limit, message_number)
            cut = buf.rfind(_CRLF, start + lead)
            if cut >= 0:
                # Hand out complete lines; the CRLF at ``cut`` stays as the next region's lead.
                if cut + 2 - start > lead:
                    chunk = self._unstuff(buf, start, cut + 2, lead)
                    received += len(chunk)
                    yield chunk
                self._pos = cut
                lead = 2
            elif len(buf) - start > LONG_LINE_FLUSH:
                # Deep inside one long line: no CRLF after the lead, so only a stuffed dot right at
                # the lead can need unstuffing. Keep a trailing CR, it may begin a CRLF.
                stop = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
                chunk = self._unstuff(buf, start, stop, lead)
                received += len(chunk)
                yield chunk
                self._pos = stop
                lead = 0
            self._fill()

    def _too_long(self, what: str, limit: int, message_number: int | None) -> ServerMisbehaved:
        self.close()
        return ServerMisbehaved(f"{self.host}:{self.port}: {what} went on past {limit} bytes; connection dropped",
                                message_number=message_number)

    @staticmethod
    def _unstuff(buf: bytearray, start: int, stop: int, lead: int) -> bytes:
        # Through a memoryview: one copy instead of two (a bytearray slice, then bytes of it). The
        # view is a temporary, released before the buffer is resized again.
        if buf.find(_STUFFED, start, stop) < 0:
            return bytes(memoryview(buf)[start + lead:stop])
        return bytes(memoryview(buf)[start:stop]).replace(_STUFFED, _UNSTUFFED)[lead:]

    def read_body(self, limit: int = MAX_BODY, *, what: str = "a reply", message_number: int | None = None) -> bytes:
        """The whole unstuffed body of a multi-line response (for small replies: LIST, UIDL, CAPA)."""
        return b"".join(self.iter_body(limit, what=what, message_number=message_number))

    def skip_body(self, limit: int = MAX_BODY) -> None:
        """Read and discard a multi-line body."""
        for _ in self.iter_body(limit):
            pass
