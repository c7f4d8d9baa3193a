"""State-store tables of the scale-out features (migration ``s0003``): schedule ticks, raw copies, registry.

They live beside the ledger in :data:`popflow.state.metadata`; see
``popflow/state_migrations/versions/0003_scale_out.py`` for what each holds.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, String, Table, Text

from popflow.sql import long_binary
from popflow.state_tables import _key, metadata

schedule = Table(
    "popflow_schedule", metadata,
    Column("source", _key(), primary_key=True),
    Column("tick", BigInteger, nullable=False),  # the tick's time, in milliseconds since the epoch
    Column("enqueued_at", DateTime(timezone=True), nullable=False),
    Column("enqueued_by", String(190), nullable=False),  # host:pid:random of the scheduler
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(16), nullable=False),  # queued | running | ok | partial | failed | busy | gone
)

raw_messages = Table(
    "popflow_raw_messages", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("data", long_binary(), nullable=False),
    Column("details", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

registry = Table(
    "popflow_sources", metadata,
    Column("name", _key(), primary_key=True),
    Column("type", String(64), nullable=False),
    Column("options", JSON, nullable=False),  # every key but the secret ones
    Column("secrets", Text),  # a Fernet token of the secret keys (JSON), or NULL
    Column("enabled", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
