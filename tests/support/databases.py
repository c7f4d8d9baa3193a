"""SQL databases for tests: SQLite (a temporary file), PostgreSQL and MariaDB on loopback.

Usage in a test module (the fixtures are registered for every module by tests/conftest.py)::

    def test_something(database):     # runs three times: sqlite, postgresql, mariadb
        sink_options = {"url": database.url, "table_prefix": database.prefix}

Fixtures:

* ``database`` (function scope, parametrized ``sqlite`` / ``postgresql`` / ``mariadb``): a
  :class:`TestDatabase` with a SQLAlchemy ``url`` and a unique ``prefix`` (``t<random>_``), so
  parallel runs and tests never share tables. At teardown every table whose name starts with the
  prefix is dropped.
* ``store_url`` (function scope, same three kinds): a URL for popflow's own state store; on the
  servers, popflow's state tables are dropped before and after the test.

Servers: ``POPFLOW_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
and ``POPFLOW_TEST_MYSQL_URL`` (default ``mysql+pymysql://root@127.0.0.1:3306/test``). A server that
does not answer fails the test when ``CI=true`` and skips it otherwise, with the reason.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, create_engine, text
from sqlalchemy.engine import make_url

from popflow.state import VERSION_TABLE
from popflow.state_tables import metadata

SERVER_URLS = {
    "postgresql": os.environ.get("POPFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mariadb": os.environ.get("POPFLOW_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
KINDS = ("sqlite", "postgresql", "mariadb")


@dataclass(frozen=True)
class TestDatabase:
    """One database for one test: its kind, SQLAlchemy URL and private table prefix."""

    __test__ = False  # not a test class, despite the name

    kind: str
    url: str
    prefix: str

    def engine(self) -> Engine:
        """A new engine on this database (the caller disposes of it); utf8mb4 on MariaDB."""
        url = make_url(self.url)
        if url.get_backend_name() == "mysql" and "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        return create_engine(url)

    def with_password(self, password: str) -> str:
        """This URL with a password added (PostgreSQL and MariaDB here trust loopback, so it still works)."""
        return make_url(self.url).set(password=password).render_as_string(hide_password=False)

    def drop_tables(self) -> None:
        """Drop every table whose name starts with this test's prefix."""
        engine = self.engine()
        try:
            metadata = MetaData()
            metadata.reflect(engine, only=lambda name, _meta: name.startswith(self.prefix))
            metadata.drop_all(engine)
        finally:
            engine.dispose()


@cache
def server_problem(kind: str) -> str | None:
    """Why the server for ``kind`` cannot be used, or None when it answers (checked once per run)."""
    url = SERVER_URLS[kind]
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        return f"{kind} at {shown} is not reachable: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return None


def require_server(kind: str) -> None:
    """Fail (CI=true) or skip the test when the server for ``kind`` does not answer."""
    problem = server_problem(kind)
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.fixture(params=KINDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestDatabase]:
    """A database of each kind with a unique table prefix; its tables are dropped afterwards."""
    kind: str = request.param
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
    else:
        require_server(kind)
        url = SERVER_URLS[kind]
    target = TestDatabase(kind, url, prefix)
    try:
        yield target
    finally:
        if kind != "sqlite":
            target.drop_tables()


@pytest.fixture(params=KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A state-store URL of each kind; on the servers, popflow's state tables are dropped around the test."""
    kind: str = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    require_server(kind)
    url = SERVER_URLS[kind]
    drop_state_tables(url)
    yield url
    drop_state_tables(url)


def drop_state_tables(url: str) -> None:
    """Drop popflow's state tables (not a sink's prefixed ones) from the database at ``url``."""
    engine = create_engine(url)
    try:
        existing = MetaData()
        existing.reflect(engine, only=lambda name, _: name.startswith("popflow_") and not name[8:9].isdigit()
                         and name in {*metadata.tables, VERSION_TABLE})
        existing.drop_all(engine)
    finally:
        engine.dispose()


def sqlite_shape(path: Path, version_table: str) -> dict[str, Any]:
    """Tables, columns, indexes and foreign keys of a SQLite file, order of columns aside."""
    with closing(sqlite3.connect(path)) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        shape: dict[str, Any] = {}
        for name in names:
            columns = sorted(tuple(row[1:]) for row in connection.execute(f"PRAGMA table_info({name})"))
            indexes = sorted(
                (row[1], row[2], tuple(info[2] for info in connection.execute(f"PRAGMA index_info({row[1]})")))
                for row in connection.execute(f"PRAGMA index_list({name})") if row[3] == "c")
            keys = sorted(tuple(row[2:]) for row in connection.execute(f"PRAGMA foreign_key_list({name})"))
            shape[name] = (columns, indexes, keys)
        shape["version"] = connection.execute(f"SELECT version_num FROM {version_table}").fetchall() \
            if version_table in names else None
    return shape
