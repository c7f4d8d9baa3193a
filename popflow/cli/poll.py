"""``popflow poll``: poll each source (or the named ones) once, print a summary table, exit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from popflow.app import App
from popflow.cli.common import (
    allow_fast_exit,
    config_option,
    console,
    open_app,
    prepare_data_dir,
    stop_on_signals,
    user_errors,
)
from popflow.poller import PollReport
from popflow.terminal import printable, shown


@click.command()
@config_option
@click.option("--source", "sources", multiple=True, help="poll only this source (repeatable)")
@click.pass_context
def poll(ctx: click.Context, config_path: Path | None, sources: tuple[str, ...]) -> None:
    """Poll each source (or the named ones) once, then exit.

    Exit status 0 only if every source polled cleanly.
    """
    with open_app(ctx, config_path) as app:
        with user_errors():
            names = list(sources) or app.enabled_sources()
            for name in names:
                app.source(name)  # unknown names are a usage error before any work
        prepare_data_dir(app)
        with stop_on_signals(app.context.stop.set, "finishing the message in hand, then QUIT"):
            reports = _poll_all(app, names)
    print_summary(reports)
    allow_fast_exit(ctx)  # the App is closed: nothing is left but freeing memory
    sys.exit(0 if all(report.clean for report in reports) else 1)


def _poll_all(app: App, names: list[str]) -> list[PollReport]:
    """One poll of each source, in order; a terminal gets a progress bar."""
    if not console.is_terminal:
        return [app.poll(name) for name in names]
    # Only a terminal gets a progress bar; cron and scripts skip importing it.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    reports = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        for name in names:
            # The description is read as markup: a source name is escaped first.
            task = progress.add_task(escape(printable(name)), total=None)

            def advance(done: int, total: int, task_id: Any = task) -> None:
                progress.update(task_id, completed=done, total=total)

            reports.append(app.poll(name, advance))
    return reports


def print_summary(reports: list[PollReport]) -> None:
    """The per-source summary table."""
    table = Table(title="popflow poll")
    columns = ["source", "fetched", "delivered", "no route", "skipped", "dropped", "quarantined", "dead letters",
               "deferred", "defects", "errors", "seconds"]
    for column in columns:
        table.add_column(column, justify="left" if column == "source" else "right")
    for report in reports:
        c = report.counts
        counts = (c.fetched, c.delivered, c.no_route, c.skipped, c.dropped, c.quarantined, c.dead_letters,
                  c.deferred, c.defects, c.errors)
        table.add_row(shown(report.source), *map(str, counts), f"{c.seconds:.2f}")
    console.print(table)
    for report in reports:
        if report.error:  # one line, whatever the width; server text is not markup
            console.print(shown(f"{report.source}: {report.error}", "red"), highlight=False, soft_wrap=True)


COMMANDS = [poll]
