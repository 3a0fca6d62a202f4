"""Session groups on one device: queues, dynamic batching, query splitting, fair queueing.

A device of a node plan runs three kinds of session workers (threads; on a GPU each binds its
own CUDA stream, on a CPU it runs with one intra-op thread):

- each seat's **base** session and its **dedicated** sessions serve only that seat's replica
  (its :class:`SessionGroup`);
- the device's **shared pool** sessions serve every group of the device by start-time fair
  queueing (Goyal, Vin and Cheng, SIGCOMM 1996) on the seats' ``pool_weight``: a batch of
  ``r`` rows from group ``g`` gets the start tag ``S = max(V, F_g)`` and finish tag
  ``F_g = S + r / w_g``; a free pool session serves the backlogged group with the smallest
  start tag and advances the virtual time ``V`` to it. A group that floods only raises its own
  tags, so the pool's rows follow the weights and an idle group accrues no credit.

Queries are handled as DeepRecSched does (Gupta et al., ISCA 2020): a large query is cut into
pieces across the group's idle sessions so that its latency shrinks, and small queries (or
pieces) are coalesced into one batch of at most ``max_batch_candidates`` rows, waiting at most
``batch_max_delay_s`` for company. Each piece keeps its one user row (RecServe's structured
features: :meth:`Batch.of` computes the user side once per query), and a batch never holds two
pieces of the same query, so that the pieces run in parallel.

Every admitted query has a deadline; a piece found past it is dropped and its query fails,
so an overloaded group sheds late work rather than making every later query late too. The
scheduler decides and the backend runs: one lock per device guards all queues, and model code
always runs outside it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from allocator.cluster.plan import DevicePlan, SeatPlan
from executor.features import Batch, Query
from executor.scheduling import rules
from executor.scheduling.admission import (
    Backlog,
    Refusals,
    ServiceRate,
    predicted_delay,
    retry_after,
)
from executor.scheduling.backend import Backend, Model, Session
from executor.scheduling.config import SchedulerConfig
from executor.scheduling.errors import (
    DeadlineExceeded,
    GroupClosed,
    ModelFailed,
    Overloaded,
    SchedulingError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class Pending:
    """One admitted query until all of its pieces are scored."""

    query: Query
    group: SessionGroup  # the replica serving it
    arrival: float  # time.monotonic() of arrival; latency is measured from here
    deadline: float  # pieces still queued after this are dropped and the query fails
    future: Future[np.ndarray]  # resolves to the (N,) scores in candidate order
    scores: np.ndarray  # filled piece by piece
    pieces_left: int


@dataclass(eq=False)
class Piece:
    """Candidates [start, stop) of a query: the unit that is queued and batched."""

    pending: Pending
    start: int
    stop: int
    enqueued: float

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def query(self) -> Query:
        whole = self.pending.query
        if self.start == 0 and self.stop == whole.num_candidates:
            return whole
        return whole.candidates(self.start, self.stop)


@dataclass
class GroupStats:
    """Counters of one group since it started; read by the metrics collector."""

    admitted: int = 0
    completed: int = 0
    rejected: int = 0
    expired: int = 0
    failed: int = 0
    batches: int = 0
    rows_own: int = 0  # candidate rows served by the group's own sessions
    rows_pool: int = 0  # candidate rows served by the device's shared pool sessions
    busy_own_s: float = 0.0  # session-seconds spent running this group's batches
    busy_pool_s: float = 0.0


@dataclass(eq=False)
class SessionGroup:
    """One replica (one loaded model) with its own sessions and its weight in the pool."""

    seat: SeatPlan
    model: Model
    device: DeviceScheduler | None = None  # set when the device adopts the group
    queue: deque[Piece] = field(default_factory=deque)
    queued_rows: int = 0
    in_service_rows: int = 0
    in_flight: int = 0  # admitted queries not yet finished
    finish_tag: float = 0.0  # SFQ finish tag of its last pool batch
    idle_own: int = 0  # own sessions waiting for work
    closing: bool = False
    rate: ServiceRate = field(default_factory=ServiceRate)
    refusals: Refusals = field(default_factory=Refusals)
    stats: GroupStats = field(default_factory=GroupStats)

    @property
    def model_id(self) -> str:
        assert self.seat.replica is not None
        return self.seat.replica.model_id

    @property
    def tenant(self) -> str:
        assert self.seat.replica is not None
        return self.seat.replica.tenant

    @property
    def sla_s(self) -> float:
        assert self.seat.replica is not None
        return self.seat.replica.sla_p99_ms / 1000.0

    @property
    def own_sessions(self) -> int:
        return 1 + self.seat.dedicated_streams

    @property
    def pool_weight(self) -> float:
        return self.seat.pool_weight

    def load(self) -> float:
        """Queued work per session it can count on: how routing picks among replicas."""
        sessions = self.device.sessions_for(self) if self.device else self.own_sessions
        return (self.queued_rows + self.in_service_rows) / max(sessions, 1e-9)


@dataclass
class Job:
    """A batch chosen under the lock, run outside it."""

    group: SessionGroup
    pieces: list[Piece]
    pooled: bool  # run by a shared pool session (counts toward the pool's shares)
    # The group is sent more than its sessions serve: it had more queued when this batch was
    # taken, or admission control has been refusing it (admission.Refusals).
    over_share: bool = False

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)


class DeviceScheduler:
    """The groups and session workers of one device of the plan."""

    def __init__(
        self,
        plan: DevicePlan,
        groups: list[SessionGroup],
        backend: Backend,
        config: SchedulerConfig,
        device: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.device = device or plan.device  # where the backend runs it (may be remapped)
        self.groups = groups
        self._backend = backend
        self._config = config
        # Every decision reads the time from here, so tests can step a fake clock through
        # batching delays and deadlines instead of sleeping on a loaded machine.
        self._clock = clock
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._draining = False  # drain() waits for in-flight queries to finish
        self._virtual_time = 0.0
        self._idle_pool = 0
        self._pool_weight_total = sum(g.pool_weight for g in groups)
        for g in groups:
            g.device = self

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """One worker thread per session: each group's own sessions, then the shared pool."""
        workers: list[SessionGroup | None] = []
        for g in self.groups:
            workers += [g] * g.own_sessions
        workers += [None] * self.plan.shared_pool_streams
        for index, own in enumerate(workers):
            name = f"session-{self.plan.device}-{index}-{own.model_id if own else 'pool'}"
            t = threading.Thread(target=self._work, args=(own,), name=name, daemon=True)
            self._threads.append(t)
            t.start()

    def drain(self, timeout_s: float) -> bool:
        """Stop admitting, serve what is queued, then stop; True when nothing was cut short."""
        end = time.monotonic() + timeout_s
        with self._cond:
            self._draining = True
            for g in self.groups:
                g.closing = True
            self._cond.notify_all()
            while any(g.in_flight for g in self.groups):
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            clean = not any(g.in_flight for g in self.groups)
        self.stop()
        return clean

    def stop(self) -> None:
        """Stop the workers; queries still queued fail (a swap drains before it stops)."""
        with self._cond:
            self._stopping = True
            cut: list[Pending] = []
            for g in self.groups:
                g.closing = True
                cut += [p.pending for p in g.queue]
                g.queue.clear()
                g.queued_rows = 0
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=10.0)
        error = DeadlineExceeded("the executor stopped before the query was served")
        for pending in dict.fromkeys(cut):
            self._fail(pending, error, "expired")
        # Groups and their device refer to each other. The cyclic GC may never see them (the
        # runtime freezes the first plan's objects), so the cycle is cut here and a replaced
        # plan's replicas, weights included, are freed by reference counting.
        for g in self.groups:
            g.device = None

    # -- admission -------------------------------------------------------------------------

    def sessions_for(self, group: SessionGroup) -> float:
        """Sessions a group can count on: its own and its weighted share of the pool."""
        if self._pool_weight_total <= 0:
            return float(group.own_sessions)
        share = group.pool_weight / self._pool_weight_total
        return group.own_sessions + self.plan.shared_pool_streams * share

    def submit(self, group: SessionGroup, query: Query, arrival: float | None = None) -> Pending:
        """Admit and queue a query, or raise Overloaded/GroupClosed; never blocks on work."""
        now = self._clock()
        arrival = now if arrival is None else arrival
        rows = query.num_candidates
        with self._cond:
            if group.closing:
                raise GroupClosed(f"model {group.model_id!r}: replica is draining")
            refusal = self._refusal(group, rows, now, arrival)
            if refusal is not None:
                self._count_refused(group, 1, now)
                raise refusal
            pieces = self._piece_count(group, rows)
            pending = Pending(
                query=query,
                group=group,
                arrival=arrival,
                deadline=arrival + group.sla_s * self._config.expire_after_sla,
                future=Future(),
                scores=np.empty(rows, dtype=np.float32),
                pieces_left=pieces,
            )
            for start, stop in rules.piece_bounds(rows, pieces):
                group.queue.append(Piece(pending, start, stop, now))
            group.queued_rows += rows
            group.in_flight += 1
            group.stats.admitted += 1
            group.refusals.count(now, admitted=1)
            self._cond.notify_all()
        return pending

    def count_rejected(self, group: SessionGroup, count: int) -> None:
        """Count ``count`` queries of ``group`` refused before they reached it (by a front)."""
        with self._cond:
            self._count_refused(group, count, self._clock())

    def _count_refused(self, group: SessionGroup, count: int, now: float) -> None:
        """Count ``count`` refusals of ``group`` in its stats and its recent refusals (lock
        held)."""
        group.stats.rejected += count
        group.refusals.count(now, refused=count)

    def check(self, group: SessionGroup, rows: int = 1, arrival: float | None = None) -> None:
        """Raise Overloaded when a query of ``rows`` candidates would be refused now.

        Nothing is queued. The daemon calls it before it reads a request's body, with one row:
        the predicted delay only grows with a query's rows, so a query refused here would be
        refused by :meth:`submit` whatever its size, and a flooding tenant's requests are
        turned away without their bodies being parsed. A draining group passes: submit
        routes the query to the new deployment.
        """
        now = self._clock()
        with self._cond:
            if group.closing:
                return
            refusal = self._refusal(group, rows, now, now if arrival is None else arrival)
            if refusal is not None:
                self._count_refused(group, 1, now)
                raise refusal

    def _refusal(
        self, group: SessionGroup, rows: int, now: float, arrival: float
    ) -> Overloaded | None:
        """Why admission control refuses a query of ``rows`` now, or None (lock held)."""
        sla = group.sla_s
        if group.in_flight >= self._config.max_queue:
            wait = predicted_delay(self._backlog(group), 0, group.rate) or sla
            return Overloaded(
                f"model {group.model_id!r}: {group.in_flight} queries queued (limit "
                f"{self._config.max_queue})",
                retry_after(wait, 0.0),
            )
        if self._config.admission and not self._starts_now(group):
            delay = predicted_delay(self._backlog(group), rows, group.rate)
            budget = sla - (now - arrival)
            if delay is not None and delay > budget:
                return Overloaded(
                    f"model {group.model_id!r}: predicted latency {delay * 1000:.0f} ms "
                    f"exceeds its SLA of {sla * 1000:.0f} ms",
                    retry_after(delay, budget),
                )
        return None

    def _starts_now(self, group: SessionGroup) -> bool:
        """Nothing queued and a session idle: the query starts at once (lock held)."""
        idle = group.idle_own + (self._idle_pool if group.pool_weight > 0 else 0)
        return group.queued_rows == 0 and idle > 0

    def _backlog(self, group: SessionGroup) -> Backlog:
        return Backlog(group.queued_rows, group.in_service_rows, self.sessions_for(group))

    def _piece_count(self, group: SessionGroup, rows: int) -> int:
        """Pieces of at most max_batch rows, more when idle sessions can take them now."""
        idle = group.idle_own + (self._idle_pool if group.pool_weight > 0 else 0)
        return rules.piece_count(rows, idle, self._config)

    # -- the session workers -----------------------------------------------------------------

    def _work(self, own: SessionGroup | None) -> None:
        sessions: dict[int, Session] = {}  # group id -> this worker's session on its replica
        lane: BackgroundLane | None = None  # started at this worker's first over-share batch
        try:
            while not self._stopping:
                dropped: list[Piece] = []
                job = self._next_job(own, dropped)
                self.expire(dropped)
                if job is None:
                    continue
                # A group sent more than its sessions serve: its forward takes only the CPU
                # that no other thread wants.
                low = job.over_share and self._config.over_share_at_idle_priority
                if low and lane is None:
                    lane = BackgroundLane(f"{threading.current_thread().name}-backlog")
                self._run(job, sessions, lane if low else None)
        finally:
            if lane is not None:
                lane.close()

    def _next_job(self, own: SessionGroup | None, dropped: list[Piece]) -> Job | None:
        """Wait for a ready group and take a batch from it.

        None when stopping, or when expired pieces were found and must be failed first
        (outside the lock, so that their clients hear of it without waiting on new work).
        """
        with self._cond:
            while not self._stopping:
                job, wake = self.decide(own, dropped)
                if job is not None:
                    return job
                if dropped:
                    return None
                now = self._clock()
                if own is not None:
                    own.idle_own += 1
                else:
                    self._idle_pool += 1
                self._cond.wait(None if wake is None else max(wake - now, 0.0))
                if own is not None:
                    own.idle_own -= 1
                else:
                    self._idle_pool -= 1
            return None

    def decide(
        self, own: SessionGroup | None, dropped: list[Piece]
    ) -> tuple[Job | None, float | None]:
        """The batch a free session would run now, without waiting and without running it.

        ``own`` is the session's group, None for a shared pool session. Returns the batch (its
        rows now count as in service) or, when no group is ready, None and the clock time at
        which one becomes ready (None: only a new query can make one ready). Pieces found past
        their deadline are moved to ``dropped`` for the caller to fail outside the lock. This
        is the whole scheduling decision; the worker threads only wait for it and run it.
        """
        with self._cond:
            now = self._clock()
            while True:
                group, wake = self._choose(own, now)
                if group is None:
                    return None, wake
                job = self._take(group, now, pooled=own is None, dropped=dropped)
                if job is not None:
                    return job, None

    def _ready_at(self, group: SessionGroup) -> float | None:
        """When the group's queue may be served: now if full or closing, else after the delay."""
        oldest = group.queue[0].enqueued if group.queue else None
        return rules.ready_at(oldest, group.queued_rows, group.closing, self._config)

    def _choose(
        self, own: SessionGroup | None, now: float
    ) -> tuple[SessionGroup | None, float | None]:
        """The group to serve now and, when none is ready, the time to look again."""
        candidates = [own] if own is not None else self.groups
        wake = math.inf
        best: SessionGroup | None = None
        best_key: tuple[int, float, int] | None = None
        for k, g in enumerate(candidates):
            at = self._ready_at(g)
            if at is None:
                continue
            if at > now:
                wake = min(wake, at)
                continue
            if own is not None:
                return g, None
            key = rules.pool_priority(k, g.pool_weight, self._virtual_time, g.finish_tag)
            if best_key is None or key < best_key:
                best, best_key = g, key
        return best, (wake if wake < math.inf else None)

    def _take(
        self, group: SessionGroup, now: float, pooled: bool, dropped: list[Piece]
    ) -> Job | None:
        """Pop the batch :func:`rules.form_batch` chooses from the group's queue (lock held)."""
        limit = self._config.max_batch_candidates if self._config.batching else 0
        views = (
            rules.QueuedPiece(p.rows, id(p.pending), p.pending.deadline, p.pending.future.done())
            for p in group.queue
        )
        choice = rules.form_batch(views, limit, now)
        head = [group.queue.popleft() for _ in range(choice.scanned)]
        decided = {*choice.taken, *choice.dropped, *choice.discarded}
        group.queue.extendleft(reversed([p for k, p in enumerate(head) if k not in decided]))
        for k in choice.discarded:
            group.queued_rows -= head[k].rows
            self._piece_done(head[k].pending)
        for k in choice.dropped:
            group.queued_rows -= head[k].rows
            dropped.append(head[k])
        if not choice.taken:
            return None
        taken = [head[k] for k in choice.taken]
        rows = sum(p.rows for p in taken)
        group.queued_rows -= rows
        group.in_service_rows += rows
        if pooled and group.pool_weight > 0:
            self._virtual_time, group.finish_tag = rules.charge_pool(
                self._virtual_time, group.finish_tag, rows, group.pool_weight
            )
        over_share = bool(group.queue) or group.refusals.over_share(now)
        return Job(group, taken, pooled, over_share)

    def _run(self, job: Job, sessions: dict[int, Session], lane: BackgroundLane | None) -> None:
        """Run a batch and deliver its scores; its forward on ``lane`` when one is given."""
        group = job.group
        began = time.monotonic()
        error: ModelFailed | None = None
        try:
            # Assembled inside the try: pieces that do not stack into one batch (a query
            # parsed with another schema) fail their queries, not the worker, whose death
            # would leave them and the pieces it would have served unanswered for good.
            batch = Batch.of([p.query() for p in job.pieces])
            session = sessions.get(id(group))
            if session is None:  # a worker opens its session on a replica when first serving it
                session = sessions[id(group)] = group.model.session()
            forward = functools.partial(session.run, batch)
            scores = forward() if lane is None else lane.run(forward)
            scores = np.asarray(scores, dtype=np.float32).reshape(-1)
            if scores.shape[0] != job.rows:
                raise ValueError(f"returned {scores.shape[0]} scores for {job.rows} rows")
        except Exception as exc:  # a tenant's model failing must not kill the session
            log.exception("model %s failed on a batch of %d rows", group.model_id, job.rows)
            error = ModelFailed(f"model {group.model_id!r} failed: {exc}")
        elapsed = time.monotonic() - began
        finished: list[Pending] = []
        with self._cond:
            group.in_service_rows -= job.rows
            stats = group.stats
            stats.batches += 1
            if job.pooled:
                stats.rows_pool += job.rows
                stats.busy_pool_s += elapsed
            else:
                stats.rows_own += job.rows
                stats.busy_own_s += elapsed
            if error is None:
                group.rate.observe(job.rows, elapsed)
                for piece, part in zip(job.pieces, batch.split_scores(scores), strict=True):
                    piece.pending.scores[piece.start : piece.stop] = part
                    if self._piece_done(piece.pending):
                        finished.append(piece.pending)
            else:
                for piece in job.pieces:
                    self._piece_done(piece.pending)
        for pending in finished:
            self._resolve(pending)
        if error is not None:
            for pending in dict.fromkeys(p.pending for p in job.pieces):
                self._fail(pending, error, "failed")

    def _piece_done(self, pending: Pending) -> bool:
        """Count one piece of a query as finished (lock held); True when it was the last."""
        pending.pieces_left -= 1
        if pending.pieces_left == 0:
            pending.group.in_flight -= 1
            if self._draining:  # only drain() waits for a query to finish; idle sessions
                self._cond.notify_all()  # wait for new work and are not woken for nothing
            return True
        return False

    def _resolve(self, pending: Pending) -> None:
        try:
            pending.future.set_result(pending.scores)
        except InvalidStateError:  # cancelled by its client, or failed by an expired piece
            return
        pending.group.stats.completed += 1

    def expire(self, dropped: list[Piece]) -> None:
        """Fail the queries of pieces that :meth:`decide` found past their deadline."""
        if not dropped:
            return
        with self._cond:
            for piece in dropped:
                self._piece_done(piece.pending)
        for pending in dict.fromkeys(p.pending for p in dropped):
            waited = (self._clock() - pending.arrival) * 1000
            message = f"model {pending.group.model_id!r}: dropped after {waited:.0f} ms"
            self._fail(pending, DeadlineExceeded(message), "expired")

    def _fail(self, pending: Pending, error: SchedulingError, outcome: str) -> None:
        try:
            pending.future.set_exception(error)
        except InvalidStateError:
            return
        stats = pending.group.stats
        if outcome == "expired":
            stats.expired += 1
        else:
            stats.failed += 1


