"""The database sink on SQLite, PostgreSQL and MariaDB: schema, idempotence, batching, messy text, errors."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sqlite3
import traceback
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy import exc as sa_exc

from popflow.context import RuntimeContext
from popflow.errors import DeadLetterError, RetryableError
from popflow.message import Address, Attachment, Body, Message
from popflow.migrate import head_revision
from popflow.parsing.parser import parse_message
from popflow.plugins import make_plugin_manager
from popflow.raw import RawMessage
from popflow.sinks.database import MIGRATIONS, DatabaseConfig, DatabaseSink
from tests.support.databases import SERVER_URLS, TestDatabase, require_server, sqlite_shape

PASSWORD = "s3cr3t-Pa55word"
RAW = b"From: Ann <ann@example.com>\r\nSubject: Hello\r\n\r\nbody \xff\x00 bytes\r\n"


# -- helpers ---------------------------------------------------------------------------------------
def make_message(uidl: str = "uidl-1", *, source: str = "support", subject: str | None = "Hello",
                 body: str | None = "plain body", html: str | None = "<p>html</p>",
                 attachments: tuple[tuple[str, bytes], ...] = (), raw: bytes = RAW,
                 date: datetime | None = None, meta: dict[str, Any] | None = None) -> Message:
    """A message built by hand, with a body loader like the parser's."""
    message = Message(
        source=source, uidl=uidl, message_id=f"<{uidl}@example.com>", subject=subject,
        from_=Address(name="Ann Example", address="ann@example.com"),
        to=[Address(address="bob@example.com"), Address(name="Cé", address="ce@example.com")],
        reply_to=[Address(address="reply@example.com")],
        date=date or datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))),
        headers=[("Subject", subject or ""), ("X-Test", "1"), ("X-Test", "2")],
        tags={"order", "vip"}, meta=meta if meta is not None else {"order_number": "42"},
    )
    message.attach_raw(RawMessage.from_bytes(raw))
    items = []
    for name, data in attachments:
        item = Attachment(filename=name, content_type="application/pdf", size=len(data),
                          sha256=hashlib.sha256(data).hexdigest(), content_id=None, inline=False)
        item._content_loader = lambda data=data: data
        items.append(item)
    message.set_body_loader(lambda: Body(text=body, html=html, attachments=items))
    return message


def make_sink(target: TestDatabase, tmp_path: Path, **options: Any) -> DatabaseSink:
    """A sink on ``target`` with the test's private prefix."""
    options = {"type": "database", "url": target.url, "table_prefix": target.prefix, **options}
    config = DatabaseConfig(**options)
    return DatabaseSink("db", config, RuntimeContext(data_dir=tmp_path / "data", base_dir=tmp_path))


@pytest.fixture
def sink(database: TestDatabase, tmp_path: Path) -> Iterator[DatabaseSink]:
    """An open sink with default options."""
    opened = make_sink(database, tmp_path)
    opened.open()
    try:
        yield opened
    finally:
        opened.close()


def rows(engine: Engine, table: Any) -> list[Any]:
    """Every row of ``table`` ordered by id, read on a fresh connection."""
    with engine.connect() as connection:
        return list(connection.execute(select(table).order_by(table.c.id)))


def count(target: TestDatabase, table: str) -> int:
    """Rows in ``table`` seen by a separate connection (only committed data)."""
    engine = target.engine()
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f"SELECT COUNT(*) FROM {target.prefix}{table}")).scalar_one())
    finally:
        engine.dispose()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def break_connection(target: TestDatabase, sink: DatabaseSink) -> None:
    """Cut the sink's open connection: the server kills it (PostgreSQL, MariaDB) or it is closed (SQLite)."""
    assert sink._connection is not None
    if target.kind == "sqlite":
        sink._connection.connection.dbapi_connection.close()  # type: ignore[union-attr]
        return
    if target.kind == "postgresql":
        backend = sink._connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        statement = f"SELECT pg_terminate_backend({int(backend)})"
    else:
        backend = sink._connection.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
        statement = f"KILL {int(backend)}"
    engine = target.engine()
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(statement)
            connection.commit()
    finally:
        engine.dispose()


