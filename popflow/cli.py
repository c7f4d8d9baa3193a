"""The ``popflow`` command line. Thin: it parses options, builds an :class:`~popflow.app.App`, prints."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import ArgumentError

from popflow import __version__
from popflow.app import App
from popflow.config import DEFAULT_CONFIG_NAME, load_config
from popflow.errors import ConfigError, PluginLoadError, StorageError
from popflow.logs import setup_logging
from popflow.poller import PollReport
from popflow.state import StateStoreError
from popflow.terminal import printable, shown, stderr_is_terminal

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, status: int = 2) -> None:
    """Print an error without a traceback and exit.

    Plain text unless stderr is a terminal (logs and cron mail get no escape codes); control
    characters in the message (it may quote the config file) are always shown escaped.
    """
    text = printable(message)
    if stderr_is_terminal():
        err_console.print(Text.assemble(("error:", "bold red"), " ", text), highlight=False, soft_wrap=True)
    else:
        sys.stderr.write(f"error: {text}\n")
        sys.stderr.flush()
    sys.exit(status)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn config and plugin errors into a readable message and exit status 2."""
    try:
        yield
    except ConfigError as exc:
        fail(exc.describe())
    except PluginLoadError as exc:
        fail(str(exc))


def config_option(func: F) -> F:
    """``-c FILE`` (default ``$POPFLOW_CONFIG``, then ``./popflow.yaml``)."""
    return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help=f"config file (default: $POPFLOW_CONFIG or ./{DEFAULT_CONFIG_NAME})")(func)


def load_app(ctx: click.Context, config_path: Path | None) -> App:
    """Load the config and plugins; exit 2 with a readable message on any problem."""
    with user_errors():
        config = load_config(config_path)
        setup_logging(ctx.obj.get("log_level") or config.log_level, ctx.obj.get("log_format") or config.log_format)
        app = App(config, plugins_dirs=ctx.obj.get("plugins_dirs", ()))
    try:
        _ = app.state  # open (and migrate) the state store now: a clear error instead of a traceback later
    except StateStoreError as exc:
        app.close()
        fail(str(exc), status=1)
    except ConfigError as exc:
        app.close()
        fail(ConfigError(exc.problem, file=exc.file or app.file, path=exc.path).describe())
    except (ImportError, ArgumentError) as exc:  # a driver that is not installed, a bad URL option
        app.close()
        fail(ConfigError(f"cannot use this database: {type(exc).__name__}: {exc}", file=app.file,
                         path="state").describe())
    return app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="popflow")
@click.option("--plugins-dir", "plugins_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="load every .py file in this folder as a plugin (repeatable)")
@click.option("-v", "--verbose", count=True, help="more logging (-v info, -vv debug)")
@click.option("-q", "--quiet", is_flag=True, help="only warnings and errors")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, envvar="POPFLOW_LOG_FORMAT",
              help="log lines as text or one JSON object per line (default: the config's log_format, else text)")
@click.pass_context
def main(ctx: click.Context, plugins_dirs: tuple[Path, ...], verbose: int, quiet: bool,
         log_format: str | None) -> None:
    """popflow: turn POP3 mailboxes into data pipelines."""
    ctx.ensure_object(dict)
    ctx.obj["plugins_dirs"] = plugins_dirs
    level = "DEBUG" if verbose >= 2 else "INFO" if verbose == 1 else "WARNING" if quiet else None
    ctx.obj["log_level"] = level
    ctx.obj["log_format"] = log_format
    setup_logging(level or "INFO", log_format or "text")


