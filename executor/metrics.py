"""Prometheus metrics of the executor daemon, per tenant and model.

Per request the daemon records one latency observation and one outcome (cheap: the labelled
children are cached). Everything the scheduler already counts — queue depth, queries in
flight, session busy time, rows served by own and pool sessions — is read from the running
deployment only when ``/metrics`` is scraped, so serving pays nothing for it.

SLA attainment is :mod:`executor.wire.attainment`'s, the one definition every consumer uses:
queries answered within the replica's p99 SLA / queries received, where late answers, refused
(429), dropped (504) and failed (500) queries are misses and malformed ones (400) are not
received. The counts behind it, cumulative since the daemon started, go to the control plane
with every heartbeat (:meth:`ExecutorMetrics.sla_tallies`, rows of the heartbeat's own
:class:`~executor.wire.heartbeat.SlaCount`), which divides them the same way. The control
plane accepts counts only for (tenant, model) pairs that a recent plan of the node seats, so
in API mode the daemon keeps tallies only for the pairs of the plan it serves and the one it
drained (:meth:`ExecutorMetrics.retain`); the Prometheus series are not affected.

The heartbeat also carries, per tenant and model, what was served over the last minute
(:meth:`ExecutorMetrics.served_windows`): the same counts and the p99 latency of the answered
queries, so the control plane can show served rates and p99s in milliseconds against the SLAs.
Memory is bounded per (tenant, model): a ring of :data:`WINDOW_SLOTS` slots of :data:`SLOT_S`
seconds, each a fixed histogram of :data:`P99_EDGES_S` (buckets 2^(1/8), 9 %, wide from 1 ms to
65 s) and the slot's slowest answer; the window reported is the span those slots cover, 55 to
60 s once the daemon has run a minute, and stated in each row.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from executor.scheduling import NodeRuntime
from executor.wire.attainment import RECEIVED_OUTCOMES, attainment, is_within_sla
from executor.wire.heartbeat import ServedWindow, SlaCount

LATENCY_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
OUTCOMES = ("ok", "rejected", "expired", "failed", "invalid")

# The served window of the heartbeat: a minute in twelve slots of five seconds.
SLOT_S = 5.0
WINDOW_SLOTS = 12
# Upper edges of the p99 histogram's buckets, 1 ms * 2^(k/8) up to 65.5 s; one more bucket
# holds slower answers. A p99 read from it is its bucket's edge, capped by the slowest answer.
P99_EDGES_S = tuple(0.001 * 2 ** (k / 8) for k in range(8 * 16 + 1))
P99_RANK = 0.99


class _Slot:
    """What one (tenant, model) was served in one SLOT_S-second slot."""

    __slots__ = ("index", "received", "within_sla", "answered", "slowest_s", "histogram")

    def __init__(self, index: int) -> None:
        self.index = index  # the slot's start is index * SLOT_S on the metrics' clock
        self.received = 0
        self.within_sla = 0
        self.answered = 0
        self.slowest_s = 0.0
        self.histogram = array("q", bytes(8 * (len(P99_EDGES_S) + 1)))


class _ServedRing:
    """The last WINDOW_SLOTS slots of one (tenant, model); older ones are overwritten."""

    __slots__ = ("slots",)

    def __init__(self) -> None:
        self.slots: list[_Slot | None] = [None] * WINDOW_SLOTS

    def slot(self, index: int) -> _Slot:
        slot = self.slots[index % WINDOW_SLOTS]
        if slot is None or slot.index != index:
            slot = _Slot(index)
            self.slots[index % WINDOW_SLOTS] = slot
        return slot

    def window(self, newest: int) -> list[_Slot]:
        oldest = newest - WINDOW_SLOTS + 1
        return [s for s in self.slots if s is not None and oldest <= s.index <= newest]


def p99_of(histogram: array[int], slowest_s: float) -> float | None:
    """The nearest-rank 99th percentile (seconds) of the latencies counted in ``histogram``:
    the upper edge of the bucket holding the ceil(0.99 n)-th fastest, no more than the slowest
    answer; None without answers."""
    answered = sum(histogram)
    if answered == 0:
        return None
    rank = math.ceil(P99_RANK * answered)
    seen = 0
    for bucket, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            edge = P99_EDGES_S[bucket] if bucket < len(P99_EDGES_S) else slowest_s
            return min(edge, slowest_s)
    raise AssertionError("unreachable: the rank is at most the count")


class ExecutorMetrics:
    """The daemon's registry: request metrics plus a collector over the runtime's stats."""

    def __init__(
        self, runtime: NodeRuntime, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = CollectorRegistry()
        self._latency = Histogram(
            "gpufair_executor_latency_seconds",
            "Latency of answered queries, arrival to scores",
            ["tenant", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._queries = Counter(
            "gpufair_executor_queries",
            "Queries received, by outcome",
            ["tenant", "model", "outcome"],
            registry=self.registry,
        )
        self._met = Counter(
            "gpufair_executor_sla_met",
            "Queries answered within their SLA",
            ["tenant", "model"],
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self._attainment: dict[tuple[str, str], list[int]] = {}  # -> [met, received]
        self._served: dict[tuple[str, str], _ServedRing] = {}
        self._clock = clock
        self._started = clock()
        # The (tenant, model) pairs tallied for heartbeats; None: every pair (no API to tell).
        self._tallied: frozenset[tuple[str, str]] | None = None
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self.registry.register(_RuntimeCollector(runtime, self))

    def observe(
        self, tenant: str, model: str, outcome: str, latency_s: float | None, sla_s: float
    ) -> None:
        """Record one query's outcome (and latency when it was answered)."""
        key = (tenant, model, outcome)
        children = self._children.get(key)
        if children is None:
            children = (
                self._latency.labels(tenant, model),
                self._queries.labels(tenant, model, outcome),
                self._met.labels(tenant, model),
            )
            self._children[key] = children
        latency, count, met = children
        count.inc()
        within = is_within_sla(answered=outcome == "ok", latency_s=latency_s, sla_s=sla_s)
        if latency_s is not None and outcome == "ok":
            latency.observe(latency_s)
        if within:
            met.inc()
        if outcome not in RECEIVED_OUTCOMES:  # a 400: the client's mistake, not a miss
            return
        with self._lock:
            if self._tallied is not None and (tenant, model) not in self._tallied:
                return
            tally = self._attainment.setdefault((tenant, model), [0, 0])
            tally[0] += within
            tally[1] += 1
            ring = self._served.get((tenant, model))
            if ring is None:
                ring = self._served[(tenant, model)] = _ServedRing()
            slot = ring.slot(math.floor(self._clock() / SLOT_S))
            slot.received += 1
            slot.within_sla += within
            if outcome == "ok" and latency_s is not None:
                slot.answered += 1
                slot.slowest_s = max(slot.slowest_s, latency_s)
                slot.histogram[bisect_left(P99_EDGES_S, latency_s)] += 1

    def retain(self, pairs: set[tuple[str, str]]) -> None:
        """Tally only these (tenant, model) pairs from now on, and forget the others' counts:
        the plans that seated them are no longer recent, so the control plane would refuse a
        heartbeat that still reported them."""
        with self._lock:
            self._tallied = frozenset(pairs)
            self._attainment = {k: v for k, v in self._attainment.items() if k in pairs}
            self._served = {k: v for k, v in self._served.items() if k in pairs}

    def attainment(self) -> dict[tuple[str, str], float]:
        """Attainment per (tenant, model) that has received a query since the daemon started."""
        with self._lock:
            counts = list(self._attainment.items())
        figures = {k: attainment(within_sla=met, received=total) for k, (met, total) in counts}
        return {k: figure for k, figure in figures.items() if figure is not None}

    def sla_tallies(self) -> list[SlaCount]:
        """Cumulative counts per (tenant, model) since the daemon started, sorted by both:
        ``received`` (answered in time or late, refused, dropped or failed; 400s excluded)
        and ``within_sla`` (answered within the replica's p99 SLA).

        The heartbeat reports them, so the control plane can compute attainment over any
        interval from two heartbeats (a counter, unlike the ratio, survives the subtraction).
        """
        with self._lock:
            items = sorted(self._attainment.items())
        return [
            SlaCount(tenant=tenant, model=model, received=total, within_sla=met)
            for (tenant, model), (met, total) in items
        ]

    def served_windows(self) -> list[ServedWindow]:
        """Per (tenant, model) with a query received in the window, sorted by both: what was
        served over the last WINDOW_SLOTS slots, up to now (fewer seconds while the daemon is
        younger than that; the row states its window)."""
        now = self._clock()
        newest = math.floor(now / SLOT_S)
        window_s = now - max((newest - WINDOW_SLOTS + 1) * SLOT_S, self._started)
        rows = []
        with self._lock:
            for (tenant, model), ring in sorted(self._served.items()):
                slots = ring.window(newest)
                received = sum(s.received for s in slots)
                if received == 0 or window_s <= 0:
                    continue
                histogram = array("q", map(sum, zip(*(s.histogram for s in slots), strict=True)))
                p99 = p99_of(histogram, max(s.slowest_s for s in slots))
                rows.append(
                    ServedWindow(
                        tenant=tenant,
                        model=model,
                        window_s=window_s,
                        received=received,
                        within_sla=sum(s.within_sla for s in slots),
                        answered=sum(s.answered for s in slots),
                        p99_ms=None if p99 is None else p99 * 1000.0,
                    )
                )
        return rows

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RuntimeCollector(Collector):
    def __init__(self, runtime: NodeRuntime, metrics: ExecutorMetrics) -> None:
        self._runtime = runtime
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        labels = ["tenant", "model", "device", "seat"]
        depth = GaugeMetricFamily(
            "gpufair_executor_queue_depth",
            "Candidate rows waiting in the group's queue",
            labels=labels,
        )
        flight = GaugeMetricFamily(
            "gpufair_executor_in_flight", "Admitted queries not yet answered", labels=labels
        )
        busy = CounterMetricFamily(
            "gpufair_executor_session_busy_seconds",
            "Session-seconds spent running the group's batches",
            labels=[*labels, "sessions"],
        )
        rows = CounterMetricFamily(
            "gpufair_executor_rows", "Candidate rows scored", labels=[*labels, "sessions"]
        )
        batches = CounterMetricFamily("gpufair_executor_batches", "Batches run", labels=labels)
        version = GaugeMetricFamily("gpufair_executor_plan_version", "Plan version being served")
        attained = GaugeMetricFamily(
            "gpufair_executor_sla_attainment",
            "Queries answered within the SLA / queries received (late answers, 429s, drops "
            "and failures are misses)",
            labels=["tenant", "model"],
        )
        deployment = self._runtime.deployment
        if deployment is not None:
            version.add_metric([], deployment.plan.version)
            for device in deployment.devices:
                for g in device.groups:
                    key = [g.tenant, g.model_id, device.plan.device, str(g.seat.seat)]
                    depth.add_metric(key, g.queued_rows)
                    flight.add_metric(key, g.in_flight)
                    busy.add_metric([*key, "own"], g.stats.busy_own_s)
                    busy.add_metric([*key, "pool"], g.stats.busy_pool_s)
                    rows.add_metric([*key, "own"], g.stats.rows_own)
                    rows.add_metric([*key, "pool"], g.stats.rows_pool)
                    batches.add_metric(key, g.stats.batches)
        for (tenant, model), value in self._metrics.attainment().items():
            attained.add_metric([tenant, model], value)
        yield from (depth, flight, busy, rows, batches, version, attained)
