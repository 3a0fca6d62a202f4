"""The scheduler's worker threads on the fake backend: every path scores like a plain forward,
small queries are batched and large ones split, a broken model hurts no other, and a plan swap
under load loses no query. The rules themselves (batching delay, deadlines, admission, fair
shares) are checked on a fake clock in test_scheduling_rules.py; no test here bounds a wall
time, since a loaded CI machine may stretch any of them."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import pytest

from executor.engine.core import EngineCore
from executor.fake import FAKE_SCHEMA, FakeBackend, FakeModel, fake_scores
from executor.features import Batch, Query
from executor.front.local import LocalEngine
from executor.scheduling import (
    DeadlineExceeded,
    ModelFailed,
    ModelUnavailable,
    NodeRuntime,
    Overloaded,
    SchedulerConfig,
    UnknownModel,
)
from executor.scheduling.admission import (
    MAX_SAMPLE_RATIO,
    OVER_SHARE_REFUSED,
    REFUSALS_HALF_LIFE_S,
    Refusals,
    ServiceRate,
)
from executor.scheduling.device import BackgroundLane
from tests.executor.scheduling_helpers import WIDE_SCHEMA, TwoSchemas, plan, queries, seat


@pytest.fixture
def runtimes():
    made: list[NodeRuntime] = []

    def make(config: SchedulerConfig | None = None, backend: FakeBackend | None = None):
        runtime = NodeRuntime(backend or FakeBackend(), config or SchedulerConfig())
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


def reference(query) -> np.ndarray:
    return fake_scores(Batch.of([query]))


@pytest.mark.parametrize(
    ("dedicated", "pool", "batching", "splitting"),
    [(0, 0, False, False), (3, 0, True, True), (1, 2, True, True), (0, 3, True, False)],
)
def test_every_path_scores_like_a_single_query_forward(
    runtimes, dedicated, pool, batching, splitting
):
    config = SchedulerConfig(
        batching=batching, splitting=splitting, max_batch_candidates=300, admission=False
    )
    runtime = runtimes(config)
    runtime.apply(plan([seat(0, "m", dedicated=dedicated)], pool=pool))
    rng = np.random.default_rng(7)
    batch = queries(FAKE_SCHEMA, [int(k) for k in rng.integers(1, 800, 60)], seed=7)
    pending = [runtime.submit("m", q) for q in batch]
    for q, p in zip(batch, pending, strict=True):
        np.testing.assert_allclose(p.future.result(timeout=10), reference(q), atol=1e-5)
    stats = runtime.deployment.groups()[0].stats
    assert stats.completed == len(batch)
    assert stats.rows_own + stats.rows_pool == sum(q.num_candidates for q in batch)
    assert (stats.rows_pool > 0) == (pool > 0)


def test_small_queries_are_batched_up_to_the_row_limit(runtimes):
    config = SchedulerConfig(max_batch_candidates=100, batch_max_delay_s=0.05)
    backend = FakeBackend(row_s=0.0, batch_s=0.002)
    runtime = runtimes(config, backend)
    runtime.apply(plan([seat(0, "m")]))
    small = queries(FAKE_SCHEMA, [10] * 40, seed=1)
    pending = [runtime.submit("m", q) for q in small]
    for q, p in zip(small, pending, strict=True):
        np.testing.assert_allclose(p.future.result(timeout=10), reference(q), atol=1e-5)
    # 400 rows in batches of at most 100 rows: 4 batches when batching works, 40 without.
    assert runtime.deployment.groups()[0].stats.batches == 4


def test_a_large_query_is_split_across_idle_sessions(runtimes):
    backend = FakeBackend(row_s=100e-6, batch_s=0.0)
    runtime = runtimes(SchedulerConfig(max_batch_candidates=1000, batch_max_delay_s=0.0), backend)
    runtime.apply(plan([seat(0, "m", dedicated=3)]))
    group = runtime.group("m")
    deadline = time.monotonic() + 30
    while group.idle_own < 4:  # let the four sessions reach their idle wait
        assert time.monotonic() < deadline, group.idle_own
        time.sleep(0.001)
    (q,) = queries(FAKE_SCHEMA, [800], seed=3)
    scores = runtime.submit("m", q).future.result(timeout=30)
    np.testing.assert_allclose(scores, reference(q), atol=1e-5)
    # Four pieces of 200 rows, one batch each: the worker threads ran what decide() chose.
    assert group.stats.batches == 4 and group.stats.rows_own == 800


def test_one_slow_batch_moves_the_service_rate_by_at_most_twice_the_mean():
    rate = ServiceRate(smoothing=0.2)
    rate.observe(100, 100 * 10e-6)
    rate.observe(100, 1.0)  # preempted: 1000x slower than the mean
    assert rate.seconds_per_row == pytest.approx(10e-6 * (1 + 0.2 * (MAX_SAMPLE_RATIO - 1)))
    for _ in range(50):  # a sustained slowdown is still followed
        rate.observe(100, 100 * 80e-6)
    assert rate.seconds_per_row == pytest.approx(80e-6, rel=0.01)


def test_a_group_refused_a_tenth_of_its_recent_queries_is_sent_more_than_it_is_served() -> None:
    """Refusals say a group is over its share while they are recent: a tenth of its queries
    and at least a few refused; a lone refusal, or a few among many answered, do not; and a
    flood that stopped is forgotten within a few half-lives."""
    calm = Refusals()
    calm.count(0.0, admitted=40)
    calm.count(0.5, refused=1)  # one Poisson burst of a tenant within its share
    assert not calm.over_share(0.5)
    steady = Refusals()
    steady.count(0.0, refused=3, admitted=int(3 / OVER_SHARE_REFUSED) + 10)
    assert not steady.over_share(0.0)
    flood = Refusals()
    for tick in range(10):  # half its queries refused, every 0.1 s for a second
        flood.count(tick / 10, refused=5, admitted=5)
    assert flood.over_share(1.0)
    assert flood.over_share(1.0 + REFUSALS_HALF_LIFE_S)
    assert not flood.over_share(1.0 + 5 * REFUSALS_HALF_LIFE_S)
    flood.count(10.0, admitted=1)  # it came back within its share
    assert not flood.over_share(10.0)


def test_a_query_that_starts_at_once_is_admitted_whatever_the_estimate(runtimes):
    # A 50 ms batching delay keeps the first query queued while the second arrives.
    runtime = runtimes(SchedulerConfig(batch_max_delay_s=0.05), FakeBackend(row_s=0, batch_s=0))
    runtime.apply(plan([seat(0, "m", sla_ms=100)]))
    group = runtime.group("m")
    runtime.submit("m", queries(FAKE_SCHEMA, [5], seed=7)[0]).future.result(timeout=5)
    group.rate.seconds_per_row = 1.0  # an absurdly pessimistic estimate
    deadline = time.monotonic() + 5
    while group.idle_own == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    first, second = queries(FAKE_SCHEMA, [5, 5], seed=8)
    admitted = runtime.submit("m", first)  # idle session, empty queue: starts at once
    with pytest.raises(Overloaded):
        runtime.submit("m", second)  # queued behind it: the estimate decides
    assert admitted.future.result(timeout=5).shape == (5,)


def test_unknown_and_broken_models_hurt_no_other(runtimes):
    runtime = runtimes()
    report = runtime.apply(
        plan(
            [
                seat(0, "good"),
                seat(1, "unloadable", artifact="fake:u?fail=load"),
                seat(2, "crashing", artifact="fake:c?fail=run"),
            ]
        )
    )
    assert set(report.broken) == {"unloadable"}
    q = queries(FAKE_SCHEMA, [30], seed=9)[0]
    with pytest.raises(UnknownModel):
        runtime.submit("nope", q)
    with pytest.raises(ModelUnavailable, match="refuses to load"):
        runtime.submit("unloadable", q)
    with pytest.raises(ModelFailed):
        runtime.submit("crashing", q).future.result(timeout=5)
    np.testing.assert_allclose(
        runtime.submit("good", q).future.result(timeout=5), reference(q), atol=1e-5
    )


def test_a_batch_that_cannot_be_assembled_fails_its_queries_and_the_session_serves_on(runtimes):
    """Queries that do not stack into one batch (parsed with two schemas) fail with
    ModelFailed like a forward that raised: the worker thread that took them lives on, so
    they are answered, nothing stays in flight or in service, and the next batch is served."""
    config = SchedulerConfig(admission=False, batch_max_delay_s=30.0, max_batch_candidates=8)
    runtime = runtimes(config, TwoSchemas())
    runtime.apply(plan([seat(0, "m")]))
    group = runtime.group("m")
    # Four rows each: the second fills the batch, so both go in one batch, at once.
    mixed = [runtime.submit("m", queries(schema, [4], seed=21)[0])
             for schema in (FAKE_SCHEMA, WIDE_SCHEMA)]  # fmt: skip
    for pending in mixed:
        with pytest.raises(ModelFailed):
            pending.future.result(timeout=30)
    (q,) = queries(FAKE_SCHEMA, [8], seed=22)
    np.testing.assert_allclose(
        runtime.submit("m", q).future.result(timeout=30), reference(q), atol=1e-5
    )
    assert (group.in_flight, group.in_service_rows, group.stats.failed) == (0, 0, 2)


@pytest.mark.parametrize(
    ("changed", "handed_on"),
    [
        ({"artifact": "fake:wide"}, False),  # the model's new version takes other features
        ({"tenant": "someone-else"}, False),  # the model id now names another tenant's model
        ({"artifact": "fake:m2"}, True),  # new weights, same schema and tenant
    ],
)
def test_a_query_handed_on_by_a_plan_swap_keeps_the_terms_it_was_admitted_on(
    runtimes, changed, handed_on
):
    """A query admitted on a replica that a plan swap drained before its body was parsed goes
    to the new plan's replica only when that one serves it on the same terms: the tenant whose
    key was checked and the schema its body was parsed with. Otherwise it is refused as
    unavailable (503: sent again, it is admitted and parsed anew)."""
    runtime = runtimes(SchedulerConfig(batch_max_delay_s=0.0), TwoSchemas())
    runtime.apply(plan([seat(0, "m")], version=1))
    admitted = runtime.route("m")
    runtime.apply(plan([seat(0, "m", **changed)], version=2))
    (q,) = queries(FAKE_SCHEMA, [6], seed=23)
    if handed_on:
        pending = runtime.submit_to(admitted, q)
        np.testing.assert_allclose(pending.future.result(timeout=30), reference(q), atol=1e-5)
        assert pending.group is not admitted
    else:
        with pytest.raises(ModelUnavailable, match="another tenant or with another schema"):
            runtime.submit_to(admitted, q)
        assert all(g.stats.admitted == 0 for g in runtime.deployment.groups())


class _HeldLoads(FakeBackend):
    """Loads of artifacts named ``fake:held...`` wait until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.loading = threading.Event()
        self.release = threading.Event()

    def load(self, artifact: str, device: str) -> FakeModel:
        if artifact.startswith("fake:held"):
            self.loading.set()
            assert self.release.wait(timeout=30)
        return super().load(artifact, device)


