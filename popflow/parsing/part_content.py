"""An attachment's bytes, decoded from the raw message in bounded pieces, when and as often as asked.

The body parser records where each leaf lies (a byte range of the raw message, or of its bare-CR
converted form) and computes its size and SHA-256 here by streaming through it once. A part of a message held in
memory keeps its decoded bytes; a part of a spooled (large) message is streamed again whenever a
sink asks (:meth:`popflow.message.Attachment.chunks`). No copy of a whole attachment of a spooled
message, encoded or decoded, is made, except for the encodings that cannot be streamed (broken
base64, uuencode), which are decoded whole as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from popflow.parsing.mapped import release
from popflow.parsing.transfer import CHUNK, NotStreamable, is_streamable, iter_transfer_decoded, transfer_decode
from popflow.raw import RawMessage


def cr_to_lf(data: bytes) -> bytes:
    """``data`` with every CRLF and every bare CR made a LF: one line-end convention to split by."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


@dataclass(frozen=True)
class PartRange:
    """Where one part's encoded bytes lie, and how they are encoded."""

    raw: RawMessage
    start: int
    end: int
    encoding: str
    where: str
    converted: bool = False
    """The offsets are in the message with its bare CRs made line breaks (see ``cr_to_lf``)."""

    def encoded_pieces(self) -> Iterator[bytes]:
        """The encoded bytes, :data:`CHUNK` at a time, read from memory or the spool file."""
        if self.converted:
            data = cr_to_lf(self.raw.read())
            yield from slices(data, self.start, self.end)
        elif self.raw.spooled:
            with self.raw.open() as handle:
                handle.seek(self.start)
                left = self.end - self.start
                while left > 0:
                    piece = handle.read(min(CHUNK, left))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece
        else:
            yield from slices(self.raw.read(), self.start, self.end)

    def decoded_whole(self, defects: list[str]) -> bytes:
        """The decoded bytes in one piece (the encodings that cannot be streamed)."""
        return transfer_decode(b"".join(self.encoded_pieces()), self.encoding, self.where, defects)


def slices(data: bytes, start: int, end: int) -> Iterator[bytes]:
    """``data[start:end]`` (bytes or an mmap) as :data:`CHUNK`-sized copies.

    An mmap's pages are released behind each copy (:func:`popflow.parsing.mapped.release`).
    """
    view = memoryview(data)
    for offset in range(start, end, CHUNK):
        stop = min(offset + CHUNK, end)
        piece = bytes(view[offset:stop])
        release(data, offset, stop)
        yield piece


@dataclass(frozen=True)
class Measured:
    """What the parser learns of a part by decoding it once."""

    size: int
    sha256: str
    streamable: bool
    kept: bytes | None = None
    """The decoded bytes, kept when the message itself is held in memory (see :func:`measure`)."""


def measure(part: PartRange, pieces: Iterator[bytes], defects: list[str]) -> Measured:
    """Size and SHA-256 of the decoded part, streaming through ``pieces`` once.

    ``pieces`` are the part's encoded bytes (the parser passes slices of its buffer, so a spooled
    message is not read twice). When the part cannot be streamed it is decoded whole, which also
    records its defects (broken base64...), and ``streamable`` is False.

    For a message held in memory (at most :data:`popflow.raw.SPOOL_THRESHOLD`) the decoded bytes
    are kept: a database sink storing attachments would otherwise decode every one a second time,
    and they are never larger than the raw bytes already held. A spooled message's parts are not
    kept, so memory stays bounded whatever the attachment's size.
    """
    keep = not part.raw.spooled and not part.converted
    if is_streamable(part.encoding):
        digest, size = hashlib.sha256(), 0
        decoded: list[bytes] = []
        try:
            for chunk in iter_transfer_decoded(pieces, part.encoding):
                digest.update(chunk)
                size += len(chunk)
                if keep:
                    decoded.append(chunk)
            return Measured(size, digest.hexdigest(), True, b"".join(decoded) if keep else None)
        except NotStreamable:
            pass
    content = part.decoded_whole(defects)
    return Measured(len(content), hashlib.sha256(content).hexdigest(), False, content if keep else None)


def chunk_loader(part: PartRange, measured: Measured) -> Callable[[], Iterator[bytes]]:
    """A function that yields the part's decoded bytes anew on every call."""
    kept = measured.kept

    def chunks() -> Iterator[bytes]:
        if kept is not None:
            yield kept  # at most the size of a message held in memory
        elif measured.streamable:
            yield from iter_transfer_decoded(part.encoded_pieces(), part.encoding)
        else:
            yield part.decoded_whole([])

    return chunks
