"""Ledger rows know their mailbox, the server's UIDL and a header fingerprint; locks; replay claims.

Revision ID: s0002
Revises: s0001
Create Date: 2026-12-03

* ``popflow_ledger.server_uidl``: the server's UIDL (the row's key ``uidl`` differs when a server
  reused a UIDL or listed it twice); ``mailbox``: which mailbox the row belongs to (a hash of
  :meth:`Source.mailbox_identity`); ``header_sha256``: checked against ``TOP n 0`` before a message
  is deleted unfetched. Old rows get ``server_uidl = uidl`` and no mailbox (adopted by the first
  poll after the upgrade).
* ``popflow_ledger_live`` (source, state) keeps a poll's reads to the messages still on the server.
* ``popflow_mailboxes``: the mailbox each source read last (a re-pointed source is detected).
* ``popflow_locks``: which process polls which source (two processes never poll one source).
* ``claimed_at``/``claimed_by`` on dead letters and quarantine: a replay claims an entry atomically.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "s0002"
down_revision = "s0001"
branch_labels = None
depends_on = None

MYSQL = ("mysql", "mariadb")


def _key() -> sa.types.TypeEngine:
    return sa.String(190).with_variant(mysql.VARCHAR(190, charset="utf8mb4", collation="utf8mb4_bin"), *MYSQL)


def upgrade() -> None:
    """Add the columns, indexes and tables."""
    op.add_column("popflow_ledger", sa.Column("server_uidl", _key()))
    op.add_column("popflow_ledger", sa.Column("mailbox", sa.String(32)))
    op.add_column("popflow_ledger", sa.Column("header_sha256", sa.String(64)))
    op.execute("UPDATE popflow_ledger SET server_uidl = uidl")
    op.create_index("popflow_ledger_live", "popflow_ledger", ["source", "state"])
    op.create_index("popflow_ledger_server_uidl", "popflow_ledger", ["source", "server_uidl"])
    op.create_table(
        "popflow_mailboxes",
        sa.Column("source", _key(), primary_key=True),
        sa.Column("mailbox", sa.String(32), nullable=False),
        sa.Column("identity", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "popflow_locks",
        sa.Column("name", _key(), primary_key=True),
        sa.Column("owner", sa.String(190), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    for table in ("popflow_dead_letters", "popflow_quarantine"):
        op.add_column(table, sa.Column("claimed_at", sa.DateTime(timezone=True)))
        op.add_column(table, sa.Column("claimed_by", sa.String(190)))


def downgrade() -> None:
    """Remove what :func:`upgrade` added."""
    for table in ("popflow_dead_letters", "popflow_quarantine"):
        op.drop_column(table, "claimed_by")
        op.drop_column(table, "claimed_at")
    op.drop_table("popflow_locks")
    op.drop_table("popflow_mailboxes")
    op.drop_index("popflow_ledger_server_uidl", "popflow_ledger")
    op.drop_index("popflow_ledger_live", "popflow_ledger")
    for column in ("header_sha256", "mailbox", "server_uidl"):
        op.drop_column("popflow_ledger", column)