def test_a_model_the_plan_being_loaded_brings_is_coming_not_unknown(runtimes):
    """Routers send queries by the newest allocation, which a node may still be loading: its
    models are answered 503 (retry, or try another replica) until they serve, not 404 (no
    such model), and the models the node serves meanwhile are not held up."""
    backend = _HeldLoads()
    runtime = runtimes(backend=backend)
    runtime.apply(plan([seat(0, "old")], version=1))
    swap = threading.Thread(
        target=runtime.apply,
        args=(plan([seat(0, "old"), seat(1, "new", artifact="fake:held")], version=2),),
    )
    swap.start()
    try:
        assert backend.loading.wait(timeout=30)
        q = queries(FAKE_SCHEMA, [20], seed=4)[0]
        with pytest.raises(ModelUnavailable, match="'new' is loading on this node.*version 2"):
            runtime.submit("new", q)
        with pytest.raises(UnknownModel):
            runtime.submit("neither", q)
        np.testing.assert_allclose(
            runtime.submit("old", q).future.result(timeout=5), reference(q), atol=1e-5
        )
    finally:
        backend.release.set()
        swap.join()
    assert runtime.plan_version == 2
    np.testing.assert_allclose(
        runtime.submit("new", q).future.result(timeout=5), reference(q), atol=1e-5
    )


