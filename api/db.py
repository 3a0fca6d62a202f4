"""The database handle: one engine, and sessions for reading and for writing.

SQLite (the embedded default, a file under ``./var/``) and PostgreSQL (by URL, psycopg 3) are
used through the same ORM code. SQLite needs three things PostgreSQL does not: foreign keys
turned on per connection; WAL, so readers never wait for the writer; and write transactions
opened with ``BEGIN IMMEDIATE``. Without the last, a transaction that read a row and then
writes it fails at once with "database is locked" when another writer committed in between
(busy_timeout does not apply to that case), where the caller should instead wait its turn and
then see the other writer's revision (a 412, not a 500).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

# The databases gpufair is tested on: SQLite, the embedded default, and PostgreSQL.
SUPPORTED_BACKENDS = frozenset({"sqlite", "postgresql"})
# How long a SQLite writer waits for another to finish, e.g. behind the write of a solve.
SQLITE_BUSY_TIMEOUT_S = 30.0


def _prepare_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN, rather than pysqlite's own guess.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``; a SQLite file's folder is created if missing.

    Only SQLite and PostgreSQL are supported (the tests run on both); another backend, or a
    driver that is not installed, is refused with an ArgumentError that names the URL (without
    its password) in one line, instead of SQLAlchemy's import traceback.
    """
    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise ArgumentError(
            f"{shown}: unsupported database {parsed.get_backend_name()!r}; gpufair runs on "
            "sqlite (sqlite:///var/gpufair.db) or postgresql (postgresql+psycopg://user@host/db)"
        )
    try:
        return _create_engine(parsed, echo)
    except ModuleNotFoundError as exc:
        raise ArgumentError(
            f"{shown}: its driver {exc.name!r} is not installed; use postgresql+psycopg://"
        ) from exc


def _create_engine(parsed: URL, echo: bool) -> Engine:
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        )
        _prepare_sqlite(engine)
        return engine
    return create_engine(parsed, echo=echo, pool_size=10, max_overflow=20, pool_pre_ping=True)


class Database:
    """The engine and its two session factories."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, echo=echo)
        self.dialect = self.engine.dialect.name
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        writer = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE")
            if self.dialect == "sqlite"
            else self.engine
        )
        self._write = sessionmaker(writer, expire_on_commit=False)

    @contextmanager
    def session(self, *, write: bool) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        factory = self._write if write else self._read
        with factory() as session, session.begin():
            yield session

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A Core connection in a read transaction, for the hot paths (credentials, plans),
        where the ORM session's bookkeeping would cost more than the query."""
        with self.engine.connect() as connection, connection.begin():
            yield connection

    def dispose(self) -> None:
        self.engine.dispose()
