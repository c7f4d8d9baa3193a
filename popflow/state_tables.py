"""The state store's tables, as the migrations in ``popflow/state_migrations`` make them.

:data:`metadata` is the whole schema: a fresh SQLite store is created from it and stamped at the
head revision, and a test compares it with what the migrations build. The scale-out tables
(:mod:`popflow.shared_tables`) join it at the end of this module.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.types import TypeEngine

from popflow.sql import id_type, key_string

metadata = MetaData()



def _key() -> TypeEngine[str]:
    # VARCHAR(190): a two-column primary key in utf8mb4 fits MariaDB's 3072-byte key limit.
    return key_string(190)


_id = id_type


ledger = Table(
    "popflow_ledger", metadata,
    Column("source", _key(), primary_key=True),
    Column("uidl", _key(), primary_key=True),
    Column("state", String(16), nullable=False),  # handled | deleted | skipped
    Column("outcome", String(32)),  # delivered | dropped | quarantined | dead_letter | no_route | skipped
    Column("reason", Text),
    Column("size", BigInteger),
    Column("sha256", String(64)),
    Column("message_id", Text),
    Column("first_seen_at", DateTime(timezone=True)),
    Column("handled_at", DateTime(timezone=True)),
    Column("deleted_at", DateTime(timezone=True)),
    Column("server_uidl", _key()),  # the server's UIDL; ``uidl`` (the key) differs for a reused one
    Column("mailbox", String(32)),  # mailbox_hash(Source.mailbox_identity())
    Column("header_sha256", String(64)),  # popflow.sources.keys.header_digest of the message
    Index("popflow_ledger_live", "source", "state"),
    Index("popflow_ledger_server_uidl", "source", "server_uidl"),
)

mailboxes = Table(
    "popflow_mailboxes", metadata,
    Column("source", _key(), primary_key=True),
    Column("mailbox", String(32), nullable=False),
    Column("identity", Text, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
)

locks = Table(
    "popflow_locks", metadata,
    Column("name", _key(), primary_key=True),
    Column("owner", String(190), nullable=False),  # host:pid:random of the holding process
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

deliveries = Table(
    "popflow_deliveries", metadata,
    Column("source", _key(), primary_key=True),
    Column("uidl", _key(), primary_key=True),
    Column("sink", _key(), primary_key=True),
    Column("delivered_at", DateTime(timezone=True), nullable=False),
)

dead_letters = Table(
    "popflow_dead_letters", metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("source", _key(), nullable=False),
    Column("uidl", _key(), nullable=False),
    Column("sink", _key()),  # None: the message failed before delivery (parse/transform/route)
    Column("stage", String(64), nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False, default=1),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger),
    Column("subject", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("replayed_at", DateTime(timezone=True)),
    Column("status", String(16), nullable=False, default="pending"),  # pending | replayed
    Column("claimed_at", DateTime(timezone=True)),  # set while a replay works on the entry
    Column("claimed_by", String(190)),
    Index("popflow_dead_letters_status", "status"),
    Index("popflow_dead_letters_sha256", "sha256"),
)

quarantine = Table(
    "popflow_quarantine", metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("source", _key(), nullable=False),
    Column("uidl", _key(), nullable=False),
    Column("verdicts", JSON, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger),
    Column("subject", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True)),
    Column("status", String(16), nullable=False, default="held"),  # held | released
    Column("claimed_at", DateTime(timezone=True)),  # set while a release works on the entry
    Column("claimed_by", String(190)),
    Index("popflow_quarantine_status", "status"),
    Index("popflow_quarantine_sha256", "sha256"),
)

runs = Table(
    "popflow_runs", metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("source", _key(), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(16)),
    Column("counts", JSON),
    Column("error", Text),
    Index("popflow_runs_source", "source", "id"),  # each source's latest runs (status, metrics)
)


# The scale-out tables (schedule ticks, raw copies, source registry) join ``metadata`` here, so the
# schema in the code is always the whole schema the migrations make.
from popflow import shared_tables  # noqa: E402,F401
