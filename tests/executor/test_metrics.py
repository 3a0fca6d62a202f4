"""The daemon's SLA tallies (what the heartbeat reports per tenant and model) and the one
definition of SLA attainment they feed."""

from __future__ import annotations

import math
import random
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from executor.fake import FakeBackend
from executor.metrics import OUTCOMES, ExecutorMetrics
from executor.scheduling import NodeRuntime, SchedulerConfig
from executor.wire.attainment import RECEIVED_OUTCOMES, attainment, is_within_sla
from executor.wire.heartbeat import SlaCount


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
        SlaCount(tenant="ads", model="2", received=1, within_sla=0),
        SlaCount(tenant="ads", model="7", received=6, within_sla=2),
        SlaCount(tenant="feed", model="3", received=1, within_sla=1),
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


# --- the one definition of SLA attainment ------------------------------------------------------


def test_attainment_is_answered_within_sla_over_received() -> None:
    assert attainment(within_sla=965, received=1028) == 965 / 1028
    assert attainment(within_sla=0, received=10) == 0.0
    # No queries: no figure (a gap in a chart), never 100 %.
    assert attainment(within_sla=0, received=0) is None
    # Counts from two intervals can cross; the share is still at most 1.
    assert attainment(within_sla=11, received=10) == 1.0
    # Completed is not within the SLA: an answer up to 2 SLAs late is a miss.
    assert is_within_sla(answered=True, latency_s=0.05, sla_s=0.05)
    assert not is_within_sla(answered=True, latency_s=0.051, sla_s=0.05)
    assert not is_within_sla(answered=False, latency_s=0.01, sla_s=0.05)
    assert not is_within_sla(answered=True, latency_s=None, sla_s=0.05)
    # Received: answered, refused (429), dropped (504), failed (500); not malformed (400).
    assert RECEIVED_OUTCOMES == {"ok", "rejected", "expired", "failed"}
    assert RECEIVED_OUTCOMES <= set(OUTCOMES) and "invalid" in OUTCOMES


def _gauge(metrics: ExecutorMetrics, tenant: str, model: str) -> float | None:
    """The ``gpufair_executor_sla_attainment`` sample Prometheus scrapes, None when absent."""
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name == "gpufair_executor_sla_attainment":
            for sample in family.samples:
                if sample.labels == {"tenant": tenant, "model": model}:
                    return float(sample.value)
    return None


def test_metrics_and_their_gauge_give_the_definitions_figure() -> None:
    metrics = ExecutorMetrics(NodeRuntime(FakeBackend(), SchedulerConfig()))
    sla = 0.05
    counts = {"within": 90, "late": 6, "rejected": 2, "expired": 1, "failed": 1}
    for _ in range(counts["within"]):
        metrics.observe("ads", "7", "ok", 0.01, sla)
    for _ in range(counts["late"]):  # completed, but after the SLA (at most 2 SLAs late)
        metrics.observe("ads", "7", "ok", 0.09, sla)
    for outcome in ("rejected", "expired", "failed"):
        for _ in range(counts[outcome]):
            metrics.observe("ads", "7", outcome, None, sla)
    metrics.observe("ads", "7", "invalid", None, sla)
    metrics.observe("feed", "3", "invalid", None, sla)  # only a 400: nothing received
    expected = attainment(within_sla=90, received=100)
    assert expected == 0.9
    assert metrics.attainment() == {("ads", "7"): expected}
    assert _gauge(metrics, "ads", "7") == expected
    assert _gauge(metrics, "feed", "3") is None  # no figure rather than 0 % or 100 %


# --- the served window: rates and p99 over the last minute -------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_served_window_p99_is_within_a_bucket_above_the_exact_figure() -> None:
    # Seeded latencies, log-uniform from 2 ms to 2 s, 10 % of them refused: the reported p99
    # is the nearest-rank p99 of the answered queries, at most one bucket (9 %) above it.
    rng = random.Random(11)
    clock = _Clock()
    metrics = ExecutorMetrics(NodeRuntime(FakeBackend(), SchedulerConfig()), clock=clock)
    latencies = []
    for _ in range(3000):
        clock.now += 0.01
        if rng.random() < 0.1:
            metrics.observe("ads", "7", "rejected", None, 0.3)
            continue
        latency = 0.002 * 1000 ** rng.random()
        latencies.append(latency)
        metrics.observe("ads", "7", "ok", latency, 0.3)
    (row,) = metrics.served_windows()
    exact = sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1]
    assert row.p99_ms is not None
    assert exact * 1000 <= row.p99_ms <= exact * 1000 * 2 ** (1 / 8)
    assert row.answered == len(latencies)
    assert row.received == 3000
    assert row.within_sla == sum(latency <= 0.3 for latency in latencies)
    assert row.window_s == pytest.approx(30.0)  # the daemon is 30 s old: the window says so


def test_served_window_forgets_what_is_older_than_a_minute() -> None:
    clock = _Clock()
    metrics = ExecutorMetrics(NodeRuntime(FakeBackend(), SchedulerConfig()), clock=clock)
    metrics.observe("ads", "7", "ok", 1.5, 0.3)  # one slow answer, then fast ones a minute on
    clock.now += 30
    for _ in range(200):
        metrics.observe("ads", "7", "ok", 0.010, 0.3)
    (early,) = metrics.served_windows()
    assert early.received == 201 and early.p99_ms is not None and early.p99_ms > 10
    clock.now += 35  # the slow answer's slot has left the window; the fast ones have not
    (row,) = metrics.served_windows()
    assert row.received == row.answered == row.within_sla == 200
    assert row.p99_ms is not None and 10.0 <= row.p99_ms <= 10.0 * 2 ** (1 / 8)
    assert 55.0 <= row.window_s <= 60.0
    clock.now += 60  # nothing received in the last minute: no row (no traffic, no figure)
    assert metrics.served_windows() == []
    # Only refusals: counted, but no p99 without an answer.
    metrics.observe("ads", "7", "rejected", None, 0.3)
    (refused,) = metrics.served_windows()
    assert (refused.received, refused.answered, refused.p99_ms) == (1, 0, None)


def test_served_windows_keep_only_the_pairs_retained() -> None:
    clock = _Clock()
    metrics = ExecutorMetrics(NodeRuntime(FakeBackend(), SchedulerConfig()), clock=clock)
    metrics.observe("ads", "7", "ok", 0.01, 0.3)
    metrics.observe("feed", "3", "ok", 0.01, 0.3)
    metrics.retain({("feed", "3")})
    metrics.observe("ads", "7", "ok", 0.01, 0.3)
    clock.now += 1
    assert [(r.tenant, r.model) for r in metrics.served_windows()] == [("feed", "3")]
