"""Which daemon gets a query: the routing state shared by ``gpufair gateway`` and
:mod:`gpufair.client`.

Both follow the API's routing table (``GET /v1/routes``, :mod:`executor.wire.routes`; long-polled
with its ETag) and pick, for each query, the *least-loaded live replica* of its model: the one
with the fewest queries this router has in flight to it, ties going round-robin. A replica is
*live* unless a request to its daemon failed at the transport (connection refused or reset,
the daemon gone) less than ``dead_s`` ago: the router marks the daemon's URL dead at once, for
every model it serves, and after ``dead_s`` lets the next query try it again (a dead daemon
refuses that query at once, on loopback or on a LAN, and the query is retried elsewhere, so
probing costs nothing but a connection attempt). The caller retries a query once on another
replica after a transport failure or an answer in :data:`TRY_ANOTHER_REPLICA`.

Nothing here does I/O: :class:`Routes` is fed tables and outcomes by its owner (an asyncio task
in the gateway, a thread in the client), on one thread or under its lock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from executor.wire.routes import RoutingTable

DEAD_S = 1.0  # how long a daemon that failed at the transport gets no query
ROUTES_WAIT_S = 30.0  # the routing table's long-poll
# A replica's answers that say it cannot serve the model now where another replica may: 503
# (draining, its plan loading, or it failed to load) and 404 (the table is the newest
# allocation's, and a node may not have fetched the plan that brings the model yet). A query so
# answered is sent once more, to another replica; without one, the answer is passed back.
TRY_ANOTHER_REPLICA = frozenset({503, 404})


@dataclass(frozen=True)
class Pick:
    """A replica chosen for one query: where to send it, and what to report back."""

    model: str
    url: str
    node: str


class Routes:
    """The routing table being followed, with this router's load and liveness per replica."""

    def __init__(self, *, dead_s: float = DEAD_S, clock: Callable[[], float] = time.monotonic):
        self._dead_s = dead_s
        self._clock = clock
        self._lock = threading.Lock()
        self._table = RoutingTable(version=0, models={})
        self._in_flight: Counter[tuple[str, str]] = Counter()  # (model, url) -> queries
        self._dead_until: dict[str, float] = {}  # url -> when it may be tried again
        self._turn = itertools.count()
        self.etag: str | None = None  # of the table followed
        self.received = False  # whether any table has been received

    @property
    def table(self) -> RoutingTable:
        return self._table

    def update(self, table: RoutingTable, etag: str | None) -> None:
        with self._lock:
            self._table, self.etag, self.received = table, etag, True

    def knows(self, model: str) -> bool:
        return model in self._table.models

    def pick(self, model: str, exclude: frozenset[str] = frozenset()) -> Pick | None:
        """The least-loaded live replica of ``model`` whose URL is not in ``exclude`` (counted
        in flight from now until :meth:`done`), or None when there is none."""
        entry = self._table.models.get(model)
        if entry is None:
            return None
        now = self._clock()
        with self._lock:
            live = [
                r
                for r in entry.replicas
                if r.url not in exclude and self._dead_until.get(r.url, 0.0) <= now
            ]
            if not live:
                return None
            turn = next(self._turn)
            chosen = min(
                enumerate(live),
                key=lambda kr: (self._in_flight[(model, kr[1].url)], (kr[0] - turn) % len(live)),
            )[1]
            self._in_flight[(model, chosen.url)] += 1
        return Pick(model, chosen.url, chosen.node)

    def done(self, pick: Pick) -> None:
        with self._lock:
            self._in_flight[(pick.model, pick.url)] -= 1
            if self._in_flight[(pick.model, pick.url)] <= 0:
                del self._in_flight[(pick.model, pick.url)]

    def failed(self, url: str) -> None:
        """The daemon at ``url`` failed at the transport: no query for ``dead_s``."""
        with self._lock:
            self._dead_until[url] = self._clock() + self._dead_s

    def dead(self) -> list[str]:
        """The URLs that get no query now."""
        now = self._clock()
        with self._lock:
            return sorted(url for url, until in self._dead_until.items() if until > now)

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._in_flight.values())
