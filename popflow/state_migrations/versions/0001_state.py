"""Create the state store: ledger, deliveries, dead letters, quarantine, runs.

Revision ID: s0001
Revises:
Create Date: 2026-11-26

Types are spelled out here rather than imported from :mod:`popflow.state`, so this migration stays
what it was when it shipped; a test checks that the migrated schema matches ``popflow.state``.
Keys compare byte for byte on MySQL/MariaDB: UIDLs are case-sensitive, and a case-insensitive
collation would make two messages one — and delete the second without delivering it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "s0001"
down_revision = None
branch_labels = None
depends_on = None

MYSQL = ("mysql", "mariadb")


def _key() -> sa.types.TypeEngine:
    return sa.String(190).with_variant(mysql.VARCHAR(190, charset="utf8mb4", collation="utf8mb4_bin"), *MYSQL)


def _id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create every state table."""
    op.create_table(
        "popflow_ledger",
        sa.Column("source", _key(), primary_key=True),
        sa.Column("uidl", _key(), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32)),
        sa.Column("reason", sa.Text()),
        sa.Column("size", sa.BigInteger()),
        sa.Column("sha256", sa.String(64)),
        sa.Column("message_id", sa.Text()),
        sa.Column("first_seen_at", sa.DateTime(timezone=True)),
        sa.Column("handled_at", sa.DateTime(timezone=True)),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "popflow_deliveries",
        sa.Column("source", _key(), primary_key=True),
        sa.Column("uidl", _key(), primary_key=True),
        sa.Column("sink", _key(), primary_key=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "popflow_dead_letters",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("source", _key(), nullable=False),
        sa.Column("uidl", _key(), nullable=False),
        sa.Column("sink", _key()),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger()),
        sa.Column("subject", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_index("popflow_dead_letters_status", "popflow_dead_letters", ["status"])
    op.create_index("popflow_dead_letters_sha256", "popflow_dead_letters", ["sha256"])
    op.create_table(
        "popflow_quarantine",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("source", _key(), nullable=False),
        sa.Column("uidl", _key(), nullable=False),
        sa.Column("verdicts", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger()),
        sa.Column("subject", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_index("popflow_quarantine_status", "popflow_quarantine", ["status"])
    op.create_index("popflow_quarantine_sha256", "popflow_quarantine", ["sha256"])
    op.create_table(
        "popflow_runs",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("source", _key(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16)),
        sa.Column("counts", sa.JSON()),
        sa.Column("error", sa.Text()),
    )


def downgrade() -> None:
    """Drop every state table."""
    for table in ("popflow_runs", "popflow_quarantine", "popflow_dead_letters", "popflow_deliveries",
                  "popflow_ledger"):
        op.drop_table(table)
