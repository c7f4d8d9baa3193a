"""``popflow sources ...``: the source registry in the state database (see :mod:`popflow.source_registry`).

Every source added is validated through the same pydantic model as a YAML entry before it is
stored; secrets (the password, any key the log redaction treats as secret) are stored encrypted
with the operator's key and never printed: ``list`` and ``show`` say only that a secret is set.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import yaml
from rich.table import Table

from popflow.app import App
from popflow.cli.common import config_option, console, fail, user_errors
from popflow.config import expand_env, load_config, load_yaml
from popflow.errors import ConfigError
from popflow.logs import setup_logging
from popflow.private import open_new_private, write_all
from popflow.redact import register_secret
from popflow.source_registry import (
    KEY_ENV,
    RegistryEntry,
    RegistryKeys,
    SourceRegistry,
    generate_key,
    is_secret_key,
)
from popflow.state import StateStoreError
from popflow.terminal import printable, shown

MAX_NAME = 190  # the registry's key column


@contextmanager
def _open(ctx: click.Context, config_path: Path | None) -> Iterator[tuple[App, SourceRegistry]]:
    """The app (without merging the registry: listing or removing needs no key) and its registry;
    the app is closed however the command ends."""
    with user_errors():
        config = load_config(config_path)
        setup_logging(ctx.obj.get("log_level") or config.log_level, ctx.obj.get("log_format") or config.log_format)
        app = App(config, plugins_dirs=ctx.obj.get("plugins_dirs", ()), registry=False)
    try:
        try:
            state = app.state
        except StateStoreError as exc:
            fail(str(exc), status=1)
        yield app, SourceRegistry(state)
    finally:
        app.close()


def _keys(app: App) -> RegistryKeys | None:
    with user_errors():
        return app.registry_keys()


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME or printable(name) != name or name != name.strip():
        fail(f"source name {printable(name)!r}: give 1 to {MAX_NAME} printable characters, "
             "without leading or trailing spaces")


def _store(app: App, book: SourceRegistry, sources: dict[str, dict[str, Any]], replace: bool) -> None:
    """Validate every source as a YAML one, then store them all (or none)."""
    for name in sources:
        _check_name(name)
    with user_errors():
        app.validate_sources(sources)  # a YAML name, an unknown key, a bad port: nothing is stored
        book.add(sources, _keys(app), replace=replace)


@click.group("sources")
def sources_group() -> None:
    """Sources kept in the state database, for many mailboxes (polled like the YAML ones)."""


@sources_group.command("add")
@config_option
@click.argument("name")
@click.option("--type", "type_name", default="pop3", show_default=True, help="the source type")
@click.option("--host")
@click.option("--port", type=int)
@click.option("--tls", type=click.Choice(["implicit", "starttls", "none"]))
@click.option("--username")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="read the password from this file now and store it encrypted (- for stdin)")
@click.option("--password-env", metavar="VAR", help="read the password from this environment variable now")
@click.option("--auth", type=click.Choice(["auto", "user", "apop", "plain", "xoauth2"]))
@click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tls-verify/--no-tls-verify", default=None)
@click.option("--allow-insecure", is_flag=True, default=None, help="allow --tls none")
@click.option("--timeout")
@click.option("--every", help="poll interval (e.g. 1m)")
@click.option("--cron", help="a cron expression instead of --every")
@click.option("--keep-on-server", is_flag=True, default=None)
@click.option("--delete-after")
@click.option("--max-messages", type=int)
@click.option("--max-size")
@click.option("--set", "extra", multiple=True, metavar="KEY=VALUE",
              help="any other option of the source type (VALUE read as YAML; repeatable)")
@click.option("--disabled", is_flag=True, help="store it disabled")
@click.option("--replace", is_flag=True, help="overwrite a registry source of that name")
@click.pass_context
def add(ctx: click.Context, config_path: Path | None, name: str, type_name: str, password_file: Path | None,
        password_env: str | None, extra: tuple[str, ...], disabled: bool, replace: bool, **given: Any) -> None:
    """Add one source (validated like a YAML entry; its password stored encrypted)."""
    options: dict[str, Any] = {"type": type_name}
    options.update({key: str(value) if isinstance(value, Path) else value
                    for key, value in given.items() if value is not None})
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--set {printable(item)!r}: give KEY=VALUE")
        options[key.strip()] = load_yaml(value) if value else ""
    if password_file is not None and password_env is not None:
        fail("give either --password-file or --password-env, not both")
    if password_file is not None:
        try:
            text = sys.stdin.read() if str(password_file) == "-" else password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read --password-file {password_file}: {getattr(exc, 'strerror', None) or exc}")
        options["password"] = text.rstrip("\r\n")
    elif password_env is not None:
        if password_env not in os.environ:
            fail(f"--password-env: environment variable {password_env} is not set")
        options["password"] = os.environ[password_env]
    if "password" in options:
        register_secret(str(options["password"]))  # from here on no log line can show it
    if disabled:
        options["enabled"] = False
    with _open(ctx, config_path) as (app, book):
        _store(app, book, {name: options}, replace)
    console.print(shown(f"{'replaced' if replace else 'added'} source {name}"), highlight=False)


def _read_import(file: Path) -> dict[str, dict[str, Any]]:
    """Sources from a YAML file (``sources:`` mapping, or a bare mapping) or a CSV file (a ``name`` column)."""
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}")
    if file.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "name" not in reader.fieldnames:
            fail(f"{file}: a CSV import needs a header row with a 'name' column")
        found: dict[str, dict[str, Any]] = {}
        for line, row in enumerate(reader, start=2):
            name = (row.pop("name") or "").strip()
            if name in found:
                fail(f"{file}: line {line}: source {printable(name)!r} given twice")
            # An empty cell means "not given"; the values are strings, coerced by the source's model.
            # Cells are read as YAML scalars ("995" a number, "true" a flag), secrets as plain text.
            found[name] = {key.strip(): value if is_secret_key(key.strip()) else load_yaml(value)
                           for key, value in row.items() if key and value not in (None, "")}
        return found
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        fail(f"{file}: not valid YAML: {getattr(exc, 'problem', None) or exc}")
    if isinstance(data, dict) and isinstance(data.get("sources"), dict):
        data = data["sources"]
    if not isinstance(data, dict) or not all(isinstance(body, dict) for body in data.values()):
        fail(f"{file}: give a mapping of source names to their options (optionally under 'sources:')")
    return {str(name): body for name, body in data.items()}


@sources_group.command("import")
@config_option
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="overwrite registry sources of the same names")
@click.pass_context
def import_(ctx: click.Context, config_path: Path | None, file: Path, replace: bool) -> None:
    """Add many sources from a YAML or CSV file, all or none.

    Keys are the YAML ``sources:`` keys; ``${VAR}`` is expanded, and ``password_env: VAR`` reads
    a password from the environment. Passwords are stored encrypted.
    """
    raw = _read_import(file)
    with user_errors():
        try:
            sources = expand_env(raw)
        except ConfigError as exc:
            raise ConfigError(exc.problem, file=str(file), path=exc.path) from None
    for name, options in sources.items():
        variable = options.pop("password_env", None)
        if variable is not None:
            if variable not in os.environ:
                fail(f"{file}: {printable(name)}.password_env: environment variable {variable} is not set")
            options["password"] = os.environ[variable]
        if "password" in options:
            register_secret(str(options["password"]))
    with _open(ctx, config_path) as (app, book):
        _store(app, book, sources, replace)
    console.print(shown(f"imported {len(sources)} source(s) from {file}"), highlight=False)


def _secret_note(entry: RegistryEntry) -> str:
    if entry.secret_keys:
        return "encrypted"
    return "file" if "password_file" in entry.options else "-"


@sources_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per source (no secrets)")
@click.pass_context
def list_(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """The registry's sources (never a password: only whether one is stored)."""
    with _open(ctx, config_path) as (_app, book):
        entries = book.entries()
    if as_json:
        for entry in entries:
            click.echo(json.dumps({"name": entry.name, **entry.shown()}, default=str, sort_keys=True))
        return
    columns = ("name", "type", "host", "port", "tls", "username", "schedule", "enabled", "password")
    rows = []
    for entry in entries:
        o = entry.options
        schedule = f"cron {o['cron']}" if o.get("cron") else f"every {o.get('every', '60s')}"
        rows.append([printable(str(value), newlines=False) for value in (
            entry.name, entry.type, o.get("host", ""), o.get("port", "default"), o.get("tls", "implicit"),
            o.get("username", ""), schedule, "yes" if entry.enabled else "no", _secret_note(entry))])
    if not console.is_terminal:  # scripts and pipes: one tab-separated line a source, never cut short
        for row in [list(columns), *rows]:
            click.echo("\t".join(row))
        return
    table = Table(title=f"popflow sources ({len(entries)})")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[shown(value) for value in row])
    console.print(table)


