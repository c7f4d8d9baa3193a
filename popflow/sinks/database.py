"""The database sink: one row per message in ``<prefix>messages``, attachments in ``<prefix>attachments``.

Works on SQLite, PostgreSQL (psycopg 3) and MySQL/MariaDB (PyMySQL). The schema is created and
upgraded by the migrations in ``popflow/migrations`` when the sink opens.

Transactions: the first :meth:`DatabaseSink.write` after a commit opens a transaction, later
writes join it, :meth:`~DatabaseSink.commit` ends it — one transaction per batch, two round trips
per message (one per table). A failed write — a message the database refuses
(:class:`DeadLetterError`) or a connection error (:class:`RetryableError`) — ends the open
transaction, and the next commit raises RetryableError instead of reporting the batch's earlier
writes durable: write them again (writes are idempotent on ``(source, uidl)``, so that is safe).

MySQL/MariaDB answer a statement larger than ``max_allowed_packet`` (16 MB by default) by dropping
the connection, which would look retryable forever; the sink refuses such a row up front with a
DeadLetterError instead. Bytes travel as hex there, so with ``store_raw`` the largest storable
message is about half of ``max_allowed_packet``.

How text is made storable (NUL characters, invalid Unicode, impossible dates) is described in
:mod:`popflow.sinks.db_rows`. The URL's password never appears in logs, ``describe()`` or errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator
from sqlalchemy import Connection, Engine, event, func, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from popflow.config import SinkSettings
from popflow.durations import Duration, Timeout
from popflow.errors import ConfigError, DeadLetterError, DeliveryError, RetryableError
from popflow.message import Message
from popflow.migrate import current_revision, head_revision, upgrade
from popflow.redact import display_url
from popflow.sinks.base import Sink
from popflow.sinks.db_blobs import insert_attachments, prepare, streaming, write_blobs
from popflow.sinks.db_mysql import check_packet_size
from popflow.sinks.db_rows import attachment_rows, json_dumps, message_row
from popflow.sinks.db_schema import SinkTables, tables_for, validate_prefix
from popflow.sql import engine_url, make_engine

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
"""The sink's Alembic script directory."""

_MYSQL_DUPLICATE_KEY = 1062
_MYSQL_PACKET_TOO_LARGE = 1153
_MYSQL_CHECK_FAILED = (3819, 4025)  # MySQL, MariaDB: PyMySQL reports these as OperationalError
_PRODUCTS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB"}


class DatabaseConfig(SinkSettings):
    """Options of ``type: database`` sinks."""

    url: SecretStr
    """SQLAlchemy URL, e.g. ``postgresql+psycopg://user:pw@host/db``; relative SQLite paths are
    relative to the config file."""
    table_prefix: str = "popflow_"
    store_raw: bool = False
    """Also store the raw message bytes in ``raw``."""
    store_attachments: bool = False
    """Also store each attachment's bytes in ``content``."""
    connect_timeout: Timeout = 10.0
    """Seconds to wait for a connection (SQLite: for a lock)."""
    pool_recycle: Duration = 1800.0
    """Replace pooled connections older than this (servers drop idle ones)."""
    pool_size: int = Field(default=2, ge=1, le=50)

    @field_validator("url")
    @classmethod
    def _parseable_url(cls, value: SecretStr) -> SecretStr:
        try:
            make_url(value.get_secret_value())
        except sa_exc.ArgumentError:
            # SQLAlchemy's message repeats the URL, password included: say less.
            raise ValueError("not a valid SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db)") from None
        return value

    @field_validator("table_prefix")
    @classmethod
    def _safe_prefix(cls, value: str) -> str:
        return validate_prefix(value)


def safe_url(url: URL) -> str:
    """``url`` for humans, the one way popflow shows a URL (:func:`popflow.redact.display_url`)."""
    return display_url(url.render_as_string(hide_password=False))


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, begin transactions (a batch is one transaction) and enforce FKs."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


