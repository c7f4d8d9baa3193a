"""Walking a MIME tree iteratively, by byte offsets, with limits on depth and part count.

No recursion (a message nested 5,000 levels deep costs a loop, not a stack), no copies of part
bodies (each leaf is a ``start``/``end`` range in the buffer, decoded only when asked for), and
every malformation — a missing or unclosed boundary, an unknown type — becomes a defect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from popflow.parsing.headers import HeaderBlock, header_text, split_header_block
from popflow.parsing.mapped import find
from popflow.parsing.params import parse_params

MAX_DEPTH = 100
"""Multiparts nested deeper than this are not descended (a defect is recorded)."""
MAX_PARTS = 10_000
"""Parts beyond this many are ignored (a defect is recorded)."""


@dataclass
class Part:
    """One leaf of the MIME tree: its headers, its type and where its (encoded) body lies."""

    section: str
    """``"body"`` for a single-part message, else an IMAP-style ``"part 1.2"``; used in defects."""
    headers: HeaderBlock
    content_type: str
    params: dict[str, str] = field(default_factory=dict)
    disposition: str = ""
    disposition_params: dict[str, str] = field(default_factory=dict)
    transfer_encoding: str = ""
    start: int = 0
    end: int = 0
    unsplit: bool = False
    """A multipart that could not be split (no boundary, boundary not found), read as text/plain."""


@dataclass
class _Node:
    section: str
    number: str  # "" for the root, else "1.2"
    start: int
    end: int
    depth: int
    default_type: str


def walk(data: bytes, defects: list[str]) -> list[Part]:
    """The leaves of the message in ``data`` (bytes or an mmap), in document order."""
    leaves: list[Part] = []
    stack = [_Node("body", "", 0, len(data), 0, "text/plain")]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            defects.append(f"body: more than {MAX_PARTS} MIME parts, the rest ignored")
            break
        where = "headers" if not node.number else node.section
        block = split_header_block(data, node.start, node.end, where=where)
        defects.extend(block.defects)
        if node.number and not block.complete and block.fields:
            defects.append(f"{node.section}: no blank line after the part's headers")
        part = _describe(node, block, defects)
        if not part.content_type.startswith("multipart/"):
            leaves.append(part)
            continue
        children = _children(data, node, part, defects)
        if children is None:
            part.content_type = "text/plain"  # unsplittable: show it as text rather than lose it
            part.unsplit = True
            leaves.append(part)
            continue
        stack.extend(reversed(children))
    return leaves


def _describe(node: _Node, block: HeaderBlock, defects: list[str]) -> Part:
    """Read the MIME headers of one node."""
    part = Part(section=node.section, headers=block, content_type=node.default_type,
                start=block.body_start, end=node.end)
    raw_type = block.first("content-type")
    if raw_type is not None:
        text = header_text(raw_type, "Content-Type", "latin-1", defects, words=False)
        main, part.params = parse_params(text, f"{node.section} Content-Type", defects)
        maintype, slash, subtype = main.partition("/")
        if slash and maintype and subtype:
            part.content_type = main
        elif text:
            shown = text[:40]
            defects.append(f"{node.section}: invalid Content-Type {shown!r}, read as {node.default_type}")
    raw_disposition = block.first("content-disposition")
    if raw_disposition is not None:
        text = header_text(raw_disposition, "Content-Disposition", "latin-1", defects, words=False)
        part.disposition, part.disposition_params = parse_params(
            text, f"{node.section} Content-Disposition", defects)
    raw_encoding = block.first("content-transfer-encoding")
    if raw_encoding is not None:
        words = raw_encoding.decode("latin-1").split()
        part.transfer_encoding = words[0].lower() if words else ""
    return part


def _children(data: bytes, node: _Node, part: Part, defects: list[str]) -> list[_Node] | None:
    """The child nodes of a multipart node, or None when it cannot be split."""
    if node.depth >= MAX_DEPTH:
        defects.append(f"body: multipart nested deeper than {MAX_DEPTH} levels, not descended")
        return []
    boundary = part.params.get("boundary", "")
    if not boundary:
        defects.append(f"{node.section}: multipart without a boundary, read as text/plain")
        return None
    ranges, closed = split_multipart(data, part.start, part.end, boundary.encode("utf-8", "replace"))
    if not ranges:
        defects.append(f"{node.section}: multipart boundary not found, read as text/plain")
        return None
    if not closed:
        defects.append(f"{node.section}: multipart closing boundary missing")
    default = "message/rfc822" if part.content_type == "multipart/digest" else "text/plain"
    children = []
    for index, (start, end) in enumerate(ranges, 1):
        number = f"{node.number}.{index}" if node.number else str(index)
        children.append(_Node(f"part {number}", number, start, end, node.depth + 1, default))
    return children


def split_multipart(data: bytes, start: int, end: int, boundary: bytes) -> tuple[list[tuple[int, int]], bool]:
    """Byte ranges of the parts between ``--boundary`` lines, and whether the close line was seen.

    A delimiter must start a line and be followed only by optional ``--`` and whitespace (so a
    longer boundary that begins with this one does not count); the line break before it belongs
    to it (RFC 2046 section 5.1.1). The preamble and epilogue are dropped.
    """
    delimiter = b"--" + boundary
    ranges: list[tuple[int, int]] = []
    part_start: int | None = None
    position = start
    while True:
        found = find(data, delimiter, position, end)  # a spooled message: without keeping it resident
        if found < 0:
            break
        position = found + 1
        if found > start and data[found - 1:found] != b"\n":
            continue
        after = found + len(delimiter)
        closing = data[after:after + 2] == b"--"
        line_end = data.find(b"\n", after, end)
        line_end = end if line_end < 0 else line_end
        if data[after + (2 if closing else 0):line_end].strip(b" \t\r"):
            continue  # "--boundary-more": a different boundary
        if part_start is not None:
            part_end = found - 1 if found > start else found
            if part_end > part_start and data[part_end - 1:part_end] == b"\r":
                part_end -= 1
            ranges.append((part_start, max(part_start, part_end)))
        if closing:
            return ranges, True
        part_start = min(line_end + 1, end)
        position = part_start
    if part_start is not None:
        ranges.append((part_start, end))
    return ranges, False
