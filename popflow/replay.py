"""Re-running stored messages: dead-letter replay and quarantine release."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from popflow.app import App
from popflow.outcome import Outcome
from popflow.processes import Owner, new_owner


@dataclass
class ReplayResult:
    """What happened to one replayed or released entry."""

    entry_id: int
    ok: bool
    detail: str


def _rerun(app: App, row: dict[str, Any], *, scan: bool, extra_sink: str | None) -> tuple[bool, str]:
    """Run a stored message through the pipeline and the deliverer again, as a poll would."""
    if not app.store.has(row["sha256"]):
        return False, f"raw bytes missing ({app.store.where(row['sha256'])})"
    raw = app.store.get(row["sha256"])
    prepared = app.pipeline().prepare(raw, row["source"], row["uidl"], scan=scan)
    if isinstance(prepared, Outcome):
        return prepared.kind in ("dropped", "no_route"), f"{prepared.kind}: {prepared.reason}"
    if extra_sink and extra_sink in app.sink_configs and extra_sink not in prepared.sinks:
        prepared.sinks.append(extra_sink)  # the sink that dead-lettered it, though routes changed since
    deliverer = app.deliverer()
    try:
        # Sinks the ledger lists for this message are not written again (a webhook would repeat).
        outcome = deliverer.deliver([prepared])[0]
        deliverer.record_deliveries([prepared])
    finally:
        deliverer.close()
    if outcome.kind == "delivered" and not outcome.dead_lettered:
        return True, "delivered to " + ", ".join(outcome.delivered)
    return False, f"{outcome.kind}: {outcome.reason}"


def replay_dead_letters(app: App, ids: list[int] | None = None) -> list[ReplayResult]:
    """Re-run routing and delivery for dead letters (all pending ones when ``ids`` is empty).

    Sinks are idempotent on (source, uidl), so a sink that already had the message is not written
    twice. A replay that fails again leaves the entry pending (and adds a new dead letter).

    Each entry is claimed first (one UPDATE only one process can win), so two replays running at
    once never deliver one entry twice: the other's entries are skipped when replaying all pending
    ones, and reported as busy when named by ID.
    """
    owner = new_owner()
    results = []
    for row in app.state.dead_letters(ids or None, status=None if ids else "pending"):
        if row["status"] != "pending":
            results.append(ReplayResult(row["id"], False, f"already {row['status']}"))
            continue
        if not app.state.claim_dead_letter(row["id"], owner):
            if ids:
                results.append(ReplayResult(row["id"], False, _taken(app.state.dead_letters([row["id"]], None))))
            continue  # replaying all pending ones: another replay has this one
        try:
            ok, detail = _rerun(app, row, scan=True, extra_sink=row["sink"])
            if ok:
                app.state.mark_dead_letter_replayed(row["id"])
        finally:
            app.state.release_dead_letter_claim(row["id"], owner)
        results.append(ReplayResult(row["id"], ok, detail))
    return results


def release_quarantined(app: App, entry_id: int) -> ReplayResult:
    """Deliver a quarantined message: the rest of the pipeline runs without the scan."""
    rows = app.state.quarantined([entry_id], status=None)
    if not rows:
        return ReplayResult(entry_id, False, "no such quarantine entry")
    row = rows[0]
    if row["status"] != "held":
        return ReplayResult(entry_id, False, f"already {row['status']}")
    owner = new_owner()
    if not app.state.claim_quarantined(entry_id, owner):
        return ReplayResult(entry_id, False, _taken(app.state.quarantined([entry_id], status=None)))
    try:
        ok, detail = _rerun(app, row, scan=False, extra_sink=None)
        if ok:
            app.state.mark_released(entry_id)
    finally:
        app.state.release_quarantine_claim(entry_id, owner)
    return ReplayResult(entry_id, ok, detail)


def _taken(rows: list[dict[str, Any]]) -> str:
    """Why a claim failed: the entry is done meanwhile, or another process works on it."""
    if rows and rows[0]["status"] not in ("pending", "held"):
        return f"already {rows[0]['status']}"
    parsed = Owner.parse(rows[0]["claimed_by"]) if rows else None
    return f"being replayed by another popflow process ({parsed.shown() if parsed else 'unknown'})"


def purge(app: App, kind: str, ids: list[int]) -> list[ReplayResult]:
    """Remove dead-letter or quarantine entries and their raw bytes when nothing else needs them."""
    results = []
    for entry_id in ids:
        sha = app.state.purge_dead_letter(entry_id) if kind == "dead-letters" else app.state.purge_quarantined(entry_id)
        if sha is None:
            results.append(ReplayResult(entry_id, False, "no such entry"))
            continue
        if not app.state.sha256_referenced(sha):
            app.store.remove(sha)
        results.append(ReplayResult(entry_id, True, "purged"))
    return results
