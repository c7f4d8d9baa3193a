"""Create ``<prefix>messages`` and ``<prefix>attachments``.

Revision ID: 0001
Revises:
Create Date: 2024-06-01

The table prefix comes from :func:`popflow.migrate.migration_parameter`. Types are spelled out
here rather than imported from :mod:`popflow.sinks.db_schema`, so this migration stays what it was
when it shipped; a test checks that the migrated schema matches ``db_schema``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

from popflow.migrate import migration_parameter

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MYSQL = ("mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4",
                               "mysql_collate": "utf8mb4_unicode_ci"}


def _key() -> sa.types.TypeEngine:
    return sa.String(255).with_variant(mysql.VARCHAR(255, charset="utf8mb4", collation="utf8mb4_bin"), *MYSQL)


def _text() -> sa.types.TypeEngine:
    return sa.Text().with_variant(mysql.LONGTEXT(), *MYSQL)


def _binary() -> sa.types.TypeEngine:
    return sa.LargeBinary().with_variant(mysql.LONGBLOB(), *MYSQL)


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create both tables and their indexes."""
    prefix = migration_parameter("table_prefix")
    op.create_table(
        f"{prefix}messages",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("source", _key(), nullable=False),
        sa.Column("uidl", _key(), nullable=False),
        sa.Column("message_id", _text()),
        sa.Column("subject", _text()),
        sa.Column("from_name", _text()),
        sa.Column("from_address", _text()),
        sa.Column("to", _json()),
        sa.Column("cc", _json()),
        sa.Column("reply_to", _json()),
        sa.Column("date", sa.DateTime(timezone=True)),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("text", _text()),
        sa.Column("html", _text()),
        sa.Column("headers", _json()),
        sa.Column("meta", _json()),
        sa.Column("tags", _json()),
        sa.Column("defects", _json()),
        sa.Column("raw", _binary()),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("source", "uidl", name=f"{prefix}messages_source_uidl"),
        **MYSQL_TABLE,
    )
    op.create_table(
        f"{prefix}attachments",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("message_id", _id(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("filename", _text(), nullable=False),
        sa.Column("original_filename", _text()),
        sa.Column("content_type", _text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content_id", _text()),
        sa.Column("inline", sa.Boolean(), nullable=False),
        sa.Column("content", _binary()),
        sa.ForeignKeyConstraint(["message_id"], [f"{prefix}messages.id"], ondelete="CASCADE",
                                name=f"{prefix}attachments_message_fk"),
        **MYSQL_TABLE,
    )
    op.create_index(f"{prefix}attachments_message", f"{prefix}attachments", ["message_id"])


def downgrade() -> None:
    """Drop both tables (attachments first: it points at messages)."""
    prefix = migration_parameter("table_prefix")
    op.drop_index(f"{prefix}attachments_message", table_name=f"{prefix}attachments")
    op.drop_table(f"{prefix}attachments")
    op.drop_table(f"{prefix}messages")