def test_plan_swap_under_load_loses_no_query(runtimes):
    config = SchedulerConfig(admission=False, max_queue=10_000, drain_timeout_s=10.0)
    backend = FakeBackend(row_s=5e-6, batch_s=1e-3)
    runtime = runtimes(config, backend)
    runtime.apply(plan([seat(0, "m"), seat(1, "other")], version=1))
    sizes = [int(k) for k in np.random.default_rng(10).integers(1, 400, 400)]
    stream = queries(FAKE_SCHEMA, sizes, seed=10)
    submitted = []
    done = threading.Event()

    def client() -> None:
        for q in stream:
            submitted.append((q, runtime.submit("m", q)))
            time.sleep(0.001)
        done.set()

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.1)
    swap = runtime.apply(plan([seat(0, "m", dedicated=2), seat(1, "other")], version=2))
    assert swap.drained_clean and swap.reused == 2 and swap.loaded == 0
    time.sleep(0.1)
    assert runtime.apply(plan([seat(0, "m")], version=2)) is None  # never goes back
    runtime.apply(plan([seat(0, "m")], pool=1, version=3))
    thread.join()
    assert done.is_set() and len(submitted) == len(stream)
    for q, p in submitted:
        np.testing.assert_allclose(p.future.result(timeout=10), reference(q), atol=1e-5)
    assert runtime.plan_version == 3
    with pytest.raises(UnknownModel):
        runtime.submit("other", stream[0])


