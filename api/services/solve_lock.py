"""One allocation solve at a time, across every API process sharing the database.

On PostgreSQL a session-level advisory lock, held on a connection of its own for the length
of the solve (the server drops it if the process dies). On SQLite a lease on the one row of
``solve_lock``: taking it is a conditional UPDATE, and a lease that outlived a crashed holder
expires. Neither holds a write transaction open while the solver runs, so tenants' and nodes'
writes proceed during a solve. A caller that cannot get the lock within ``wait_s`` gets 409.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import CursorResult, func, or_, select, update

from api.db import Database
from api.errors import Conflict
from api.models import SolveLockRow, utcnow

# An arbitrary 64-bit key naming gpufair's solve lock among the database's advisory locks.
ADVISORY_KEY = 0x6770_7566_6169_72
POLL_S = 0.05


@contextmanager
def solve_lock(db: Database, *, wait_s: float, lease_s: float) -> Iterator[None]:
    """Hold the solve lock for the body of the ``with``; 409 after ``wait_s`` of waiting."""
    if db.dialect == "postgresql":
        with _advisory(db, wait_s=wait_s):
            yield
    else:
        with _lease(db, wait_s=wait_s, lease_s=lease_s):
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


@contextmanager
def _lease(db: Database, *, wait_s: float, lease_s: float) -> Iterator[None]:
    holder = uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while True:
        now = utcnow()
        with db.session(write=True) as session:
            result = session.execute(
                update(SolveLockRow)
                .where(
                    SolveLockRow.id == 1,
                    or_(SolveLockRow.holder.is_(None), SolveLockRow.expires_at < now),
                )
                .values(holder=holder, expires_at=now + timedelta(seconds=lease_s))
                .execution_options(synchronize_session=False)
            )
            assert isinstance(result, CursorResult)
            taken = result.rowcount
        if taken == 1:
            break
        if time.monotonic() > deadline:
            raise _busy(wait_s)
        time.sleep(POLL_S)
    try:
        yield
    finally:
        with db.session(write=True) as session:
            session.execute(
                update(SolveLockRow)
                .where(SolveLockRow.id == 1, SolveLockRow.holder == holder)
                .values(holder=None, expires_at=None)
                .execution_options(synchronize_session=False)
            )
