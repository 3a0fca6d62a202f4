"""The database handle: one engine, sessions for reading and for writing, and the gate that
keeps the event loop free of database work.

SQLite (the embedded default, a file under ``./var/``) and PostgreSQL (by URL, psycopg 3) are
used through the same ORM code. SQLite needs three things PostgreSQL does not: foreign keys
turned on per connection; WAL, so readers never wait for the writer; and write transactions
opened with ``BEGIN IMMEDIATE``. Without the last, a transaction that read a row and then
writes it fails at once with "database is locked" when another writer committed in between
(busy_timeout does not apply to that case), where the caller should instead wait its turn and
then see the other writer's revision (a 412, not a 500).

The gate. The drivers are blocking, so no database call runs on the event loop: a request's
work runs in a worker thread, after it took one of ``pool_size`` slots (:meth:`Database.slot`).
There are as many slots as pooled connections for requests, so a request holding a slot never
waits for a connection; one that waits more than ``wait_timeout_s`` for a slot gets 503 with
``Retry-After`` (:class:`api.errors.Unavailable`) instead of queueing without bound, and so does
one whose SQLite write lock or PostgreSQL connection does not come within that time. On SQLite,
which takes one writer at a time, a writing request first waits for the writer's turn on the
event loop, then takes its slot: writers that cannot proceed hold no slot (reads keep every
one) and no thread, and each is let in the moment the one before it ends, where SQLite's own
busy handler would have them poll the lock with sleeps of up to 100 ms. The writes that run in
threads of their own (the solve's lease and its stored allocation, an idempotent reply's record:
:meth:`Database.session`) take the same turn through the serving loop, so no request's write
ever meets one of them in that busy handler either. A few
connections beyond the slots (:data:`RESERVED_CONNECTIONS`) serve the solve, its lock and the
scheduler, which run in threads of their own. Long-polls hold no slot while they wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# The databases gpufair is tested on: SQLite, the embedded default, and PostgreSQL.
SUPPORTED_BACKENDS = frozenset({"sqlite", "postgresql"})
# How long a command-line tool's SQLite writer waits for another (a server's are bounded by
# their PoolLimits instead).
TOOL_BUSY_TIMEOUT_S = 30.0
# How long a command-line tool waits for a PostgreSQL server to accept its connection, unless
# the URL says (``?connect_timeout=``): a host that drops packets kept `gpufair db` waiting
# for the operating system's own give-up, minutes.
TOOL_CONNECT_TIMEOUT_S = 10
# Connections beyond the request slots: a solve's read and write sessions, PostgreSQL's
# advisory-lock connection, and the scheduler's snapshot read.
RESERVED_CONNECTIONS = 4
# PostgreSQL: a pooled connection idle longer than this is pinged before use (_ping_when_idle).
PING_AFTER_IDLE_S = 10.0
_LAST_USED = "gpufair_last_used"


@dataclass(frozen=True)
class PoolLimits:
    """How many requests use the database at once, and how long one waits for it."""

    size: int  # request slots, and pooled connections for them
    wait_timeout_s: float  # for a slot, a connection, or SQLite's write lock; then 503


def _prepare_sqlite(engine: Engine, busy_timeout_s: float, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN, rather than pysqlite's own guess
        # (which opens no transaction before DDL, so a schema change would commit at once).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(
    url: str, *, echo: bool = False, pool: PoolLimits | None = None, foreign_keys: bool = True
) -> Engine:
    """An engine for ``url``; a SQLite file's folder is created if missing. ``pool`` bounds a
    server's connections and waits; without it (a command-line tool), SQLAlchemy's defaults.
    ``foreign_keys=False`` is for the migrations alone: SQLite enforces foreign keys only where
    a connection turns them on, and a migration that rebuilds a table drops the old one, which
    with them on would delete (cascade) every row that refers to it.

    Only SQLite and PostgreSQL are supported (the tests run on both); another backend, or a
    driver that is not installed, is refused with an ArgumentError that names the URL (without
    its password) in one line, instead of SQLAlchemy's import traceback. So is a malformed URL
    (a port that is not a number), which SQLAlchemy refuses with a ValueError that the
    commands' one-line handlers of database errors let through as a traceback.
    """
    try:
        parsed = make_url(url)
    except ValueError as exc:  # a port that is not a number, an unclosed "[": no URL to show
        raise ArgumentError(f"malformed database URL: {exc}") from exc
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise ArgumentError(
            f"{shown}: unsupported database {parsed.get_backend_name()!r}; gpufair runs on "
            "sqlite (sqlite:///var/gpufair.db) or postgresql (postgresql+psycopg://user@host/db)"
        )
    try:
        return _create_engine(parsed, echo, pool, foreign_keys)
    except ModuleNotFoundError as exc:
        raise ArgumentError(
            f"{shown}: its driver {exc.name!r} is not installed; use postgresql+psycopg://"
        ) from exc


def _create_engine(parsed: URL, echo: bool, pool: PoolLimits | None, foreign_keys: bool) -> Engine:
    # A fixed pool whose checkout fails after the wait timeout (503), never one that grows.
    sized: dict[str, Any] = (
        {}
        if pool is None
        else {
            "pool_size": pool.size + RESERVED_CONNECTIONS,
            "max_overflow": 0,
            "pool_timeout": pool.wait_timeout_s,
        }
    )
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        memory = database in (None, "", ":memory:")
        if database and not memory and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        busy_s = TOOL_BUSY_TIMEOUT_S if pool is None else pool.wait_timeout_s
        engine = create_engine(
            parsed,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": busy_s},
            **({} if memory else sized),
        )
        _prepare_sqlite(engine, busy_s, foreign_keys)
        return engine
    if pool is not None:
        # A server that does not answer within the wait must not hold a slot for minutes.
        sized["connect_args"] = {"connect_timeout": max(1, round(pool.wait_timeout_s))}
    elif "connect_timeout" not in parsed.query:
        sized["connect_args"] = {"connect_timeout": TOOL_CONNECT_TIMEOUT_S}
    engine = create_engine(parsed, echo=echo, **sized)
    _ping_when_idle(engine)
    if pool is not None:
        _prepare_postgres(engine, pool.wait_timeout_s)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled PostgreSQL connection before use only when it sat idle for more than
    :data:`PING_AFTER_IDLE_S`; a dead one is replaced before any request sees it.

    ``pool_pre_ping`` would ping on every checkout: a round trip and its driver work before
    each request's own queries, a sixth of a request's CPU under load (the mixed benchmark's
    tail on PostgreSQL was that extra work queued behind a solve's wake-ups). A connection in
    steady use needs no ping: if the server restarted under it, the request that meets the
    broken connection gets 503 with ``Retry-After`` (:mod:`api.errors`) and SQLAlchemy then
    replaces every connection the pool held from before, so one failed request per restart
    is the cost, where an idle pool (the case a restart usually meets) still costs none.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _: Any) -> None:
        last_used = record.info.get(_LAST_USED)
        if last_used is None or time.monotonic() - last_used <= PING_AFTER_IDLE_S:
            return
        try:
            dbapi_connection.execute("SELECT 1")
            dbapi_connection.rollback()
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool drops this connection and checks out another (a new one if need be).
            raise DisconnectionError(f"an idle pooled connection was dead: {exc}") from exc


def _prepare_postgres(engine: Engine, lock_timeout_s: float) -> None:
    """A statement that waits longer than ``lock_timeout_s`` for a row or table lock fails
    (503) rather than holding its slot for as long as another transaction keeps the lock."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.execute(f"SET lock_timeout = {int(lock_timeout_s * 1000)}")
        dbapi_connection.commit()