class BackgroundLane:
    """A thread at the lowest CPU priority that runs the forwards its session worker hands it,
    while the worker waits.

    A worker runs a batch's forward here when its group is sent more than its sessions serve
    (:attr:`Job.over_share`: more queued behind the batch, or admission control refusing the
    group of late), so that the forward gets only the CPU no other
    thread of the node wants: the forwards of tenants within their share, the fronts'
    accepting and parsing, the engine's link threads. The lowest priority is ``SCHED_IDLE`` on
    Linux, else nice 19. A second thread rather than the worker lowering itself for the batch:
    an unprivileged process may lower a thread's priority but never raise it again (that takes
    ``CAP_SYS_NICE``), so a worker lowered once would stay low for good; each thread here keeps
    the priority it started with, and the two never run at once. Only the forward, which holds
    the GIL just around its call: the batch's assembly and the delivery of its scores hold it
    throughout, and a thread at idle priority preempted while holding it would stall every
    other thread of the engine behind it.
    """

    def __init__(self, name: str) -> None:
        self._work: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._done = threading.Semaphore(0)
        self._result: Any = None
        self._raised: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` run on the lane, once it has; what it raises is raised here."""
        self._work.put(work)
        self._done.acquire()
        result, raised = self._result, self._raised
        self._result = self._raised = None
        if raised is not None:
            raise raised
        return cast(T, result)

    def close(self) -> None:
        self._work.put(None)
        self._thread.join()

    def _serve(self) -> None:
        _lowest_cpu_priority()
        while (work := self._work.get()) is not None:
            try:
                self._result = work()
            except BaseException as exc:  # noqa: BLE001 - handed back to the worker as it is
                self._raised = exc
            self._done.release()


def _lowest_cpu_priority() -> None:
    """Put the calling thread last in line for the CPU: SCHED_IDLE, else nice 19, else (with
    the reason logged) as it is."""
    try:
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError) as exc:
        log.warning("a backlog lane runs at its worker's priority: %s", exc)