# -- schema --------------------------------------------------------------------------------------
def test_open_creates_the_schema_by_migration(sink: DatabaseSink, database: TestDatabase) -> None:
    with sink.engine.connect() as connection:
        version = connection.execute(text(f"SELECT version_num FROM {database.prefix}alembic_version")).all()
        assert [row[0] for row in version] == [head_revision(MIGRATIONS)] == ["0002"]
        names = set(inspect(connection).get_table_names())
        assert {f"{database.prefix}messages", f"{database.prefix}attachments"} <= names
        # The migration and db_schema describe the same tables.
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": sink.tables.version_table})
        diffs = compare_metadata(context, sink.tables.metadata)
        assert [diff for diff in diffs if database.prefix in repr(diff)] == []
    sink.close()
    sink.open()  # at head already: changes nothing
    assert sink.check().endswith(", 0 messages")


# -- writing -------------------------------------------------------------------------------------
def test_write_and_commit_stores_every_field(sink: DatabaseSink) -> None:
    sink.write(make_message(attachments=(("a.pdf", b"%PDF-1"), ("b.pdf", b"%PDF-2"))))
    sink.commit()
    [row] = rows(sink.engine, sink.tables.messages)
    assert (row.source, row.uidl, row.message_id) == ("support", "uidl-1", "<uidl-1@example.com>")
    assert (row.subject, row.from_name, row.from_address) == ("Hello", "Ann Example", "ann@example.com")
    assert row.to == [{"name": "", "address": "bob@example.com"}, {"name": "Cé", "address": "ce@example.com"}]
    assert row.cc == []
    assert row.reply_to == [{"name": "", "address": "reply@example.com"}]
    assert row.date == datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    assert (row.size, row.sha256) == (len(RAW), hashlib.sha256(RAW).hexdigest())
    assert (row.text, row.html) == ("plain body", "<p>html</p>")
    assert row.headers == [["Subject", "Hello"], ["X-Test", "1"], ["X-Test", "2"]]
    assert (row.meta, row.tags, row.defects) == ({"order_number": "42"}, ["order", "vip"], [])
    assert row.raw is None
    assert abs(row.received_at - datetime.now(UTC)) < timedelta(minutes=5)
    attachments = rows(sink.engine, sink.tables.attachments)
    assert [(a.message_id, a.position, a.filename, a.content_type, a.size, a.inline, a.content)
            for a in attachments] == [(row.id, 0, "a.pdf", "application/pdf", 6, False, None),
                                      (row.id, 1, "b.pdf", "application/pdf", 6, False, None)]
    assert attachments[0].sha256 == hashlib.sha256(b"%PDF-1").hexdigest()


def test_writing_a_message_again_changes_nothing(sink: DatabaseSink) -> None:
    sink.write(make_message(attachments=(("a.pdf", b"1"),)))
    sink.write(make_message(subject="same batch", attachments=(("a.pdf", b"1"),)))
    sink.commit()
    sink.write(make_message(subject="changed", attachments=(("x.pdf", b"2"), ("y.pdf", b"3"))))
    sink.commit()
    [row] = rows(sink.engine, sink.tables.messages)
    assert row.subject == "Hello"
    assert [a.filename for a in rows(sink.engine, sink.tables.attachments)] == ["a.pdf"]


def test_uidls_are_case_sensitive(sink: DatabaseSink) -> None:
    for uidl in ("abc", "ABC", "Abc"):
        sink.write(make_message(uidl))
    sink.write(make_message("abc", source="other"))
    sink.commit()
    assert sorted((r.source, r.uidl) for r in rows(sink.engine, sink.tables.messages)) == [
        ("other", "abc"), ("support", "ABC"), ("support", "Abc"), ("support", "abc")]


def test_a_batch_is_one_transaction(sink: DatabaseSink, database: TestDatabase) -> None:
    for number in range(100):
        sink.write(make_message(f"u{number:03d}", attachments=(("a.txt", b"x"),)))
    assert count(database, "messages") == 0  # nothing visible before commit
    sink.commit()
    assert count(database, "messages") == 100
    assert count(database, "attachments") == 100