@sources_group.command("show")
@config_option
@click.argument("name")
@click.pass_context
def show(ctx: click.Context, config_path: Path | None, name: str) -> None:
    """One source's options; secret ones shown as *** (encrypted)."""
    with _open(ctx, config_path) as (_app, book):
        entries = book.entries([name])
    if not entries:
        fail(f"no registry source named {printable(name)!r}", status=1)
    entry = entries[0]
    console.print(shown(f"name: {entry.name}"), highlight=False)
    for key, value in entry.shown().items():
        console.print(shown(f"{key}: {value}"), highlight=False)
    console.print(shown(f"created: {entry.created_at}  updated: {entry.updated_at}"), highlight=False)


def _change(ctx: click.Context, config_path: Path | None, names: tuple[str, ...], verb: str) -> None:
    with _open(ctx, config_path) as (_app, book):
        missing = book.remove(names) if verb == "removed" else book.set_enabled(names, verb == "enabled")
    for name in names:
        if name not in missing:
            console.print(shown(f"{verb} source {name}"), highlight=False)
    if missing:
        fail(f"no registry source named {', '.join(repr(printable(n)) for n in missing)}", status=1)


@sources_group.command("remove")
@config_option
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def remove(ctx: click.Context, config_path: Path | None, names: tuple[str, ...]) -> None:
    """Delete sources from the registry (their ledger stays, so adding one back re-fetches nothing)."""
    _change(ctx, config_path, names, "removed")


