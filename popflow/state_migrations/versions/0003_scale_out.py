"""Scale-out: the schedule's ticks, raw copies in the database, the source registry.

Revision ID: s0003
Revises: s0002
Create Date: 2026-12-03

* ``popflow_schedule``: one row per source, the last tick a scheduler enqueued for it and how far
  that tick's poll task got; the compare-and-set on ``tick`` is what lets several ``popflow run``
  schedulers (``executor: celery``) enqueue each tick exactly once.
* ``popflow_raw_messages``: the raw bytes of dead letters and quarantined messages, by SHA-256,
  when polls run on worker machines (``executor: celery``), so every worker and the CLI read them.
* ``popflow_sources``: sources kept in the database (``popflow sources ...``); ``options`` holds
  the non-secret keys, ``secrets`` a Fernet token of the secret ones (never plain text).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "s0003"
down_revision = "s0002"
branch_labels = None
depends_on = None

MYSQL = ("mysql", "mariadb")


def _key() -> sa.types.TypeEngine:
    return sa.String(190).with_variant(mysql.VARCHAR(190, charset="utf8mb4", collation="utf8mb4_bin"), *MYSQL)


def upgrade() -> None:
    """Create the three tables."""
    op.create_table(
        "popflow_schedule",
        sa.Column("source", _key(), primary_key=True),
        sa.Column("tick", sa.BigInteger(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enqueued_by", sa.String(190), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_table(
        "popflow_raw_messages",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary().with_variant(mysql.LONGBLOB(), *MYSQL), nullable=False),
        sa.Column("details", sa.JSON()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "popflow_sources",
        sa.Column("name", _key(), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.Text()),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop what :func:`upgrade` created."""
    op.drop_table("popflow_sources")
    op.drop_table("popflow_raw_messages")
    op.drop_table("popflow_schedule")