def test_rollback_leaves_nothing(sink: DatabaseSink, database: TestDatabase) -> None:
    for number in range(3):
        sink.write(make_message(f"u{number}", attachments=(("a.txt", b"x"),)))
    sink.rollback()
    sink.commit()  # nothing pending: a no-op
    assert count(database, "messages") == count(database, "attachments") == 0
    sink.write(make_message("u0"))  # the sink is usable after a rollback
    sink.commit()
    assert count(database, "messages") == 1


def test_store_raw_keeps_the_exact_bytes(database: TestDatabase, tmp_path: Path) -> None:
    raw = RAW + bytes(range(256)) * 300  # every byte value, past 64 KB (MariaDB's BLOB limit)
    sink = make_sink(database, tmp_path, store_raw=True, store_attachments=True)
    sink.open()
    try:
        content = os.urandom(70_000)
        sink.write(make_message(raw=raw, attachments=(("big.bin", content), ("empty.txt", b""))))
        sink.commit()
        [row] = rows(sink.engine, sink.tables.messages)
        assert bytes(row.raw) == raw
        assert row.size == len(raw)
        assert [bytes(a.content) for a in rows(sink.engine, sink.tables.attachments)] == [content, b""]
    finally:
        sink.close()


def test_messy_text_is_stored(sink: DatabaseSink) -> None:
    subject = "Grüße 😀 日本語 \U0001F4E6"
    long_text = "ä😀" * 40_000  # past 64 KB of UTF-8: needs LONGTEXT on MariaDB
    sink.write(make_message("emoji", subject=subject, body=long_text, html=None,
                            meta={"emoji": "🎉", "when": datetime(2024, 1, 1, tzinfo=UTC), "ids": {3, 1},
                                  "nan": float("nan"), "blob": b"\xff"}))
    sink.write(make_message("nul", subject="a\x00b", body="line\x00end", html="<p>\x00</p>",
                            meta={"k\x00": "v\x00"}))
    sink.write(make_message("surrogate", subject="bad \udcff byte", body="pair \ud83d\ude00"))
    sink.commit()
    by_uidl = {row.uidl: row for row in rows(sink.engine, sink.tables.messages)}
    emoji = by_uidl["emoji"]
    assert (emoji.subject, emoji.text, emoji.html) == (subject, long_text, None)
    assert emoji.meta == {"emoji": "🎉", "when": "2024-01-01T00:00:00+00:00", "ids": [1, 3], "nan": "nan",
                          "blob": "/w=="}
    assert emoji.defects == []
    # Documented rule (popflow.sinks.db_rows): NUL becomes U+FFFD on every database, and is noted.
    nul = by_uidl["nul"]
    assert (nul.subject, nul.text, nul.html) == ("a\ufffdb", "line\ufffdend", "<p>\ufffd</p>")
    assert nul.meta == {"k\ufffd": "v\ufffd"}
    assert nul.defects == ["database: NUL characters replaced with U+FFFD"]
    surrogate = by_uidl["surrogate"]
    assert (surrogate.subject, surrogate.text) == ("bad \ufffd byte", "pair 😀")
    assert surrogate.defects == ["database: invalid Unicode (lone surrogates) replaced with U+FFFD"]


def test_dates_are_stored_in_utc_or_null(sink: DatabaseSink) -> None:
    sink.write(make_message("naive", date=datetime(2024, 2, 3, 4, 5, 6)))
    sink.write(make_message("ancient", date=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))))
    sink.write(make_message("far", date=datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))))
    sink.commit()
    by_uidl = {row.uidl: row for row in rows(sink.engine, sink.tables.messages)}
    assert by_uidl["naive"].date == datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)
    for uidl in ("ancient", "far"):
        assert by_uidl[uidl].date is None
        assert "out of range, stored as NULL" in by_uidl[uidl].defects[0]


