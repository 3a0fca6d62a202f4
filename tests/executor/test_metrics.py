"""The daemon's SLA tallies: what the heartbeat reports per tenant and model."""

from __future__ import annotations

import threading

from executor.fake import FakeBackend
from executor.metrics import ExecutorMetrics, SlaTally
from executor.scheduling import NodeRuntime, SchedulerConfig


def test_tallies_count_every_received_query_and_those_within_the_sla() -> None:
    metrics = ExecutorMetrics(NodeRuntime(FakeBackend(), SchedulerConfig()))
    assert metrics.sla_tallies() == []
    sla = 0.05
    for outcome, latency in [
        ("ok", 0.01),  # within
        ("ok", 0.05),  # exactly at the bound: within
        ("ok", 0.2),  # answered late: received, not within
        ("rejected", None),  # 429: a miss
        ("expired", None),  # 504: a miss
        ("failed", None),  # 500: a miss
        ("invalid", None),  # 400: the client's mistake, not counted
    ]:
        metrics.observe("ads", "7", outcome, latency, sla)
    metrics.observe("feed", "3", "ok", 0.01, sla)
    metrics.observe("ads", "2", "rejected", None, sla)
    assert metrics.sla_tallies() == [
        SlaTally("ads", "2", received=1, within_sla=0),
        SlaTally("ads", "7", received=6, within_sla=2),
        SlaTally("feed", "3", received=1, within_sla=1),
    ]
    assert metrics.attainment()[("ads", "7")] == 2 / 6


def test_tallies_are_exact_under_concurrent_requests() -> None:
    metrics = ExecutorMetrics(NodeRuntime(FakeBackend(), SchedulerConfig()))

    def serve(k: int) -> None:
        for i in range(2000):
            metrics.observe("ads", "7", "ok" if i % 4 else "rejected", 0.01 if i % 2 else 1.0, 0.1)

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (tally,) = metrics.sla_tallies()
    # Per thread: 2000 received; within = ok (i % 4 != 0) and fast (i odd) = 1000.
    assert (tally.received, tally.within_sla) == (8000, 4000)
