"""The state store: created by migrations on SQLite, PostgreSQL and MariaDB; UIDLs case-sensitive."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from popflow.state import SCHEMA_HEAD, VERSION_TABLE, HandledMessage, StateStore, StateStoreError, metadata


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
