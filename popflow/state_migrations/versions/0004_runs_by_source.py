"""An index on ``popflow_runs (source, id)``.

Revision ID: s0004
Revises: s0003
Create Date: 2026-12-03

The status page, ``popflow status`` and the metrics read each source's latest runs
(``WHERE source = ? ORDER BY id DESC``). ``popflow_runs`` gains one row per poll — for 10,000
mailboxes polled every minute, 14 million a day — so without this index each of those reads
scans the table.
"""

from __future__ import annotations

from alembic import op

revision = "s0004"
down_revision = "s0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the index."""
    op.create_index("popflow_runs_source", "popflow_runs", ["source", "id"])


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("popflow_runs_source", table_name="popflow_runs")
