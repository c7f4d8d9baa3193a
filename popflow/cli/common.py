"""What every ``popflow`` command shares: the console, exiting on an error, the ``-c`` option,
:func:`open_app` (the config's :class:`~popflow.app.App`, always closed) and :func:`stop_on_signals`."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.text import Text
from sqlalchemy.exc import ArgumentError

from popflow.app import App
from popflow.config import DEFAULT_CONFIG_NAME, load_config
from popflow.errors import ConfigError, PluginLoadError, StorageError
from popflow.logs import setup_logging
from popflow.state import StateStoreError
from popflow.terminal import printable, stderr_is_terminal

if TYPE_CHECKING:
    from popflow.ops.listen import ListenAddress
    from popflow.ops.server import OpsServer
    from popflow.scheduler import PollScheduler

log = logging.getLogger("popflow.cli")
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


FAST_EXIT = "popflow.fast_exit"
"""``ctx.meta`` key a command sets when its process may end without Python's module teardown."""


def allow_fast_exit(ctx: click.Context) -> None:
    """Let this process end with :func:`os._exit` once the command returns (see :class:`PopflowGroup`).

    For a command that has closed everything it opened (the App, its sinks, the state store):
    what is left is Python freeing every module and object, ~80 ms of CPU for a ``popflow poll``.
    """
    ctx.meta[FAST_EXIT] = True


def fail(message: str, status: int = 2) -> NoReturn:
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


def _load_app(ctx: click.Context, config_path: Path | None) -> App:
    """Load the config and plugins and open the state store; exit 2 (1) with a readable message."""
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


@contextmanager
def open_app(ctx: click.Context, config_path: Path | None) -> Iterator[App]:
    """The config's :class:`~popflow.app.App` for the ``with`` block, closed when the block ends
    however it ends (:func:`fail` and ``sys.exit`` included), so plugins always see
    ``popflow_shutdown`` and the state store is released.

    Config, plugin and state-store problems exit before the block with one readable line.
    """
    app = _load_app(ctx, config_path)
    try:
        yield app
    finally:
        app.close()


def prepare_data_dir(app: App) -> None:
    """Create ``data_dir``; one clear line and exit status 1 when it cannot be (read-only, full)."""
    try:
        app.prepare_data_dir()
    except StorageError as exc:
        fail(str(exc), status=1)


@contextmanager
def stop_on_signals(stop: Callable[[], None], doing: str) -> Iterator[threading.Event]:
    """For the ``with`` block, SIGINT and SIGTERM call ``stop()`` and log ``"SIGTERM: <doing>"``.

    Polls check the stop event between messages: they finish the message in hand and send QUIT,
    so the deletions they earned apply. A second signal exits at once with status 130 (the ledger
    makes that safe: nothing was deleted that was not delivered). Yields an event that the first
    signal sets; the previous handlers are back when the block ends.
    """
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.warning("second %s: exiting now; unfinished messages stay on the server", name)
            os._exit(130)
        log.warning("%s: %s", name, doing)
        stop()
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ops_server(app: App, scheduler: PollScheduler | None, listen: ListenAddress | None,
               sources: list[str] | None = None) -> OpsServer | None:
    """The metrics/status server when ``--http`` or ``http.listen`` asks for one, listening already
    (``scheduler=None``, ``sources=[]`` for a worker: see :class:`~popflow.ops.server.OpsServer`)."""
    from popflow.ops.listen import parse_listen
    from popflow.ops.server import OpsServer

    if listen is None and app.config.http is not None:
        listen = parse_listen(app.config.http.listen)
    if listen is None:
        return None
    ops = OpsServer(app, scheduler, listen, sources)
    ops.attach()
    try:
        ops.start()
    except OSError as exc:
        fail(f"cannot listen on {listen} for --http: {exc.strerror or exc}", status=1)
    return ops
