"""The lazy body parse: text, HTML and attachments of a message, from its raw bytes.

The MIME tree is walked by offsets (:mod:`popflow.parsing.mime`); the first text/plain and
text/html parts that are not attachments become ``text`` and ``html``, every other leaf (including
forwarded ``message/rfc822`` parts) is an attachment whose bytes are decoded again on demand from
the raw message, so the parsed body holds no attachment bytes.
"""

from __future__ import annotations

import contextlib
import mimetypes
import mmap
import re
from collections.abc import Iterator

from popflow.message import Attachment, Body
from popflow.parsing.charsets import decode_text
from popflow.parsing.defects import finish_defects
from popflow.parsing.encoded_words import decode_words
from popflow.parsing.headers import header_text, sanitize
from popflow.parsing.mime import Part, walk
from popflow.parsing.part_content import PartRange, chunk_loader, cr_to_lf, measure, slices
from popflow.parsing.transfer import is_readable_encoding, transfer_decode
from popflow.raw import RawMessage
from popflow.safenames import safe_filename

_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)
_LINE_END_SAMPLE = 64 * 1024
_FORWARDED_TYPES = frozenset({"message/rfc822", "message/global"})
_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "application/octet-stream": ".bin",
}


def parse_body(raw: RawMessage) -> Body:
    """Parse the whole MIME structure of ``raw`` into a :class:`~popflow.message.Body`; never raises."""
    body = Body()
    defects: list[str] = []
    try:
        with _buffer(raw, defects) as (data, converted):
            leaves = walk(data, defects)
            # An unsplittable multipart is a last resort for the text slot: a real text part after
            # it is the body (the empty multipart/alternative some mailers write must not take it).
            for part in [*(leaf for leaf in leaves if not leaf.unsplit), *(leaf for leaf in leaves if leaf.unsplit)]:
                if part.unsplit and part.section != "body" and not data[part.start:part.end].strip():
                    defects.append(f"{part.section}: empty multipart, ignored")
                    continue
                try:
                    _take_part(part, data, raw, converted, body, defects)
                except Exception as exc:  # one unreadable part must not cost the others
                    defects.append(f"{part.section}: unreadable ({type(exc).__name__}), skipped")
    except Exception as exc:  # the raw bytes stay intact; the body is just not parsed
        defects.append(f"body: parser error ({type(exc).__name__}), body left unparsed")
    body.defects = finish_defects(defects)
    return body


@contextlib.contextmanager
def _buffer(raw: RawMessage, defects: list[str]) -> Iterator[tuple[bytes, bool]]:
    """The message bytes: in memory as they are, or a spool file memory-mapped (not read into RAM).

    A message whose lines end in a bare CR (old Mac mailers, some bounce generators) is read with
    those CRs as line breaks, so that its MIME boundaries are found; the flag says so.
    """
    if not raw.spooled or raw.size == 0:
        data = raw.read()
        if bare_cr_line_ends(data):
            defects.append("body: lines end in a bare CR, read as line breaks")
            yield cr_to_lf(data), True
            return
        yield data, False
        return
    with raw.open() as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        if bare_cr_line_ends(mapped[:_LINE_END_SAMPLE]):
            defects.append("body: lines end in a bare CR, read as line breaks")
            yield cr_to_lf(mapped[:]), True
            return
        yield mapped, False  # type: ignore[misc]  # an mmap supports every bytes operation used here


def bare_cr_line_ends(data: bytes) -> bool:
    """True when the lines of ``data`` end in a bare CR rather than LF or CRLF (judged on its start)."""
    sample = data[:_LINE_END_SAMPLE]
    carriage_returns = sample.count(b"\r")
    if not carriage_returns:
        return False
    crlf = sample.count(b"\r\n")
    if crlf == carriage_returns:  # every CR ends a CRLF: the common case, decided without a third pass
        return False
    return carriage_returns - crlf > sample.count(b"\n")


def _take_part(part: Part, data: bytes, raw: RawMessage, converted: bool, body: Body,
               defects: list[str]) -> None:
    """Make ``part`` the text, the HTML or an attachment of ``body``."""
    raw_name = part.disposition_params.get("filename") or part.params.get("name")
    # RFC 2183: only "attachment" makes a part an attachment. A named text part that is inline (or
    # has no disposition) is displayed as the body by mail clients when it is the first text part.
    # A named part in a transfer encoding popflow cannot read (x-gzip64) stays an attachment.
    body_like = part.disposition != "attachment" and (not raw_name or (
        body.text is None and body.html is None and is_readable_encoding(part.transfer_encoding)))
    if body_like and part.content_type in ("text/plain", "text/html"):
        slot = "text" if part.content_type == "text/plain" else "html"
        if getattr(body, slot) is None:
            content = transfer_decode(bytes(data[part.start:part.end]), part.transfer_encoding, part.section, defects)
            setattr(body, slot, _text(content, part, defects))
            return
    where = PartRange(raw, part.start, part.end, part.transfer_encoding, part.section, converted)
    body.attachments.append(_attachment(part, where, data, raw_name, defects))


def _text(content: bytes, part: Part, defects: list[str]) -> str:
    charset = part.params.get("charset")
    if not charset and part.content_type == "text/html" and (meta := _META_CHARSET.search(content[:4096])):
        charset = meta.group(1).decode("ascii")
    text = decode_text(content, charset, part.section, defects)
    if "\x00" in text:  # databases refuse NUL in text; the raw bytes keep the original
        defects.append(f"{part.section}: NUL characters replaced")
        text = text.replace("\x00", "\ufffd")
    return text


def _attachment(part: Part, where: PartRange, data: bytes, raw_name: str | None,
                defects: list[str]) -> Attachment:
    original = None
    if raw_name:
        original = sanitize(decode_words(raw_name.strip(), f"{part.section} filename", defects)) or None
    if part.content_type in _FORWARDED_TYPES:
        fallback = "forwarded-message.eml"
    else:
        number = part.section.removeprefix("part ") if part.section != "body" else "1"
        fallback = f"part-{number}{_extension(part.content_type)}"
    raw_id = part.headers.first("content-id")
    content_id = None
    if raw_id is not None:
        content_id = header_text(raw_id, "Content-ID", "latin-1", defects, words=False).strip("<> \t") or None
    measured = measure(where, slices(data, part.start, part.end), defects)
    attachment = Attachment(
        filename=safe_filename(original, fallback),
        original_filename=original,
        content_type=part.content_type,
        size=measured.size,
        sha256=measured.sha256,
        content_id=content_id,
        inline=part.disposition == "inline" or (not part.disposition and content_id is not None),
    )
    attachment._chunk_loader = chunk_loader(where, measured)
    return attachment


def _extension(content_type: str) -> str:
    if content_type in _EXTENSIONS:
        return _EXTENSIONS[content_type]
    try:
        return mimetypes.guess_extension(content_type, strict=False) or ".bin"
    except Exception:
        return ".bin"