def test_admission_is_checked_without_queueing_anything(runtimes):
    runtime = runtimes(SchedulerConfig(max_queue=2, admission=False), FakeBackend(batch_s=0.2))
    runtime.apply(plan([seat(0, "m"), seat(1, "m")]))  # two replicas: the least loaded counts
    runtime.check(runtime.route("m"))
    groups = runtime.deployment.routes["m"]
    assert [g.in_flight for g in groups] == [0, 0]
    admitted = [runtime.submit("m", q) for q in queries(FAKE_SCHEMA, [10] * 3, seed=11)]
    runtime.check(runtime.route("m"))  # one replica still has room
    admitted.append(runtime.submit("m", queries(FAKE_SCHEMA, [10], seed=12)[0]))
    with pytest.raises(Overloaded) as refused:
        runtime.check(runtime.route("m"))
    assert refused.value.retry_after_s >= 1
    assert [g.in_flight for g in groups] == [2, 2]
    assert sum(g.stats.rejected for g in groups) == 1  # a refusal is counted like submit's
    with pytest.raises(UnknownModel):
        runtime.route("nope")
    for p in admitted:
        p.future.result(timeout=10)
    runtime.check(runtime.route("m"))


def test_gc_is_frozen_once_and_a_replaced_plan_is_freed(runtimes, monkeypatch):
    freezes: list[int] = []
    freeze = gc.freeze

    def counted_freeze() -> None:
        freezes.append(1)
        freeze()

    monkeypatch.setattr(gc, "freeze", counted_freeze)
    runtime = runtimes()
    models: list[weakref.ref] = []
    q = queries(FAKE_SCHEMA, [8], seed=13)[0]
    for version, artifact in enumerate(["fake:a", "fake:b", "fake:c"], start=1):
        runtime.apply(plan([seat(0, "m", artifact=artifact)], version=version))
        models.append(weakref.ref(runtime.group("m").model))
        runtime.submit("m", q).future.result(timeout=5)
    assert freezes == [1]
    gc.collect()
    # The first plan's objects are frozen: only breaking its cycles lets them go. Without it
    # every replaced plan would keep its weights (on a GPU: its device memory) for good.
    assert [m() is None for m in models] == [True, True, False]


