"""``popflow check [--connect]``: validate, show what would run, optionally log in everywhere."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import click
import yaml
from rich.table import Table
from rich.text import Text

from popflow.app import App
from popflow.cli.common import config_option, console, open_app
from popflow.errors import describe_error
from popflow.redact import display_url
from popflow.terminal import shown

# Server capabilities and notes, error texts and plugin answers are outside text: every cell of
# the connect table is built with shown(), which escapes control characters and is never markup.
OK = Text("ok", style="green")
FAILED = Text("failed", style="red")
STAGE_HOOKS = ("popflow_parse", "popflow_scan", "popflow_filter", "popflow_transform", "popflow_route")


def _schedule(options: Any) -> str:
    if options.cron:
        return f"cron {options.cron}"
    return f"every {options.interval:g}s"


def _stage_plugins(app: App, hook: str) -> list[str]:
    caller = getattr(app.pm.hook, hook)
    return [impl.plugin_name for impl in reversed(caller.get_hookimpls())]


def literal_secrets(path: Path) -> list[str]:
    """Key paths in the file that hold a secret written out, not taken from ``${ENV}`` or a file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    found = []
    for kind, keys in (("sources", ("password",)), ("sinks", ("secret",))):
        entries = raw.get(kind) if isinstance(raw, dict) else None
        for name, options in (entries or {}).items():
            for key in keys:
                value = options.get(key) if isinstance(options, dict) else None
                if isinstance(value, str) and value and "${" not in value:
                    found.append(f"{kind}.{name}.{key}")
    return found


def config_warnings(app: App) -> list[str]:
    """Risky settings worth a warning: a readable file with a literal secret, certificate checks off."""
    warnings = []
    path: Path | None = app.config.source_file
    if path is not None and path.exists():
        mode = path.stat().st_mode
        literal = literal_secrets(path)
        if literal and mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.append(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}) and holds a literal "
                            f"secret ({', '.join(literal)}); run: chmod 600 {path}, or use ${{ENV}} / password_file")
    for name, (_, options) in app.source_configs.items():
        if getattr(options, "tls_verify", True) is False:
            warnings.append(f"sources.{name}: tls_verify is off — the server's certificate is not checked")
        if getattr(options, "tls", None) == "none":
            warnings.append(f"sources.{name}: plaintext POP3 (tls: none)")
    return warnings


@click.command()
@config_option
@click.option("--connect", is_flag=True, help="also log in to each source and open each sink")
@click.pass_context
def check(ctx: click.Context, config_path: Path | None, connect: bool) -> None:
    """Validate the config and plugins and print what would run."""
    failures = 0
    with open_app(ctx, config_path) as app:
        # Names, paths and URLs come from the config (and may hold "[" or escapes): never markup.
        console.print(Text.assemble("config: ", shown(app.file), "  ", ("valid", "green")), highlight=False)
        console.print(shown(f"state: {display_url(app.config.state)}   data_dir: {app.context.data_dir}"),
                      highlight=False)
        executor = app.config.executor
        if executor.type == "celery":
            console.print(shown(f"executor: celery, broker {display_url(executor.broker or '')}, queue "
                                f"{executor.queue}, lease {executor.lease:g}s (polls run on `popflow worker`)"),
                          highlight=False)
        sources = Table(title="sources")
        for column in ("name", "type", "where", "schedule", "policy"):
            sources.add_column(column)
        for name, (_, options) in app.source_configs.items():
            policy = "keep on server" if options.keep_on_server else "delete after delivery"
            if not options.enabled:
                policy += " (disabled)"
            sources.add_row(shown(name), shown(options.type), shown(app.source(name).describe()),
                            shown(_schedule(options)), policy)
        console.print(sources)
        stages = Table(title="stages (in order)")
        stages.add_column("stage")
        stages.add_column("plugins (first asked first)")
        for hook in STAGE_HOOKS:
            stages.add_row(hook.removeprefix("popflow_"), shown(", ".join(_stage_plugins(app, hook)) or "-"))
        console.print(stages)
        console.print(shown(f"filters: {len(app.config.filters)} rule(s)   routes: "
                            + "; ".join(f"{'match' if r.match else 'always'} → {', '.join(r.sinks)}"
                                        + (" (stop)" if r.stop else "") for r in app.config.routes)),
                      highlight=False)
        sinks = Table(title="sinks")
        for column in ("name", "type", "what", "retries"):
            sinks.add_column(column)
        for name, (_, options) in app.sink_configs.items():
            sinks.add_row(shown(name), shown(options.type), shown(app.sink(name).describe()),
                          f"{options.retries} retries, backoff {options.backoff:g}s")
        console.print(sinks)
        for warning in config_warnings(app):
            console.print(Text.assemble(("warning:", "yellow"), " ", shown(warning)), highlight=False)
        if connect:
            failures = _connect_all(app)
    ctx.exit(1 if failures else 0)


def _connect_all(app: App) -> int:
    """Log in to each source and open each sink; print ok/failed per item; return the failures."""
    table = Table(title="connect")
    for column in ("item", "result", "details"):
        table.add_column(column)
    failures = 0
    for name in app.source_configs:
        try:
            session = app.source(name).connect()
            try:
                info = session.info
                caps = " ".join(sorted(info.capabilities)) if info.capabilities else "-"
                details = f"{info.message_count} message(s), {info.total_size} bytes; capabilities: {caps}"
                details += "".join(f"; {note}" for note in info.notes)
            finally:
                session.close(commit=False)
            table.add_row(shown(f"source {name}"), OK, shown(details))
        except Exception as exc:
            failures += 1
            table.add_row(shown(f"source {name}"), FAILED, shown(describe_error(exc)))
    if app.config.executor.type == "celery":
        from popflow.executors.celery_app import check_broker

        try:
            table.add_row(shown("broker"), OK, shown(check_broker(app.config.executor)))
        except Exception as exc:
            failures += 1
            table.add_row(shown("broker"), FAILED, shown(describe_error(exc)))
    for name in app.sink_configs:
        try:
            table.add_row(shown(f"sink {name}"), OK, shown(app.sink(name).check()))
        except Exception as exc:
            failures += 1
            table.add_row(shown(f"sink {name}"), FAILED, shown(describe_error(exc)))
    for impl in reversed(app.pm.hook.popflow_check_connection.get_hookimpls()):
        try:
            found = impl.function()
        except Exception as exc:
            failures += 1
            table.add_row(shown(f"plugin {impl.plugin_name}"), FAILED, shown(describe_error(exc)))
            continue
        if found is not None:
            table.add_row(shown(f"plugin {impl.plugin_name}"), OK, shown(found))
    console.print(table)
    return failures


COMMANDS = [check]
