"""A small clamd client: ``INSTREAM``, ``PING`` and ``VERSION`` over TCP or a unix socket.

Why not the PyPI clients (``clamd``, ``pyclamd``): they are unmaintained and report clamd's
``INSTREAM size limit exceeded. ERROR`` as if the stream were clean. Here every reply that is not
exactly ``stream: OK`` or ``stream: <name> FOUND`` is an error, never clean.

The protocol (``man clamd``): commands are prefixed with ``z`` and end with a NUL byte, and so does
each reply. ``INSTREAM`` is followed by chunks, each a 4-byte big-endian length and the bytes, and a
zero-length chunk that ends the stream. clamd closes the connection early when the stream passes
its ``StreamMaxLength``.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

DEFAULT_ADDRESS = "127.0.0.1:3310"
CHUNK_SIZE = 64 * 1024
_MAX_REPLY = 64 * 1024


class ClamdError(Exception):
    """clamd could not be reached, timed out, or broke the protocol."""


@dataclass(frozen=True)
class ScanResult:
    """What clamd said about one stream."""

    status: Literal["clean", "infected", "error"]
    signature: str | None = None
    reason: str | None = None
    reply: str = ""


def parse_reply(reply: str) -> ScanResult:
    """Classify an INSTREAM reply; anything unexpected is an error, never clean."""
    text = reply.rstrip("\0").strip()
    if text.startswith("stream:"):
        body = text[len("stream:"):].strip()
        if body == "OK":
            return ScanResult("clean", reply=text)
        if body.endswith(" FOUND") and body[: -len(" FOUND")].strip():
            return ScanResult("infected", signature=body[: -len(" FOUND")].strip(), reply=text)
    if text.endswith("ERROR"):
        return ScanResult("error", reason=f"clamd: {text}", reply=text)
    return ScanResult("error", reason=f"unexpected clamd reply: {text!r}" if text else "empty clamd reply",
                      reply=text)


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as a (host, port) pair."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} out of range")
    return host, number


class ClamdClient:
    """One clamd endpoint. Every call opens its own connection, so the client is thread-safe."""

    def __init__(self, address: str | None = None, *, socket_path: str | None = None,
                 timeout: float = 30.0, chunk_size: int = CHUNK_SIZE) -> None:
        if address is not None and socket_path is not None:
            raise ValueError("give either a TCP address or a unix socket path, not both")
        self.socket_path = socket_path
        self.address = None if socket_path is not None else parse_address(address or DEFAULT_ADDRESS)
        self.timeout = timeout
        self.chunk_size = chunk_size

    @property
    def endpoint(self) -> str:
        """Where clamd is expected, for messages: ``host:port`` or ``unix:/path``."""
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        assert self.address is not None
        return f"{self.address[0]}:{self.address[1]}"

    # -- commands -----------------------------------------------------------------------------
    def ping(self) -> bool:
        """True when clamd answers PONG; raises :class:`ClamdError` when it cannot be reached."""
        return self._command(b"PING") == "PONG"

    def version(self) -> str:
        """clamd's version string, e.g. ``ClamAV 1.4.6/27000/...``."""
        return self._command(b"VERSION")

    def instream(self, chunks: Iterable[bytes]) -> ScanResult:
        """Stream ``chunks`` to clamd and classify its reply.

        Raises :class:`ClamdError` when clamd cannot be reached or does not answer in time; a reply
        of ``... ERROR`` (the size limit, a broken database) comes back as an ``error`` result.
        """
        with self._connect() as sock:
            try:
                sock.sendall(b"zINSTREAM\0")
                for chunk in chunks:
                    for start in range(0, len(chunk), self.chunk_size):
                        if _readable(sock):
                            # clamd answered before the end: it gave up (size limit); stop sending.
                            return parse_reply(self._read_reply(sock))
                        piece = chunk[start:start + self.chunk_size]
                        sock.sendall(struct.pack(">I", len(piece)) + piece)
                sock.sendall(struct.pack(">I", 0))
            except (BrokenPipeError, ConnectionResetError) as exc:
                # clamd closes on the size limit; its reply may still be readable.
                return self._reply_after_reset(sock, exc)
            except OSError as exc:
                raise ClamdError(f"clamd at {self.endpoint}: sending failed: {exc}") from exc
            return parse_reply(self._read_reply(sock))

    # -- plumbing -----------------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        try:
            if self.socket_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect(self.socket_path)
                except OSError:
                    sock.close()
                    raise
                return sock
            assert self.address is not None
            return socket.create_connection(self.address, timeout=self.timeout)
        except OSError as exc:
            raise ClamdError(f"cannot connect to clamd at {self.endpoint}: {exc}") from exc

    def _command(self, name: bytes) -> str:
        with self._connect() as sock:
            try:
                sock.sendall(b"z" + name + b"\0")
            except OSError as exc:
                raise ClamdError(f"clamd at {self.endpoint}: sending {name.decode()} failed: {exc}") from exc
            return self._read_reply(sock).rstrip("\0").strip()

    def _read_reply(self, sock: socket.socket) -> str:
        data = bytearray()
        try:
            while b"\0" not in data and len(data) < _MAX_REPLY:
                piece = sock.recv(4096)
                if not piece:
                    break
                data += piece
        except TimeoutError as exc:
            raise ClamdError(f"clamd at {self.endpoint} did not answer within {self.timeout:g}s") from exc
        except OSError as exc:
            if not data:
                raise ClamdError(f"clamd at {self.endpoint}: reading the reply failed: {exc}") from exc
        if not data:
            raise ClamdError(f"clamd at {self.endpoint} closed the connection without a reply")
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _reply_after_reset(self, sock: socket.socket, exc: OSError) -> ScanResult:
        try:
            return parse_reply(self._read_reply(sock))
        except ClamdError:
            return ScanResult("error", reason=f"clamd at {self.endpoint} dropped the stream: {exc}")


def _readable(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)
