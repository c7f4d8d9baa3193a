"""``popflow init``, ``plugins``, ``status``, ``schema``, ``new-plugin``: the operator's and plugin author's tools."""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from pathlib import Path

import click
from rich.table import Table

from popflow.cli.common import config_option, console, fail, open_app, user_errors
from popflow.config import DEFAULT_CONFIG_NAME
from popflow.plugins import describe_plugins, make_plugin_manager
from popflow.terminal import shown


# -- init ----------------------------------------------------------------------------------------
@click.command()
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
@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List every registered plugin (built-in and installed) and the hooks it implements."""
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


# -- status --------------------------------------------------------------------------------------
@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def status(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """Each source's last poll, from the state store (works while `popflow run` runs, and from elsewhere).

    Exit status 0 when every enabled source's last poll succeeded (ok or partial; a source never
    polled yet counts as not failing), 1 when any failed or the state store does not answer,
    2 for a config error.
    """
    from popflow.ops.snapshot import pending_totals, source_status

    with open_app(ctx, config_path) as app:
        try:
            statuses = [source_status(app.state, name, enabled=options.enabled)
                        for name, (_, options) in app.source_configs.items()]
            pending, held = pending_totals(app.state)
        except Exception as exc:  # the store answered when opened, then stopped: say so, no traceback
            fail(f"the state store {app.state.shown_url} did not answer: {type(exc).__name__}", status=1)
    failed = [item.name for item in statuses if item.enabled and item.status == "failed"]
    if as_json:
        click.echo(json.dumps({"sources": [item.as_json() for item in statuses], "dead_letters_pending": pending,
                               "quarantine_held": held, "failed": failed}, indent=2))
        sys.exit(1 if failed else 0)
    table = Table(title="popflow status")
    for column in ("source", "status", "last poll", "last success", "failures in a row", "last counts", "last error"):
        table.add_column(column)
    for item in statuses:
        counts = ", ".join(f"{key} {value}" for key, value in item.counts.items()
                           if key in ("fetched", "delivered", "dead_letters", "deferred", "errors") and value)
        table.add_row(shown(item.name), shown(item.status if item.enabled else f"{item.status} (disabled)"),
                      shown(f"{item.last_poll:%Y-%m-%d %H:%M:%S %Z}" if item.last_poll else None),
                      shown(f"{item.last_success:%Y-%m-%d %H:%M:%S %Z}" if item.last_success else None),
                      str(item.consecutive_failures), shown(counts or "-"),
                      shown(item.error, "red", newlines=False))
    console.print(table)
    console.print(f"dead letters pending: {pending}; held in quarantine: {held}", highlight=False)
    sys.exit(1 if failed else 0)


# -- schema --------------------------------------------------------------------------------------
@click.command()
@click.pass_context
def schema(ctx: click.Context) -> None:
    """Print the JSON Schema of the config file (for editors: see docs/configuration.md).

    It covers the source and sink types and plugin options of every plugin installed (and of
    --plugins-dir folders).
    """
    from popflow.ops.schema import config_schema

    with user_errors():
        pm = make_plugin_manager(plugins_dirs=ctx.obj.get("plugins_dirs", ()))
    click.echo(json.dumps(config_schema(pm), indent=2))


# -- new-plugin ----------------------------------------------------------------------------------
@click.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where to write the package (default: ./popflow-NAME)")
def new_plugin(name: str, directory: Path | None) -> None:
    """Scaffold a plugin package NAME: pyproject with the entry point, a hook, a README, tests.

    Its tests pass right after `pip install -e DIR` (they use popflow's pop3_server fixture).
    """
    from popflow.scaffold import ScaffoldError, names, scaffold

    try:
        target, written = scaffold(name, directory)
    except ScaffoldError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the plugin: {exc.strerror or exc}", status=1)
    for path in written:
        console.print(shown(f"wrote {path}"), highlight=False)
    console.print(shown(f"next: pip install -e '{target}[test]' && pytest {target} "
                        f"(the hook is in {target / names(name)['package'] / 'plugin.py'})"), highlight=False)


COMMANDS = [init, plugins, status, schema, new_plugin]