# -- poll ----------------------------------------------------------------------------------------
@main.command()
@config_option
@click.option("--source", "sources", multiple=True, help="poll only this source (repeatable)")
@click.pass_context
def poll(ctx: click.Context, config_path: Path | None, sources: tuple[str, ...]) -> None:
    """Poll each source (or the named ones) once, then exit.

    Exit status 0 only if every source polled cleanly.
    """
    app = load_app(ctx, config_path)
    with user_errors():
        names = list(sources) or app.enabled_sources()
        for name in names:
            app.source(name)  # unknown names are a usage error before any work
    prepare_data_dir(app)
    reports: list[PollReport] = []
    restore = stop_on_signals(app)
    try:
        if console.is_terminal:
            # Only a terminal gets a progress bar; cron and scripts skip importing it.
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=True) as progress:
                for name in names:
                    # The description is read as markup: a source name is escaped first.
                    task = progress.add_task(escape(printable(name)), total=None)
                    def advance(done: int, total: int, task_id: Any = task) -> None:
                        progress.update(task_id, completed=done, total=total)

                    reports.append(app.poll(name, advance))
        else:
            reports = [app.poll(name) for name in names]
    finally:
        restore()
        app.close()
    print_summary(reports)
    sys.exit(0 if all(report.clean for report in reports) else 1)


def prepare_data_dir(app: App) -> None:
    """Create ``data_dir``; one clear line and exit status 1 when it cannot be (read-only, full)."""
    try:
        app.prepare_data_dir()
    except StorageError as exc:
        app.close()
        fail(str(exc), status=1)


def stop_on_signals(app: App) -> Callable[[], None]:
    """SIGINT/SIGTERM set ``app.context.stop``: the poll finishes the message in hand and sends QUIT,
    so the deletions it earned apply. A second signal exits at once (the ledger makes that safe).
    Returns a function restoring the previous handlers."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if app.context.stop.is_set():
            err_console.print(f"second {name}: exiting now; unfinished messages stay on the server")
            os._exit(130)
        err_console.print(f"{name}: finishing the message in hand, then QUIT")
        app.context.stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore


def print_summary(reports: list[PollReport]) -> None:
    """The per-source summary table."""
    table = Table(title="popflow poll")
    columns = ["source", "fetched", "delivered", "skipped", "dropped", "quarantined", "dead letters", "deferred",
               "defects", "errors", "seconds"]
    for column in columns:
        table.add_column(column, justify="left" if column == "source" else "right")
    for report in reports:
        c = report.counts
        table.add_row(shown(report.source), str(c.fetched), str(c.delivered), str(c.skipped), str(c.dropped),
                      str(c.quarantined), str(c.dead_letters), str(c.deferred), str(c.defects), str(c.errors),
                      f"{c.seconds:.2f}")
    console.print(table)
    for report in reports:
        if report.error:  # one line, whatever the width; server text is not markup
            console.print(shown(f"{report.source}: {report.error}", "red"), highlight=False, soft_wrap=True)


# -- init ----------------------------------------------------------------------------------------
@main.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def init(file: Path | None) -> None:
    """Write a commented starter config (default ./popflow.yaml); never overwrites."""
    target = file or Path(DEFAULT_CONFIG_NAME)
    if target.exists():
        fail(f"{target} already exists; not overwriting it", status=1)
    template = resources.files("popflow").joinpath("templates/popflow.yaml").read_text(encoding="utf-8")
    target.write_text(template, encoding="utf-8")
    os.chmod(target, 0o600)  # it will hold credentials
    console.print(shown(f"wrote {target}; edit it, then run `popflow check -c {target}`"), highlight=False)


# -- plugins ---------------------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List every registered plugin (built-in and installed) and the hooks it implements."""
    from popflow.plugins import describe_plugins, make_plugin_manager

    with user_errors():
        pm = make_plugin_manager(plugins_dirs=ctx.obj.get("plugins_dirs", ()))
    rows = describe_plugins(pm)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="popflow plugins")
    for column in ("name", "kind", "hooks"):
        table.add_column(column)
    for row in rows:
        # A plugin's name is its file's name: shown escaped, like any outside text.
        table.add_row(shown(row["name"]), "built-in" if row["builtin"] else "installed", shown(", ".join(row["hooks"])))
    console.print(table)
    console.print(shown(f"source types: {', '.join(sorted(pm.registry.sources))}; "
                        f"sink types: {', '.join(sorted(pm.registry.sinks))}"), highlight=False)


# The other commands live in their own modules and register themselves on ``main``.
from popflow import cli_check, cli_ops, cli_run, cli_sources, cli_stored, cli_worker  # noqa: E402,F401
