"""popflow's own state: the ledger of (source, UIDL), per-sink deliveries, dead letters, quarantine, runs.

The ledger makes a crash at any point safe. The order of work for each batch is:
deliver to every routed sink and commit them → record the deliveries and the message as *handled*
(one transaction) → DELE → QUIT → record *deleted*. A poll that finds a handled UIDL still on the
server (a crash before QUIT) deletes it without delivering it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import TypeEngine

from popflow import migrate
from popflow.errors import PopflowError
from popflow.processes import owner_is_dead
from popflow.redact import display_url
from popflow.sql import engine_url, id_type, key_string, make_engine
from popflow.state_writes import insert_deliveries, upsert_ledger

metadata = MetaData()

SCHEMA_LOCATION = "popflow:state_migrations"
SCHEMA_HEAD = "s0004"
"""The newest state-store migration; a store at this revision is used without loading Alembic."""
VERSION_TABLE = "popflow_state_version"


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

LIVE_STATES = ("handled", "skipped")
"""Rows of messages believed to be on the server; a poll reads only these."""


class StateStoreError(PopflowError):
    """The state store cannot be opened (unreachable database, no permission); no secrets in the text."""
_IN_CHUNK = 500
"""At most this many values in one ``IN (...)`` list."""


def _chunks(values: list[str], size: int = _IN_CHUNK) -> Iterator[list[str]]:
    """``values`` in slices of at most ``size``."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


CLAIM_STALE_AFTER = 3600.0
"""Seconds after which a replay's or release's claim on an entry is taken as abandoned."""


def now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def as_aware(value: datetime | None) -> datetime | None:
    """SQLite drops tz info: read naive datetimes back as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class LedgerRow:
    """What the ledger knows about one message; ``uidl`` is its key (see :mod:`popflow.planner`)."""

    uidl: str
    state: str
    outcome: str | None
    handled_at: datetime | None
    server_uidl: str = ""
    size: int | None = None
    sha256: str | None = None
    header_sha256: str | None = None
    reason: str | None = None
    mailbox: str | None = None

    @property
    def key(self) -> str:
        """The message's ledger key (what sinks see as its ``uidl``)."""
        return self.uidl


@dataclass(frozen=True)
class HandledMessage:
    """One message to record as handled: its outcome and the sinks that have it."""

    source: str
    uidl: str
    outcome: str
    size: int = 0
    sha256: str = ""
    message_id: str | None = None
    reason: str | None = None
    server_uidl: str | None = None
    mailbox: str | None = None
    header_sha256: str | None = None


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets `popflow dead-letters list` read while a poll writes; FULL sync keeps the
        # ledger durable before DELE is sent.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