class Database:
    """The engine, its two session factories and the request gate (see the module docstring)."""

    def __init__(self, url: str, *, pool: PoolLimits, echo: bool = False) -> None:
        self.url = url
        self.pool = pool
        self.engine = make_engine(url, echo=echo, pool=pool)
        # Made on first use on the serving event loop (a semaphore belongs to one loop).
        self._slots: asyncio.Semaphore | None = None
        self._writer: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        self.dialect = self.engine.dialect.name
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        writer = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE")
            if self.dialect == "sqlite"
            else self.engine
        )
        self._write = sessionmaker(writer, expire_on_commit=False)

    def _semaphores(self) -> tuple[asyncio.Semaphore, asyncio.Semaphore | None]:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots, self._slots_loop = asyncio.Semaphore(self.pool.size), loop
            self._writer = asyncio.Semaphore(1) if self.dialect == "sqlite" else None
        return self._slots, self._writer

    def _busy(self) -> Unavailable:
        return Unavailable(
            f"the database is busy: no connection free within "
            f"{self.pool.wait_timeout_s:g} s; retry shortly"
        )

    @asynccontextmanager
    async def slot(self, *, write: bool = False) -> AsyncIterator[None]:
        """Hold one of the request slots, and for a SQLite write also the writer's turn;
        Unavailable (503) when they do not come within ``wait_timeout_s`` in all."""
        slots, writer = self._semaphores()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.pool.wait_timeout_s
        gates = [writer, slots] if write and writer is not None else [slots]
        taken: list[asyncio.Semaphore] = []
        try:
            for gate in gates:
                try:
                    await asyncio.wait_for(gate.acquire(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise self._busy() from None
                taken.append(gate)
            yield
        finally:
            for gate in reversed(taken):
                gate.release()

    @property
    def session_factories(self) -> tuple[sessionmaker[Session], sessionmaker[Session]]:
        """Every session this database hands out comes from one of these (read, write)."""
        return self._read, self._write

    def new_session(self, *, write: bool) -> Session:
        """A session that opens its transaction (and takes a connection) on first use."""
        return (self._write if write else self._read)()

    async def run(self, work: Callable[[Session], T], *, write: bool = False) -> T:
        """``work(session)`` in a worker thread under a slot, in one transaction that commits
        when it returns and rolls back if it raises."""
        async with self.slot(write=write):
            return await run_in_threadpool(self._run_in_session, work, write)

    def _run_in_session(self, work: Callable[[Session], T], write: bool) -> T:
        # The slot taken by run() already holds the writer's turn.
        with self._transaction(write=write) as session:
            return work(session)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` on a Core connection in a read transaction, in a worker thread
        under a slot: for the hot paths (a long-poll's plan reads), where the ORM session's
        bookkeeping would cost more than the query."""
        async with self.slot():
            return await run_in_threadpool(self._read_on_connection, work)

    def _read_on_connection(self, work: Callable[[Connection], T]) -> T:
        with self.connection() as connection:
            return work(connection)

    @contextmanager
    def session(self, *, write: bool) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error, for work
        in a thread of its own (blocking); a SQLite write first waits for the writer's turn."""
        if not write:
            with self._transaction(write=False) as session:
                yield session
            return
        with self._writer_turn(), self._transaction(write=True) as session:
            yield session

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Session]:
        factory = self._write if write else self._read
        with factory() as session, session.begin():
            yield session

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """From a thread other than the serving loop's: the SQLite writer's turn that requests
        take in :meth:`slot`, taken through that loop; Unavailable (503) when it does not come
        within ``wait_timeout_s``. Nothing to take on PostgreSQL, or where no loop serves (a
        command-line tool, a test's set-up)."""
        loop, writer = self._slots_loop, self._writer
        if writer is None or loop is None or not loop.is_running() or _runs_on(loop):
            yield
            return
        wait_s = self.pool.wait_timeout_s
        turn = asyncio.run_coroutine_threadsafe(asyncio.wait_for(writer.acquire(), wait_s), loop)
        try:
            # A little past the loop's own timeout, in case the loop stops while this waits.
            turn.result(timeout=wait_s + 1.0)
        except (TimeoutError, concurrent.futures.CancelledError):
            if not turn.cancel() and not turn.cancelled() and turn.exception() is None:
                # The turn came just as this gave up on it: give it back.
                loop.call_soon_threadsafe(writer.release)
            raise self._busy() from None
        try:
            yield
        finally:
            try:
                loop.call_soon_threadsafe(writer.release)
            except RuntimeError:
                log.debug("the serving loop closed before a writer's turn was given back")

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A Core connection in a read transaction (blocking: see :meth:`read`)."""
        with self.engine.connect() as connection, connection.begin():
            yield connection

    def dispose(self) -> None:
        self.engine.dispose()


def _runs_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
