"""Large values (``raw``, attachment ``content``) into the database without several copies of them.

The rows from :mod:`popflow.sinks.db_rows` carry these values as
:class:`~popflow.sinks.db_rows.LargeValue`: a size and a way to stream the bytes (from memory, the
spool file, or an attachment's decoder). Binding a 40 MB value the usual way holds it several times
over: the bytes read, the driver's copy, the database's record being built.

* **SQLite**: a value over :data:`STREAM_AT` is inserted as ``zeroblob(size)`` and then written
  in pieces through ``sqlite3.Connection.blobopen`` (incremental blob I/O), inside the batch's
  transaction. SQLite builds a row's record in memory, but a zeroblob that is the row's *last*
  stored column is never materialised: that is why ``content`` is the last column of the
  attachments table and why migration 0002 moves ``raw`` to the end of the messages table.
* **PostgreSQL**: a value over :data:`STREAM_AT` is inserted as NULL and then sent in pieces
  through ``COPY … FROM STDIN`` into a temporary table and moved into the row by one UPDATE, inside
  the batch's transaction (:mod:`popflow.sinks.db_copy`).
* **MariaDB**: the value is read whole just before its own statement and dropped right after (one
  large value in memory at a time, plus the driver's encoding of it). No way of sending it in
  pieces was found that is not quadratic or bounded by ``max_allowed_packet`` anyway
  (docs/performance.md).

Attachments with large content get a statement each.
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table, func, insert, update
from sqlalchemy import exc as sa_exc

from popflow.sinks.db_copy import copy_values
from popflow.sinks.db_rows import LargeValue

STREAM_AT = 1024 * 1024
"""Values larger than this are streamed (SQLite, PostgreSQL); smaller ones are bound as bytes."""

_STREAMING = ("sqlite", "postgresql")


def streaming(connection: Connection) -> str | None:
    """The dialect when large values go in pieces on this connection, else None (read whole)."""
    name = connection.dialect.name
    return name if name in _STREAMING else None


def prepare(row: dict[str, Any], dialect: str | None) -> dict[str, LargeValue]:
    """Make ``row`` bindable, in place; return the values still to stream, by column.

    Each :class:`LargeValue` becomes its bytes, or (``dialect`` streams and the value is large) a
    placeholder: ``zeroblob(size)`` on SQLite, NULL on PostgreSQL.
    """
    pending: dict[str, LargeValue] = {}
    for column, value in row.items():
        if isinstance(value, LargeValue):
            if dialect is not None and value.size > STREAM_AT:
                row[column] = func.zeroblob(value.size) if dialect == "sqlite" else None
                pending[column] = value
            else:
                row[column] = value.read()
    return pending


def write_blobs(connection: Connection, table: Table, rowid: int, pending: dict[str, LargeValue]) -> None:
    """Write the streamed values of row ``rowid`` (inserted with placeholders) piece by piece."""
    if connection.dialect.name == "postgresql":
        copy_values(connection, table, rowid, pending)
        return
    dbapi = connection.connection.dbapi_connection
    assert isinstance(dbapi, sqlite3.Connection)
    for column, value in pending.items():
        try:
            if not _write_blob(dbapi, table.name, column, rowid, value):
                # The bytes did not have the measured size (a decoder disagreeing with itself): the
                # bytes are the truth, stored whole.
                connection.execute(update(table).where(table.c.id == rowid).values({column: value.read()}))
        except sqlite3.Error as error:
            raise sa_exc.DBAPIError.instance(f"writing {table.name}.{column} of row {rowid}", None, error,
                                             sqlite3.Error) from error


def _write_blob(dbapi: sqlite3.Connection, table: str, column: str, rowid: int, value: LargeValue) -> bool:
    """Stream ``value`` into the zeroblob; False when its bytes do not fill the blob exactly."""
    written = 0
    with dbapi.blobopen(table, column, rowid) as blob:
        for chunk in value.chunks():
            if written + len(chunk) > value.size:
                return False
            blob.write(chunk)
            written += len(chunk)
    return written == value.size


def insert_row(connection: Connection, table: Table, row: dict[str, Any]) -> None:
    """Insert one row of ``table`` whose large values are streamed (SQLite, PostgreSQL) or read just for it."""
    values = dict(row)
    pending = prepare(values, streaming(connection))
    result = connection.execute(insert(table).values(**values))
    if pending:
        primary_key = result.inserted_primary_key
        assert primary_key is not None
        write_blobs(connection, table, int(primary_key[0]), pending)


@lru_cache(maxsize=32)  # bounded: a reloaded daemon builds new Table objects
def _plain_insert(table: Table) -> Any:
    """``INSERT INTO table`` built once: run with parameters, SQLAlchemy reuses its compiled form."""
    return insert(table)


def insert_attachments(connection: Connection, table: Table, message_pk: int, rows: list[dict[str, Any]]) -> None:
    """Insert a message's attachment rows in order: small ones together, large ones one at a time."""
    small: list[dict[str, Any]] = []
    for row in rows:
        values = {**row, "message_id": message_pk}
        content = values.get("content")
        if isinstance(content, LargeValue) and content.size > STREAM_AT:
            if small:  # keep ids in position order
                connection.execute(_plain_insert(table), small)
                small = []
            insert_row(connection, table, values)
        else:
            prepare(values, None)
            small.append(values)
    if small:
        connection.execute(_plain_insert(table), small)