class DatabaseSink(Sink):
    """Stores messages and attachments as rows in a SQL database (see the module docstring)."""

    config_model: ClassVar[type[SinkSettings]] = DatabaseConfig
    config: DatabaseConfig

    def __init__(self, name: str, config: Any, context: Any) -> None:
        super().__init__(name, config, context)
        self.tables: SinkTables = tables_for(config.table_prefix)
        self._engine: Engine | None = None
        self._connection: Connection | None = None
        self._lost_writes = 0  # writes of this batch a failed transaction took with it
        self._pending = 0
        self._max_packet: int | None = None  # MySQL/MariaDB: the largest statement the server accepts
        self._insert_statement: Any = None  # the message INSERT … ON CONFLICT of this sink's dialect

    # -- URL and engine ------------------------------------------------------------------------
    @property
    def url(self) -> URL:
        """The configured URL, with a relative SQLite path resolved against the config file's folder."""
        url = make_url(self.config.url.get_secret_value())
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
                and not url.database.startswith("file:"):
            url = url.set(database=str(self.context.resolve(url.database)))
        return url

    @property
    def engine_url(self) -> URL:
        """:attr:`url` plus utf8mb4 on MySQL/MariaDB."""
        return engine_url(self.url)

    def _scrub(self, text: str) -> str:
        password = make_url(self.config.url.get_secret_value()).password
        return text.replace(str(password), "***") if password else text

    def _create_engine(self) -> Engine:
        url = self.engine_url
        backend = url.get_backend_name()
        timeout = max(int(self.config.connect_timeout), 1)
        connect_args: dict[str, Any] = {}
        options: dict[str, Any] = {}
        if backend == "sqlite":
            connect_args["timeout"] = self.config.connect_timeout
        else:
            if "connect_timeout" not in url.query:
                connect_args["connect_timeout"] = timeout
            options.update(pool_size=self.config.pool_size, max_overflow=0)
        try:
            engine = make_engine(
                url, hide_parameters=True, pool_recycle=int(self.config.pool_recycle),
                json_serializer=json_dumps, connect_args=connect_args, **options,
            )
        except (ImportError, sa_exc.ArgumentError) as exc:
            extra = {"postgresql": " (pip install 'popflow[postgres]')",
                     "mysql": " (pip install 'popflow[mysql]')"}.get(backend, "")
            raise ConfigError(f"sink {self.name}: cannot use {safe_url(url)}: "
                              f"{self._scrub(str(exc))}{extra}") from None
        if backend == "sqlite":
            _sqlite_transactions(engine)
        return engine

    @property
    def engine(self) -> Engine:
        """The engine; :meth:`open` creates it."""
        if self._engine is None:
            raise RuntimeError(f"database sink {self.name} is not open")
        return self._engine

    # -- errors ----------------------------------------------------------------------------------
    def _error(self, error: Exception, doing: str) -> DeliveryError:
        """Classify a database error: transient ones are retryable, a refused message is a dead letter."""
        orig = getattr(error, "orig", None)
        detail = self._scrub(" ".join(str(orig if orig is not None else error).split()))
        text = f"database sink {self.name}: {doing}: {type(orig or error).__name__}: {detail}"
        code = orig.args[0] if orig is not None and orig.args and isinstance(orig.args[0], int) else None
        if code == _MYSQL_PACKET_TOO_LARGE:
            return DeadLetterError(f"{text} (raise max_allowed_packet on the server)")
        if code in _MYSQL_CHECK_FAILED:
            return DeadLetterError(text)
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return RetryableError(text)
        if isinstance(error, sa_exc.IntegrityError | sa_exc.DataError | sa_exc.NotSupportedError):
            return DeadLetterError(text)
        if isinstance(error, sa_exc.DBAPIError):  # operational, interface, internal, programming
            return RetryableError(text)
        if isinstance(error, sa_exc.StatementError):  # a value the driver could not bind
            return DeadLetterError(text)
        return RetryableError(text)

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sa_exc.SQLAlchemyError as error:
            raise self._error(error, doing) from error

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        """Create the engine and bring the schema to the head migration (idempotent)."""
        if self._engine is not None:
            return
        engine = self._create_engine()
        try:
            with self._guard("creating the schema"):
                revision = upgrade(engine, MIGRATIONS, version_table=self.tables.version_table,
                                   parameters={"table_prefix": self.tables.prefix},
                                   tables=[self.tables.messages, self.tables.attachments])
                if engine.dialect.name in ("mysql", "mariadb"):
                    with engine.connect() as connection:
                        self._max_packet = int(connection.exec_driver_sql("SELECT @@max_allowed_packet")
                                               .scalar_one())
        except DeliveryError as error:
            engine.dispose()
            # Nothing about a message here: a failure to set up is always worth retrying.
            raise error if isinstance(error, RetryableError) else RetryableError(str(error)) from error
        self._engine = engine
        log.info("database sink %s: %s at schema revision %s", self.name, safe_url(self.url), revision)

    def close(self) -> None:
        """Roll back anything uncommitted and release the connection pool."""
        self.rollback()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- writing ---------------------------------------------------------------------------------
    def _transaction(self) -> Connection:
        if self._connection is None:
            connection = self.engine.connect()
            connection.begin()
            self._connection = connection
        return self._connection

    def _discard_transaction(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # Never pool a connection whose transaction failed (a failed SQLite COMMIT stays open);
            # the server rolls back what a dropped connection had not committed.
            with suppress(sa_exc.SQLAlchemyError):
                connection.invalidate()
            with suppress(sa_exc.SQLAlchemyError):
                connection.close()

    def write(self, message: Message) -> None:
        """Insert ``message`` (and its attachments) unless ``(source, uidl)`` is already stored."""
        message.load_body()
        row = message_row(message, store_raw=self.config.store_raw, received_at=datetime.now(UTC))
        attachments = attachment_rows(message, store_content=self.config.store_attachments)
        doing = f"writing {message.source}/{message.uidl}"
        if self._max_packet is not None:
            check_packet_size(f"database sink {self.name}: {doing}", [row, *attachments], self._max_packet)
        try:
            with self._guard(doing):
                connection = self._transaction()
                message_pk = self._insert_message(connection, row)
                if message_pk is not None and attachments:
                    insert_attachments(connection, self.tables.attachments, message_pk, attachments)
        except Exception:
            # A failed statement aborts the transaction on PostgreSQL and may leave a message row
            # without its attachments elsewhere; a value failing midway (its decoder, the spool)
            # leaves a row with part of it: drop the batch rather than ever commit that.
            # (No savepoint per write: it would double the round trips of every batch.)
            self._lost_writes += self._pending
            self._pending = 0
            self._discard_transaction()
            raise
        self._pending += 1

    def _insert_message(self, connection: Connection, row: dict[str, Any]) -> int | None:
        """Insert the row; return its id, or None when ``(source, uidl)`` was already there."""
        table = self.tables.messages
        dialect = connection.dialect.name
        if dialect in ("postgresql", "sqlite"):
            from sqlalchemy.dialects import postgresql, sqlite  # not at import: see json_type()

            row = dict(row)
            pending = prepare(row, streaming(connection))
            if self._insert_statement is None:
                dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
                self._insert_statement = (dialect_insert(table)
                                          .on_conflict_do_nothing(index_elements=["source", "uidl"])
                                          .returning(table.c.id))
            if pending:  # a placeholder for a large value is an SQL expression: it goes in the statement
                result = connection.execute(self._insert_statement.values(**row))
            else:
                # The values as parameters of one statement built once: SQLAlchemy reuses its compiled
                # form. (``.values(**row)`` made a statement and a cache key per message: ~0.8 ms.)
                result = connection.execute(self._insert_statement, row)
            message_pk = result.scalar_one_or_none()
            if message_pk is not None and pending:
                write_blobs(connection, table, message_pk, pending)
            return message_pk
        # MySQL/MariaDB: INSERT IGNORE would also hide truncation and bad values, so look first.
        exists = connection.execute(
            select(table.c.id).where(table.c.source == row["source"], table.c.uidl == row["uidl"])
        ).first()
        if exists is not None:
            return None
        row = dict(row)
        prepare(row, None)  # MariaDB takes no pieces: the value is read for this statement only
        try:
            result = connection.execute(insert(table), row)
        except sa_exc.IntegrityError as error:
            if error.orig is not None and error.orig.args and error.orig.args[0] == _MYSQL_DUPLICATE_KEY:
                return None  # another process stored it since we looked
            raise
        primary_key = result.inserted_primary_key
        return int(primary_key[0]) if primary_key is not None else None

    def commit(self) -> None:
        """Commit the batch; fails if a connection error lost part of it."""
        if self._lost_writes:
            lost, self._lost_writes = self._lost_writes, 0
            self._pending = 0
            self._discard_transaction()
            raise RetryableError(f"database sink {self.name}: a connection error rolled back {lost} "
                                 "write(s) of this batch; write the batch again")
        if self._connection is None:
            return
        try:
            with self._guard("committing"):
                self._connection.commit()
        except DeliveryError as error:
            self._discard_transaction()
            self._pending = 0
            # Whatever the cause, the batch did not become durable: write it again.
            raise error if isinstance(error, RetryableError) else RetryableError(str(error)) from error
        self._pending = 0
        connection, self._connection = self._connection, None
        with suppress(sa_exc.SQLAlchemyError):
            connection.close()  # back to the pool

    def rollback(self) -> None:
        """Forget every write since the last commit."""
        connection, self._connection = self._connection, None
        self._pending = 0
        self._lost_writes = 0
        if connection is not None:
            with suppress(sa_exc.SQLAlchemyError):
                connection.rollback()
            with suppress(sa_exc.SQLAlchemyError):
                connection.close()

    # -- reporting -------------------------------------------------------------------------------
    def describe(self) -> str:
        """``database <url without password> (prefix <prefix>)``."""
        return f"database {safe_url(self.url)} (prefix {self.tables.prefix})"

    def check(self) -> str:
        """Connect and report the server and the number of stored messages; changes nothing."""
        engine = self._engine or self._create_engine()
        try:
            with self._guard("checking"), engine.connect() as connection:
                dialect = connection.dialect
                name = "mariadb" if getattr(dialect, "is_mariadb", False) else dialect.name
                version = ".".join(str(part) for part in (dialect.server_version_info or ()))
                product = f"{_PRODUCTS.get(name, name)} {version}".strip()
                revision = current_revision(connection, self.tables.version_table)
                if revision is None:
                    return f"ok: {product}, tables not created yet (created when the sink opens)"
                count = connection.execute(select(func.count()).select_from(self.tables.messages)).scalar()
                head = head_revision(MIGRATIONS)
                pending = "" if revision == head else f", schema at {revision} (upgrades to {head} on open)"
                return f"ok: {product}, {count} messages{pending}"
        finally:
            if engine is not self._engine:
                engine.dispose()
