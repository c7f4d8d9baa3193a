"""What popflow's SQL code shares: portable column types and one engine factory.

The state store (:mod:`popflow.state`), the scale-out tables and the database sink
(:mod:`popflow.sinks.db_schema`) run on SQLite, PostgreSQL and MySQL/MariaDB. The same choices
apply to all of them:

* keys (``source``, ``uidl``, sink names) are ``VARCHAR`` compared byte for byte on MySQL/MariaDB
  (``utf8mb4_bin``), because UIDLs are case-sensitive;
* unbounded text and bytes are ``LONGTEXT``/``LONGBLOB`` on MySQL/MariaDB, whose ``TEXT``/``BLOB``
  stop at 64 KB;
* 64-bit ids, except on SQLite where only ``INTEGER`` aliases the auto-incrementing rowid;
* connections to MySQL and MariaDB (``mysql+...`` and ``mariadb+...`` URLs alike) use ``utf8mb4``,
  so 4-byte characters (emoji) survive;
* a SQLite file is created private (0600) before SQLAlchemy opens it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Engine, Integer, LargeBinary, String, Text, create_engine
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL
from sqlalchemy.types import TypeEngine

from popflow.private import ensure_private_sqlite

MYSQL = ("mysql", "mariadb")
"""Backend names of the MySQL family (``URL.get_backend_name()``, ``dialect.name``)."""


def key_string(length: int = 255) -> TypeEngine[str]:
    """``VARCHAR(length)`` compared byte for byte everywhere (case-sensitive UIDLs)."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), *MYSQL)


def long_text() -> TypeEngine[str]:
    """Unbounded text: ``TEXT`` on SQLite/PostgreSQL, ``LONGTEXT`` on MySQL/MariaDB."""
    return Text().with_variant(mysql.LONGTEXT(), *MYSQL)


def long_binary() -> TypeEngine[bytes]:
    """Unbounded bytes: ``BLOB``/``BYTEA``, ``LONGBLOB`` on MySQL/MariaDB."""
    return LargeBinary().with_variant(mysql.LONGBLOB(), *MYSQL)


def id_type() -> TypeEngine[int]:
    """A 64-bit key; ``INTEGER`` on SQLite, where only that aliases the auto-incrementing rowid."""
    return BigInteger().with_variant(Integer(), "sqlite")


def engine_url(url: URL) -> URL:
    """``url`` with ``charset=utf8mb4`` on MySQL and MariaDB unless it names a charset."""
    if url.get_backend_name() in MYSQL and "charset" not in url.query:
        return url.update_query_dict({"charset": "utf8mb4"})
    return url


def make_engine(url: URL, **options: Any) -> Engine:
    """An engine on ``url`` (see the module docstring); ``options`` go to ``create_engine``.

    ``pool_pre_ping`` is on: servers drop idle connections, and a dead one is replaced before use.
    """
    url = engine_url(url)
    ensure_private_sqlite(url)  # private: 0600, and SQLite gives -wal/-shm the same mode
    return create_engine(url, pool_pre_ping=True, **options)
