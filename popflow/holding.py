"""Where a message goes that is not delivered but must not be lost: dead letters and the quarantine.

Both keep the raw bytes in the message store (files under ``data_dir``, or rows in the state
database with ``executor: celery``) and list the entry in the state store, so ``popflow
dead-letters`` and ``popflow quarantine`` can show, replay, release or purge it. The pipeline
holds what a stage gave up on or a scanner flagged; the deliverer holds what a sink gave up on.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from popflow.message import Message
from popflow.raw import RawMessage
from popflow.raw_store import MessageStore
from popflow.state import StateStore
from popflow.verdicts import ScanVerdict

log = logging.getLogger(__name__)


class Holding:
    """Writes dead letters and quarantine entries: raw bytes first, then the listing row.

    The order matters for a crash: a listing row never points at bytes that were not stored. The
    message stays on the server until the poller records it as handled, after both are written.
    """

    def __init__(self, state: StateStore, store: MessageStore) -> None:
        self.state = state
        self.store = store

    def quarantine(self, raw: RawMessage, message: Message, verdicts: list[ScanVerdict]) -> int:
        """Keep the raw bytes and verdicts; list the message in the quarantine. Returns the entry id."""
        details = [asdict(v) for v in verdicts]
        self.store.put(raw, {"source": message.source, "uidl": message.uidl, "verdicts": details})
        entry = self.state.add_quarantined(source=message.source, uidl=message.uidl, verdicts=details,
                                           sha256=raw.sha256, size=raw.size, subject=message.subject)
        log.warning("quarantined %s/%s (#%d): %s", message.source, message.uidl, entry,
                    ", ".join(v.signature or v.reason or v.status for v in verdicts))
        return entry

    def dead_letter(self, raw: RawMessage, source: str, uidl: str, message: Message | None, *,
                    sink: str | None, stage: str, error: str, attempts: int) -> int:
        """Keep the raw bytes and the error; list the dead letter. Returns the entry id.

        ``message`` is None when the message could not be parsed; ``sink`` when a stage (not a
        sink) gave up on it.
        """
        self.store.put(raw, {"source": source, "uidl": uidl, "last_error": error, "stage": stage, "sink": sink})
        entry = self.state.add_dead_letter(source=source, uidl=uidl, sink=sink, stage=stage, error=error,
                                           attempts=attempts, sha256=raw.sha256, size=raw.size,
                                           subject=message.subject if message else None)
        log.error("dead letter #%d: %s/%s %s%s after %d attempt(s): %s", entry, source, uidl, stage,
                  f" to {sink}" if sink else "", attempts, error)
        return entry
