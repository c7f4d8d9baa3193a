"""The ledger's batch writes: one upsert statement per batch, executed with plain parameter tuples.

A poll records a whole batch as handled in one transaction before it sends the batch's DELE
(:meth:`popflow.state.StateStore.record_handled`). Building each row through SQLAlchemy's
parameter processing cost more than SQLite's own work (~45 µs per message); here each statement is
compiled once per dialect and executed with ``executemany`` on plain tuples (or dicts, for
drivers with named parameters), the type conversions SQLAlchemy would apply (datetimes on SQLite)
applied directly.

The ledger upsert keeps what it is not told: a ``None`` value leaves the stored column as it was
(``COALESCE``), except ``reason``, which is always written; ``first_seen_at`` is set only when the
row is new. A delivery already recorded is left alone. Both are single statements, so two processes
recording the same message at once cannot collide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, func
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Insert

from popflow.sql import MYSQL

LEDGER_VALUES = ("state", "outcome", "reason", "size", "sha256", "message_id", "handled_at", "deleted_at",
                 "server_uidl", "mailbox", "header_sha256")
"""The ledger's columns besides its key and ``first_seen_at``."""
ALWAYS_WRITTEN = frozenset({"reason"})


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    positional: bool
    processors: dict[str, Callable[[Any], Any]]

    def parameters(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """The rows as the driver takes them, each value converted as its column type says."""
        names, processors = self.names, self.processors
        if not self.positional:
            converted = [{name: row[name] for name in names} for row in rows]
            for name, process in processors.items():
                cache: dict[Any, Any] = {}
                for by_name in converted:
                    by_name[name] = _converted(process, cache, by_name[name])
            return converted
        getter = itemgetter(*names) if len(names) > 1 else (lambda row: (row[names[0]],))
        if not processors:
            return [getter(row) for row in rows]
        # Only a few columns have a processor (timestamps on SQLite), and a batch shares its
        # timestamps: convert those values, each distinct one once, and leave the rest untouched.
        columns: list[tuple[int, Callable[[Any], Any], dict[Any, Any]]] = [
            (index, processors[name], {}) for index, name in enumerate(names) if name in processors]
        tuples = []
        for row in rows:
            values = list(getter(row))
            for index, process, seen in columns:
                values[index] = _converted(process, seen, values[index])
            tuples.append(tuple(values))
        return tuples


def _converted(process: Callable[[Any], Any], seen: dict[Any, Any], value: Any) -> Any:
    """``process(value)``, computed once per distinct value; None stays None."""
    if value is None:
        return None
    found = seen.get(value, seen)
    if found is seen:
        found = seen[value] = process(value)
    return found


_cache: dict[tuple[Any, ...], _Compiled] = {}


def _compile(connection: Connection, table: Table, statement: Insert, columns: Sequence[str]) -> _Compiled:
    dialect = connection.dialect
    # One statement per table here; the SQL differs by dialect (and MySQL's by server version).
    key = (dialect.name, dialect.server_version_info, table.name, tuple(columns))
    found = _cache.get(key)
    if found is not None:
        return found
    compiled = statement.compile(dialect=dialect, column_keys=list(columns))
    names = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else tuple(columns)
    processors: dict[str, Callable[[Any], Any]] = {}
    for name in set(names):
        processor = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    result = _Compiled(compiled.string, names, bool(compiled.positional), processors)
    _cache[key] = result
    return result


def _execute(connection: Connection, compiled: _Compiled, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        connection.exec_driver_sql(compiled.sql, compiled.parameters(rows))


def _upsert_statement(connection: Connection, table: Table, key: Sequence[str], kept: Sequence[str],
                      overwritten: Sequence[str]) -> Insert:
    """INSERT ... ON CONFLICT (key) DO UPDATE (ON DUPLICATE KEY UPDATE on MySQL/MariaDB)."""
    backend = connection.dialect.name
    if backend in MYSQL:
        from sqlalchemy.dialects import mysql

        statement = mysql.insert(table)
        new = statement.inserted
        return statement.on_duplicate_key_update(
            {**{name: func.coalesce(new[name], table.c[name]) for name in kept},
             **{name: new[name] for name in overwritten}})
    if backend == "postgresql":
        from sqlalchemy.dialects import postgresql

        pg = postgresql.insert(table)
        return pg.on_conflict_do_update(
            index_elements=list(key),
            set_={**{name: func.coalesce(pg.excluded[name], table.c[name]) for name in kept},
                  **{name: pg.excluded[name] for name in overwritten}})
    from sqlalchemy.dialects import sqlite

    lite = sqlite.insert(table)
    return lite.on_conflict_do_update(
        index_elements=list(key),
        set_={**{name: func.coalesce(lite.excluded[name], table.c[name]) for name in kept},
              **{name: lite.excluded[name] for name in overwritten}})


def upsert_ledger(connection: Connection, ledger: Table, rows: Sequence[tuple[str, str, dict[str, Any]]],
                  first_seen: datetime) -> None:
    """Insert or update ledger rows ``(source, uidl, values)`` in one statement (see the module docstring)."""
    if not rows:
        return
    columns = ("source", "uidl", "first_seen_at", *LEDGER_VALUES)
    kept = [name for name in LEDGER_VALUES if name not in ALWAYS_WRITTEN]
    statement = _upsert_statement(connection, ledger, ("source", "uidl"), kept, sorted(ALWAYS_WRITTEN))
    compiled = _compile(connection, ledger, statement, columns)
    blank = dict.fromkeys(LEDGER_VALUES)
    # One row per key: a batch naming a key twice keeps its last values, as one UPDATE after another did.
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for source, uidl, values in rows:
        previous = merged.get((source, uidl))
        base = previous if previous is not None else {**blank, "source": source, "uidl": uidl,
                                                      "first_seen_at": first_seen}
        base.update({name: value for name, value in values.items() if value is not None or name in ALWAYS_WRITTEN})
        merged[(source, uidl)] = base
    _execute(connection, compiled, list(merged.values()))


def insert_deliveries(connection: Connection, deliveries: Table, triples: Sequence[tuple[str, str, str]],
                      stamp: datetime) -> None:
    """Record ``(source, uidl, sink)`` deliveries; one already recorded is left as it is."""
    if not triples:
        return
    backend = connection.dialect.name
    if backend in MYSQL:
        from sqlalchemy.dialects import mysql

        statement: Insert = mysql.insert(deliveries)
        # A no-op update: MySQL's way of saying "ignore a duplicate key" without INSERT IGNORE's
        # habit of hiding every other error too.
        statement = statement.on_duplicate_key_update(sink=statement.inserted.sink)  # type: ignore[attr-defined]
    elif backend == "postgresql":
        from sqlalchemy.dialects import postgresql

        statement = postgresql.insert(deliveries).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects import sqlite

        statement = sqlite.insert(deliveries).on_conflict_do_nothing()
    compiled = _compile(connection, deliveries, statement, ("source", "uidl", "sink", "delivered_at"))
    rows = [{"source": source, "uidl": uidl, "sink": sink, "delivered_at": stamp}
            for source, uidl, sink in dict.fromkeys(triples)]
    _execute(connection, compiled, rows)