@pytest.fixture(scope="module")
def zoo_model():
    from executor.scheduling.backend import RuntimeBackend

    return RuntimeBackend().load("zoo:rmc2?scale=0.001&seed=5&user_tables=28", "cpu:0")


class _Loaded:
    """A backend that hands out one already-loaded model (loaded once for the module)."""

    def __init__(self, model) -> None:
        self.model = model

    def load(self, artifact: str, device: str):
        return self.model

    def predict_bytes(self, artifact: str) -> int:
        return 0

    def free_bytes(self, device: str) -> None:
        return None


@pytest.mark.parametrize(
    ("dedicated", "pool", "batching", "splitting"),
    [(0, 0, False, False), (1, 0, True, True), (0, 1, True, True)],
)
def test_every_path_scores_like_a_plain_forward_on_the_real_zoo(
    zoo_model, dedicated, pool, batching, splitting
):
    config = SchedulerConfig(
        batching=batching, splitting=splitting, max_batch_candidates=256, admission=False
    )
    runtime = NodeRuntime(_Loaded(zoo_model), config)
    runtime.apply(plan([seat(0, "rmc2", dedicated=dedicated)], pool=pool))
    try:
        sizes = [1, 700, 3, 40, 200, 100, 300, 17, 90, 5]
        batch = queries(zoo_model.schema, sizes, seed=31)
        pending = [runtime.submit("rmc2", q) for q in batch]
        plain = zoo_model.session()
        for q, p in zip(batch, pending, strict=True):
            expected = plain.run(Batch.of([q]))
            np.testing.assert_allclose(p.future.result(timeout=30), expected, atol=1e-5)
        if splitting:
            naive = plain.run_naive(Batch.of([batch[1]]))
            np.testing.assert_allclose(pending[1].future.result(), naive, atol=1e-5)
        assert runtime.deployment is not None
        stats = runtime.deployment.groups()[0].stats
        assert stats.completed == len(batch)
        # One batch per piece of at most 256 rows, unless batching merged or splitting cut.
        unbatched = sum(-(-k // 256) for k in sizes)
        assert (stats.batches != unbatched) == (batching or splitting)
    finally:
        runtime.close()


@dataclass
class _PolicyModel(FakeModel):
    """A fake model that waits for its gate, then notes the thread its batch ran on and that
    thread's scheduling policy and nice value."""

    gate: threading.Event = field(default_factory=threading.Event)
    seen: list[tuple[int, int, int]] = field(default_factory=list)

    def run(self, batch: Batch) -> np.ndarray:
        self.gate.wait(10.0)
        thread = threading.get_native_id()
        self.seen.append(
            (thread, os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, thread))
        )
        return super().run(batch)


class _PolicyBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__(row_s=0.0, batch_s=0.0)
        self.model = _PolicyModel(schema=FAKE_SCHEMA, row_s=0.0, batch_s=0.0)

    def load(self, artifact: str, device: str) -> _PolicyModel:
        return self.model


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_a_batch_with_its_groups_work_queued_behind_it_runs_at_idle_priority() -> None:
    """A group sent more than its session serves takes only the CPU others leave: the forward
    of a batch taken with more of its group's queries queued runs under SCHED_IDLE, on a
    thread of its own; the last one of the backlog runs on the worker again, whose policy and
    nice value never changed (an unprivileged process could not have raised them back)."""
    main = threading.get_native_id()
    policy, nice = os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, main)
    backend = _PolicyBackend()
    config = SchedulerConfig(over_share_at_idle_priority=True, batching=False, admission=False)
    runtime = NodeRuntime(backend, config)
    runtime.apply(plan([seat(0, "a")]))
    try:
        first, second, third = queries(FAKE_SCHEMA, [4, 4, 4], seed=5)
        pending = [runtime.submit("a", first)]
        deadline = time.monotonic() + 10
        while runtime.group("a").queue:  # until the session has taken the first alone
            assert time.monotonic() < deadline
            time.sleep(0.001)
        pending += [runtime.submit("a", q) for q in (second, third)]
        backend.model.gate.set()
        for p in pending:
            p.future.result(10)
        (worker, *ran_first), (lane, *ran_second), (again, *ran_third) = backend.model.seen
        assert ran_first == ran_third == [policy, nice]
        assert ran_second[0] == os.SCHED_IDLE
        assert again == worker != lane
        assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, main)) == (policy, nice)
    finally:
        backend.model.gate.set()
        runtime.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_a_batch_of_a_group_admission_has_been_refusing_runs_at_idle_priority() -> None:
    """Admission keeps a flooder's queue short, so that most of its batches are taken with
    nothing behind them: a group whose queries the fronts have been refusing runs its batches
    under SCHED_IDLE all the same, and once it has been refused no more (a few half-lives
    later), on its worker again."""
    clock = [100.0]
    backend = _PolicyBackend()
    config = SchedulerConfig(over_share_at_idle_priority=True, batching=False, admission=False)
    runtime = NodeRuntime(backend, config)
    runtime.apply(plan([seat(0, "a")]))
    try:
        group = runtime.group("a")
        assert group.device is not None
        group.device._clock = lambda: clock[0]
        first, second, third = queries(FAKE_SCHEMA, [4, 4, 4], seed=7)
        backend.model.gate.set()
        runtime.submit("a", first).future.result(10)
        runtime.count_rejected(group, 10)  # a front turned ten of its requests away
        runtime.submit("a", second).future.result(10)
        clock[0] += 10 * REFUSALS_HALF_LIFE_S
        runtime.submit("a", third).future.result(10)
        policies = [policy for _, policy, _ in backend.model.seen]
        assert policies[1] == os.SCHED_IDLE
        assert policies[0] == policies[2] == os.sched_getscheduler(0) != os.SCHED_IDLE
    finally:
        backend.model.gate.set()
        runtime.close()


