"""Large values into PostgreSQL in pieces: ``COPY … FROM STDIN`` into a temporary table, then one UPDATE.

Binding a 40 MB ``bytea`` holds it whole on the client, and psycopg's encoding of it again. Appending
pieces (``UPDATE … SET raw = raw || :piece``) bounds the client but is quadratic: PostgreSQL
rewrites (and WAL-logs) the whole value on every append (measured: 97 s for the memory workload).

COPY takes its data as a stream, so one row of one ``bytea`` column can be sent in pieces. The
binary format is used: the field's length (the measured size) and then the bytes as they are,
as fast as binding the value whole (a 40 MB value: 0.26 s either way on loopback; the text
format's hex form took 0.50 s). The value goes into ``pg_temp.popflow_large_value`` (the
session's own table, never WAL-logged, emptied on commit) and one ``UPDATE … FROM`` moves it into
the row the sink inserted with NULL there. The server holds the value; the client holds a piece
(:data:`PIECE`) and psycopg's COPY buffers (≤ 128 KB, flushed to the socket as they fill).

A value whose bytes do not have the measured size (a decoder disagreeing with itself) is padded
or cut to keep the COPY row well-formed, and then stored whole by a plain UPDATE: the bytes are
the truth (as on SQLite, :mod:`popflow.sinks.db_blobs`).

Everything runs on the sink's connection, inside the batch's transaction: a batch that fails
later rolls the values back with their rows.
"""

from __future__ import annotations

import struct
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy import exc as sa_exc

from popflow.sinks.db_rows import LargeValue

PIECE = 256 * 1024
"""The most bytes of a value handed to psycopg at once (a larger chunk is split)."""

TEMP_TABLE = "pg_temp.popflow_large_value"
"""The session's table the values pass through (one row at a time)."""

_EXISTS = f"SELECT to_regclass('{TEMP_TABLE}')"
_CREATE = (f"CREATE TEMPORARY TABLE {TEMP_TABLE} (value bytea) ON COMMIT DELETE ROWS",
           # Stored as it comes: compressed here, the value would be compressed again by the
           # UPDATE (base64 text compresses a little: the 40 MB raw messages took +0.5 s each).
           f"ALTER TABLE {TEMP_TABLE} ALTER value SET STORAGE EXTERNAL")
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # signature, flags, no extension
_TRAILER = struct.pack("!h", -1)


def copy_values(connection: Connection, table: Table, rowid: int, pending: dict[str, LargeValue]) -> None:
    """Store each of ``pending`` (column → value) in row ``rowid`` of ``table``, streamed through COPY."""
    import psycopg  # not at import: the sink works without the PostgreSQL extra
    from psycopg import sql

    dbapi: Any = connection.connection.dbapi_connection
    statement = _EXISTS
    try:
        with dbapi.cursor() as cursor:
            # Made again when missing: a rolled-back transaction takes the one it created with it.
            if cursor.execute(_EXISTS).fetchone()[0] is None:
                for statement in _CREATE:
                    cursor.execute(statement)
            for column, value in pending.items():
                target = sql.SQL("UPDATE {table} SET {column} = ").format(
                    table=sql.Identifier(table.name), column=sql.Identifier(column))
                where = sql.SQL(" WHERE {table}.id = %s").format(table=sql.Identifier(table.name))
                statement = f"COPY {TEMP_TABLE} FROM STDIN (FORMAT binary)"
                with cursor.copy(statement) as copy:
                    exact = _write_value(copy, value)
                if exact:
                    update = target + sql.SQL("v.value FROM {temp} AS v").format(temp=sql.SQL(TEMP_TABLE)) + where
                    statement = update.as_string(dbapi)
                    cursor.execute(update, (rowid,))
                else:
                    statement = (target + sql.SQL("%s") + where).as_string(dbapi)
                    cursor.execute(target + sql.SQL("%s") + where, (value.read(), rowid))
                statement = f"TRUNCATE {TEMP_TABLE}"
                # Not DELETE: nothing vacuums a temporary table, its dead values would pile up.
                cursor.execute(statement)
    except psycopg.Error as error:
        raise sa_exc.DBAPIError.instance(statement, None, error, psycopg.Error) from error


def _write_value(copy: Any, value: LargeValue) -> bool:
    """Send one COPY row holding ``value``; False when its bytes did not have its size (row padded/cut)."""
    copy.write(_HEADER + struct.pack("!hi", 1, value.size))  # one field of value.size bytes
    left = value.size
    exact = True
    for chunk in value.chunks():
        view = memoryview(chunk)
        if len(view) > left:
            view, exact = view[:left], False
        for start in range(0, len(view), PIECE):
            copy.write(view[start:start + PIECE])
        left -= len(view)
    while left:  # fewer bytes than measured: complete the row, the caller stores the truth
        exact = False
        copy.write(bytes(min(left, PIECE)))
        left -= min(left, PIECE)
    copy.write(_TRAILER)
    return exact
