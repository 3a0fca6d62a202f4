"""The node protocol's read side: a node's current plan, its ETag, and the long-poll wake-up.

A node's plan is stored ready-made with each allocation, so serving it is one indexed read of
``node_plans``. Before any allocation seats a node, the node gets an empty plan of version 0
(all its seats empty), which the executor parses like any other; its ETag changes when a real
plan arrives, so a daemon that long-polls from the start needs no special case.

Long-polls wait on :class:`PlanNotifier`, not on a database connection: a held plan long-poll
looks at its plan's version only when woken — at once when this process stores an allocation,
and within about ``RECHECK_S`` when any process does (another API replica sharing the PostgreSQL
database, or another worker of ``gpufair serve --workers N``), which :class:`StoredPlanWatcher`
notices for all of them with one query a period. It sends a plan only when the version moved —
the JSON body this process rendered when it stored (or last sent) that version
(:class:`RenderedPlans`), so the 100 long-polls a solve wakes read one integer each rather than
a plan to parse and encode; a version this process has not seen is read from ``node_plans`` and
rendered once.

A stored plan is read back through the format's one parser, ``NodePlan.from_dict``, the one the
daemon parses it with, so the API never serves or reads a document the executor would refuse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from allocator.cluster.plan import DevicePlan, NodePlan, SeatPlan
from api.db import Database
from api.models import AllocationRow, DeviceRow, NodePlanRow, NodeRow

log = logging.getLogger(__name__)

# How often the database is looked at for what another process changed while long-polls wait:
# by each credential and routing long-poll (recheck_after), and by the one StoredPlanWatcher
# of all plan long-polls.
RECHECK_S = 1.0
# Over how long the long-polls one stored allocation wakes are spread (PlanNotifier.wait).
WAKE_SPREAD_S = 1.0


def recheck_after() -> float:
    """Seconds until a waiting long-poll that rechecks on its own (credentials, routing) looks
    again: ``RECHECK_S`` on average, spread over half to one and a half of it. Long-polls that
    began together (woken by one allocation) would otherwise all query at once, every second:
    100 nodes made a burst of 100 reads each second, a stall for every request that came with
    it."""
    return RECHECK_S * random.uniform(0.5, 1.5)
# How many of a node's newest plans may seat what it reports (see :func:`seated_on_node`).
RECENT_PLANS = 8
# Parsed stored plans an API process keeps (:class:`ParsedPlans`): a few allocations of a
# thousand-node cluster.
PARSED_PLANS_KEPT = 4096

Seated = tuple[str, str]  # (tenant, model id) as a plan names them


def plan_etag(version: int) -> str:
    return f'"plan-{version}"'


def plan_version_named(header: str | None) -> int | None:
    """The version ``If-None-Match`` names when it is one plan ETag (``"plan-N"``, weak or
    not), else None."""
    if not header or "," in header:
        return None
    tag = header.strip().removeprefix("W/")
    if not (tag.startswith('"plan-') and tag.endswith('"')):
        return None
    number = tag[len('"plan-') : -1]
    return int(number) if number.isdigit() else None


def etag_matches(header: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of ``If-None-Match`` against ``etag``."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


def empty_plan(*, node: str, devices: Sequence[Any]) -> NodePlan:
    """Version 0: every seat of every device (rows with device, kind, streams, seats) empty."""
    return NodePlan(
        node=node,
        version=0,
        allocation_id=0,
        devices=tuple(
            DevicePlan(
                device=d.device,
                kind=d.kind,
                streams=d.streams,
                shared_pool_streams=0,
                seats=tuple(
                    SeatPlan(seat=k, replica=None, dedicated_streams=0, pool_weight=0.0)
                    for k in range(d.seats)
                ),
            )
            for d in devices
        ),
    )


def current_plan(
    *, session: Session | Connection, node_id: int, node_name: str
) -> tuple[int, NodePlan]:
    """The node's newest plan and its version."""
    row = session.execute(
        select(NodePlanRow.version, NodePlanRow.plan)
        .where(NodePlanRow.node_id == node_id)
        .order_by(NodePlanRow.version.desc())
        .limit(1)
    ).first()
    if row is not None:
        return row.version, NodePlan.from_dict(row.plan)
    devices = session.execute(
        select(DeviceRow.device, DeviceRow.kind, DeviceRow.streams, DeviceRow.seats)
        .where(DeviceRow.node_id == node_id)
        .order_by(DeviceRow.id)
    ).all()
    return 0, empty_plan(node=node_name, devices=devices)


