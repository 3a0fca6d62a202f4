"""Isolation on real worker threads: a flooding tenant is refused, a well-behaved one is not.

The fair-queueing rule itself (pool rows follow the weights, an idle group's share goes to the
others, a flood cannot push a calm tenant back) is checked to the row on a fake clock in
test_scheduling_rules.py. This test checks the wiring that no clock decides: while one tenant
floods its replica from another thread, the calm tenant's queries are all admitted and scored
correctly. How fast they are served under the flood is measured by ``gpufair bench serve``.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from executor.fake import FAKE_SCHEMA, FakeBackend, fake_scores
from executor.features import Batch
from executor.scheduling import NodeRuntime, Overloaded, SchedulerConfig
from tests.executor.scheduling_helpers import plan, queries, seat


def test_a_flooding_tenant_is_refused_and_a_well_behaved_one_is_served() -> None:
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
        assert runtime.deployment is not None
        flood, calm = runtime.deployment.groups()
        deadline = time.monotonic() + 60
        while flood.stats.rejected == 0:  # the flooder has filled what it may queue
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for q in queries(FAKE_SCHEMA, [270] * 40, seed=14):
            scores = runtime.submit("calm", q).future.result(timeout=60)
            np.testing.assert_allclose(scores, fake_scores(Batch.of([q])), atol=1e-5)
        assert calm.stats.rejected == 0 and calm.stats.completed == 40
        assert flood.stats.rejected > 0 and flood.in_flight <= config.max_queue
    finally:
        stop.set()
        thread.join()
        runtime.close()
