"""One allocation solve at a time, across every API process sharing the database.

On PostgreSQL a session-level advisory lock, held on a connection of its own for the length
of the solve (the server drops it the moment the holder's connection closes, as it does when
the process dies). On SQLite a lease on the one row of ``solve_lock``: taking it is a
conditional UPDATE, the lease lasts :data:`LEASE_S` and a thread of the holder renews it every
:data:`RENEW_S` while the solve runs, so a solve may take as long as it needs while a holder
killed mid-solve (``kill -9``, a lost machine) leaves a lease that the next solve takes over
within :data:`LEASE_S`. Neither holds a write transaction open while the solver runs, so
tenants' and nodes' writes proceed during a solve. A caller that cannot get the lock within
``wait_s`` gets 409.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import CursorResult, func, or_, select, update

from api.db import Database
from api.errors import Conflict
from api.models import SolveLockRow, utcnow

log = logging.getLogger(__name__)

# An arbitrary 64-bit key naming gpufair's solve lock among the database's advisory locks.
ADVISORY_KEY = 0x6770_7566_6169_72
POLL_S = 0.05
# SQLite: how long a lease lasts unless renewed, and how often its holder renews it. The lease
# is what a dead holder leaves behind; the renewal keeps a living one's for any solve length.
LEASE_S = 5.0
RENEW_S = 1.0


@contextmanager
def solve_lock(db: Database, *, wait_s: float) -> Iterator[None]:
    """Hold the solve lock for the body of the ``with``; 409 after ``wait_s`` of waiting."""
    if db.dialect == "postgresql":
        with _advisory(db, wait_s=wait_s):
            yield
    else:
        with _lease(db, wait_s=wait_s):
            yield


def _busy(wait_s: float) -> Conflict:
    return Conflict(f"another allocation solve is running (waited {wait_s:.0f} s); retry later")


@contextmanager
def _advisory(db: Database, *, wait_s: float) -> Iterator[None]:
    with db.engine.connect() as connection:
        deadline = time.monotonic() + wait_s
        while not connection.scalar(select(func.pg_try_advisory_lock(ADVISORY_KEY))):
            connection.commit()
            if time.monotonic() > deadline:
                raise _busy(wait_s)
            time.sleep(POLL_S)
        connection.commit()
        try:
            yield
        finally:
            connection.scalar(select(func.pg_advisory_unlock(ADVISORY_KEY)))
            connection.commit()


def _take_or_renew(db: Database, holder: str, *, renew: bool) -> bool:
    """Take the free or expired lease (or, with ``renew``, extend our own); whether it is ours."""
    now = utcnow()
    mine = SolveLockRow.holder == holder
    free = or_(SolveLockRow.holder.is_(None), SolveLockRow.expires_at < now)
    with db.session(write=True) as session:
        result = session.execute(
            update(SolveLockRow)
            .where(SolveLockRow.id == 1, mine if renew else free)
            .values(holder=holder, expires_at=now + timedelta(seconds=LEASE_S))
            .execution_options(synchronize_session=False)
        )
        assert isinstance(result, CursorResult)
        return result.rowcount == 1


def _renew_until(db: Database, holder: str, done: threading.Event) -> None:
    while not done.wait(RENEW_S):
        try:
            if not _take_or_renew(db, holder, renew=True):
                # Only if this process stalled for longer than a lease: another solve may now
                # run beside this one; the allocations' unique version still lets one store.
                log.error("solve lease lost to another holder while solving")
                return
        except Exception:
            # A renewal that fails (database busy) is retried; the lease has LEASE_S of slack.
            log.warning("solve lease renewal failed; retrying", exc_info=True)


@contextmanager
def _lease(db: Database, *, wait_s: float) -> Iterator[None]:
    holder = uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while not _take_or_renew(db, holder, renew=False):
        if time.monotonic() > deadline:
            raise _busy(wait_s)
        time.sleep(POLL_S)
    done = threading.Event()
    renewer = threading.Thread(
        target=_renew_until, args=(db, holder, done), name="gpufair-solve-lease", daemon=True
    )
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        with db.session(write=True) as session:
            session.execute(
                update(SolveLockRow)
                .where(SolveLockRow.id == 1, SolveLockRow.holder == holder)
                .values(holder=None, expires_at=None)
                .execution_options(synchronize_session=False)
            )
