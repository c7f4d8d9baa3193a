"""What happened to one message, and the counts a poll reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from popflow.message import Message

OutcomeKind = Literal["delivered", "dropped", "quarantined", "dead_letter", "no_route", "deferred"]
HANDLED_KINDS: frozenset[str] = frozenset({"delivered", "dropped", "quarantined", "dead_letter", "no_route"})


@dataclass
class Routed:
    """A message that passed the stages before delivery, and the sinks that should get it."""

    message: Message
    sinks: list[str]


@dataclass
class Outcome:
    """The fate of one message in one poll."""

    kind: OutcomeKind
    reason: str = ""
    message: Message | None = None
    routed: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)

    @property
    def handled(self) -> bool:
        """Whether the message may leave the server (or be recorded as seen)."""
        return self.kind in HANDLED_KINDS


@dataclass
class PollCounts:
    """Per-poll counters for the summary table and the one-line log."""

    fetched: int = 0
    delivered: int = 0
    skipped: int = 0
    newly_skipped: int = 0
    """Of ``skipped``, those this poll skipped for the first time (metrics count each message once)."""
    dropped: int = 0
    quarantined: int = 0
    dead_letters: int = 0
    deferred: int = 0
    deleted: int = 0
    defects: int = 0
    errors: int = 0
    no_route: int = 0
    """Of ``delivered``, those no route sent anywhere (handled, kept nowhere)."""
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        """Count one message's outcome."""
        if outcome.kind in ("delivered", "no_route"):
            self.delivered += 1
            self.no_route += outcome.kind == "no_route"
        elif outcome.kind == "dropped":
            self.dropped += 1
        elif outcome.kind == "quarantined":
            self.quarantined += 1
        elif outcome.kind == "dead_letter":
            self.dead_letters += 1
        elif outcome.kind == "deferred":
            self.deferred += 1
        if outcome.dead_lettered and outcome.kind != "dead_letter":
            self.dead_letters += 1
        if outcome.message is not None and outcome.message.defects:
            self.defects += 1

    @property
    def clean(self) -> bool:
        """Exit status 0 rule: no deferred, failed or dead-lettered delivery."""
        return self.errors == 0 and self.deferred == 0 and self.dead_letters == 0

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready counters."""
        return dict(self.__dict__)