# -- errors ----------------------------------------------------------------------------------------
def reject_subject(target: TestDatabase, subject: str) -> None:
    """Make the database refuse messages with ``subject`` (a permanent, per-message failure)."""
    table = f"{target.prefix}messages"
    engine = target.engine()
    try:
        with engine.begin() as connection:
            if target.kind == "sqlite":
                connection.exec_driver_sql(
                    f"CREATE TRIGGER {target.prefix}reject BEFORE INSERT ON {table} "
                    f"WHEN NEW.subject = '{subject}' BEGIN SELECT RAISE(ABORT, 'rejected'); END")
            else:
                connection.exec_driver_sql(f"ALTER TABLE {table} ADD CONSTRAINT {target.prefix}reject "
                                           f"CHECK (subject IS NULL OR subject <> '{subject}')")
    finally:
        engine.dispose()


def test_a_refused_message_is_a_dead_letter_and_never_half_commits_a_batch(
        sink: DatabaseSink, database: TestDatabase) -> None:
    reject_subject(database, "reject-me")
    sink.write(make_message("before", attachments=(("a.txt", b"a"),)))
    with pytest.raises(DeadLetterError, match="writing support/bad"):
        sink.write(make_message("bad", subject="reject-me", attachments=(("b.txt", b"b"),)))
    with pytest.raises(RetryableError, match="write the batch again"):
        sink.commit()
    assert count(database, "messages") == 0
    sink.rollback()
    with pytest.raises(DeadLetterError):  # alone, the refused message is refused again
        sink.write(make_message("bad", subject="reject-me"))
    sink.commit()  # nothing else was pending
    sink.write(make_message("before", attachments=(("a.txt", b"a"),)))
    sink.write(make_message("after"))
    sink.commit()
    assert [row.uidl for row in rows(sink.engine, sink.tables.messages)] == ["before", "after"]
    assert count(database, "attachments") == 1


def test_concurrent_writers_store_a_message_once(database: TestDatabase, tmp_path: Path) -> None:
    first = make_sink(database, tmp_path, connect_timeout=0.3)
    second = make_sink(database, tmp_path, connect_timeout=0.3)
    first.open()
    second.open()
    try:
        first.write(make_message("one"))  # first's transaction is open (and has read, on MariaDB)
        if database.kind == "sqlite":
            with pytest.raises(RetryableError, match="locked"):  # one writer at a time
                second.write(make_message("two", attachments=(("b.txt", b"b"),)))
            second.rollback()
        else:
            second.write(make_message("two", attachments=(("b.txt", b"b"),)))
            second.commit()
        # "two" is committed elsewhere but maybe not visible to first's snapshot: still stored once.
        first.write(make_message("two", attachments=(("a.txt", b"a"),)))
        first.commit()
    finally:
        first.close()
        second.close()
    assert count(database, "messages") == 2
    assert count(database, "attachments") == 1


