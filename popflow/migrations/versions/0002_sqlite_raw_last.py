"""SQLite: make ``raw`` the last column of ``<prefix>messages``, so large messages stream in.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

The database sink writes a large ``raw`` value as ``zeroblob(size)`` and then in pieces through
SQLite's incremental blob I/O (:mod:`popflow.sinks.db_blobs`). SQLite materialises a zeroblob in
memory while it builds the row's record unless no stored column follows it; in 0001 ``raw`` came
before ``received_at``. SQLite cannot reorder columns, so ``raw`` is renamed, re-added at the end,
copied and the old column dropped (``ALTER TABLE ... DROP COLUMN`` needs SQLite 3.35; older
SQLite keeps the 0001 order, which stores the same values with more memory).

Nothing changes on PostgreSQL and MariaDB (they take the value whole; column order is not
visible to queries by name). A migration that adds a column to this table later must keep
``raw`` last on SQLite the same way.
"""

from __future__ import annotations

import sqlite3

from alembic import op

from popflow.migrate import migration_parameter

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OLD = "raw_0001"


def upgrade() -> None:
    """Move ``raw`` to the end on SQLite 3.35 or later."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite" or sqlite3.sqlite_version_info < (3, 35):
        return
    table = f"{migration_parameter('table_prefix')}messages"
    op.execute(f'ALTER TABLE "{table}" RENAME COLUMN raw TO {_OLD}')
    op.execute(f'ALTER TABLE "{table}" ADD COLUMN raw BLOB')
    op.execute(f'UPDATE "{table}" SET raw = {_OLD} WHERE {_OLD} IS NOT NULL')
    op.execute(f'ALTER TABLE "{table}" DROP COLUMN {_OLD}')


def downgrade() -> None:
    """Nothing to undo: the column keeps its name, type and values."""
