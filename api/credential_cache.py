"""Who a bearer token belongs to, remembered for about a second by each API process.

Every tenant and node request names its caller by a token, and looking it up cost a query and,
for a route's dependency, a hop to a worker thread and back: on a 2-core VM a third of the
CPU of a light read (GET /v1/tenants/me: 2.6 ms of CPU per request with the lookup, 1.2 ms
with the caller already known). A tenant's client sends many requests a second with the same
key, so the process keeps what the lookup found:

- for at most ``KEPT_S`` and never past the key's expiry (checked on the request's clock);
- forgotten, all of it, as soon as this process commits a change to what a token identifies (a
  key issued, revoked or rotated; a node or tenant added, deleted or renamed; a node's token
  rotated), though not for a heartbeat's stamp on its node or a tenant's new weight: a key
  revoked through this process is refused from the next request on;
- a key revoked through another process (``gpufair serve --workers``, or another replica) is
  refused here within ``KEPT_S`` — the bound the daemons' credential documents already have
  (docs/architecture.md §3.5);
- a token nobody issued is never kept: each is looked up and counted by the failed-credentials
  limit (:mod:`api.ratelimit`), as before. The admin token needs no lookup and is not kept.

Entries are keyed by the token's sha256, so the process holds no more of a secret than the
database does. Thread-safe: the lookups run in worker threads, the commits that invalidate in
whichever thread commits.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Principal, token_hash
from api.models import ApiKeyRow, NodeRow, TenantRow

KEPT_S = 1.0
MAX_KEPT = 10_000
# A session whose flush touched a credential row: forget everything when it commits.
_CHANGED = "gpufair_credentials_changed"
_CREDENTIAL_ROWS = (ApiKeyRow, NodeRow, TenantRow)
# What a principal is made of, on the rows that are not keys.
_PRINCIPAL_COLUMNS: dict[type, tuple[str, ...]] = {
    NodeRow: ("token_hash", "name"),
    TenantRow: ("name",),
}


@dataclass(frozen=True)
class _Kept:
    principal: Principal
    until: float  # on the cache's monotonic clock
    key_expires_at: datetime | None


class CredentialCache:
    def __init__(
        self,
        *,
        kept_s: float = KEPT_S,
        capacity: int = MAX_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kept_s = kept_s
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._generation = 0

    @property
    def generation(self) -> int:
        """Moves whenever everything kept is forgotten; read before a lookup and handed to
        :meth:`keep`, so a lookup that raced a change is not kept."""
        with self._lock:
            return self._generation

    def get(self, token: str, now: datetime) -> Principal | None:
        """Whom ``token`` was found to belong to, if that is kept and still holds at ``now``."""
        digest = token_hash(token)
        with self._lock:
            kept = self._kept.get(digest)
            if kept is None:
                return None
            expired = kept.key_expires_at is not None and kept.key_expires_at <= now
            if expired or kept.until <= self._clock():
                del self._kept[digest]
                return None
            return kept.principal

    def keep(
        self,
        token: str,
        principal: Principal,
        *,
        key_expires_at: datetime | None,
        generation: int,
    ) -> None:
        """Keep a lookup's finding, unless a credential changed since ``generation`` was read
        (the lookup may have seen the old rows) or it is the admin's (no lookup to save)."""
        if principal.role == "admin":
            return
        digest = token_hash(token)
        with self._lock:
            if generation != self._generation:
                return
            self._kept[digest] = _Kept(principal, self._clock() + self.kept_s, key_expires_at)
            self._kept.move_to_end(digest)
            while len(self._kept) > self.capacity:
                self._kept.popitem(last=False)

    def forget_all(self) -> None:
        with self._lock:
            self._kept.clear()
            self._generation += 1

    def watch(self, factories: Iterable[sessionmaker[Session]]) -> None:
        """Forget everything when a session of ``factories`` commits a change to a key, node or
        tenant (noted at its flush, acted on at its commit)."""
        for factory in factories:
            event.listen(factory, "after_flush", _note_credential_changes)
            event.listen(factory, "after_commit", self._after_commit)
            event.listen(factory, "after_soft_rollback", _clear_note)

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_CHANGED, False):
            self.forget_all()


def _note_credential_changes(session: Session, _flush_context: Any) -> None:
    added_or_deleted = (*session.new, *session.deleted)
    if any(isinstance(row, _CREDENTIAL_ROWS) for row in added_or_deleted) or any(
        _changes_a_principal(row) for row in session.dirty
    ):
        session.info[_CHANGED] = True


def _changes_a_principal(row: object) -> bool:
    """Whether a changed row alters what a token identifies: any change to an API key
    (revoked, expiry set), a node's token or name, a tenant's name. A heartbeat's stamp on its
    node or a tenant's weight is not one, and forgetting everything at each would keep
    nothing."""
    if isinstance(row, ApiKeyRow):
        return True
    names = _PRINCIPAL_COLUMNS.get(type(row), ())
    state = inspect(row)
    return any(state.attrs[name].history.has_changes() for name in names)


def _clear_note(session: Session, _previous_transaction: Any) -> None:
    session.info.pop(_CHANGED, None)
