"""``popflow run`` (the long-lived scheduler) and ``popflow demo`` (the self-contained tour)."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from popflow.cli.common import (
    config_option,
    console,
    fail,
    open_app,
    ops_server,
    prepare_data_dir,
    stop_on_signals,
)
from popflow.errors import ConfigError, PluginLoadError
from popflow.logs import setup_logging
from popflow.terminal import printable

if TYPE_CHECKING:
    from popflow.demo.runner import DemoResult

log = logging.getLogger("popflow.run")


# -- run -----------------------------------------------------------------------------------------
@click.command()
@config_option
@click.option("--http", "http_listen", metavar="ADDR", default=None,
              help="serve /metrics, /healthz, /readyz and a status page on ADDR (e.g. 127.0.0.1:9464; "
                   "a bare port means loopback); overrides the config's http.listen")
@click.pass_context
def run(ctx: click.Context, config_path: Path | None, http_listen: str | None) -> None:
    """Poll every enabled source on its schedule until SIGINT/SIGTERM, then exit 0.

    On a signal, running polls finish the message in hand and end their POP3 session with QUIT,
    so every deletion they earned applies. A second signal exits at once (the ledger makes that
    safe: nothing is deleted that was not delivered).
    """
    from popflow.ops.listen import parse_listen
    from popflow.scheduler import PollScheduler

    try:
        listen = parse_listen(http_listen) if http_listen is not None else None
    except ValueError as exc:
        fail(f"--http: {exc}")

    with open_app(ctx, config_path) as app:
        names = app.enabled_sources()
        if not names:
            fail(f"{app.file}: no enabled source to poll; add one under 'sources:' (see `popflow init`)")
        prepare_data_dir(app)
        _ = app.state  # open the ledger once, here, before the poll threads share it
        if app.config.executor.type == "celery":  # schedule and enqueue only; `popflow worker`s poll
            from popflow.cli.worker import dispatch_until_signal

            dispatch_until_signal(app, names)
            return
        scheduler = PollScheduler(app, names)
        ops = ops_server(app, scheduler, listen)
        with stop_on_signals(app.context.stop.set, "finishing the message in hand, then QUIT") as stopping:
            try:
                scheduler.start()
                while not stopping.wait(1.0):  # a timeout keeps the main thread responsive to signals
                    pass
            finally:  # still under the handler: a second signal while polls finish exits at once
                scheduler.stop(wait=True)
                if ops is not None:
                    ops.close()
    log.info("popflow run: stopped")


# -- demo ----------------------------------------------------------------------------------------
@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("popflow-demo"), show_default=True, help="where the demo writes its config and output")
@click.pass_context
def demo(ctx: click.Context, directory: Path) -> None:
    """Run popflow end to end against its own POP3 server on loopback, with a generated mailbox.

    Each run clears what the previous demo run left in DIR and starts again.
    """
    from popflow.demo.runner import DemoDirError, run_demo

    setup_logging(ctx.obj.get("log_level") or "WARNING")  # the summary below says it all
    console.print(f"popflow demo: serving a sample mailbox on loopback, polling it into {directory}/ ...",
                  highlight=False, soft_wrap=True)
    try:
        result = run_demo(directory)
    except DemoDirError as exc:
        fail(str(exc))
    except (ConfigError, PluginLoadError) as exc:  # a bug in the demo itself; say so plainly
        fail(f"the demo's own config failed: {exc}", status=1)
    _print_demo(result)
    if not result.report.clean:
        fail(f"the demo poll was not clean: {result.report.line()}", status=1)


def _print_demo(result: DemoResult) -> None:
    c = result.report.counts
    table = Table(title="popflow demo: one poll of the sample mailbox")
    table.add_column("what")
    table.add_column("count", justify="right")
    rows = [("served by the POP3 server", result.served), ("fetched", c.fetched), ("delivered", c.delivered),
            ("handled, no route matched", c.no_route), ("dropped by the filter (newsletter)", c.dropped),
            ("parsed with defects (repaired)", c.defects),
            ("dead letters", c.dead_letters), ("deferred", c.deferred), ("errors", c.errors),
            ("deleted from the server (QUIT)", c.deleted), ("left on the server", result.left_on_server)]
    for name, count in rows:
        table.add_row(name, str(count))
    console.print(table)
    sinks = Table(title="per sink")
    for column in ("sink", "delivered", "now holds"):
        sinks.add_column(column)
    sinks.add_row("orders_db (database)", str(result.per_sink.get("orders_db", 0)),
                  f"{result.order_rows} rows")
    sinks.add_row("mail (folder, eml)", str(result.per_sink.get("mail", 0)),
                  f"{result.folder_files} .eml, {result.attachment_files} attachments")
    console.print(sinks)
    # Paths (--dir is the user's) are printed inside markup below: escaped first.
    d, cfg = escape(printable(str(result.directory))), escape(printable(str(result.config)))
    exe = escape(printable(_popflow_command()))
    width = len(exe) + 20
    console.print(f"""
[bold]Where to look[/]
  config        {cfg}
  folder sink   {d}/mail/demo/<yyyy>/<mm>/<id>.eml, <id>.json and <id>/<attachments>
  database      sqlite3 {d}/orders.db 'select subject, meta from popflow_messages'
  dead letters  {exe} dead-letters list -c {cfg}
  the plugin    {d}/plugins/demo_transform.py

[bold]Your own mailbox next[/]
  {f"{exe} init":<{width}}write a commented ./popflow.yaml
  {f"{exe} check --connect":<{width}}validate it and log in to each source and sink
  {f"{exe} poll":<{width}}one poll, with a summary table
  {f"{exe} run":<{width}}poll on schedule until Ctrl-C / SIGTERM
(Running the demo again clears {d} and starts over.)""", highlight=False, soft_wrap=True)


def _popflow_command() -> str:
    """How the user can call popflow again: plain ``popflow`` when it is on PATH, else its path."""
    running = Path(sys.argv[0]).resolve()
    on_path = shutil.which("popflow")
    if on_path and Path(on_path).resolve() == running:
        return "popflow"
    if running.name == "popflow" and running.exists():
        try:
            return str(running.relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(running)
    return "popflow"


COMMANDS = [run, demo]
