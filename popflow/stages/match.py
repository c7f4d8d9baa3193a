"""Evaluate a config match rule (``from``, ``to``, ``subject``, ``header``, ...) against a message.

Address patterns are globs matched case-insensitively against the address (``*@example.com``) and
against ``Name <address>``; ``subject``, ``body`` and header values are regular expressions
(``re.search``). Only ``body``, ``has_attachment`` and ``attachment`` make the body be parsed.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from popflow.config import MatchRule
from popflow.message import Address, Message


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern.lower()))


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _patterns(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _address_matches(addresses: Iterable[Address | None], patterns: list[str]) -> bool:
    for address in addresses:
        if address is None:
            continue
        candidates = (address.address.lower(), str(address).lower())
        for pattern in patterns:
            compiled = _glob(pattern)
            if any(compiled.match(candidate) for candidate in candidates):
                return True
    return False


@dataclass(frozen=True)
class Matcher:
    """A compiled match rule."""

    rule: MatchRule

    def matches(self, message: Message) -> bool:
        """True when every condition of the rule holds for ``message``."""
        rule = self.rule
        if rule.from_ is not None and not _address_matches([message.from_], _patterns(rule.from_)):
            return False
        if rule.to is not None and not _address_matches(message.to, _patterns(rule.to)):
            return False
        if rule.cc is not None and not _address_matches(message.cc, _patterns(rule.cc)):
            return False
        if rule.subject is not None and not _regex(rule.subject).search(message.subject or ""):
            return False
        if rule.larger_than is not None and not message.size > rule.larger_than:
            return False
        if rule.smaller_than is not None and not message.size < rule.smaller_than:
            return False
        if rule.header is not None:
            for name, pattern in rule.header.items():
                values = message.header_all(name)
                if not any(_regex(pattern).search(value) for value in values):
                    return False
        # Body-level conditions last: they make the (lazy) body be parsed.
        if rule.body is not None:
            text = "\n".join(part for part in (message.text, message.html) if part)
            if not _regex(rule.body).search(text):
                return False
        if rule.has_attachment is not None and bool(message.attachments) != rule.has_attachment:
            return False
        if rule.attachment is not None:
            compiled = _glob(rule.attachment)
            names = [(a.original_filename or a.filename).lower() for a in message.attachments]
            names += [a.filename.lower() for a in message.attachments]
            if not any(compiled.match(name) for name in names):
                return False
        return True