class StateStore:
    """The ledger and the lists of dead letters, quarantined messages and runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = engine_url(make_url(url))  # utf8mb4 on mysql and mariadb URLs alike
        self.shown_url = display_url(url)  # as configured: no password, no query values
        self.engine = make_engine(parsed)  # the ledger is private: 0600, -wal/-shm follow the main file
        if parsed.get_backend_name() == "sqlite":
            _sqlite_pragmas(self.engine)
        try:
            self._ensure_schema()
        except SQLAlchemyError as exc:
            self.engine.dispose()
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
            raise StateStoreError(f"cannot open the state store {self.shown_url}: {reason}") from None

    def _ensure_schema(self) -> None:
        """Bring the schema to the newest migration; one query, no Alembic import, when it already is."""
        migrate.upgrade(self.engine, SCHEMA_LOCATION, version_table=VERSION_TABLE, tables=metadata.sorted_tables)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction, committed on success."""
        with self.engine.begin() as connection:
            yield connection

    # -- ledger ----------------------------------------------------------------------------
    def ledger_for(self, source: str) -> dict[str, LedgerRow]:
        """Every ledger row of one source, by UIDL."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ledger.c.uidl, ledger.c.state, ledger.c.outcome, ledger.c.handled_at)
                .where(ledger.c.source == source)
            )
            return {row.uidl: LedgerRow(row.uidl, row.state, row.outcome, as_aware(row.handled_at))
                    for row in rows}

    _ROW_COLUMNS = (ledger.c.uidl, ledger.c.state, ledger.c.outcome, ledger.c.handled_at, ledger.c.server_uidl,
                    ledger.c.size, ledger.c.sha256, ledger.c.header_sha256, ledger.c.reason, ledger.c.mailbox)

    @staticmethod
    def _row(row: Any) -> LedgerRow:
        return LedgerRow(row.uidl, row.state, row.outcome, as_aware(row.handled_at), row.server_uidl or row.uidl,
                         row.size, row.sha256, row.header_sha256, row.reason, row.mailbox)

    def live_rows(self, source: str, mailbox: str) -> list[LedgerRow]:
        """The rows of messages believed to be on the server in ``mailbox``, oldest first.

        Rows from before the ledger knew mailboxes (``mailbox`` NULL) count for any mailbox.
        """
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(*self._ROW_COLUMNS).where(ledger.c.source == source, ledger.c.state.in_(LIVE_STATES))
                .order_by(ledger.c.first_seen_at, ledger.c.uidl))
            return [self._row(row) for row in rows if row.mailbox in (None, mailbox)]

    def rows_with(self, source: str, server_uidls: Iterable[str], keys: Iterable[str]) -> list[LedgerRow]:
        """Every row (any state, any mailbox) with one of these server UIDLs or keys (by index)."""
        found: dict[str, LedgerRow] = {}
        with self.engine.connect() as connection:
            for column, values in ((ledger.c.server_uidl, list(server_uidls)), (ledger.c.uidl, list(keys))):
                for chunk in _chunks(list(dict.fromkeys(values))):
                    rows = connection.execute(
                        select(*self._ROW_COLUMNS).where(ledger.c.source == source, column.in_(chunk)))
                    found.update((row.uidl, self._row(row)) for row in rows)
        return list(found.values())

    def revive(self, source: str, keys: Iterable[str]) -> None:
        """A message marked deleted is on the server after all (and recognised): live again."""
        with self.transaction() as connection:
            for chunk in _chunks(list(keys)):
                connection.execute(update(ledger).where(ledger.c.source == source, ledger.c.uidl.in_(chunk))
                                   .values(state="handled", deleted_at=None))

    def switch_mailbox(self, source: str, mailbox: str, identity: str) -> str | None:
        """Record which mailbox ``source`` reads; returns the identity it read before, if different.

        The first time (a ledger from before mailboxes were recorded), the source's rows without a
        mailbox are adopted by this one.
        """
        with self.transaction() as connection:
            row = connection.execute(select(mailboxes).where(mailboxes.c.source == source)).first()
            if row is not None and row.mailbox == mailbox:
                return None
            if row is None:
                connection.execute(insert(mailboxes).values(source=source, mailbox=mailbox, identity=identity,
                                                            since=now()))
                connection.execute(update(ledger).where(ledger.c.source == source, ledger.c.mailbox.is_(None))
                                   .values(mailbox=mailbox))
                return None
            connection.execute(update(mailboxes).where(mailboxes.c.source == source)
                               .values(mailbox=mailbox, identity=identity, since=now()))
            return str(row.identity)

    def record_gone(self, source: str, keys: Iterable[str]) -> None:
        """Mark live rows whose messages the server no longer lists as deleted."""
        key_list = list(keys)
        stamp = now()
        with self.transaction() as connection:
            for chunk in _chunks(key_list):
                connection.execute(
                    update(ledger).where(ledger.c.source == source, ledger.c.uidl.in_(chunk),
                                         ledger.c.state.in_(LIVE_STATES))
                    .values(state="deleted", deleted_at=stamp))

    def record_handled(self, items: Iterable[HandledMessage], delivered: Iterable[tuple[str, str, str]] = ()) -> None:
        """Record messages as handled and the sinks that committed them, in one transaction."""
        stamp = now()
        rows = [(item.source, item.uidl, {
            "state": "handled", "outcome": item.outcome, "reason": item.reason,
            "size": item.size, "sha256": item.sha256, "message_id": item.message_id,
            "handled_at": stamp, "server_uidl": item.server_uidl or item.uidl, "mailbox": item.mailbox,
            "header_sha256": item.header_sha256,
        }) for item in items]
        with self.transaction() as connection:
            insert_deliveries(connection, deliveries, list(delivered), stamp)
            upsert_ledger(connection, ledger, rows, stamp)

    def record_deliveries(self, delivered: Iterable[tuple[str, str, str]]) -> None:
        """Record (source, uidl, sink) deliveries of messages not yet fully handled."""
        with self.transaction() as connection:
            insert_deliveries(connection, deliveries, list(delivered), now())

    def record_state(self, source: str, uidl: str, state: str, reason: str | None = None,
                     size: int | None = None, *, server_uidl: str | None = None, mailbox: str | None = None,
                     outcome: str | None = None) -> None:
        """Record a non-handled state (``skipped``) for one message key."""
        with self.transaction() as connection:
            upsert_ledger(connection, ledger, [(source, uidl, {
                "state": state, "reason": reason, "size": size, "server_uidl": server_uidl or uidl,
                "mailbox": mailbox, "outcome": outcome})], now())

    def record_deleted(self, source: str, uidls: Iterable[str]) -> None:
        """Mark UIDLs deleted from the server (after a successful QUIT)."""
        uidl_list = list(uidls)
        stamp = now()
        with self.transaction() as connection:
            for start in range(0, len(uidl_list), 500):
                connection.execute(
                    update(ledger)
                    .where(ledger.c.source == source, ledger.c.uidl.in_(uidl_list[start:start + 500]))
                    .values(state="deleted", deleted_at=stamp)
                )

    def deliveries_pending(self, source: str, uidls: Iterable[str]) -> dict[str, set[str]]:
        """For messages not yet handled: the sinks that already committed them (by UIDL)."""
        wanted = list(uidls)
        found: dict[str, set[str]] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), 500):
                rows = connection.execute(
                    select(deliveries.c.uidl, deliveries.c.sink).where(
                        deliveries.c.source == source, deliveries.c.uidl.in_(wanted[start:start + 500])))
                for row in rows:
                    found.setdefault(row.uidl, set()).add(row.sink)
        return found

    # -- dead letters ----------------------------------------------------------------------
    def add_dead_letter(self, *, source: str, uidl: str, sink: str | None, stage: str, error: str,
                        attempts: int, sha256: str, size: int, subject: str | None) -> int:
        """List a dead letter; its raw bytes are already in the message store."""
        with self.transaction() as connection:
            result = connection.execute(insert(dead_letters).values(
                source=source, uidl=uidl, sink=sink, stage=stage, error=error, attempts=attempts,
                sha256=sha256, size=size, subject=subject, created_at=now(), status="pending"))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def dead_letters(self, ids: Iterable[int] | None = None, status: str | None = "pending") -> list[dict[str, Any]]:
        """Dead letters, oldest first; all pending ones when ``ids`` is None."""
        return self._entries(dead_letters, ids, status)

    def mark_dead_letter_replayed(self, dead_letter_id: int) -> None:
        """Mark a dead letter as delivered by a replay (and no longer claimed)."""
        self._mark(dead_letters, dead_letter_id, status="replayed", replayed_at=now(), claimed_at=None,
                   claimed_by=None)

    def claim_dead_letter(self, dead_letter_id: int, owner: str, stale_after: float = CLAIM_STALE_AFTER) -> bool:
        """Claim a pending dead letter for one replay; False when another replay has it (or it is not pending)."""
        return self._claim(dead_letters, dead_letter_id, "pending", owner, stale_after)

    def release_dead_letter_claim(self, dead_letter_id: int, owner: str) -> None:
        """Give a claim back (the replay is over, whatever its outcome)."""
        self._unclaim(dead_letters, dead_letter_id, owner)

    def purge_dead_letter(self, dead_letter_id: int) -> str | None:
        """Remove a dead letter; returns its sha256 (so the caller can drop unreferenced raw files)."""
        return self._purge(dead_letters, dead_letter_id)

    # -- quarantine --------------------------------------------------------------------------
    def add_quarantined(self, *, source: str, uidl: str, verdicts: list[dict[str, Any]], sha256: str,
                        size: int, subject: str | None) -> int:
        """List a quarantined message; its raw bytes are already in the message store."""
        with self.transaction() as connection:
            result = connection.execute(insert(quarantine).values(
                source=source, uidl=uidl, verdicts=json.loads(json.dumps(verdicts)), sha256=sha256,
                size=size, subject=subject, created_at=now(), status="held"))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def quarantined(self, ids: Iterable[int] | None = None, status: str | None = "held") -> list[dict[str, Any]]:
        """Quarantine entries, oldest first; all held ones when ``ids`` is None."""
        return self._entries(quarantine, ids, status)

    def mark_released(self, quarantine_id: int) -> None:
        """Mark a quarantine entry as released and delivered (and no longer claimed)."""
        self._mark(quarantine, quarantine_id, status="released", released_at=now(), claimed_at=None, claimed_by=None)

    def claim_quarantined(self, quarantine_id: int, owner: str, stale_after: float = CLAIM_STALE_AFTER) -> bool:
        """Claim a held quarantine entry for one release; False when another release has it (or it is not held)."""
        return self._claim(quarantine, quarantine_id, "held", owner, stale_after)

    def release_quarantine_claim(self, quarantine_id: int, owner: str) -> None:
        """Give a claim back (the release is over, whatever its outcome)."""
        self._unclaim(quarantine, quarantine_id, owner)

    def purge_quarantined(self, quarantine_id: int) -> str | None:
        """Remove a quarantine entry; returns its sha256."""
        return self._purge(quarantine, quarantine_id)

    # Dead letters and quarantine entries share their shape: id, sha256 of the stored bytes, status.
    def _entries(self, table: Table, ids: Iterable[int] | None, status: str | None) -> list[dict[str, Any]]:
        query = select(table).order_by(table.c.id)
        if ids is not None:
            query = query.where(table.c.id.in_(list(ids)))
        elif status is not None:
            query = query.where(table.c.status == status)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def _claim(self, table: Table, entry_id: int, status: str, owner: str, stale_after: float) -> bool:
        """One UPDATE that only one process can win: the entry must be in ``status`` and unclaimed,
        or claimed longer ago than ``stale_after`` or by a process of this host that is gone."""
        stamp = now()
        claimable = or_(table.c.claimed_at.is_(None), table.c.claimed_at < stamp - timedelta(seconds=stale_after))
        with self.transaction() as connection:
            won = connection.execute(update(table).where(table.c.id == entry_id, table.c.status == status, claimable)
                                     .values(claimed_at=stamp, claimed_by=owner)).rowcount == 1
            if won:
                return True
            row = connection.execute(select(table.c.claimed_by).where(table.c.id == entry_id,
                                                                      table.c.status == status)).first()
            if row is None or not owner_is_dead(row.claimed_by):
                return False
            # Its claimant crashed: take the claim over, by an UPDATE only one contender can win.
            return bool(connection.execute(
                update(table).where(table.c.id == entry_id, table.c.status == status,
                                    table.c.claimed_by == row.claimed_by)
                .values(claimed_at=stamp, claimed_by=owner)).rowcount == 1)

    def _unclaim(self, table: Table, entry_id: int, owner: str) -> None:
        with self.transaction() as connection:
            connection.execute(update(table).where(table.c.id == entry_id, table.c.claimed_by == owner)
                               .values(claimed_at=None, claimed_by=None))

    def _mark(self, table: Table, entry_id: int, **values: Any) -> None:
        with self.transaction() as connection:
            connection.execute(update(table).where(table.c.id == entry_id).values(**values))

    def _purge(self, table: Table, entry_id: int) -> str | None:
        with self.transaction() as connection:
            row = connection.execute(select(table.c.sha256).where(table.c.id == entry_id)).first()
            if row is None:
                return None
            connection.execute(delete(table).where(table.c.id == entry_id))
            return str(row.sha256)

    def sha256_referenced(self, sha256: str) -> bool:
        """Whether any dead letter or quarantine entry still needs these raw bytes."""
        with self.engine.connect() as connection:
            for table in (dead_letters, quarantine):
                if connection.execute(select(table.c.id).where(table.c.sha256 == sha256).limit(1)).first():
                    return True
        return False

    # -- runs ---------------------------------------------------------------------------------
    def start_run(self, source: str) -> int:
        """Record the start of one poll of a source."""
        with self.transaction() as connection:
            result = connection.execute(insert(runs).values(source=source, started_at=now(), status="running"))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish_run(self, run_id: int, status: str, counts: dict[str, Any], error: str | None = None) -> None:
        """Record how a poll ended."""
        with self.transaction() as connection:
            connection.execute(update(runs).where(runs.c.id == run_id).values(
                finished_at=now(), status=status, counts=counts, error=error))


# The scale-out tables (schedule ticks, raw copies, source registry) join ``metadata`` here, so the
# schema in the code is always the whole schema the migrations make.
from popflow import shared_tables  # noqa: E402,F401
