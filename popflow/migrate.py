"""Apply Alembic migrations shipped inside the package, programmatically (no ``alembic.ini``).

Every schema popflow owns (the database sink's tables, the state store) ships as an Alembic
script directory inside the package. :func:`upgrade` brings a database to the head revision of
one of them; it is idempotent, so callers run it on every start. Two things make one script
directory reusable for many table sets:

* ``version_table`` names Alembic's bookkeeping table, so two schemas (or two prefixes of the
  same schema) in one database never share a revision row;
* ``parameters`` reach the migration scripts, which read them with :func:`migration_parameter`
  (the database sink passes ``table_prefix``).

A script directory's ``env.py`` must call :func:`run_migrations_online` (see
``popflow/migrations/env.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, inspect, text
from sqlalchemy.engine import Connection, Engine

# Alembic is imported where it is used: importing it costs ~0.1-0.2 s of start-up, which every
# `popflow poll` paid just because the database sink's module was registered.
if TYPE_CHECKING:
    from alembic.config import Config

_PARAMETERS = "popflow.parameters"
_VERSION_TABLE = "popflow.version_table"
_CONNECTION = "connection"


def _config(script_location: str | Path, version_table: str, parameters: Mapping[str, Any],
            connection: Connection | None = None) -> Config:
    from alembic.config import Config

    # No ini file: everything env.py needs travels in ``attributes``.
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes[_VERSION_TABLE] = version_table
    config.attributes[_PARAMETERS] = dict(parameters)
    if connection is not None:
        config.attributes[_CONNECTION] = connection
    return config


_REVISION_RE = re.compile(r"""^revision\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""", re.MULTILINE)
_DOWN_RE = re.compile(r"""^down_revision\s*(?::[^=]+)?=\s*(.+)$""", re.MULTILINE)


def _script_folder(script_location: str | Path) -> Path | None:
    """The folder of a script directory given as a path or as ``package:folder``."""
    location = str(script_location)
    if ":" in location and not Path(location).exists():
        package, _, folder = location.partition(":")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / folder
    return Path(location)


@lru_cache(maxsize=16)
def scripted_head(script_location: str | Path) -> str | None:
    """The head revision read from the scripts' ``revision``/``down_revision`` lines, without Alembic.

    None when that is not clear-cut (no scripts, several heads, an unusual file): the caller then
    asks Alembic.
    """
    folder = _script_folder(script_location)
    if folder is None or not (folder / "versions").is_dir():
        return None
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (folder / "versions").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        found, down = _REVISION_RE.search(source), _DOWN_RE.search(source)
        if found is None or down is None:
            return None
        revisions.add(found.group(1))
        parents.update(re.findall(r"""["']([^"']+)["']""", down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def stored_revision(connection: Connection, version_table: str) -> str | None:
    """The revision in ``version_table`` (one plain SELECT), or None when there is no such table."""
    if not inspect(connection).has_table(version_table):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {version_table}")).all()
    return str(rows[0][0]) if len(rows) == 1 else None


def head_revision(script_location: str | Path) -> str | None:
    """The head revision of a script directory (``package:path`` or a filesystem path)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config(script_location, "alembic_version", {}))
    return script.get_current_head()


