"""The state store: created by migrations on SQLite, PostgreSQL and MariaDB; UIDLs case-sensitive."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from popflow.state import SCHEMA_HEAD, VERSION_TABLE, HandledMessage, StateStore, StateStoreError
from popflow.state_tables import metadata
from tests.support.databases import SERVER_URLS, drop_state_tables, require_server, sqlite_shape


def test_schema_comes_from_the_migration_and_matches_the_code(store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = StateStore(store_url)
    try:
        with store.engine.connect() as connection:
            assert connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == SCHEMA_HEAD
            context = MigrationContext.configure(connection, opts={"compare_type": False})
            # Other tables in the same database (the version table, other tests' tables) are not ours.
            differences = [d for d in compare_metadata(context, metadata)
                           if not (d[0] == "remove_table" and d[1].name not in metadata.tables)]
        assert differences == []
    finally:
        store.close()
    StateStore(store_url).close()  # opening again at head changes nothing


def test_uidls_are_case_sensitive(store_url: str) -> None:
    store = StateStore(store_url)
    try:
        store.record_handled([HandledMessage("src", "AbC", "delivered")], [("src", "AbC", "sink")])
        ledger = store.ledger_for("src")
        assert set(ledger) == {"AbC"}
        assert "abc" not in ledger
        store.record_handled([HandledMessage("src", "abc", "delivered")], [("src", "abc", "sink")])
        assert set(store.ledger_for("src")) == {"AbC", "abc"}
        assert store.deliveries_pending("src", ["abc"]) == {"abc": {"sink"}}
    finally:
        store.close()


def test_unreachable_state_store_is_a_clear_error_without_password() -> None:
    with pytest.raises(StateStoreError) as info:
        StateStore("postgresql+psycopg://user:Sekret-Pw@127.0.0.1:1/state?connect_timeout=2")
    assert "Sekret-Pw" not in str(info.value)
    assert "cannot open the state store" in str(info.value)


def test_a_mariadb_url_gets_utf8mb4_like_a_mysql_one() -> None:
    # ``mariadb+pymysql://`` URLs went without charset=utf8mb4, which only ``mysql`` ones got.
    require_server("mariadb")
    url = SERVER_URLS["mariadb"].replace("mysql+", "mariadb+", 1)
    assert url.startswith("mariadb+")
    drop_state_tables(url)
    store = StateStore(url)
    try:
        assert store.engine.url.query.get("charset") == "utf8mb4"
        subject_id = "<😀-日本@example.com>"  # 4-byte UTF-8
        store.record_handled([HandledMessage("src", "u1", "delivered", message_id=subject_id)])
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT @@character_set_client").scalar() == "utf8mb4"
            stored = connection.execute(text("SELECT message_id FROM popflow_ledger WHERE uidl = 'u1'")).scalar()
        assert stored == subject_id
    finally:
        store.close()
        drop_state_tables(url)


def test_batch_writes_keep_what_they_are_not_told(store_url: str) -> None:
    # One upsert per batch: a None leaves the stored value, reason is always written, first_seen_at
    # stays, a key named twice in one batch keeps its last values, a delivery is recorded once.
    store = StateStore(store_url)
    try:
        store.record_handled([HandledMessage("src", "k1", "dead_letter", 10, "a" * 64, "<m1@x>", "broken",
                                             mailbox="mb", header_sha256="h" * 64)], [("src", "k1", "maildir")])
        [before] = [row for row in store.live_rows("src", "mb") if row.uidl == "k1"]
        with store.engine.connect() as connection:
            first_seen = connection.execute(text("SELECT first_seen_at FROM popflow_ledger WHERE uidl = 'k1'")).scalar()
        store.record_handled([HandledMessage("src", "k1", "delivered", 10, "a" * 64),
                              HandledMessage("src", "k2", "delivered", 20, "b" * 64),
                              HandledMessage("src", "k2", "dropped", 20, "b" * 64, reason="filter")],
                             [("src", "k1", "maildir"), ("src", "k1", "db"), ("src", "k1", "db")])
        store.record_state("src", "k3", "skipped", "too large", 99, mailbox="mb")
        rows = {row.uidl: row for row in store.live_rows("src", "mb")}
        assert rows["k1"].outcome == "delivered" and rows["k1"].reason is None  # reason overwritten
        assert rows["k1"].mailbox == "mb" and rows["k1"].header_sha256 == "h" * 64  # None kept them
        assert rows["k1"].handled_at is not None and rows["k1"].handled_at >= before.handled_at  # type: ignore[operator]
        assert (rows["k2"].outcome, rows["k2"].reason) == ("dropped", "filter")
        assert (rows["k3"].state, rows["k3"].reason, rows["k3"].size) == ("skipped", "too large", 99)
        with store.engine.connect() as connection:
            assert connection.execute(text("SELECT first_seen_at FROM popflow_ledger WHERE uidl = 'k1'")).scalar() \
                == first_seen
            message_id = connection.execute(text("SELECT message_id FROM popflow_ledger WHERE uidl = 'k1'")).scalar()
        assert message_id == "<m1@x>"
        assert store.deliveries_pending("src", ["k1"]) == {"k1": {"maildir", "db"}}
    finally:
        store.close()


def test_a_current_schema_opens_without_alembic(tmp_path: Path) -> None:
    # Start-up: a state store and a database sink at head are checked by one query, Alembic unloaded.
    import subprocess
    import sys

    from popflow.migrate import head_revision, scripted_head
    from popflow.sinks.database import MIGRATIONS

    assert scripted_head(MIGRATIONS) == head_revision(MIGRATIONS)
    assert scripted_head("popflow:state_migrations") == head_revision("popflow:state_migrations") == SCHEMA_HEAD
    script = (
        "import sys\n"
        "from popflow.context import RuntimeContext\n"
        "from popflow.sinks.database import DatabaseConfig, DatabaseSink\n"
        "from popflow.state import StateStore\n"
        f"StateStore('sqlite:///{tmp_path}/state.db').close()\n"
        f"config = DatabaseConfig(type='database', url='sqlite:///{tmp_path}/mail.db')\n"
        f"sink = DatabaseSink('db', config, RuntimeContext(data_dir='{tmp_path}', base_dir='{tmp_path}'))\n"
        "sink.open(); sink.close()\n"
        "print('alembic' in sys.modules)\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)]
    assert runs == ["False", "False"]  # the first run creates both schemas fresh, the second finds them at head


def test_a_fresh_sqlite_store_is_created_as_the_migrations_would(tmp_path: Path) -> None:
    # A new SQLite state store is made from the tables in the code and stamped at head, without
    # Alembic; it must be the schema the migrations make, so later migrations find what they expect.
    from popflow import migrate
    from popflow.state import SCHEMA_LOCATION

    engine = create_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    try:
        migrate.upgrade(engine, SCHEMA_LOCATION, version_table=VERSION_TABLE)  # no tables: Alembic's way
    finally:
        engine.dispose()
    StateStore(f"sqlite:///{tmp_path / 'fresh.db'}").close()
    migrated = sqlite_shape(tmp_path / "migrated.db", VERSION_TABLE)
    fresh = sqlite_shape(tmp_path / "fresh.db", VERSION_TABLE)
    assert fresh["version"] == [(SCHEMA_HEAD,)] and len(fresh) > 8 and all(fresh[name][0] for name in metadata.tables)
    assert fresh == migrated
    # Something there already (here: the version table): never created over, Alembic decides.
    engine = create_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    try:
        assert not migrate.create_fresh(engine, metadata.sorted_tables, VERSION_TABLE, SCHEMA_HEAD)
    finally:
        engine.dispose()
