"""Front-local admission: a tenant's requests in flight at a front, bounded by what it is served.

The engine's admission control (:mod:`executor.scheduling.admission`) judges a request from
the engine's queues, one round trip away, and only once the request has arrived there. Under a
flood that is too late and too dear: issue 11 measured a tenant sending 5× its share over HTTP
while the engine sat mostly idle: the flooder's hundreds of admitted requests waited at the
front for their turn to be read (in per-tenant fair read queues, since removed), each holding a
connection with a megabyte body behind it and each costing an admit message to the engine, and
the calm tenant's bodies waited behind the flooder's slowly arriving ones until their SLA had
passed. (Those queues held a turn while a body's bytes came in: two clients that sent headers
and stalled their bodies stopped every other tenant's reads at that front.)

So a front bounds, per tenant, the requests it has let in and not yet answered (being read,
queued at the engine) by Little's law: a tenant answered within its SLA of ``s`` seconds at
``r`` queries per second has ``r × s`` such requests in flight at most, so a front lets it have
:data:`HEADROOM` times that (``r`` measured at this front over the last :data:`WINDOW_S`), and
never fewer than :data:`MIN_IN_FLIGHT`, so that a tenant that starts or speeds up is let in
while its rate is learnt. Only answers within the SLA count: a flooder whose answers come late
has more in flight than it can be served in time, and its bound shrinks to what it is. A
tenant *behind* — over the window, refused at its bound at least once, and more than one of its
requests for every ten answered in time ended without an answer in time (late, refused or
dropped by the engine; :data:`BEHIND_MISSES`) — gets no headroom and a floor of
:data:`MIN_IN_FLIGHT_BEHIND`: ``max(2, ⌈r × s⌉)``. Late answers alone do not make a tenant
behind: a calm tenant slowed by a flooder is answered late too, and held to ``r × s`` its own
Poisson bursts were refused (19 of its 546 queries in one isolation run, all at a bound of 3),
so that a tenant harmed by another was harmed again at the front. With the headroom a
flooder kept 9–11 requests in flight at the front while its answers came late, and on 2 cores
reading and parsing their megabyte bodies took the front 0.74 cores: the calm tenant's requests
waited behind them (docs/benchmarks.md, "Serving over HTTP"). A tenant answered in time keeps
its headroom for bursts; a tenant whose requests the engine refuses or answers late is past
what its sessions serve, and the front's reading more of its bodies serves it no faster. A
request of a tenant at its bound is refused (429) on arrival: before the engine is asked,
before its body is read (the daemon closes such a connection rather than drain the body). A
tenant within its share is answered as fast as it sends and stays far below its bound; a
flooder's bound follows what it is served in time, and its excess is turned away at the cost
of parsing its headers.

A tenant behind also has its bodies read one at a time at a front
(:meth:`TenantBudgets.read_turn`; a request whose turn comes after its SLA is refused unread,
and a body still coming in at its SLA is refused there, which passes the turn on):
the front's one event loop reads every body it lets in side by side, a chunk each in turn, so
each flood body in flight slowed the reads, and the dispatch, of every other tenant's. In
isolation runs at a 72.8 qps share on 2 cores the calm tenant went from 0.938 to 0.971 of its
queries within the SLA (medians of six, docs/benchmarks.md). A tenant within its share is
never behind, and its reads never wait.

A front learns a model's tenant from the engine's admissions (a plan swap that moves a model
to another tenant is learnt from the next admission); a model not yet admitted at this front is
always asked of the engine. It learns the same way which credentials (the digest of the key a
request presents, :mod:`executor.credentials`) the engine accepted for which tenant, and counts
a request before the engine is asked only when its credential is one accepted for the model's
tenant: a request naming another tenant's model with its own (or no, or a made-up) key is
counted nowhere until the engine has checked the key, so it cannot fill that tenant's bound.
Such a counted request of a tenant with room under its bound (:meth:`TenantBudgets.roomy`) is
one the front lets in without asking the engine before its body
(:meth:`executor.front.engine.Engine.presume`); a credential the engine refuses for one of
them (revoked since) is forgotten (:meth:`TenantBudgets.forget`), so its next request is asked
of the engine before its body is read.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from executor.front.engine import Ticket
from executor.scheduling.errors import Overloaded

# In flight allowed, as a multiple of answers/s × SLA: room for a Poisson burst, and for a
# tenant whose rate rises faster than a window of answers shows it.
HEADROOM = 4.0
MIN_IN_FLIGHT = 8  # in flight allowed whatever the tenant's rate
MIN_IN_FLIGHT_BEHIND = 2  # the same for a tenant behind (below)
# A tenant is behind when, over the window, more of its requests ended without an answer in time
# than this many per answer in time (a lone tenant at the edge of its capacity misses a few %).
BEHIND_MISSES = 0.1
WINDOW_S = 1.0  # the answers a tenant's rate is measured over
CREDENTIALS_KEPT = 4096  # accepted credentials a front remembers (forgotten all at once beyond)
RETRY_AFTER_S = 1.0  # what a refused client is told to wait


@dataclass
class _Tenant:
    sla_s: float
    in_flight: int = 0
    answers: collections.deque[float] = field(default_factory=collections.deque)  # in time
    misses: collections.deque[float] = field(default_factory=collections.deque)  # the others
    refusals: collections.deque[float] = field(default_factory=collections.deque)  # at its bound
    reading: asyncio.Lock = field(default_factory=asyncio.Lock)  # its one body read when behind


class TenantBudgets:
    """The in-flight bound of each tenant at one front (see the module docstring)."""

    def __init__(
        self,
        *,
        headroom: float = HEADROOM,
        min_in_flight: int = MIN_IN_FLIGHT,
        min_in_flight_behind: int = MIN_IN_FLIGHT_BEHIND,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(min_in_flight, min_in_flight_behind) < 1:
            raise ValueError("min_in_flight and min_in_flight_behind must be >= 1")
        self._headroom = headroom
        self._min = min_in_flight
        self._min_behind = min_in_flight_behind
        self._window_s = window_s
        self._clock = clock
        self._tenant_of: dict[str, str] = {}  # model, as requests name it -> its tenant
        # credential digest (None: none presented) -> the tenants the engine accepted it for: a
        # key is one tenant's, but a daemon that checks no keys accepts no key for every tenant
        self._accepted: dict[str | None, set[str]] = {}
        self._tenants: dict[str, _Tenant] = {}

    def in_flight(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return state.in_flight if state else 0

    def bound(self, tenant: str) -> int:
        """The requests ``tenant`` may have in flight at this front now."""
        state = self._tenants.get(tenant)
        if state is None:
            return self._min
        horizon = self._clock() - self._window_s
        for ends in (state.answers, state.misses, state.refusals):
            while ends and ends[0] < horizon:
                ends.popleft()
        rate = len(state.answers) / self._window_s
        if self._behind(state):
            return max(self._min_behind, math.ceil(rate * state.sla_s))
        return max(self._min, math.ceil(self._headroom * rate * state.sla_s))

    def _behind(self, state: _Tenant) -> bool:
        """Refused at its bound and more than BEHIND_MISSES misses per answer in time, over
        the window (as :meth:`bound` last trimmed it)."""
        return bool(state.refusals) and len(state.misses) > BEHIND_MISSES * len(state.answers)

    def read_turn(self, tenant: str) -> asyncio.Lock | None:
        """What a request of ``tenant`` must hold while its body is read: for a tenant behind,
        its one read at a time at this front; None (read at once) for any other. Judged on the
        window as counting the request in (:meth:`claim` or :meth:`confirm`) last trimmed it."""
        state = self._tenants.get(tenant)
        return state.reading if state is not None and self._behind(state) else None

    def claim(self, model: str, credential: str | None) -> str | None:
        """Count a request for ``model`` presenting ``credential`` in flight before the engine
        is asked, and return its tenant; None (nothing counted) when the model's tenant is not
        known at this front yet or the engine has not accepted ``credential`` for it here.
        Raise Overloaded (nothing counted) when the tenant is at its bound."""
        tenant = self._tenant_of.get(model)
        if tenant is None or tenant not in self._accepted.get(credential, ()):
            return None
        self._count(tenant)
        return tenant

    def confirm(
        self, model: str, ticket: Ticket, claimed: str | None, credential: str | None
    ) -> str:
        """The engine admitted a request for ``model`` presenting ``credential``: learn its
        tenant and that the credential is accepted for it, and count it there if :meth:`claim`
        did not (or counted another tenant, before a plan swap); return the tenant counted.
        Raise Overloaded, with nothing left counted, at the tenant's bound."""
        self._tenant_of[model] = ticket.tenant
        if len(self._accepted) >= CREDENTIALS_KEPT and credential not in self._accepted:
            self._accepted.clear()
        self._accepted.setdefault(credential, set()).add(ticket.tenant)
        state = self._tenants.setdefault(ticket.tenant, _Tenant(ticket.sla_s))
        state.sla_s = ticket.sla_s
        if claimed != ticket.tenant:
            if claimed is not None:  # counted for the model's tenant before a plan swap
                self._tenants[claimed].in_flight -= 1  # moved, not ended: neither in time nor not
            self._count(ticket.tenant)
        return ticket.tenant

    def roomy(self, tenant: str) -> bool:
        """Whether ``tenant`` has at most half its bound in flight here (answered within its
        SLA it has a quarter: ``r × s`` of ``4 × r × s``). One beyond it is sent more than it is
        answered in time, and its requests are better judged by the engine before their bodies
        are read (:meth:`executor.front.engine.Engine.presume`)."""
        return 2 * self.in_flight(tenant) <= self.bound(tenant)

    def forget(self, credential: str | None) -> None:
        """The engine refused ``credential`` (revoked, or no longer its tenant's after a plan
        swap): its next requests are counted only once the engine has accepted it again."""
        self._accepted.pop(credential, None)

    def _count(self, tenant: str) -> None:
        bound = self.bound(tenant)
        if self.in_flight(tenant) >= bound:
            self._tenants[tenant].refusals.append(self._clock())
            raise Overloaded(
                f"tenant {tenant!r}: {bound} requests in flight at this front, the most its "
                "answer rate within its SLA allows",
                RETRY_AFTER_S,
            )
        self._tenants[tenant].in_flight += 1

    def leave(self, tenant: str, answered: bool) -> None:
        """A request counted for ``tenant`` has ended; ``answered``: with its scores, within
        its SLA."""
        state = self._tenants[tenant]
        state.in_flight -= 1
        (state.answers if answered else state.misses).append(self._clock())
