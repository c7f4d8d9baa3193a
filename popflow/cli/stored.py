"""``popflow dead-letters`` and ``popflow quarantine``: inspect, re-run and purge stored messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from popflow.app import App
from popflow.cli.common import config_option, console, fail, open_app
from popflow.replay import ReplayResult, purge, release_quarantined, replay_dead_letters
from popflow.terminal import shown


def _rows_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_cell(row.get(column)) for column in columns])
    return table


def _cell(value: Any) -> Text:
    # Subjects, errors and UIDLs come from mail and servers: escaped, never read as markup.
    if value is None:
        return shown(None)
    if isinstance(value, list | dict):
        return shown(json.dumps(value, default=str)[:80], newlines=False)
    text = str(value)
    return shown(text if len(text) <= 80 else text[:77] + "...", newlines=False)


def _show(app: App, rows: list[dict[str, Any]], entry_id: int) -> None:
    if not rows:
        fail(f"no entry #{entry_id}", status=1)
    row = rows[0]
    for key, value in row.items():
        console.print(Text.assemble((key, "bold"), ": ", shown(value)), highlight=False)
    sha256 = row["sha256"]
    console.print(Text.assemble(("raw", "bold"), ": ", shown(app.store.where(sha256)),
                                f" ({'present' if app.store.has(sha256) else 'MISSING'})"), highlight=False)


def _print_results(results: list[ReplayResult]) -> None:
    for result in results:
        colour = "green" if result.ok else "red"
        console.print(Text.assemble(f"#{result.entry_id}: ", ("ok" if result.ok else "failed", colour), " ",
                                    shown(result.detail)), highlight=False)


@click.group("dead-letters", invoke_without_command=True)
@config_option
@click.pass_context
def dead_letters(ctx: click.Context, config_path: Path | None) -> None:
    """Messages whose delivery failed: list (the default), show, replay, purge."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(dl_list, config_path=config_path, show_all=False)


@dead_letters.command("list")
@config_option
@click.option("--all", "show_all", is_flag=True, help="include replayed entries")
@click.pass_context
def dl_list(ctx: click.Context, config_path: Path | None, show_all: bool) -> None:
    """List pending dead letters."""
    with open_app(ctx, config_path) as app:
        rows = app.state.dead_letters(status=None if show_all else "pending")
    if not rows:
        console.print("no dead letters" if show_all else "no pending dead letters")
        return
    console.print(_rows_table("dead letters", rows, ["id", "source", "uidl", "sink", "stage", "error", "attempts",
                                                      "subject", "created_at", "status"]))


@dead_letters.command("show")
@config_option
@click.argument("entry_id", type=int)
@click.pass_context
def dl_show(ctx: click.Context, config_path: Path | None, entry_id: int) -> None:
    """Show one dead letter and where its raw bytes are."""
    with open_app(ctx, config_path) as app:
        _show(app, app.state.dead_letters([entry_id], status=None), entry_id)


@dead_letters.command("replay")
@config_option
@click.argument("ids", nargs=-1, type=int)
@click.pass_context
def dl_replay(ctx: click.Context, config_path: Path | None, ids: tuple[int, ...]) -> None:
    """Re-run routing and delivery (all pending dead letters when no ID is given)."""
    with open_app(ctx, config_path) as app:
        results = replay_dead_letters(app, list(ids))
    _print_results(results)
    console.print(f"replayed {sum(r.ok for r in results)} of {len(results)}")
    sys.exit(0 if all(r.ok for r in results) else 1)


@dead_letters.command("purge")
@config_option
@click.argument("ids", nargs=-1, type=int, required=True)
@click.pass_context
def dl_purge(ctx: click.Context, config_path: Path | None, ids: tuple[int, ...]) -> None:
    """Delete dead letters and their stored bytes."""
    with open_app(ctx, config_path) as app:
        results = purge(app, "dead-letters", list(ids))
    _print_results(results)
    sys.exit(0 if all(r.ok for r in results) else 1)


@click.group("quarantine", invoke_without_command=True)
@config_option
@click.pass_context
def quarantine(ctx: click.Context, config_path: Path | None) -> None:
    """Messages held by the virus scan: list (the default), show, release, purge."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(q_list, config_path=config_path, show_all=False)


@quarantine.command("list")
@config_option
@click.option("--all", "show_all", is_flag=True, help="include released entries")
@click.pass_context
def q_list(ctx: click.Context, config_path: Path | None, show_all: bool) -> None:
    """List quarantined messages."""
    with open_app(ctx, config_path) as app:
        rows = app.state.quarantined(status=None if show_all else "held")
    if not rows:
        console.print("nothing in quarantine" if show_all else "nothing held in quarantine")
        return
    console.print(_rows_table("quarantine", rows, ["id", "source", "uidl", "verdicts", "subject", "size",
                                                    "created_at", "status"]))


@quarantine.command("show")
@config_option
@click.argument("entry_id", type=int)
@click.pass_context
def q_show(ctx: click.Context, config_path: Path | None, entry_id: int) -> None:
    """Show one quarantine entry and where its raw bytes are."""
    with open_app(ctx, config_path) as app:
        _show(app, app.state.quarantined([entry_id], status=None), entry_id)


@quarantine.command("release")
@config_option
@click.argument("entry_id", type=int)
@click.pass_context
def q_release(ctx: click.Context, config_path: Path | None, entry_id: int) -> None:
    """Deliver a quarantined message: the rest of the pipeline runs without the scan."""
    with open_app(ctx, config_path) as app:
        result = release_quarantined(app, entry_id)
    _print_results([result])
    sys.exit(0 if result.ok else 1)


@quarantine.command("purge")
@config_option
@click.argument("ids", nargs=-1, type=int, required=True)
@click.pass_context
def q_purge(ctx: click.Context, config_path: Path | None, ids: tuple[int, ...]) -> None:
    """Delete quarantine entries and their stored bytes."""
    with open_app(ctx, config_path) as app:
        results = purge(app, "quarantine", list(ids))
    _print_results(results)
    sys.exit(0 if all(r.ok for r in results) else 1)


COMMANDS = [dead_letters, quarantine]