def current_revision(connection: Connection, version_table: str) -> str | None:
    """The revision a database is at, or None when the schema has never been created."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": version_table})
    return context.get_current_revision()


def upgrade(engine: Engine, script_location: str | Path, *, version_table: str,
            parameters: Mapping[str, Any] | None = None, revision: str = "head",
            tables: Sequence[Table] = ()) -> str | None:
    """Upgrade the database behind ``engine`` to ``revision`` (default: head); return the revision reached.

    ``script_location`` is ``"package:folder"`` (e.g. ``"popflow:migrations"``) or a path.
    Running it again at head changes nothing, and costs one query: when the stored revision is the
    scripts' head, Alembic is not even imported (its import alone is ~0.1-0.3 s of start-up).

    ``tables``: the schema the head revision describes (in dependency order). An empty SQLite
    database gets them created directly and stamped at head (:func:`create_fresh`), again without
    Alembic; a test checks that this gives the schema the migrations give.
    """
    if revision == "head" and (head := scripted_head(script_location)) is not None:
        with engine.connect() as connection:
            stored = stored_revision(connection, version_table)
            if stored == head:
                return head
            sqlite = connection.dialect.name == "sqlite"
        if stored is None and tables and sqlite and create_fresh(engine, tables, version_table, head):
            return head
    from alembic import command

    with engine.connect() as connection:
        with connection.begin():
            _serialize(connection, version_table)
            command.upgrade(_config(script_location, version_table, parameters or {}, connection), revision)
        if connection.dialect.name in ("mysql", "mariadb"):
            connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _lock_name(version_table)})
            connection.commit()
    with engine.connect() as connection:
        return current_revision(connection, version_table)


def create_fresh(engine: Engine, tables: Sequence[Table], version_table: str, head: str) -> bool:
    """SQLite: create ``tables`` and stamp ``head`` in one transaction, if none of them exists yet.

    What Alembic recommends for a new database ("create_all, then stamp"), done in one
    ``BEGIN IMMEDIATE`` transaction so that two processes starting together cannot both do it.
    Returns False (nothing done) when any of the tables or the version table is there already.
    """
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = engine.dialect
    names = [table.name for table in tables] + [version_table]
    pooled = engine.raw_connection()
    try:
        dbapi: Any = pooled.driver_connection
        isolation = dbapi.isolation_level
        dbapi.isolation_level = None  # the statements below say where the transaction begins and ends
        try:
            dbapi.execute("BEGIN IMMEDIATE")
            try:
                marks = ", ".join("?" for _ in names)
                if dbapi.execute(f"SELECT 1 FROM sqlite_master WHERE name IN ({marks})", names).fetchone():
                    dbapi.execute("ROLLBACK")
                    return False
                for table in tables:
                    dbapi.execute(str(CreateTable(table).compile(dialect=dialect)))
                    for index in sorted(table.indexes, key=lambda item: str(item.name)):
                        dbapi.execute(str(CreateIndex(index).compile(dialect=dialect)))
                # The version table as Alembic makes it.
                dbapi.execute(f"CREATE TABLE {version_table} (version_num VARCHAR(32) NOT NULL, "
                              f"CONSTRAINT {version_table}_pkc PRIMARY KEY (version_num))")
                dbapi.execute(f"INSERT INTO {version_table} (version_num) VALUES (?)", (head,))
                dbapi.execute("COMMIT")
            except BaseException:
                if dbapi.in_transaction:
                    dbapi.execute("ROLLBACK")
                raise
        finally:
            dbapi.isolation_level = isolation
    finally:
        pooled.close()
    return True


def _serialize(connection: Connection, version_table: str) -> None:
    """Let one process at a time migrate one schema (until this transaction ends).

    Several processes starting together on an empty database (the workers of ``executor:
    celery``, or the poll threads of one process opening one database sink) would otherwise all
    create the same tables at once and fail or wait on each other's locks. The second one waits
    here, then finds the schema at head and changes nothing. SQLite serialises writers already.
    """
    if connection.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(version_table.encode()).digest()[:8], "big", signed=True)
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif connection.dialect.name in ("mysql", "mariadb"):
        # A named lock lasts for the session: upgrade() releases it once the migration is committed.
        connection.execute(text("SELECT GET_LOCK(:name, 300)"), {"name": _lock_name(version_table)})


def _lock_name(version_table: str) -> str:
    return f"popflow:{version_table}"[:64]


def run_migrations_online(context: Any) -> None:
    """The body of a popflow ``env.py``: run the migrations on the connection :func:`upgrade` passed.

    ``context`` is ``alembic.context`` as imported by ``env.py``.
    """
    config = context.config
    connection = config.attributes.get(_CONNECTION)
    if connection is None:
        raise RuntimeError("popflow migrations run through popflow.migrate.upgrade(), not the alembic CLI")
    context.configure(
        connection=connection,
        version_table=config.attributes[_VERSION_TABLE],
        # SQLite cannot ALTER most things; batch mode makes future migrations portable.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def migration_parameter(name: str) -> Any:
    """Inside a migration script: a parameter given to :func:`upgrade` (e.g. ``table_prefix``)."""
    from alembic import op

    config = op.get_context().config
    if config is None or name not in config.attributes.get(_PARAMETERS, {}):
        raise RuntimeError(f"migration parameter {name!r} was not given to popflow.migrate.upgrade()")
    return config.attributes[_PARAMETERS][name]
