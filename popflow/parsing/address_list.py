"""A lenient address-list reader for the headers the fast path in :mod:`.addresses` declines.

Written here instead of ``email.utils.getaddresses`` because on broken headers that one invents
addresses (``@domain`` from ``a@b c@d``, route fragments from ``<@a,@b:user@c>``, a phrase as a
local part). This reader yields only what is written: a mailbox is an ``<angle address>`` or a
word with a local part and a domain; a missing comma between two of them still gives two; groups,
comments and quoted names are understood. One pass over the text, no backtracking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SPECIALS = frozenset('"(<,;:')
_COMMENT = re.compile(r"\([^()]*\)")
_LOCAL_NAME = re.compile(r"[^@\s<>()\",;:\\]+")
_MAILBOX = re.compile(r"[^@\s]+@[^@\s]+")
_BAD_IN_ADDRESS = re.compile(r"[\s<>()\",;:\\]")


@dataclass
class _Token:
    kind: str  # "word", "quoted", "comment", "angle", "sep"
    text: str
    glued: bool = False  # no white space between this token and the one before


@dataclass
class AddressListResult:
    """What :func:`read_address_list` found: ``(display name, address)`` pairs and what it dropped."""

    mailboxes: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    """Fragments that name no mailbox (``@domain``, a phrase without an address)."""
    missing_comma: bool = False
    source_route: bool = False


def read_address_list(text: str) -> AddressListResult:
    """The mailboxes of an address header (RFC 5322 ``address-list``, leniently)."""
    result = AddressListResult()
    item: list[_Token] = []
    for token in _merge_address_pieces(_tokens(text)):
        if token.kind != "sep":
            item.append(token)
        elif token.text == ":":
            item = []  # "Group name:": the name of a group is no mailbox
        else:
            _read_item(item, result)
            item = []
    _read_item(item, result)
    return result


def _tokens(text: str) -> list[_Token]:
    """Words, quoted strings, comments, angle addresses and separators (``,`` ``;`` and a group's ``:``)."""
    tokens: list[_Token] = []
    position, length = 0, len(text)
    glued = False
    while position < length:
        char = text[position]
        if char.isspace() or char == ">":  # a stray ">" is noise
            position += 1
            glued = False
            continue
        if char == '"':
            end, value = _quoted(text, position + 1)
            tokens.append(_Token("quoted", value, glued))
        elif char == "(":
            end, value = _comment(text, position + 1)
            tokens.append(_Token("comment", value, glued))
        elif char == "<":
            close = text.find(">", position + 1)
            end = length if close < 0 else close + 1
            tokens.append(_Token("angle", text[position + 1:close if close >= 0 else length].strip(), glued))
        elif char in ",;:":
            end = position + 1
            tokens.append(_Token("sep", char))
        else:
            end = position
            while end < length and not text[end].isspace() and text[end] not in _SPECIALS and text[end] != ">":
                end += 1
            tokens.append(_Token("word", text[position:end], glued))
        position = end
        glued = True
    return tokens


def _quoted(text: str, position: int) -> tuple[int, str]:
    """The end of a quoted string that starts after its opening quote, and its unescaped text."""
    out = []
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text):
            out.append(text[position + 1])
            position += 2
            continue
        if char == '"':
            return position + 1, "".join(out)
        out.append(char)
        position += 1
    return position, "".join(out)


def _comment(text: str, position: int) -> tuple[int, str]:
    """The end of a (possibly nested) comment that starts after its ``(``, and its text."""
    depth, start = 1, position
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return position + 1, text[start:position]
        position += 1
    return position, text[start:]


def _merge_address_pieces(tokens: list[_Token]) -> list[_Token]:
    """Put back together what white space split: ``"john doe"@example.com``, ``jdoe@test . example``."""
    merged: list[_Token] = []
    for token in tokens:
        previous = merged[-1] if merged else None
        if (previous is not None and previous.kind == "quoted" and token.kind == "word" and token.glued
                and token.text.startswith("@")):
            merged[-1] = _Token("word", f'"{previous.text}"{token.text}', previous.glued)
        elif (previous is not None and previous.kind == "word" and token.kind == "word"
              and "@" in previous.text + token.text
              and (previous.text.endswith((".", "@")) or token.text.startswith((".", "@")))):
            merged[-1] = _Token("word", previous.text + token.text, previous.glued)  # obsolete spacing
        else:
            merged.append(token)
    return merged


def _read_item(tokens: list[_Token], result: AddressListResult) -> None:
    """One comma-separated item: usually one mailbox, sometimes several (a missing comma) or none."""
    if not tokens:
        return
    phrase: list[str] = []
    comments: list[str] = []
    found: list[tuple[str, str]] = []
    for index, token in enumerate(tokens):
        if token.kind == "angle":
            address = _without_cfws(token.text)
            if address.startswith("@") and ":" in address:  # "<@a,@b:user@c>": an obsolete route
                address = address.split(":", 1)[1].strip()
                result.source_route = True
            name = " ".join(phrase) or " ".join(comments)
            # "<>" is the null sender of a bounce; "<matmail>" a local mailbox without a domain.
            if _valid(address) or not address or _LOCAL_NAME.fullmatch(address):
                found.append((name, address))
            else:
                result.dropped.append(address)
            phrase, comments = [], []
        elif token.kind == "comment":
            if found and not phrase and not found[-1][0] and tokens[index - 1].kind == "word":
                found[-1] = (token.text.strip(), found[-1][1])  # "a@b (Name)": the comment names it
            else:
                comments.append(token.text.strip())
        elif token.kind == "word" and "@" in token.text and not _angle_follows(tokens, index):
            if _valid(token.text):
                found.append((" ".join(phrase), token.text))
            else:
                result.dropped.append(token.text)
            phrase = []
        else:
            phrase.append(token.text)  # words before an <address> are its name, "@" or not
    if phrase and not found:
        if len(phrase) == 1 and tokens[0].kind == "word" and len(tokens) - len(comments) == 1:
            found.append((" ".join(comments), phrase[0]))  # "root": a local name without a domain
        else:
            result.dropped.append(" ".join(phrase))
    if len(found) > 1:
        result.missing_comma = True
    result.mailboxes.extend(found)


def _without_cfws(address: str) -> str:
    """An angle address without the comments and folding white space obsolete syntax allows in it."""
    if "(" in address:
        address = _COMMENT.sub("", address)
    return address if '"' in address else "".join(address.split())


def _angle_follows(tokens: list[_Token], index: int) -> bool:
    """True when the next token but comments after ``tokens[index]`` is an ``<address>``."""
    return next((token.kind == "angle" for token in tokens[index + 1:] if token.kind != "comment"), False)


def _valid(address: str) -> bool:
    """``local@domain`` with both parts and nothing that cannot be in an unquoted address."""
    if address.startswith('"'):
        local, at, domain = address.rpartition("@")
        return bool(at and local and domain) and _BAD_IN_ADDRESS.search(domain) is None
    return _MAILBOX.fullmatch(address) is not None and _BAD_IN_ADDRESS.search(address) is None
