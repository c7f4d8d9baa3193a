"""Small value types that stage hooks return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OnError = Literal["defer", "quarantine", "deliver"]


@dataclass(frozen=True)
class FilterDecision:
    """What a filter decided: keep or drop the message, and why."""

    keep: bool
    reason: str = ""

    @classmethod
    def drop(cls, reason: str) -> FilterDecision:
        """Drop the message (it counts as handled and leaves the server)."""
        return cls(False, reason)

    @classmethod
    def keep_it(cls, reason: str = "") -> FilterDecision:
        """Keep the message and stop asking later filters."""
        return cls(True, reason)


@dataclass(frozen=True)
class ScanVerdict:
    """One scanner's vote: ``clean``, ``infected`` (with ``signature``) or ``error`` (with ``reason``)."""

    status: Literal["clean", "infected", "error"]
    scanner: str
    signature: str | None = None
    reason: str | None = None
    on_error: OnError = "defer"

    @property
    def infected(self) -> bool:
        """True for an ``infected`` verdict."""
        return self.status == "infected"
