"""The status page ``/`` of ``popflow run --http``: server-rendered HTML for a person.

Inert by construction: no script, no outside asset (it works offline and under the page's
``Content-Security-Policy: default-src 'none'``), refreshed by ``<meta http-equiv="refresh">``.
Every value that comes from outside — source and sink names, server replies and error texts in
``last error`` — passes through :func:`html.escape` (after :func:`popflow.redact.redact` and
:func:`popflow.terminal.printable`), in text and in attributes alike. The config itself is never
shown, so no host, user name or secret appears that an error text does not already carry.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from popflow import __version__
from popflow.ops.metrics import sample
from popflow.ops.probe import StateUnavailable
from popflow.ops.snapshot import RunRow, SourceStatus, pending_totals, recent_runs, source_status
from popflow.redact import redact
from popflow.scheduler import describe_schedule
from popflow.state import StateStore
from popflow.terminal import printable

if TYPE_CHECKING:
    from popflow.ops.server import OpsServer

REFRESH_SECONDS = 10
COUNT_KEYS = ("fetched", "delivered", "no_route", "skipped", "dropped", "quarantined", "dead_letters", "deferred",
              "errors")


def esc(value: Any) -> str:
    """Outside text as HTML: secrets masked, control characters shown escaped, markup escaped."""
    text = "-" if value is None else str(value)
    return html.escape(printable(redact(text), newlines=False), quote=True)


def when(value: datetime | float | None) -> str:
    """A time as ``2026-12-03 09:42:04 UTC`` (``-`` when unknown)."""
    if value is None:
        return "-"
    moment = datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else value.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class _StateView:
    statuses: dict[str, SourceStatus]
    pending: int
    held: int
    runs: list[RunRow]


def _read_state(names: list[str]) -> Any:
    def question(state: StateStore) -> _StateView:
        pending, held = pending_totals(state)
        return _StateView({name: source_status(state, name) for name in names}, pending, held, recent_runs(state))
    return question


def status_page(ops: OpsServer) -> str:
    """The whole page, as of now."""
    names = ops.sources
    scheduler = ops.scheduler
    try:
        view: _StateView | None = ops.probe.ask(_read_state(names))
        problem = None
    except StateUnavailable as exc:
        view, problem = None, str(exc)
    values = ops.metrics.values()
    next_runs = scheduler.next_run_times() if scheduler else {}
    rows = []
    for name in names:
        known = view.statuses.get(name) if view else None
        up = sample(values, "popflow_source_up", source=name)
        polls = {status: int(sample(values, "popflow_polls_total", source=name, status=status) or 0)
                 for status in ("ok", "partial", "failed")}
        delivered = int(sample(values, "popflow_messages_total", source=name, outcome="delivered") or 0)
        counts = known.counts if known else {}
        last_counts = ", ".join(f"{key.replace('_', ' ')} {counts[key]}" for key in COUNT_KEYS if counts.get(key))
        status = known.status if known else "unknown"
        schedule = describe_schedule(scheduler.settings(name)) if scheduler else "-"
        rows.append(
            f'<tr data-source="{esc(name)}" class="{esc(status)}">'
            f'<th scope="row">{esc(name)}</th>'
            f'<td data-field="status"><span class="badge {esc(status)}">{esc(status)}</span></td>'
            f'<td data-field="up">{"-" if up is None else ("up" if up else "down")}</td>'
            f'<td data-field="schedule">{esc(schedule)}</td>'
            f'<td data-field="last_poll">{when(known.last_poll) if known else "-"}</td>'
            f'<td data-field="last_success">{when(known.last_success) if known else "-"}</td>'
            f'<td data-field="consecutive_failures">{known.consecutive_failures if known else "-"}</td>'
            f'<td data-field="next_poll">{when(next_runs.get(name))}</td>'
            f'<td data-field="last_counts">{esc(last_counts or "nothing")}</td>'
            f'<td data-field="delivered_total">{delivered}</td>'
            f'<td data-field="polls">{polls["ok"]} ok / {polls["partial"]} partial / {polls["failed"]} failed</td>'
            f'<td data-field="error" class="error">{esc(known.error) if known and known.error else ""}</td>'
            "</tr>")
    return _PAGE.format(
        refresh=REFRESH_SECONDS, version=esc(__version__), now=when(datetime.now(UTC)),
        started=when(ops.started_at), banner=_banner(problem), rows="\n".join(rows) or _EMPTY_SOURCES,
        pending=view.pending if view else "?", held=view.held if view else "?",
        runs=_runs(view.runs) if view else "", polls_total=sum(
            int(value) for (metric, _), value in values.items() if metric == "popflow_polls_total"))


def _banner(problem: str | None) -> str:
    if problem is None:
        return '<p class="ok" data-field="state">state store: answering</p>'
    return f'<p class="problem" data-field="state">state store: {esc(problem)}</p>'


def _runs(runs: list[RunRow]) -> str:
    lines = []
    for run in runs:
        counts = run.counts
        lines.append(
            f'<tr><td>{run.id}</td><th scope="row">{esc(run.source)}</th><td>{when(run.started_at)}</td>'
            f'<td>{esc(run.status)}</td><td>{int(counts.get("fetched", 0))}</td>'
            f'<td>{int(counts.get("delivered", 0))}</td><td>{float(counts.get("seconds", 0.0)):.2f}s</td>'
            f'<td class="error">{esc(run.error) if run.error else ""}</td></tr>')
    return "\n".join(lines) or '<tr><td colspan="8">no polls yet</td></tr>'


_EMPTY_SOURCES = '<tr><td colspan="12">no enabled source</td></tr>'

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>popflow status</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }}
h1 {{ font-size: 1.4em; margin: 0 0 .2em; }} h2 {{ font-size: 1.1em; margin-top: 1.5em; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border: 1px solid #ccc; padding: .3em .5em; text-align: left; vertical-align: top; }}
thead th {{ background: #f3f3f3; }}
.badge {{ padding: .1em .5em; border-radius: .8em; font-weight: bold; }}
.badge.ok {{ background: #d4f5d4; }} .badge.partial {{ background: #fff1c2; }}
.badge.failed {{ background: #ffd6d6; }} .badge.never, .badge.unknown {{ background: #e6e6e6; }}
.error {{ color: #a00; font-family: ui-monospace, monospace; word-break: break-word; }}
.problem {{ background: #ffd6d6; padding: .5em; }}
.meta {{ color: #666; }}
</style>
</head>
<body>
<h1>popflow status</h1>
<p class="meta">popflow {version} · page generated {now} · running since {started} · refreshes every {refresh}s
· {polls_total} polls since start</p>
{banner}
<h2>Sources</h2>
<table id="sources">
<thead><tr><th>source</th><th>status</th><th>up</th><th>schedule</th><th>last poll</th><th>last success</th>
<th>failures in a row</th><th>next poll</th><th>last poll's counts</th><th>delivered since start</th>
<th>polls since start</th><th>last error</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
<h2>Waiting for an operator</h2>
<ul>
<li>dead letters pending: <strong data-field="dead_letters_pending">{pending}</strong>
(<code>popflow dead-letters list</code>)</li>
<li>held in quarantine: <strong data-field="quarantine_held">{held}</strong>
(<code>popflow quarantine list</code>)</li>
</ul>
<h2>Recent polls</h2>
<table id="runs">
<thead><tr><th>run</th><th>source</th><th>started</th><th>status</th><th>fetched</th><th>delivered</th>
<th>took</th><th>error</th></tr></thead>
<tbody>
{runs}
</tbody>
</table>
</body>
</html>
"""
