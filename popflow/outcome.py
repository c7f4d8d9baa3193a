"""The two things a message is between the POP3 listing and the ledger, and the counts of a poll.

A retrieved message leaves the stages (:class:`popflow.pipeline.Pipeline`) as one of two things:

* a :class:`Delivery` — the message and the sinks that should get it; the deliverer
  (:class:`popflow.delivery.Deliverer`) fills in which sinks committed it, dead-lettered it or were
  down, then turns it into an outcome;
* an :class:`Outcome` — its final fate for this poll (dropped, quarantined, dead letter, no route,
  deferred, or after delivery: delivered).

The deliverer records outcomes in the ledger; the poller counts them (:class:`PollCounts`) and
DELEs the handled ones. See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from popflow.message import Message
from popflow.raw import RawMessage

OutcomeKind = Literal["delivered", "dropped", "quarantined", "dead_letter", "no_route", "deferred"]
HANDLED_KINDS: frozenset[str] = frozenset({"delivered", "dropped", "quarantined", "dead_letter", "no_route"})


@dataclass
class Outcome:
    """The fate of one message in one poll (or one replay)."""

    kind: OutcomeKind
    reason: str = ""
    message: Message | None = None
    routed: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    """The routed sinks that have the message: committed now, or in an earlier poll (the ledger)."""
    dead_lettered: list[str] = field(default_factory=list)

    @property
    def handled(self) -> bool:
        """Whether the message may leave the server (or be recorded as seen)."""
        return self.kind in HANDLED_KINDS


@dataclass
class Delivery:
    """A message that passed the stages before delivery, the sinks that should get it, and how it went.

    The pipeline fills ``raw``, ``message`` and ``sinks``; the deliverer fills the rest, one entry
    per sink, then :meth:`outcome` combines them.
    """

    raw: RawMessage
    message: Message
    sinks: list[str]
    delivered: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    """Why a sink dead-lettered or deferred the message, by sink."""

    @property
    def source(self) -> str:
        """The source the message came from."""
        return self.message.source

    @property
    def uidl(self) -> str:
        """The message's key in its source (the ledger's)."""
        return self.message.uidl

    def outcome(self) -> Outcome:
        """Combine the per-sink results into the message's outcome."""
        kind: OutcomeKind
        if self.deferred:
            kind = "deferred"
            reason = "; ".join(f"{sink}: {self.errors.get(sink, 'sink down')}" for sink in self.deferred)
        elif self.dead_lettered and not self.delivered:
            kind, reason = "dead_letter", "; ".join(f"{s}: {self.errors.get(s, '')}" for s in self.dead_lettered)
        else:
            kind, reason = "delivered", ""
        return Outcome(kind, reason, self.message, routed=self.sinks, delivered=self.delivered,
                       dead_lettered=self.dead_lettered)


@dataclass
class PollCounts:
    """Per-poll counters for the summary table and the one-line log.

    Each message fetched counts in exactly one of ``delivered``, ``no_route``, ``dropped``,
    ``quarantined``, ``dead_letters`` and ``deferred`` — except that a message delivered to one sink
    and dead-lettered for another counts in ``delivered`` and ``dead_letters``.
    """

    fetched: int = 0
    delivered: int = 0
    """Messages that reached every routed sink (now or in an earlier poll)."""
    no_route: int = 0
    """Messages no route sent anywhere: handled (they leave the server), kept nowhere."""
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
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        """Count one message's outcome."""
        if outcome.kind == "delivered":
            self.delivered += 1
        elif outcome.kind == "no_route":
            self.no_route += 1
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
