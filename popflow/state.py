"""popflow's own state: the ledger of (source, UIDL), per-sink deliveries, dead letters, quarantine, runs.

The ledger makes a crash at any point safe. The order of work for each batch is:
deliver to every routed sink and commit them → record the deliveries and the message as *handled*
(one transaction) → DELE → QUIT → record *deleted*. A poll that finds a handled UIDL still on the
server (a crash before QUIT) deletes it without delivering it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, event, insert, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from popflow import migrate
from popflow.errors import PopflowError
from popflow.redact import display_url
from popflow.sql import engine_url, make_engine
from popflow.state_held import HeldEntries
from popflow.state_tables import deliveries, ledger, mailboxes, metadata, runs
from popflow.state_writes import insert_deliveries, upsert_ledger
from popflow.timestamps import as_aware, now

SCHEMA_LOCATION = "popflow:state_migrations"
SCHEMA_HEAD = "s0004"
"""The newest state-store migration; a store at this revision is used without loading Alembic."""
VERSION_TABLE = "popflow_state_version"

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


class StateStore(HeldEntries):
    """The ledger and the lists of dead letters, quarantined messages (:class:`HeldEntries`) and runs."""

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

