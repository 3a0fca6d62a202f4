"""The scheduler's rules on hand-written queues and a fake clock: no worker thread runs.

The first tests call the pure functions of :mod:`executor.scheduling.rules` on plain values.
The others build one device's session groups, submits queries at chosen clock times and asks
:meth:`DeviceScheduler.decide` what a free session would run, exactly as the worker threads
do. So batching delays, deadlines, admission, query splitting and the shared pool's weighted
fair queueing are checked to the row and the millisecond, whatever else the machine is doing.
Their speed on real threads is measured by ``gpufair bench serve``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from executor.fake import FAKE_SCHEMA
from executor.features import Query
from executor.scheduling import DeadlineExceeded, Overloaded, SchedulerConfig, rules
from executor.scheduling.device import DeviceScheduler, Job, Piece, SessionGroup
from tests.executor.scheduling_helpers import FakeClock, device, queries, seat

POOL_ONLY = SchedulerConfig(admission=False, max_queue=100_000, batch_max_delay_s=0.0)


def take(scheduler: DeviceScheduler, own: SessionGroup | None) -> Job | None:
    dropped: list[Piece] = []
    job, _ = scheduler.decide(own, dropped)
    assert not dropped
    return job


def flood(scheduler: DeviceScheduler, group: SessionGroup, load: list[Query], n: int) -> None:
    for k in range(n):
        scheduler.submit(group, load[k % len(load)])


# -- the pure rules ---------------------------------------------------------------------------


def test_the_scheduling_package_loads_no_torch() -> None:
    code = "import sys, executor.scheduling; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_ready_at_waits_for_company_only_while_a_batch_could_still_grow() -> None:
    config = SchedulerConfig(batch_max_delay_s=0.02, max_batch_candidates=100)
    assert rules.ready_at(None, 0, closing=False, config=config) is None
    assert rules.ready_at(5.0, 99, closing=False, config=config) == 5.0 + 0.02
    assert rules.ready_at(5.0, 100, closing=False, config=config) == 0.0  # a full batch
    assert rules.ready_at(5.0, 1, closing=True, config=config) == 0.0  # draining
    unbatched = SchedulerConfig(batching=False)
    assert rules.ready_at(5.0, 1, closing=False, config=unbatched) == 0.0


@pytest.mark.parametrize(("rows", "idle", "splitting", "pieces"), [
    (800, 4, True, 4),  # one piece per idle session
    (800, 0, True, 2),  # nobody idle: only the batch size cuts it (512 rows a piece)
    (100, 4, True, 1),  # pieces of at least 64 rows: 100 rows make one
    (200, 4, True, 3),
    (800, 4, False, 2),  # without splitting, only the batch size counts
    (3, 4, True, 1),
    (0, 4, True, 1),
])
def test_piece_count(rows: int, idle: int, splitting: bool, pieces: int) -> None:
    config = SchedulerConfig(max_batch_candidates=512, min_split_rows=64, splitting=splitting)
    assert rules.piece_count(rows, idle, config) == pieces


def test_piece_bounds_cover_the_query_in_near_equal_pieces() -> None:
    for rows, pieces in [(800, 4), (7, 3), (1, 1), (513, 2)]:
        bounds = rules.piece_bounds(rows, pieces)
        assert bounds[0][0] == 0 and bounds[-1][1] == rows and len(bounds) == pieces
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1


def piece(
    rows: int, query: str, deadline: float = 10.0, settled: bool = False
) -> rules.QueuedPiece:
    return rules.QueuedPiece(rows=rows, query=query, deadline=deadline, settled=settled)


def test_form_batch_is_fifo_one_piece_per_query_and_stops_at_the_limit() -> None:
    queue = [piece(30, "a"), piece(30, "a"), piece(40, "b"), piece(40, "c"), piece(10, "d")]
    choice = rules.form_batch(queue, limit=100, now=0.0)
    # a's second piece is skipped (it runs beside the first, on another session); c would
    # make 110 rows: the scan stops there and c, d stay queued.
    assert choice.taken == (0, 2) and choice.scanned == 3
    assert choice.dropped == () and choice.discarded == ()


def test_form_batch_drops_late_pieces_and_discards_settled_ones_on_its_way() -> None:
    queue = [piece(10, "a", deadline=1.0), piece(10, "b", settled=True), piece(10, "c")]
    choice = rules.form_batch(queue, limit=0, now=2.0)
    assert (choice.dropped, choice.discarded, choice.taken, choice.scanned) == ((0,), (1,), (2,), 3)


def test_form_batch_reads_a_long_queue_only_as_far_as_it_decides() -> None:
    read: list[int] = []

    def queue():
        for k in range(10_000):
            read.append(k)
            yield piece(100, f"q{k}")

    assert rules.form_batch(queue(), limit=300, now=0.0).taken == (0, 1, 2)
    assert len(read) == 4


def test_pool_tags_share_rows_by_weight_and_leave_no_credit_to_the_idle() -> None:
    weights = {"a": 3.0, "b": 1.0}
    finish = {"a": 0.0, "b": 0.0}
    virtual_time, served = 0.0, {"a": 0, "b": 0}
    for _ in range(400):
        name = min(weights, key=lambda g: rules.pool_priority(
            list(weights).index(g), weights[g], virtual_time, finish[g]))
        virtual_time, finish[name] = rules.charge_pool(virtual_time, finish[name], 100,
                                                       weights[name])
        served[name] += 100
    assert served == {"a": 30_000, "b": 10_000}
    # A group that was idle starts from the virtual time, not from its old tag.
    assert rules.pool_priority(0, 1.0, virtual_time, 0.0)[1] == virtual_time
    assert rules.pool_priority(0, 0.0, virtual_time, 0.0) > rules.pool_priority(
        9, 1.0, virtual_time, 1e9)  # weight 0 waits behind every weighted group


# -- batching ---------------------------------------------------------------------------------


def test_a_lone_small_query_waits_exactly_the_batching_delay() -> None:
    clock = FakeClock()
    scheduler = device([seat(0, "m")], config=SchedulerConfig(batch_max_delay_s=0.02),
                       clock=clock)
    (group,) = scheduler.groups
    scheduler.submit(group, queries(FAKE_SCHEMA, [5], seed=1)[0])
    assert scheduler.decide(group, []) == (None, 1000.0 + 0.02)
    clock.now = 1000.019
    assert scheduler.decide(group, [])[0] is None
    clock.now = 1000.0 + 0.02
    job = take(scheduler, group)
    assert job is not None and job.rows == 5 and group.in_service_rows == 5


def test_a_queue_that_fills_a_batch_is_served_without_waiting() -> None:
    clock = FakeClock()
    config = SchedulerConfig(batch_max_delay_s=10.0, max_batch_candidates=100, admission=False)
    scheduler = device([seat(0, "m")], config=config, clock=clock)
    (group,) = scheduler.groups
    for q in queries(FAKE_SCHEMA, [30] * 4, seed=2):
        scheduler.submit(group, q)
    # 120 rows queued, batches of at most 100 rows: three queries go at once; the fourth, alone
    # again, waits for company until its batching delay is over.
    first = take(scheduler, group)
    assert first is not None and (first.rows, len(first.pieces)) == (90, 3)
    assert scheduler.decide(group, []) == (None, clock.now + 10.0)


def test_without_batching_every_query_is_its_own_batch_at_once() -> None:
    clock = FakeClock()
    config = SchedulerConfig(batching=False, batch_max_delay_s=10.0, admission=False)
    scheduler = device([seat(0, "m")], config=config, clock=clock)
    (group,) = scheduler.groups
    for q in queries(FAKE_SCHEMA, [5, 6, 7], seed=3):
        scheduler.submit(group, q)
    jobs = [take(scheduler, group) for _ in range(3)]
    assert [job.rows for job in jobs if job is not None] == [5, 6, 7]


# -- splitting --------------------------------------------------------------------------------


def test_a_large_query_is_cut_into_one_piece_per_idle_session() -> None:
    clock = FakeClock()
    config = SchedulerConfig(max_batch_candidates=1000, batch_max_delay_s=0.0, admission=False)
    scheduler = device([seat(0, "m", dedicated=3)], config=config, clock=clock)
    (group,) = scheduler.groups
    group.idle_own = 4  # all four sessions wait for work
    pending = scheduler.submit(group, queries(FAKE_SCHEMA, [800], seed=4)[0])
    assert pending.pieces_left == 4
    jobs = [take(scheduler, group) for _ in range(4)]
    # A batch never holds two pieces of one query, so the four run side by side.
    assert [(job.rows, len(job.pieces)) for job in jobs if job is not None] == [(200, 1)] * 4


def test_a_query_is_not_cut_when_no_session_is_idle() -> None:
    clock = FakeClock()
    config = SchedulerConfig(max_batch_candidates=300, admission=False)
    scheduler = device([seat(0, "m", dedicated=3)], config=config, clock=clock)
    (group,) = scheduler.groups
    assert scheduler.submit(group, queries(FAKE_SCHEMA, [800], seed=5)[0]).pieces_left == 3


# -- deadlines --------------------------------------------------------------------------------


def test_pieces_past_their_deadline_are_dropped_and_their_queries_fail() -> None:
    clock = FakeClock()
    config = SchedulerConfig(admission=False, expire_after_sla=1.0, batching=False)
    scheduler = device([seat(0, "m", sla_ms=60)], config=config, clock=clock)
    (group,) = scheduler.groups
    pending = [scheduler.submit(group, q) for q in queries(FAKE_SCHEMA, [5] * 4, seed=6)]
    assert take(scheduler, group) is not None  # the first starts at once
    clock.now += 0.059
    assert take(scheduler, group) is not None  # the second is still within its deadline
    clock.now += 0.002
    dropped: list[Piece] = []
    assert scheduler.decide(group, dropped) == (None, None)
    assert [piece.pending for piece in dropped] == pending[2:]
    scheduler.expire(dropped)
    for late in pending[2:]:
        with pytest.raises(DeadlineExceeded):
            late.future.result(timeout=0)
    assert group.stats.expired == 2 and group.queued_rows == 0 and group.in_flight == 2


# -- admission --------------------------------------------------------------------------------


def test_admission_admits_what_its_estimate_finishes_within_the_sla() -> None:
    clock = FakeClock()
    scheduler = device([seat(0, "m", sla_ms=220)], config=SchedulerConfig(), clock=clock)
    (group,) = scheduler.groups
    group.rate.seconds_per_row = 1e-3  # as measured: 1 ms per row on one session
    admitted, refused = [], []
    for q in queries(FAKE_SCHEMA, [50] * 10, seed=7):
        try:
            admitted.append(scheduler.submit(group, q))
        except Overloaded as exc:
            refused.append(exc)
    # 50, 100, 150, 200 ms of rows ahead fit in 220 ms; 250 ms does not, by 30 ms.
    assert len(admitted) == 4 and len(refused) == 6
    assert all(exc.retry_after_s == 1 for exc in refused)
    assert group.stats.rejected == 6


def test_rows_in_service_count_half_and_time_already_waited_counts_against_the_sla() -> None:
    clock = FakeClock()
    scheduler = device([seat(0, "m", sla_ms=220)], config=SchedulerConfig(batching=False),
                       clock=clock)
    (group,) = scheduler.groups
    group.rate.seconds_per_row = 1e-3
    load = queries(FAKE_SCHEMA, [100, 100, 50], seed=8)
    scheduler.submit(group, load[0])
    assert take(scheduler, group) is not None  # 100 rows in service: 50 ms left on average
    scheduler.submit(group, load[1])  # 50 + 100 = 150 ms
    # 50 + 100 + 50 = 200 ms: too late for a query that already waited 30 ms of its 220 ms,
    # in time for one that waited 10 ms.
    with pytest.raises(Overloaded):
        scheduler.submit(group, load[2], arrival=clock.now - 0.030)
    scheduler.submit(group, load[2], arrival=clock.now - 0.010)


def test_a_full_queue_is_refused_with_retry_after() -> None:
    clock = FakeClock()
    scheduler = device([seat(0, "m")], config=SchedulerConfig(max_queue=5, admission=False),
                       clock=clock)
    (group,) = scheduler.groups
    load = queries(FAKE_SCHEMA, [10] * 6, seed=9)
    for q in load[:5]:
        scheduler.submit(group, q)
    with pytest.raises(Overloaded) as refused:
        scheduler.submit(group, load[5])
    assert refused.value.retry_after_s >= 1 and group.in_flight == 5


# -- the shared pool: weighted fair queueing ----------------------------------------------------


@pytest.mark.parametrize("weights", [[3.0, 1.0], [1.0, 1.0, 2.0], [0.5, 0.2, 0.3]])
def test_pool_rows_follow_the_weights_while_every_group_is_backlogged(
    weights: list[float],
) -> None:
    clock = FakeClock()
    seats = [seat(k, f"m{k}", weight=w) for k, w in enumerate(weights)]
    scheduler = device(seats, pool=4, config=POOL_ONLY, clock=clock)
    load = queries(FAKE_SCHEMA, [200] * 10, seed=11)
    for group in scheduler.groups:
        flood(scheduler, group, load, 1000)
    served = [0] * len(weights)
    for _ in range(500):
        job = take(scheduler, None)
        assert job is not None
        served[scheduler.groups.index(job.group)] += job.rows
    assert all(group.queued_rows > 0 for group in scheduler.groups)
    total = sum(served)
    for rows, weight in zip(served, weights, strict=True):
        fair = total * weight / sum(weights)
        # Start-time fair queueing is off by at most about one batch per group.
        assert abs(rows - fair) <= 2 * POOL_ONLY.max_batch_candidates, (served, weights)


def test_an_idle_group_leaves_its_pool_share_to_the_busy_one() -> None:
    clock = FakeClock()
    seats = [seat(0, "busy", weight=1.0), seat(1, "idle", weight=3.0)]
    scheduler = device(seats, pool=3, config=POOL_ONLY, clock=clock)
    busy, idle = scheduler.groups
    flood(scheduler, busy, queries(FAKE_SCHEMA, [200] * 10, seed=12), 300)
    jobs = [take(scheduler, None) for _ in range(100)]
    assert all(job is not None and job.group is busy for job in jobs)
    # Coming back, the idle group has no credit saved up: it gets its share from now on.
    flood(scheduler, idle, queries(FAKE_SCHEMA, [200] * 10, seed=13), 300)
    later = [take(scheduler, None) for _ in range(40)]
    idle_rows = sum(job.rows for job in later if job is not None and job.group is idle)
    assert idle_rows == pytest.approx(0.75 * sum(job.rows for job in later if job), rel=0.1)


def test_a_flooding_tenant_cannot_push_back_a_well_behaved_one() -> None:
    clock = FakeClock()
    config = SchedulerConfig(max_queue=10_000, batch_max_delay_s=0.0)
    seats = [seat(0, "flood", sla_ms=100), seat(1, "calm", sla_ms=100)]
    scheduler = device(seats, pool=2, config=config, clock=clock)
    flooding, calm = scheduler.groups
    flooding.rate.seconds_per_row = calm.rate.seconds_per_row = 20e-6
    load = queries(FAKE_SCHEMA, [300] * 10, seed=14)
    refused = 0
    for k in range(5000):
        try:
            scheduler.submit(flooding, load[k % 10])
        except Overloaded:
            refused += 1
    assert refused > 0  # beyond what its share can serve in its SLA, the flood is refused
    for _ in range(20):  # the pool has been serving the flood alone
        job = take(scheduler, None)
        assert job is not None and job.group is flooding
    # The calm tenant's query is admitted and is next on its own session and on the pool.
    scheduler.submit(calm, queries(FAKE_SCHEMA, [270], seed=15)[0])
    job = take(scheduler, None)
    assert job is not None and job.group is calm
    scheduler.submit(calm, queries(FAKE_SCHEMA, [270], seed=16)[0])
    job = take(scheduler, calm)
    assert job is not None and job.group is calm
