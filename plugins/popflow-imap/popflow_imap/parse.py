"""IMAP response text → Python values: atoms (str), numbers (int), quoted strings, lists, literals.

Only the grammar popflow reads is handled: FETCH items (``UID 7 RFC822.SIZE 120 FLAGS (\\Seen)
BODY[] {120}``), status responses and CAPABILITY. ``[`` and ``]`` are kept inside atoms
(``BODY[HEADER]``, ``[UIDVALIDITY``), which is enough for those. Nesting is bounded: a hostile
server cannot make the parser recurse without end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_DEPTH = 8
"""Parentheses deeper than this are a protocol error (FLAGS and BODYSTRUCTURE stay well below)."""

_ATOM_END = frozenset(b' ()"{\r\n')


class ParseError(ValueError):
    """The response text does not follow the grammar."""


class Quoted(str):
    """A quoted string (so ``"NIL"`` is not mistaken for NIL)."""


def parse_values(parts: Sequence[Any], literal: Sequence[bool]) -> list[Any]:
    """Parse text parts (bytes) with literal values between them into one flat-or-nested list."""
    tokens: list[Any] = []
    for part, is_literal in zip(parts, literal, strict=True):
        if is_literal:
            tokens.append(("lit", part))
        else:
            tokens.extend(_tokens(part))
    stack: list[list[Any]] = [[]]
    for token in tokens:
        if token == "(":
            if len(stack) > MAX_DEPTH:
                raise ParseError("lists nested too deeply")
            stack.append([])
        elif token == ")":
            if len(stack) == 1:
                raise ParseError("unbalanced ')'")
            inner = stack.pop()
            stack[-1].append(inner)
        elif isinstance(token, tuple):
            stack[-1].append(token[1])
        else:
            stack[-1].append(token)
    while len(stack) > 1:  # an unclosed list: keep what was read (status text may hold a lone '(')
        inner = stack.pop()
        stack[-1].append(inner)
    return stack[0]


def _tokens(data: bytes) -> list[Any]:
    out: list[Any] = []
    index, size = 0, len(data)
    while index < size:
        byte = data[index]
        if byte == 0x20:
            index += 1
        elif byte in (0x28, 0x29):  # ( )
            out.append(chr(byte))
            index += 1
        elif byte == 0x22:  # "
            index, text = _quoted(data, index + 1)
            out.append(("str", Quoted(text)))
        else:
            start = index
            while index < size and data[index] not in _ATOM_END:
                index += 1
            if index == start:  # a stray '{' or CR: keep it as text
                index += 1
            atom = data[start:index].decode("utf-8", "replace")
            out.append(int(atom) if atom.isdigit() and len(atom) < 20 else atom)
    return out


def _quoted(data: bytes, index: int) -> tuple[int, str]:
    chunk = bytearray()
    while index < len(data):
        byte = data[index]
        if byte == 0x5C and index + 1 < len(data):
            chunk.append(data[index + 1])
            index += 2
        elif byte == 0x22:
            return index + 1, chunk.decode("utf-8", "replace")
        else:
            chunk.append(byte)
            index += 1
    return index, chunk.decode("utf-8", "replace")  # unterminated: the rest of the line


def fetch_items(values: Sequence[Any]) -> tuple[int, dict[str, Any]] | None:
    """``* 5 FETCH (UID 7 ...)`` parsed → ``(5, {"UID": 7, ...})`` (names upper-cased); else None."""
    if len(values) < 3 or not isinstance(values[0], int) or not isinstance(values[1], str) \
            or values[1].upper() != "FETCH" or not isinstance(values[2], list):
        return None
    items = values[2]
    result: dict[str, Any] = {}
    for index in range(0, len(items) - 1, 2):
        name = items[index]
        if isinstance(name, str):
            result[name.upper()] = items[index + 1]
    return values[0], result
