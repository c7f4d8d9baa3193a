"""The database sink's tables as SQLAlchemy Core objects, built for one table prefix.

The migrations in ``popflow/migrations/versions`` create these tables; this module describes
them for queries. A test checks that the two agree.

Portable choices: ``source``/``uidl`` are ``VARCHAR(255)`` (the unique index fits MariaDB's
3072-byte key limit in utf8mb4) and compare byte for byte on MariaDB (``utf8mb4_bin``), because
UIDLs are case-sensitive; long text and bytes are ``LONGTEXT``/``LONGBLOB`` on MariaDB (its
``TEXT``/``BLOB`` stop at 64 KB); JSON is ``JSONB`` on PostgreSQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.types import TypeEngine

from popflow.sql import id_type, key_string, long_binary, long_text

PREFIX_RE = re.compile(r"^(?:[a-z][a-z0-9_]{0,31})?$")
"""Lowercase identifiers only: no quoting surprises on PostgreSQL, no case issues on MariaDB."""

MYSQL_TABLE_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4",
                       "mysql_collate": "utf8mb4_unicode_ci"}


def json_type() -> TypeEngine[Any]:
    """JSON, as ``JSONB`` on PostgreSQL (queryable and indexable)."""
    # The PostgreSQL dialect costs ~25 ms to import: only when a database sink builds its tables.
    from sqlalchemy.dialects import postgresql

    return JSON().with_variant(postgresql.JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    PostgreSQL stores ``timestamptz``; SQLite and MariaDB have no zone, so values are stored as
    naive UTC and read back as aware UTC. Naive input is taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; drop the zone where the column cannot hold one."""
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Always hand back an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class SinkTables:
    """The tables of one prefix."""

    prefix: str
    metadata: MetaData
    messages: Table
    attachments: Table

    @property
    def version_table(self) -> str:
        """Alembic's bookkeeping table for this prefix."""
        return f"{self.prefix}alembic_version"


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` or raise ValueError when it is not a safe table-name prefix."""
    if not PREFIX_RE.match(prefix):
        raise ValueError("table_prefix must be lowercase letters, digits and '_', start with a letter, "
                         "and be at most 32 characters (e.g. popflow_)")
    return prefix


@lru_cache(maxsize=64)
def tables_for(prefix: str) -> SinkTables:
    """The Core tables for ``prefix`` (cached: one MetaData per prefix)."""
    validate_prefix(prefix)
    metadata = MetaData()
    messages = Table(
        f"{prefix}messages", metadata,
        Column("id", id_type(), primary_key=True, autoincrement=True),
        Column("source", key_string(), nullable=False),
        Column("uidl", key_string(), nullable=False),
        Column("message_id", long_text()),
        Column("subject", long_text()),
        Column("from_name", long_text()),
        Column("from_address", long_text()),
        Column("to", json_type()),
        Column("cc", json_type()),
        Column("reply_to", json_type()),
        Column("date", UTCDateTime()),
        Column("size", BigInteger(), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("text", long_text()),
        Column("html", long_text()),
        Column("headers", json_type()),
        Column("meta", json_type()),
        Column("tags", json_type()),
        Column("defects", json_type()),
        Column("received_at", UTCDateTime(), nullable=False),
        # Last: SQLite streams a large value in only when no stored column follows it (migration 0002).
        Column("raw", long_binary()),
        UniqueConstraint("source", "uidl", name=f"{prefix}messages_source_uidl"),
        **MYSQL_TABLE_OPTIONS,
    )
    attachments = Table(
        f"{prefix}attachments", metadata,
        Column("id", id_type(), primary_key=True, autoincrement=True),
        Column("message_id", id_type(),
               ForeignKey(messages.c.id, ondelete="CASCADE", name=f"{prefix}attachments_message_fk"),
               nullable=False),
        Column("position", Integer(), nullable=False),
        Column("filename", long_text(), nullable=False),
        Column("original_filename", long_text()),
        Column("content_type", long_text(), nullable=False),
        Column("size", BigInteger(), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("content_id", long_text()),
        Column("inline", Boolean(), nullable=False),
        Column("content", long_binary()),
        Index(f"{prefix}attachments_message", "message_id"),
        **MYSQL_TABLE_OPTIONS,
    )
    return SinkTables(prefix, metadata, messages, attachments)