@sources_group.command("enable")
@config_option
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def enable(ctx: click.Context, config_path: Path | None, names: tuple[str, ...]) -> None:
    """Poll these registry sources again."""
    _change(ctx, config_path, names, "enabled")


@sources_group.command("disable")
@config_option
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def disable(ctx: click.Context, config_path: Path | None, names: tuple[str, ...]) -> None:
    """Stop polling these registry sources (schedulers and workers notice within seconds)."""
    _change(ctx, config_path, names, "disabled")


@sources_group.command("keygen")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def keygen(file: Path) -> None:
    """Write a new registry key to FILE (mode 0600; never overwrites). Point secret_key_file at it."""
    if file.exists():
        fail(f"{file} already exists; not overwriting it", status=1)
    try:
        fd = open_new_private(file)  # O_EXCL, mode 0600
    except OSError as exc:
        fail(f"cannot create {file}: {exc.strerror or exc}", status=1)
    try:
        write_all(fd, [(generate_key() + "\n").encode("ascii")])
    finally:
        os.close(fd)
    console.print(shown(f"wrote a new key to {file}; set `secret_key_file: {file}` (or {KEY_ENV}) "
                        "on every scheduler, worker and admin machine"), highlight=False)


@sources_group.command("rekey")
@config_option
@click.pass_context
def rekey(ctx: click.Context, config_path: Path | None) -> None:
    """Re-encrypt every registry secret with the first key (after putting a new key first)."""
    with _open(ctx, config_path) as (app, book):
        keys = _keys(app)
        if keys is None:
            fail(f"no key given: set {KEY_ENV} or the config's secret_key_file")
            return
        with user_errors():
            changed = book.rekey(keys)
    console.print(shown(f"re-encrypted {changed} source(s) with key {keys.current}"), highlight=False)


COMMANDS = [sources_group]
