"""Per-tenant read queues: a front reads and parses bodies in proportion to tenants' shares.

A front's event loop is one core's worth of work, and reading and parsing a body is most of
what it does per request. If bodies were read in arrival order, a tenant that floods would
fill the loop with its bodies and every other tenant's request would wait behind them before
the engine's fair scheduler saw it (issue 11 measured a calm tenant's body waiting 56 ms at the
median, 290 ms at p99, behind a flooder's). So an admitted request takes a *turn* before its
body is read: at most :data:`READ_SLOTS` bodies are read and parsed at once per front, and the
next turn goes to the waiting request with the smallest start tag of start-time fair queueing
(Goyal, Vin and Cheng, SIGCOMM 1996) — the same rule as the engine's shared pool
(:mod:`executor.scheduling.rules`), with a body's declared bytes as its cost and its tenant's
share (the sessions its replica counts on) as the weight: ``S = max(V, F_t)``,
``F_t = S + bytes / share``, ``V`` advanced to the start tag served. A flooder's requests carry
ever later tags and wait behind its own backlog; a calm tenant's next body is read next. A
tenant with :data:`MAX_WAITING` requests waiting is refused (429) rather than queued without
bound.

A turn also has a time by which it is worth having: the request's arrival plus its SLA. The
engine's admission control sees only the engine's queues, so when the front is what falls
behind (its CPU taken by the engine's sessions, or a flood of large bodies), nothing upstream
refuses the excess and every tenant's requests would wait here. A request whose turn comes
after that time could only be answered late: it is refused (429) without its body being read
or parsed, and the turn goes to the next request (issue 11: the calm tenant's queries waited
behind a flooder's at the front while the engine admitted nearly all of them). A flooder's
requests are the ones that wait longest, so the shedding falls on the flooder.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from executor.scheduling.errors import Overloaded

READ_SLOTS = 2  # bodies read at once: one may wait on a slow client while another is parsed
MAX_WAITING = 256  # requests of one tenant waiting for a turn, per front
DEFAULT_COST = 64 * 1024  # the cost of a body without a Content-Length


@dataclass(order=True)
class _Waiter:
    start: float
    order: int
    tenant: str = field(compare=False)
    granted: asyncio.Future[None] = field(compare=False)
    expires: float = field(compare=False, default=float("inf"))  # worth a turn until then


class FairReader:
    """The turns of one front's event loop (see the module docstring)."""

    def __init__(
        self,
        slots: int = READ_SLOTS,
        max_waiting: int = MAX_WAITING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._clock = clock  # the clock of ``expires``: time.monotonic, as the arrivals
        self._free = slots
        self._max_waiting = max_waiting
        self._virtual_time = 0.0
        self._finish: dict[str, float] = {}
        self._heap: list[_Waiter] = []
        self._waiting: Counter[str] = Counter()
        self._order = itertools.count()

    def waiting(self, tenant: str) -> int:
        return self._waiting[tenant]

    @contextlib.asynccontextmanager
    async def turn(
        self, tenant: str, share: float, cost: int | None, expires: float = float("inf")
    ) -> AsyncIterator[None]:
        """Wait for the tenant's turn, hold a slot for the body's read and parse, release it.

        Raises Overloaded when the tenant has too many requests waiting, or when the turn
        would come after ``expires`` (on this reader's clock): the body is not worth reading.
        """
        start = max(self._virtual_time, self._finish.get(tenant, 0.0))
        if self._free > 0 and not self._heap:
            self._finish[tenant] = start + (cost or DEFAULT_COST) / max(share, 1e-9)
            self._free -= 1
            self._virtual_time = start
        else:
            if self._waiting[tenant] >= self._max_waiting:
                raise Overloaded(
                    f"tenant {tenant!r}: {self._waiting[tenant]} requests wait to be read", 1.0
                )
            self._finish[tenant] = start + (cost or DEFAULT_COST) / max(share, 1e-9)
            granted = asyncio.get_running_loop().create_future()
            waiter = _Waiter(start, next(self._order), tenant, granted, expires)
            heapq.heappush(self._heap, waiter)
            self._waiting[tenant] += 1
            try:
                await waiter.granted
            except asyncio.CancelledError:
                granted = waiter.granted
                if granted.done() and not granted.cancelled() and granted.exception() is None:
                    self._release()  # granted just as it was cancelled: pass the slot on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        """Hand the freed slot to the waiting request with the smallest start tag; requests
        whose time has passed are refused on the way, unread."""
        now = self._clock()
        while self._heap:
            waiter = heapq.heappop(self._heap)
            self._waiting[waiter.tenant] -= 1
            if waiter.granted.done():  # its request went away while it waited
                continue
            if waiter.expires < now:
                waiter.granted.set_exception(
                    Overloaded(
                        f"tenant {waiter.tenant!r}: its turn to be read came after its SLA; "
                        "the front is behind",
                        1.0,
                    )
                )
                continue
            self._virtual_time = waiter.start
            waiter.granted.set_result(None)
            return
        self._free += 1
