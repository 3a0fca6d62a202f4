"""Weighted fair queueing of the shared pool on the fake backend: while every group is
backlogged, the pool's rows follow the pool weights; an idle group's share goes to the others
(work conservation); and a flooding tenant does not slow a well-behaved one down."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from executor.fake import FAKE_SCHEMA, FakeBackend
from executor.scheduling import NodeRuntime, Overloaded, SchedulerConfig
from tests.executor.scheduling_helpers import plan, queries, seat

FLOOD = SchedulerConfig(admission=False, max_queue=100_000, batch_max_delay_s=0.0)


def pool_rows_while_backlogged(weights: list[float], seconds: float) -> list[int]:
    """Flood every group, then read how many rows the pool served each while all were queued."""
    runtime = NodeRuntime(FakeBackend(row_s=10e-6, batch_s=0.5e-3), FLOOD)
    models = [f"m{k}" for k in range(len(weights))]
    seats = [seat(k, m, weight=w) for k, (m, w) in enumerate(zip(models, weights, strict=True))]
    runtime.apply(plan(seats, pool=4))
    load = queries(FAKE_SCHEMA, [200] * 50, seed=11)
    for _ in range(120):
        for m in models:
            for q in load:
                runtime.submit(m, q)
    time.sleep(seconds)
    groups = runtime.deployment.groups()
    assert all(g.queued_rows > 0 for g in groups), "a group ran dry: the window is too long"
    served = [g.stats.rows_pool for g in groups]
    for device in runtime.deployment.devices:
        device.stop()
    return served


@pytest.mark.parametrize("weights", [[3.0, 1.0], [1.0, 1.0, 2.0], [0.5, 0.2, 0.3]])
def test_pool_shares_follow_weights_within_ten_percent(weights):
    served = pool_rows_while_backlogged(weights, seconds=1.0)
    total = sum(served)
    assert total > 100_000  # enough batches for shares to mean something
    for rows, weight in zip(served, weights, strict=True):
        share, fair = rows / total, weight / sum(weights)
        assert abs(share - fair) <= 0.1 * fair, (served, weights)


def test_an_idle_group_leaves_its_pool_share_to_the_busy_one():
    runtime = NodeRuntime(FakeBackend(row_s=10e-6, batch_s=0.5e-3), FLOOD)
    runtime.apply(plan([seat(0, "busy", weight=1.0), seat(1, "idle", weight=3.0)], pool=3))
    try:
        for q in queries(FAKE_SCHEMA, [200] * 1500, seed=12):
            runtime.submit("busy", q)
        time.sleep(0.3)
        busy, idle = runtime.deployment.groups()
        assert busy.queued_rows > 0 and idle.stats.rows_pool == 0
        # All 3 pool sessions and its base session work for the only backlogged group.
        rows_per_session = (busy.stats.rows_pool / 3) / max(busy.stats.rows_own, 1)
        assert rows_per_session == pytest.approx(1.0, rel=0.25)
    finally:
        runtime.close()


def test_a_flooding_tenant_does_not_slow_a_well_behaved_one():
    # Equal shares: one seat each plus an equal weight in a pool of two sessions.
    config = SchedulerConfig(max_queue=64, batch_max_delay_s=0.001)
    runtime = NodeRuntime(FakeBackend(row_s=20e-6, batch_s=0.5e-3), config)
    runtime.apply(plan([seat(0, "flood", sla_ms=100), seat(1, "calm", sla_ms=100)], pool=2))
    stop = threading.Event()
    flood_load = queries(FAKE_SCHEMA, [300] * 100, seed=13)

    def flooder() -> None:
        k = 0
        while not stop.is_set():
            try:
                runtime.submit("flood", flood_load[k % len(flood_load)])
            except Overloaded:
                time.sleep(0.0005)
            k += 1

    thread = threading.Thread(target=flooder)
    thread.start()
    try:
        time.sleep(0.2)
        latencies = []
        rng = np.random.default_rng(14)
        for q in queries(FAKE_SCHEMA, [270] * 80, seed=14):
            began = time.monotonic()
            runtime.submit("calm", q).future.result(timeout=5)
            latencies.append(time.monotonic() - began)
            time.sleep(float(rng.exponential(0.01)))
        flood, calm = runtime.deployment.groups()
        assert flood.stats.rejected > 0  # the flooder is being refused, not queued
        assert np.percentile(latencies, 99) < 0.1
    finally:
        stop.set()
        thread.join()
        runtime.close()
