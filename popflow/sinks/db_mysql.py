"""MySQL/MariaDB's statement limit: refuse up front a row the server would answer by dropping the connection.

MySQL/MariaDB answer a statement larger than ``max_allowed_packet`` (16 MB by default) by dropping
the connection, which would look retryable forever; the database sink refuses such a row with a
DeadLetterError instead (:func:`check_packet_size`).
"""

from __future__ import annotations

from typing import Any

from popflow.errors import DeadLetterError
from popflow.sinks.db_rows import LargeValue, json_dumps

_ESCAPED = (b"\\", b"'", b'"', b"\0", b"\n", b"\r", b"\x1a")  # in text, each becomes two bytes
STATEMENT_OVERHEAD = 64 * 1024
"""Bytes of a statement besides its values: column names, other values, protocol framing."""


def mysql_statement_size(row: dict[str, Any]) -> int:
    """Bytes an INSERT of ``row`` takes on the MySQL wire.

    PyMySQL writes values into the statement: bytes as hex (twice their size), text with quotes
    and backslash escapes.
    """
    size = 0
    for value in row.values():
        if isinstance(value, dict | list):
            value = json_dumps(value)
        if isinstance(value, LargeValue):
            size += 2 * value.size + 16
        elif isinstance(value, bytes):
            size += 2 * len(value) + 16
        elif isinstance(value, str):
            data = value.encode("utf-8")
            size += len(data) + sum(data.count(char) for char in _ESCAPED) + 16
        else:
            size += 32
    return size


def check_packet_size(what: str, rows: list[dict[str, Any]], max_packet: int) -> None:
    """Raise DeadLetterError when a row of ``rows`` would not fit in ``max_packet`` bytes.

    ``what`` starts the message (``database sink NAME: writing SOURCE/UIDL``).
    """
    for row in rows:
        size = mysql_statement_size(row)
        if size > max_packet - STATEMENT_OVERHEAD:
            raise DeadLetterError(
                f"{what}: a row of about {size} bytes exceeds the server's max_allowed_packet "
                f"({max_packet} bytes); raise it on the server, or turn off store_raw/store_attachments")
