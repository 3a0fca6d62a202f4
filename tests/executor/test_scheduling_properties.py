"""Seeded property tests of the scheduler: random traffic on a fake clock, and concurrent
submits racing plan swaps on real threads.

The fake-clock tests drive one device as its workers would: queries submitted at random sizes
and times, :meth:`DeviceScheduler.decide` asked by random sessions, the batches it hands out
run (``_run``, what a worker calls) in any order, queries cancelled by their clients. After
every step the books must balance (rows queued and in service, queries in flight, the queue
bound), and in the end every admitted query is answered exactly once, with the scores of a
plain single-query forward, and counted once by its outcome. Each case names its seed.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from executor.fake import FAKE_SCHEMA, fake_scores
from executor.features import Batch, Query
from executor.scheduling import (
    DeadlineExceeded,
    ModelUnavailable,
    NodeRuntime,
    Overloaded,
    Pending,
    SchedulerConfig,
)
from executor.scheduling.device import DeviceScheduler, Job, Piece
from tests.executor.scheduling_helpers import (
    WIDE_SCHEMA,
    FakeClock,
    TwoSchemas,
    device,
    plan,
    queries,
    seat,
)

FREE = "row_us=0&batch_us=0"  # fake models that take no time: the clock is the test's


def _run_all(scheduler: DeviceScheduler, running: list[Job]) -> None:
    """Run the batches still out, as their workers would once their forwards end."""
    while running:
        scheduler._run(running.pop(), {}, None)


def _check_books(scheduler: DeviceScheduler, running: list[Job], admitted: list[Pending],
                 config: SchedulerConfig, seed: int, step: int) -> None:
    """What the counters say matches what is queued, run and unanswered: admission, routing
    and drains all decide from these counters, so a drift would refuse or admit wrongly."""
    for g in scheduler.groups:
        where = f"seed {seed}, step {step}, group {g.model_id}"
        assert g.queued_rows == sum(p.rows for p in g.queue), where
        assert g.in_service_rows == sum(j.rows for j in running if j.group is g), where
        unfinished = sum(1 for p in admitted if p.group is g and p.pieces_left > 0)
        assert g.in_flight == unfinished <= config.max_queue, where


@pytest.mark.parametrize("seed", range(40))
def test_random_traffic_keeps_the_books_and_answers_every_query_once(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    config = SchedulerConfig(
        max_queue=rng.choice([3, 20, 1000]),
        batch_max_delay_s=rng.choice([0.0, 0.002]),
        max_batch_candidates=rng.choice([50, 128, 512]),
        admission=rng.random() < 0.5,
        batching=rng.random() < 0.8,
        splitting=rng.random() < 0.8,
    )
    seats = [
        seat(k, f"m{k}", artifact=f"fake:m{k}?{FREE}", weight=rng.choice([0.0, 0.5, 2.0]),
             dedicated=rng.randint(0, 2), sla_ms=rng.choice([5, 50, 1000]))
        for k in range(rng.randint(1, 3))
    ]  # fmt: skip
    pool = rng.randint(0, 3)
    scheduler = device(seats, pool=pool, config=config, clock=clock)
    for g in scheduler.groups:
        g.rate.seconds_per_row = rng.choice([None, 1e-5, 1e-3])
    load = queries(FAKE_SCHEMA, [1, 5, 60, 200, 700], seed=seed)
    sent: dict[int, Query] = {}  # id of the pending -> its query
    admitted: list[Pending] = []
    running: list[Job] = []
    sessions = [*scheduler.groups, *([None] if pool else [])]
    for step in range(400):
        action = rng.random()
        if action < 0.4:
            group = rng.choice(scheduler.groups)
            group.idle_own = rng.randint(0, group.own_sessions)  # as its workers left them
            scheduler._idle_pool = rng.randint(0, pool)
            query = rng.choice(load)
            try:
                pending = scheduler.submit(group, query, clock.now - rng.choice([0, 0.01]))
            except Overloaded:
                continue
            sent[id(pending)] = query
            admitted.append(pending)
        elif action < 0.6:
            dropped: list[Piece] = []
            job, _ = scheduler.decide(rng.choice(sessions), dropped)
            scheduler.expire(dropped)
            running += [job] if job is not None else []
        elif action < 0.75 and running:
            scheduler._run(running.pop(rng.randrange(len(running))), {}, None)
        elif action < 0.8 and admitted:
            rng.choice(admitted).future.cancel()  # its client went away
        else:
            clock.now += rng.choice([0.0005, 0.002, 0.01])
        _check_books(scheduler, running, admitted, config, seed, step)
    _run_all(scheduler, running)
    clock.now += 100.0  # every query still queued is past its deadline
    for group in scheduler.groups:
        while True:
            dropped = []
            job, _ = scheduler.decide(group, dropped)
            scheduler.expire(dropped)
            if job is None:
                break
            scheduler._run(job, {}, None)
    _check_books(scheduler, running, admitted, config, seed, -1)
    for group in scheduler.groups:
        mine: list[Future[np.ndarray]] = [p.future for p in admitted if p.group is group]
        assert all(f.done() for f in mine), f"seed {seed}: a query was never answered"
        answered = [f for f in mine if not f.cancelled()]
        ok = [f for f in answered if f.exception() is None]
        late = [f for f in answered if isinstance(f.exception(), DeadlineExceeded)]
        assert len(ok) + len(late) == len(answered), f"seed {seed}"
        stats = group.stats
        counts = (stats.admitted, stats.completed, stats.expired, stats.failed)
        assert counts == (len(mine), len(ok), len(late), 0), f"seed {seed}: {stats}"
    for pending in admitted:
        if not pending.future.cancelled() and pending.future.exception() is None:
            expected = fake_scores(Batch.of([sent[id(pending)]]))
            np.testing.assert_allclose(pending.future.result(), expected, atol=1e-5,
                                       err_msg=f"seed {seed}")  # fmt: skip


@pytest.mark.parametrize("seed", range(12))
def test_pool_rows_follow_the_weights_whatever_the_sizes_and_the_order_batches_end(
    seed: int,
) -> None:
    """Groups of random weights, query sizes and own sessions, all backlogged; pool and own
    sessions take batches and finish them in random order. The pool's rows follow the
    weights within two batches per group (start-time fair queueing's bound)."""
    rng = random.Random(seed)
    clock = FakeClock()
    config = SchedulerConfig(admission=False, max_queue=100_000, batch_max_delay_s=0.0)
    weights = [rng.choice([0.5, 1.0, 2.0, 3.0]) for _ in range(rng.randint(2, 4))]
    seats = [seat(k, f"m{k}", artifact=f"fake:m{k}?{FREE}", weight=w, dedicated=rng.randint(0, 1))
             for k, w in enumerate(weights)]  # fmt: skip
    pool = rng.randint(1, 4)
    scheduler = device(seats, pool=pool, config=config, clock=clock)
    load = {g.model_id: queries(FAKE_SCHEMA, [rng.choice([20, 50, 300, 700])] * 3, seed=seed)
            for g in scheduler.groups}  # fmt: skip
    served = {g.model_id: 0 for g in scheduler.groups}
    running: list[Job] = []
    for _ in range(1000):
        for g in scheduler.groups:  # every group stays backlogged
            while g.queued_rows < 2 * config.max_batch_candidates:
                g.idle_own = rng.randint(0, g.own_sessions)
                scheduler.submit(g, rng.choice(load[g.model_id]))
        action = rng.random()
        if action < 0.5 and sum(j.pooled for j in running) < pool:
            job, _ = scheduler.decide(None, [])
            assert job is not None
            served[job.group.model_id] += job.rows
            running.append(job)
        elif action < 0.7:
            job, _ = scheduler.decide(rng.choice(scheduler.groups), [])
            assert job is not None
            running.append(job)
        elif running:
            scheduler._run(running.pop(rng.randrange(len(running))), {}, None)
    total = sum(served.values())
    for g, weight in zip(scheduler.groups, weights, strict=True):
        fair = total * weight / sum(weights)
        assert abs(served[g.model_id] - fair) <= 2 * config.max_batch_candidates, (
            f"seed {seed}: weights {weights}, pool rows {served}"
        )


@pytest.mark.parametrize("seed", [1, 2])
def test_concurrent_submits_racing_plan_swaps_answer_every_query_once(seed: int) -> None:
    """Clients route a query, parse it with the routed replica's schema (a short random
    pause) and submit it there, while plan versions come one after another, changing the
    replicas, the pool and the model's schema. Every query is either refused at submit as
    unavailable (its replica drained and the model's schema changed) or answered once, with
    the scores of a plain forward of what was sent: none is lost to a drain or to a session
    that died."""
    rng = random.Random(seed)
    config = SchedulerConfig(admission=False, max_queue=10_000, batch_max_delay_s=0.001,
                             drain_timeout_s=30.0)  # fmt: skip
    runtime = NodeRuntime(TwoSchemas(), config)
    runtime.apply(plan([seat(0, "m")], version=1))
    loads = {s.name: queries(s, [1, 40, 300, 600], seed=seed) for s in (FAKE_SCHEMA, WIDE_SCHEMA)}
    sent: list[tuple[Query, Pending]] = []
    refused: list[ModelUnavailable] = []
    stop = threading.Event()

    def client(k: int) -> None:
        local = random.Random(seed * 100 + k)
        while not stop.is_set():
            group = runtime.route("m")
            query = local.choice(loads[group.model.schema.name])
            time.sleep(local.random() * 0.002)  # its body is read and parsed meanwhile
            try:
                sent.append((query, runtime.submit_to(group, query)))
            except ModelUnavailable as exc:
                refused.append(exc)

    clients = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for thread in clients:
        thread.start()
    try:
        for version in range(2, 40):
            artifact = rng.choice(["fake:m", "fake:wide", "fake:m2"])
            replicas = [seat(k, "m", artifact=artifact, dedicated=rng.randint(0, 1))
                        for k in range(rng.randint(1, 2))]  # fmt: skip
            report = runtime.apply(plan(replicas, pool=rng.randint(0, 1), version=version))
            assert report is not None and report.drained_clean, f"seed {seed}, v{version}"
            time.sleep(rng.random() * 0.005)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    try:
        for query, pending in sent:
            scores = pending.future.result(timeout=30)
            np.testing.assert_allclose(scores, fake_scores(Batch.of([query])), atol=1e-5,
                                       err_msg=f"seed {seed}")  # fmt: skip
        assert sent, f"seed {seed}: no query was submitted"
    finally:
        runtime.close()