def test_a_query_its_front_gave_up_on_past_its_deadline_is_counted_as_expired() -> None:
    """A front waits for a query's scores until its deadline (plus a grace), then answers 504
    and cancels it, so that the scheduler discards it unserved. That 504 is a miss like the
    scheduler's own drop: it is counted as expired, not lost from the counts (which would
    raise the model's SLA attainment). A query cancelled before its deadline (its client went
    away) is counted as nothing."""
    backend = _PolicyBackend()  # its gate stays shut: no batch ends until the test is done
    runtime = NodeRuntime(backend, SchedulerConfig(admission=False, batching=False))
    runtime.apply(plan([seat(0, "m", sla_ms=50)]))
    core = EngineCore(runtime)
    front = LocalEngine(core)

    async def ask(query: Query) -> None:
        ticket = await front.admit("m", time.monotonic())
        await front.infer(ticket, query)

    async def both(load: list[Query]) -> list[BaseException | None]:
        return await asyncio.gather(*(ask(q) for q in load), return_exceptions=True)

    try:
        # The first runs (and hangs), the second waits behind it: neither is answered.
        outcomes = asyncio.run(both(queries(FAKE_SCHEMA, [3, 3], seed=24)))
        assert all(isinstance(o, DeadlineExceeded) for o in outcomes), outcomes
        gone = core.submit(core.admit("m", time.monotonic()), queries(FAKE_SCHEMA, [3], seed=25)[0])
        assert gone.cancel()
    finally:
        backend.model.gate.set()
        runtime.close()
    labels = {"tenant": "tenant-m", "model": "m"}
    counted = {
        outcome: core.metrics.registry.get_sample_value(
            "gpufair_executor_queries_total", {**labels, "outcome": outcome}
        )
        for outcome in ("ok", "expired")
    }
    assert counted == {"ok": None, "expired": 2.0}


def test_a_backlog_lane_hands_back_what_its_work_returns_or_raises() -> None:
    """A forward run on the lane returns its scores, or raises its error, to the worker as it
    would have on the worker itself, and the lane serves the next one on its own thread."""
    lane = BackgroundLane("test-lane")
    try:
        with pytest.raises(ZeroDivisionError):
            lane.run(lambda: 1 / 0)
        assert lane.run(threading.get_native_id) != threading.get_native_id()
        assert lane.run(lambda: "scores") == "scores"
    finally:
        lane.close()