def test_a_row_too_large_for_mariadb_is_a_dead_letter(tmp_path: Path) -> None:
    require_server("mariadb")
    target = TestDatabase("mariadb", SERVER_URLS["mariadb"], f"t{os.urandom(5).hex()}_")
    sink = make_sink(target, tmp_path, store_raw=True)
    try:
        sink.open()
        assert sink._max_packet is not None
        with pytest.raises(DeadLetterError, match="max_allowed_packet"):
            sink.write(make_message("huge", raw=b"x" * (sink._max_packet // 2 + 1)))
        sink.write(make_message("small"))
        sink.commit()
        assert count(target, "messages") == 1
    finally:
        sink.close()
        target.drop_tables()


def test_unreachable_database_is_retryable(tmp_path: Path) -> None:
    port = closed_port()
    urls = [f"postgresql+psycopg://popflow:{PASSWORD}@127.0.0.1:{port}/test",
            f"mysql+pymysql://popflow:{PASSWORD}@127.0.0.1:{port}/test",
            f"sqlite:///{tmp_path}/missing-dir/x.db"]
    for url in urls:
        sink = make_sink(TestDatabase("any", url, "popflow_"), tmp_path, connect_timeout="2s")
        assert PASSWORD not in sink.describe()
        for action in (sink.open, sink.check):
            with pytest.raises(RetryableError) as caught:
                action()
            shown = "".join(traceback.format_exception(caught.value))
            assert PASSWORD not in shown, shown
        sink.close()


def test_lost_connection_fails_write_and_commit_as_retryable(
        sink: DatabaseSink, database: TestDatabase) -> None:
    sink.write(make_message("one"))
    break_connection(database, sink)
    with pytest.raises(RetryableError, match="writing support/two"):
        sink.write(make_message("two"))
    with pytest.raises(RetryableError, match="write the batch again"):
        sink.commit()  # "one" went with the connection: never report it durable
    assert count(database, "messages") == 0
    sink.rollback()
    sink.write(make_message("one"))
    break_connection(database, sink)
    with pytest.raises(RetryableError, match="committing"):
        sink.commit()
    sink.rollback()
    # The pool reconnects: writing the batch again works.
    sink.write(make_message("one"))
    sink.write(make_message("two"))
    sink.commit()
    assert count(database, "messages") == 2


def test_a_locked_sqlite_database_is_retryable(tmp_path: Path) -> None:
    target = TestDatabase("sqlite", f"sqlite:///{tmp_path}/locked.db", "popflow_")
    other = target.engine()
    sink = make_sink(target, tmp_path, connect_timeout=0.2)
    try:
        with other.connect() as locker:
            locker.exec_driver_sql("BEGIN EXCLUSIVE")
            with pytest.raises(RetryableError, match="locked"):
                sink.open()
            locker.rollback()
        sink.open()
        sink.write(make_message("one"))
        with other.connect() as reader:  # a reader keeps the writer from committing
            reader.exec_driver_sql("BEGIN")
            reader.exec_driver_sql("SELECT COUNT(*) FROM popflow_messages").all()
            with pytest.raises(RetryableError, match=r"committing.*locked"):
                sink.commit()
            reader.rollback()
        sink.rollback()
        sink.write(make_message("one"))
        sink.commit()
        assert count(target, "messages") == 1
    finally:
        sink.close()
        other.dispose()


@pytest.mark.parametrize(("error", "expected"), [
    (sa_exc.OperationalError("INSERT", {}, Exception("server closed the connection")), RetryableError),
    (sa_exc.InterfaceError("INSERT", {}, Exception("connection already closed")), RetryableError),
    (sa_exc.InternalError("INSERT", {}, Exception("current transaction is aborted")), RetryableError),
    (sa_exc.OperationalError("INSERT", {}, Exception(1213, "Deadlock found")), RetryableError),
    (sa_exc.DataError("INSERT", {}, Exception("value too long for type character varying(255)")),
     DeadLetterError),
    (sa_exc.IntegrityError("INSERT", {}, Exception("null value in column")), DeadLetterError),
    (sa_exc.OperationalError("INSERT", {}, Exception(4025, "CONSTRAINT failed")), DeadLetterError),
    (sa_exc.OperationalError("INSERT", {}, Exception(1153, "packet bigger than max_allowed_packet")),
     DeadLetterError),
])
def test_errors_are_classified(tmp_path: Path, error: Exception, expected: type[Exception]) -> None:
    sink = make_sink(TestDatabase("any", "sqlite://", "popflow_"), tmp_path)
    classified = sink._error(error, "writing s/u")
    assert type(classified) is expected
    assert str(classified).startswith("database sink db: writing s/u: ")


def test_the_password_never_shows(database: TestDatabase, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sink = make_sink(database, tmp_path, url=database.with_password(PASSWORD))
    seen = [sink.describe(), repr(sink.config), str(sink.config.model_dump())]
    try:
        sink.open()
        reject_subject(database, "reject-me")
        sink.write(make_message("bad", subject="reject-me"))
    except (RetryableError, DeadLetterError) as error:  # MariaDB refuses the password; others trust it
        seen.append("".join(traceback.format_exception(error)))
    finally:
        sink.close()
    seen.append(caplog.text)
    assert len(seen) == 5
    for shown in seen:
        assert PASSWORD not in shown
    if database.kind != "sqlite":
        assert sink.describe().startswith(f"database {database.url.split('://')[0]}://")
        assert ":***@" in sink.describe()


def test_describe_and_check(sink: DatabaseSink, database: TestDatabase) -> None:
    assert sink.describe().endswith(f"(prefix {database.prefix})")
    sink.write(make_message("a"))
    sink.write(make_message("b"))
    sink.commit()
    product = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB"}[database.kind]
    report = sink.check()
    assert report.startswith(f"ok: {product} "), report
    assert report.endswith(", 2 messages"), report


def test_check_before_the_schema_exists_changes_nothing(database: TestDatabase, tmp_path: Path) -> None:
    report = make_sink(database, tmp_path).check()
    assert report.startswith("ok: ")
    assert "tables not created yet" in report
    assert count_tables(database) == 0


def count_tables(target: TestDatabase) -> int:
    """Tables with this test's prefix."""
    engine = target.engine()
    try:
        return sum(name.startswith(target.prefix) for name in inspect(engine).get_table_names())
    finally:
        engine.dispose()


# -- configuration and registration ------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["Popflow_", "1x_", "pop-flow_", "p; DROP TABLE x", "p" * 33])
def test_unsafe_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValidationError, match="table_prefix"):
        DatabaseConfig(type="database", url="sqlite://", table_prefix=prefix)


def test_a_bad_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as caught:
        DatabaseConfig(type="database", url=f"not a url {PASSWORD}")
    assert "not a valid SQLAlchemy URL" in str(caught.value)
    config = DatabaseConfig(type="database", url=f"postgresql://u:{PASSWORD}@h/db")
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config.model_dump())


def test_relative_sqlite_paths_follow_the_config_file(tmp_path: Path) -> None:
    sink = make_sink(TestDatabase("sqlite", "sqlite:///orders.db", "popflow_"), tmp_path)
    sink.open()
    sink.close()
    assert (tmp_path / "orders.db").is_file()


def test_the_plugin_registers_the_database_type() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    assert pm.registry.sink_type("database") is DatabaseSink


# -- the real-mail corpus ---------------------------------------------------------------------------
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"  # beside the checkout


def test_every_corpus_message_is_stored(database: TestDatabase, tmp_path: Path) -> None:
    if not (CORPUS / "MANIFEST.tsv").is_file():
        pytest.fail("corpus missing") if os.environ.get("CI") == "true" else pytest.skip(f"no corpus at {CORPUS}")
    try:
        from popflow.parsing.parser import parse_message  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"popflow.parsing.parser is not available yet: {exc}")
    lines = (CORPUS / "MANIFEST.tsv").read_text().splitlines()[1:]
    files = [CORPUS / line.split("\t")[0] for line in lines if line.strip()]
    sink = make_sink(database, tmp_path, store_raw=True)
    sink.open()
    try:
        for number, path in enumerate(files):
            data = path.read_bytes()
            message = parse_message(RawMessage.from_bytes(data), "corpus")
            message.uidl = f"{number:04d}-{hashlib.sha256(data).hexdigest()[:16]}"
            sink.write(message)
        sink.commit()
        with sink.engine.connect() as connection:
            stored = connection.execute(select(func.count()).select_from(sink.tables.messages)).scalar_one()
            raw_bytes = connection.execute(select(func.sum(sink.tables.messages.c.size))).scalar_one()
        assert stored == len(files) > 250
        assert raw_bytes == sum(path.stat().st_size for path in files)
    finally:
        sink.close()


# -- large values ----------------------------------------------------------------------------------
def spooled_message(tmp_path: Path, content: bytes, uidl: str = "big-1") -> tuple[Message, bytes]:
    """A real message with a base64 attachment, spooled like a large download, parsed by popflow."""
    import base64

    encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
    data = (b"From: Ann <ann@example.com>\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
            b"see attached\r\n--b\r\nContent-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="big.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + encoded + b"--b--\r\n")
    raw = RawMessage.from_chunks(iter([data[i:i + 65536] for i in range(0, len(data), 65536)]),
                                 spool_dir=tmp_path / "spool")
    assert raw.spooled
    message = parse_message(raw, "support")
    message.uidl = uidl
    return message, data


def test_large_raw_and_attachments_are_stored_exactly(database: TestDatabase, tmp_path: Path) -> None:
    # Past STREAM_AT: SQLite writes them through incremental blob I/O, the others whole.
    content = os.urandom(3 * 1024 * 1024 + 17)
    message, data = spooled_message(tmp_path, content)
    sink = make_sink(database, tmp_path, store_raw=True, store_attachments=True)
    sink.open()
    try:
        sink.write(message)
        sink.write(make_message("small-after", attachments=(("a.txt", b"a"), ("b.txt", b"bb"))))
        sink.write(message)  # again: nothing changes
        sink.commit()
        stored = rows(sink.engine, sink.tables.messages)
        assert [row.uidl for row in stored] == ["big-1", "small-after"]
        assert bytes(stored[0].raw) == data and stored[0].size == len(data)
        attachments = rows(sink.engine, sink.tables.attachments)
        assert [(a.filename, bytes(a.content), a.size) for a in attachments] == [
            ("big.bin", content, len(content)), ("a.txt", b"a", 1), ("b.txt", b"bb", 2)]
        assert attachments[0].sha256 == hashlib.sha256(content).hexdigest()
    finally:
        sink.close()


def test_sqlite_keeps_raw_last_and_upgrades_an_0001_database(tmp_path: Path) -> None:
    # Rows stored under 0001 keep their raw bytes when 0002 moves the column to the end.
    from popflow.migrate import upgrade

    target = TestDatabase("sqlite", f"sqlite:///{tmp_path / 'old.db'}", "old_")
    engine = target.engine()
    try:
        upgrade(engine, MIGRATIONS, version_table="old_alembic_version",
                parameters={"table_prefix": "old_"}, revision="0001")
        sink = make_sink(target, tmp_path, store_raw=True)
        sink._engine = engine  # write at 0001, without the sink's own upgrade
        sink.write(make_message("before"))
        sink.commit()
        sink._engine = None
        sink.open()  # upgrades to 0002
        try:
            sink.write(make_message("after"))
            sink.commit()
            with sink.engine.connect() as connection:
                columns = [row[1] for row in connection.exec_driver_sql("PRAGMA table_info(old_messages)")]
            assert columns[-1] == "raw" and "raw_0001" not in columns
            assert [bytes(row.raw) for row in rows(sink.engine, sink.tables.messages)] == [RAW, RAW]
        finally:
            sink.close()
    finally:
        engine.dispose()


def test_a_fresh_sqlite_schema_is_the_migrated_one(tmp_path: Path) -> None:
    # A new SQLite database gets the tables from db_schema and a stamp, without Alembic: the same
    # schema the migrations make (raw last included).
    from popflow.migrate import upgrade

    target = TestDatabase("sqlite", f"sqlite:///{tmp_path / 'migrated.db'}", "m_")
    engine = target.engine()
    try:
        upgrade(engine, MIGRATIONS, version_table="m_alembic_version", parameters={"table_prefix": "m_"})
    finally:
        engine.dispose()
    sink = make_sink(TestDatabase("sqlite", f"sqlite:///{tmp_path / 'fresh.db'}", "m_"), tmp_path)
    sink.open()
    sink.close()
    migrated = sqlite_shape(tmp_path / "migrated.db", "m_alembic_version")
    fresh = sqlite_shape(tmp_path / "fresh.db", "m_alembic_version")
    assert fresh["version"] == [(head_revision(MIGRATIONS),)] and set(fresh) >= {"m_messages", "m_attachments"}
    assert fresh == migrated
    with closing(sqlite3.connect(tmp_path / "fresh.db")) as connection:
        assert [row[1] for row in connection.execute("PRAGMA table_info(m_messages)")][-1] == "raw"
