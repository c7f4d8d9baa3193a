"""The ``popflow`` command line. Thin: it parses options, opens an :class:`~popflow.app.App`, prints.

Layout:

* :mod:`popflow.cli.common` — what every command shares: :func:`~popflow.cli.common.fail`,
  the ``-c`` option, :func:`~popflow.cli.common.open_app` (a context manager: the App is
  closed however the command ends) and :func:`~popflow.cli.common.stop_on_signals`;
* one module per command or command group, each with a ``COMMANDS`` list of the click commands
  it defines. The modules import only :mod:`popflow.cli.common`, never this package, so there
  is no import circle.

Adding a command module is one line: write ``popflow/cli/NAME.py`` with ``COMMANDS = [...]`` and
add ``"popflow.cli.NAME"`` to :data:`COMMAND_MODULES`. ``popflow --help`` sorts the commands by
name, so the order here does not matter.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from popflow import __version__
from popflow.cli.common import FAST_EXIT
from popflow.logs import setup_logging

COMMAND_MODULES: tuple[str, ...] = (
    "popflow.cli.poll",  # poll
    "popflow.cli.run",  # run, demo
    "popflow.cli.check",  # check
    "popflow.cli.stored",  # dead-letters, quarantine
    "popflow.cli.ops",  # init, plugins, status, schema, new-plugin
    "popflow.cli.worker",  # worker
    "popflow.cli.sources",  # sources add|list|show|remove|enable|disable|import|keygen|rekey
)
"""Every module whose ``COMMANDS`` are registered on :func:`main` (the only place they are)."""


def _exit_now(code: Any) -> NoReturn:
    """What the interpreter's own exit does that matters, then :func:`os._exit`.

    atexit handlers run (``logging.shutdown`` flushes every handler; :mod:`popflow.spool` removes
    this process's spool folder), stdout and stderr are flushed; the module teardown and the
    final garbage collections, which free memory the kernel reclaims anyway, are skipped.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("text"): printed, status 1, as Python does
        sys.stderr.write(f"{code}\n")
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: Python's own exit reports it as status 120
            status = status or 120
    os._exit(status)


class PopflowGroup(click.Group):
    """The ``popflow`` group; a command may ask (:func:`allow_fast_exit`) to skip the interpreter's teardown.

    Only when ``main`` reads the process's own arguments (``args`` not given: the console script,
    ``python -m popflow``) and no other non-daemon thread runs. Tests that call ``main([...])``
    or click's ``CliRunner`` pass ``args`` and get the ordinary :class:`SystemExit`.
    """

    _meta: dict[str, Any] | None = None

    def make_context(self, *args: Any, **options: Any) -> click.Context:
        """The root context; its ``meta`` (shared with every sub-command's context) is kept for :meth:`main`."""
        ctx = super().make_context(*args, **options)
        self._meta = ctx.meta
        return ctx

    def main(self, args: Sequence[str] | None = None, *rest: Any, **options: Any) -> Any:
        """Run the command line; see the class docstring for the fast exit."""
        if args is not None or options.get("standalone_mode") is False:
            return super().main(args, *rest, **options)
        try:
            return super().main(args, *rest, **options)
        except SystemExit as exc:
            others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
            if self._meta is not None and self._meta.get(FAST_EXIT) and not others:
                _exit_now(exc.code)
            raise


@click.group(cls=PopflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def _register(group: click.Group) -> None:
    for module_name in COMMAND_MODULES:
        for command in importlib.import_module(module_name).COMMANDS:
            group.add_command(command)


_register(main)

__all__ = ["COMMAND_MODULES", "main"]