def current_version(*, session: Session | Connection, node_id: int) -> int:
    """The version of the node's newest plan, 0 before any: one index-only lookup, for the
    revalidations (304) and heartbeats that need no plan document."""
    newest = session.scalar(
        select(func.max(NodePlanRow.version)).where(NodePlanRow.node_id == node_id)
    )
    return newest or 0


def render_plan(plan: NodePlan) -> bytes:
    """The plan's JSON body as the plan route sends it (the encoding of Starlette's
    ``JSONResponse``), rendered once per stored plan and kept (:class:`RenderedPlans`)."""
    return json.dumps(
        plan.to_dict(), ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def plan_body_unless_current(
    *,
    session: Session | Connection,
    node_id: int,
    node_name: str,
    if_none_match: str | None,
    rendered: RenderedPlans,
) -> tuple[int, bytes | None]:
    """The node's newest version and its plan's JSON body, or None for the body when
    ``If-None-Match`` already names that version.

    The version is read from the database every time (one index-only lookup), and the body
    comes from ``rendered`` when this process kept that version's rendering: a long-poll woken
    by a solve then sends its new plan without reading, parsing or encoding it. Only on a miss
    (another process stored the plan, or it was dropped) is the plan read and rendered, and
    kept for the next caller."""
    version = current_version(session=session, node_id=node_id)
    if if_none_match and etag_matches(if_none_match, plan_etag(version)):
        return version, None
    body = rendered.get(node_id=node_id, version=version)
    if body is not None:
        return version, body
    version, plan = current_plan(session=session, node_id=node_id, node_name=node_name)
    body = render_plan(plan)
    rendered.keep(node_id=node_id, version=version, body=body)
    return version, body


def recent_seats(
    *, session: Session, node_id: int, also_version: int | None = None
) -> Iterator[dict[Seated, int | None]]:
    """The (tenant, model) pairs each of the node's recent plans seats on it, newest first, each
    with the id of the tenant its allocation seated it for (``AllocationRow.tenant_ids``; None
    where the allocation does not name the tenant).

    What a node's token may write about (its heartbeat's SLA counts, its profiles) is what it
    was given to serve, and a daemon reports on a plan after the API stored a newer one: its
    counts since start cover the plan it serves and the one it drained (the executor drops
    older pairs, :meth:`executor.metrics.ExecutorMetrics.retain`), and it uploads a plan's
    profiles once it applied it. So the search covers the plan of ``also_version`` (the one
    the daemon says it serves, found only among this node's own) and then the node's
    ``RECENT_PLANS`` newest plans; a caller stops as soon as it found what it looks for, so
    a daemon on the newest plan costs one plan parsed. The tenant ids say whose queries the
    daemon counted: plans name tenants, and a name may since have passed to a new tenant.
    """
    plans = (
        select(NodePlanRow.plan, AllocationRow.tenant_ids)
        .join(AllocationRow, AllocationRow.id == NodePlanRow.allocation_id)
        .where(NodePlanRow.node_id == node_id)
    )
    queries = [plans.order_by(NodePlanRow.version.desc()).limit(RECENT_PLANS)]
    if also_version is not None:
        queries.insert(0, plans.where(NodePlanRow.version == also_version))
    for query in queries:
        for document, tenant_ids in session.execute(query):
            yield {
                (seat.replica.tenant, seat.replica.model_id): tenant_ids.get(seat.replica.tenant)
                for _, seat in NodePlan.from_dict(document).replicas()
                if seat.replica is not None
            }


class ParsedPlans:
    """Stored plans parsed once, by their row's key (allocation id, node id).

    A stored plan never changes (an allocation is immutable; the next solve writes new rows),
    so its parse stays right for as long as its row exists. Which rows an allocation has, and
    its nodes' names, are read from the database on every call, so a row that is gone is never
    answered from here; only the documents of rows not kept yet are loaded and parsed. The
    tenant's allocation view reads every plan of the current allocation on each request, and
    parsing them all each time was most of its cost. At most ``capacity`` plans are kept, the
    least recently used dropped first. Thread-safe: reads run in worker threads.
    """

    def __init__(self, capacity: int = PARSED_PLANS_KEPT) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._plans: OrderedDict[tuple[int, int], NodePlan] = OrderedDict()

    def keep(self, *, allocation_id: int, plans: dict[int, NodePlan]) -> None:
        """Keep the plans (node id -> plan) the caller just stored and committed for
        ``allocation_id``: the solve has them parsed already, and otherwise the first tenants'
        reads after it would each parse all of them at once."""
        with self._lock:
            for node_id, plan in plans.items():
                self._plans[(allocation_id, node_id)] = plan
            self._trim()

    def _trim(self) -> None:
        while len(self._plans) > self.capacity:
            self._plans.popitem(last=False)

    def of_allocation(self, *, session: Session, allocation_id: int) -> dict[str, NodePlan]:
        """Node name -> the stored plan of one allocation."""
        names = dict(
            session.execute(
                select(NodePlanRow.node_id, NodeRow.name)
                .join(NodeRow, NodeRow.id == NodePlanRow.node_id)
                .where(NodePlanRow.allocation_id == allocation_id)
            ).all()
        )
        with self._lock:
            found = {
                node_id: self._plans[(allocation_id, node_id)]
                for node_id in names
                if (allocation_id, node_id) in self._plans
            }
            for node_id in found:
                self._plans.move_to_end((allocation_id, node_id))
        missing = [node_id for node_id in names if node_id not in found]
        if missing:
            loaded = {
                node_id: NodePlan.from_dict(document)
                for node_id, document in session.execute(
                    select(NodePlanRow.node_id, NodePlanRow.plan).where(
                        NodePlanRow.allocation_id == allocation_id,
                        NodePlanRow.node_id.in_(missing),
                    )
                )
            }
            found.update(loaded)
            with self._lock:
                for node_id, plan in loaded.items():
                    self._plans[(allocation_id, node_id)] = plan
                self._trim()
        return {name: found[node_id] for node_id, name in names.items()}


class RenderedPlans:
    """Each node's newest plan seen by this process, as the bytes the plan route sends, by
    (node id, version).

    A cache, never the source of truth: every request reads the node's newest version from
    the database first and asks for that version only, so a plan another API process stored
    is never answered with an older one kept here (it is a miss, read and kept in turn). Only
    a long-poll already held, woken by this process's solve, is answered from here without a
    read (:meth:`newer_than`): what is kept was committed, and is newer than the plan the
    daemon has; should another process have stored a newer one still, the daemon's next
    request reads its version. A
    stored plan never changes and its version — the allocation's id — is never reused, so a
    rendering is right for as long as that version is the node's newest. Version 0 (the empty
    plan before any allocation, built from the node's devices rather than stored) is not kept.
    At most ``capacity`` nodes are kept, the least recently used dropped first. Thread-safe:
    reads run in worker threads, the solve stores from its own.
    """

    def __init__(self, capacity: int = PARSED_PLANS_KEPT) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._bodies: OrderedDict[int, tuple[int, bytes]] = OrderedDict()

    def get(self, *, node_id: int, version: int) -> bytes | None:
        with self._lock:
            kept = self._bodies.get(node_id)
            if kept is None or kept[0] != version:
                return None
            self._bodies.move_to_end(node_id)
            return kept[1]

    def newer_than(self, *, node_id: int, version: int) -> tuple[int, bytes] | None:
        """The node's kept plan (version, body) if it is newer than ``version``: a plan this
        process saw committed, so one a long-poll held with ``version`` may be sent without
        asking the database (see :func:`api.routes.nodes.read_plan`)."""
        with self._lock:
            kept = self._bodies.get(node_id)
            if kept is None or kept[0] <= version:
                return None
            self._bodies.move_to_end(node_id)
            return kept

    def keep(self, *, node_id: int, version: int, body: bytes) -> None:
        """Keep ``body`` as the node's plan of ``version``, unless a newer one is kept."""
        if version <= 0 or self.capacity <= 0:
            return
        with self._lock:
            kept = self._bodies.get(node_id)
            if kept is not None and kept[0] > version:
                return
            self._bodies[node_id] = (version, body)
            self._bodies.move_to_end(node_id)
            while len(self._bodies) > self.capacity:
                self._bodies.popitem(last=False)


class PlanNotifier:
    """Wakes this process's waiting long-polls when it stores a new allocation or changes a
    key, and when its :class:`StoredPlanWatcher` sees that another process stored one.

    ``notify`` is called from the worker thread that ran the solve; waiters live on the event
    loop, so the wake-up crosses threads with ``call_soon_threadsafe``. Every wake-up counts a
    generation: a long-poll notes it before it reads (:attr:`generation`) and passes it to
    :meth:`wait`, so a wake-up that came while its read was under way — the read may have
    missed what it announces — ends the wait at once rather than being lost; a plan long-poll
    has no recheck of its own to catch it later.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._generation = 0
        self._stored_here = 0

    @property
    def generation(self) -> int:
        """How many wake-ups there were: note it before a read, pass it to :meth:`wait`."""
        with self._lock:
            return self._generation

    async def wait(self, timeout: float, *, since: int) -> None:
        """Return after a wake-up later than generation ``since``, or ``timeout`` seconds,
        whichever comes first.

        A notification wakes every waiter at once, and each then reads and sends its node's
        plan: for a hundred nodes, a hundred plan reads queued ahead of every other request.
        So a woken waiter returns after a further random delay of up to ``WAKE_SPREAD_S``
        (within ``timeout``): the reads arrive spread over it, and a plan reaches its node at
        most that much later — nothing beside a solve's seconds or a daemon's model loads.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._lock:
            self._loop = loop
            event = None
            if self._generation == since:
                if self._event is None:
                    self._event = asyncio.Event()
                event = self._event
        if event is not None:
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                return
        await asyncio.sleep(random.uniform(0, max(0.0, min(WAKE_SPREAD_S, deadline - loop.time()))))

    def wake(self) -> None:
        """Wake every waiter; called on the event loop (from another thread: :meth:`notify`)."""
        with self._lock:
            event, self._event = self._event, None
            self._generation += 1
        if event is not None:
            event.set()

    @property
    def stored_here(self) -> int:
        """The newest allocation this process stored and woke its long-polls for (0: none)."""
        with self._lock:
            return self._stored_here

    def notify(self, *, allocation_id: int | None = None) -> None:
        """Wake every waiter, from any thread; ``allocation_id`` names the allocation this
        process just stored and committed, so that its :class:`StoredPlanWatcher`, seeing it,
        does not wake them a second time for it."""
        with self._lock:
            if allocation_id is not None:
                self._stored_here = max(self._stored_here, allocation_id)
            loop = self._loop
            if loop is None or loop.is_closed():
                # No waiter to wake; a read under way on a loop still to come sees it.
                self._generation += 1
                return
        loop.call_soon_threadsafe(self.wake)


def newest_allocation_id(connection: Connection) -> int:
    """The id of the newest stored allocation, 0 before any: the stamp that moves whenever any
    process stores plans. An allocation and all its plans are committed together and never
    change or go, and ids only grow, so a new stamp means new plans. One lookup at the end of
    the primary key (``node_plans`` has no index led by ``version``: its maximum would scan
    every stored plan)."""
    return connection.scalar(select(func.max(AllocationRow.id))) or 0


def plans_of_allocation(connection: Connection, allocation_id: int) -> dict[int, NodePlan]:
    """Node id -> the plan the allocation ``allocation_id`` stored for that node."""
    return {
        node_id: NodePlan.from_dict(document)
        for node_id, document in connection.execute(
            select(NodePlanRow.node_id, NodePlanRow.plan).where(
                NodePlanRow.allocation_id == allocation_id
            )
        )
    }


def keep_allocation_plans(
    *,
    allocation_id: int,
    version: int,
    plans: dict[int, NodePlan],
    parsed: ParsedPlans,
    rendered: RenderedPlans | None,
) -> None:
    """Keep a committed allocation's plans (node id -> plan) parsed in ``parsed`` and rendered
    in ``rendered``, as the solve that stored them or the watcher that found them does: once,
    rather than by each of the first readers and woken long-polls at once."""
    parsed.keep(allocation_id=allocation_id, plans=plans)
    if rendered is not None:
        for node_id, plan in plans.items():
            rendered.keep(node_id=node_id, version=version, body=render_plan(plan))


class StoredPlanWatcher:
    """One task that notices plans stored by any process, for every plan long-poll of the app.

    Held plan long-polls do not look at the database on their own while they wait: with 100 of
    them, a look each per ``RECHECK_S`` was a tenth of a core spent finding nothing. Instead,
    while at least one waits (:meth:`waiting`), this task reads :func:`newest_allocation_id`
    every ``RECHECK_S`` through the request gate, and when it moved since its last look it
    wakes them all (:class:`PlanNotifier`); each then reads its node's version once. It starts
    with the first waiter and ends when a period passes with none, so an app that holds no
    long-poll runs no background query; :meth:`stop` cancels it at shutdown. Its last stamp is
    kept across such runs: a look that finds it unchanged proves nothing was stored since the
    previous look, before the reads of the waiters present — and the first look of the app,
    having nothing to compare with, wakes them. A new stamp that is the allocation this process
    stored itself wakes nobody: its solve woke them already (:meth:`PlanNotifier.notify`); one
    another process stored is first taken in — its plans read, parsed and rendered once into the
    process's caches (:meth:`_take_in`) — and then wakes them, so they send it as kept. A
    failed look is logged and tried again a
    period later; the waiters still end at their deadline (read once more, then 304). One
    event loop per app, as for the notifier.
    """

    def __init__(
        self,
        *,
        db: Database,
        notifier: PlanNotifier,
        parsed: ParsedPlans,
        rendered: RenderedPlans,
    ) -> None:
        self._db = db
        self._notifier = notifier
        self._parsed = parsed
        self._rendered = rendered
        self._waiters = 0
        self._stamp: int | None = None
        self._task: asyncio.Task[None] | None = None

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Count the caller, a plan long-poll about to wait, as waiting while inside; start the
        task if none runs. Called on the event loop."""
        self._waiters += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._watch(), name="stored-plan watcher"
            )
        try:
            yield
        finally:
            self._waiters -= 1

    async def _watch(self) -> None:
        try:
            while True:
                await asyncio.sleep(RECHECK_S)
                if self._waiters == 0:
                    return
                try:
                    stamp = await self._db.read(newest_allocation_id)
                except Exception:
                    log.warning("could not look for stored plans; trying again in %g s",
                                RECHECK_S, exc_info=True)  # fmt: skip
                    continue
                if stamp != self._stamp:
                    self._stamp = stamp
                    # This process's own newest allocation woke the long-polls when it stored
                    # it (newer_than sends its plan without a read); another wake-up would
                    # have each of them read its version once more, a second after a solve.
                    if stamp != self._notifier.stored_here:
                        await self._take_in(stamp)
                        self._notifier.wake()
        finally:
            # Nothing awaited since the last count of waiters: a waiter that came after it
            # sees no task and starts one.
            self._task = None

    async def _take_in(self, allocation_id: int) -> None:
        """Parse and render the plans of an allocation another process stored, once, before
        the waiters wake: each then sends its node's plan as kept (``newer_than``) instead of
        reading and rendering it, and the tenants' allocation views find it parsed — rather
        than a hundred long-polls and every tenant's first read doing that work at once, in
        the second after a solve, which is where the read tail was. Should it fail, the
        waiters read their plans themselves, as before."""

        def take_in(connection: Connection) -> None:
            keep_allocation_plans(
                allocation_id=allocation_id,
                # An allocation's version is its id (api.services.allocations.store_allocation).
                version=allocation_id,
                plans=plans_of_allocation(connection, allocation_id),
                parsed=self._parsed,
                rendered=self._rendered,
            )

        try:
            await self._db.read(take_in)
        except Exception:
            log.warning("could not load the plans of allocation %d", allocation_id, exc_info=True)

    async def stop(self) -> None:
        """Cancel the task, if one runs (the app's shutdown)."""
        task = self._task
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
