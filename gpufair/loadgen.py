"""Open-loop HTTP load for the demo: docs/architecture.md §5 queries sent to executor daemons.

Queries go to the Open Inference Protocol route with binary tensors (:mod:`executor.wire.oip`),
the format the daemon decodes cheapest.

Each tenant's model gets its own Poisson arrival process (exponential gaps, K candidates drawn
from the 20 quantiles of docs/architecture.md §5). A model served by several nodes gets each query
sent to one of them, drawn in proportion to the capacity its plan gives the model there (the
client-side balancing a platform's router would do). Latency is measured from the *scheduled*
arrival, so a client that falls behind cannot hide queueing; a 429 or any error counts as a miss.
Each query carries the tenant's key (``Authorization: Bearer``), as the daemons require.
Requests are sent by a bounded thread pool per stream; when it is full the arrival is counted as a
miss rather than queued without bound in the client.

:class:`StreamProcess` runs a stream in a child process of its own, as each tenant is a client of
its own: a flooding tenant's client then cannot slow the threads (and the interpreter lock) that
time another tenant's queries. The child sends its outcomes back in batches and the parent counts
each in the phase its scheduled arrival falls in (the monotonic clock is the machine's, shared by
both processes).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import httpx
import numpy as np

from executor.codec import query_to_oip
from executor.features import Query
from executor.models.schema import ModelSchema
from executor.wire import oip
from executor.wire.attainment import is_within_sla

log = logging.getLogger(__name__)

QUERY_SIZES = (100, 100, 200, 200, 200, 200, 200, 200, 200, 200,
               200, 200, 200, 200, 300, 300, 400, 500, 600, 700)  # fmt: skip
DISTINCT_QUERIES = 4  # pre-encoded bodies per size: encoding is not what the demo measures


@dataclass
class Outcome:
    """One finished query: when it was scheduled, its latency, and how it ended."""

    scheduled: float  # monotonic seconds
    latency_s: float
    status: int  # HTTP status, or 0 for a client-side failure
    candidates: int = 0  # the query's candidate rows


@dataclass
class PhaseCounts:
    """Whole-phase counters of one stream: what the demo's claims are computed from."""

    received: int = 0  # queries sent (or dropped by the client's full pool)
    within_sla: int = 0  # answered 200 within the SLA
    answered: int = 0  # answered 200, late or not
    refused: int = 0  # 429: admission control said no
    lost: int = 0  # no HTTP answer at all: a transport failure, a timeout or the client's full pool
    received_rows: int = 0  # candidate rows of the queries received
    answered_rows: int = 0  # candidate rows of the queries answered 200
    latencies_s: list[float] = field(default_factory=list)  # of the queries answered 200
    first_scheduled: float = float("inf")  # monotonic seconds
    last_answered: float = float("-inf")  # when the last answer arrived, monotonic seconds

    def span_s(self) -> float:
        """From the phase's first arrival to its last answer: the time its answers took, which
        runs past the phase's end by the queries still in flight then."""
        return max(0.0, self.last_answered - self.first_scheduled)

    def p99_s(self) -> float | None:
        """The 99th percentile latency of the answered queries; None when none was."""
        return float(np.percentile(self.latencies_s, 99)) if self.latencies_s else None


@dataclass
class StreamStats:
    """What the live view shows for one tenant's stream, over a sliding window."""

    window_s: float
    outcomes: deque[Outcome] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Whole-run counters by phase name.
    by_phase: dict[str, PhaseCounts] = field(default_factory=dict)

    def record(self, outcome: Outcome, phase: str, sla_s: float) -> None:
        within = is_within_sla(
            answered=outcome.status == 200, latency_s=outcome.latency_s, sla_s=sla_s
        )
        with self.lock:
            self.outcomes.append(outcome)
            counts = self.by_phase.setdefault(phase, PhaseCounts())
            counts.received += 1
            counts.within_sla += int(within)
            counts.answered += int(outcome.status == 200)
            counts.refused += int(outcome.status == 429)
            counts.lost += int(outcome.status == 0)
            counts.received_rows += outcome.candidates
            counts.first_scheduled = min(counts.first_scheduled, outcome.scheduled)
            if outcome.status == 200:
                counts.answered_rows += outcome.candidates
                counts.latencies_s.append(outcome.latency_s)
                counts.last_answered = max(counts.last_answered,
                                           outcome.scheduled + outcome.latency_s)

    def phase(self, name: str) -> PhaseCounts:
        """A copy of one phase's counters (zeros when the phase saw no query)."""
        with self.lock:
            counts = self.by_phase.get(name, PhaseCounts())
            return dataclasses.replace(counts, latencies_s=list(counts.latencies_s))

    def window(self, now: float) -> list[Outcome]:
        with self.lock:
            while self.outcomes and self.outcomes[0].scheduled < now - self.window_s:
                self.outcomes.popleft()
            return list(self.outcomes)


@dataclass(frozen=True)
class Target:
    """One daemon serving the stream's model, with the weight of its share of the queries."""

    url: str  # the daemon's base URL
    schema: ModelSchema  # the model as that daemon serves it
    weight: float  # > 0; queries are drawn in proportion


class TenantStream:
    """Sends one model's queries at a (changeable) Poisson rate until stopped.

    Every finished query goes to ``sink``; :class:`StreamProcess` runs one in a child process
    and counts what the sink receives in the parent.
    """

    def __init__(
        self,
        *,
        tenant: str,
        model: str,
        targets: list[Target],
        sla_ms: float,
        rate_qps: float,
        seed: int,
        key: str | None = None,
        max_in_flight: int = 64,
        sink: Callable[[Outcome], None],
    ) -> None:
        if not targets or any(not t.weight > 0 for t in targets):
            raise ValueError(f"{tenant}: a stream needs targets with positive weights")
        self.tenant = tenant
        self.model = model
        self.sla_s = sla_ms / 1000
        self.rate_qps = rate_qps
        self._sink = sink
        self._urls = [f"{t.url}/v2/models/{model}/infer" for t in targets]
        weights = np.array([t.weight for t in targets], dtype=float)
        self._odds = weights / weights.sum()
        self._rng = np.random.default_rng(seed)
        # Per target, per query size: pre-encoded bodies of that daemon's schema.
        self._bodies = [
            {k: [query_to_oip(q) for q in self._queries(t.schema, k)] for k in set(QUERY_SIZES)}
            for t in targets
        ]
        # The tenant's key: the daemons answer a query only with a key of its model's tenant.
        self._client = httpx.Client(
            timeout=max(5.0, 10 * self.sla_s),
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix=f"load-{tenant}")
        self._slots = threading.Semaphore(max_in_flight)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"arrivals-{tenant}", daemon=True)

    def _queries(self, schema: ModelSchema, size: int) -> list[Query]:
        return [schema.random_query(self._rng, size) for _ in range(DISTINCT_QUERIES)]

    def start(self) -> None:
        self._thread.start()

    def signal_stop(self) -> None:
        """Send no more queries; :meth:`stop` then waits for those in flight."""
        self._stop.set()

    def stop(self) -> None:
        self.signal_stop()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += float(self._rng.exponential(1.0 / self.rate_qps))
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            target = int(self._rng.choice(len(self._urls), p=self._odds))
            size = int(self._rng.choice(QUERY_SIZES))
            body = self._bodies[target][size][int(self._rng.integers(DISTINCT_QUERIES))]
            if not self._slots.acquire(blocking=False):
                self._sink(Outcome(next_at, float("inf"), 0, size))
                continue
            self._pool.submit(self._send, next_at, self._urls[target], body, size)

    def _send(
        self, scheduled: float, url: str, body: tuple[bytes, int | None], size: int
    ) -> None:
        content, header_length = body
        headers = {"content-type": oip.BINARY_CONTENT_TYPE}
        if header_length is not None:
            headers[oip.HEADER_LENGTH] = str(header_length)
        try:
            reply = self._client.post(url, content=content, headers=headers)
            status = reply.status_code
        except httpx.HTTPError as exc:
            log.debug("%s: request failed: %s", self.tenant, exc)
            status = 0
        finally:
            self._slots.release()
        self._sink(Outcome(scheduled, time.monotonic() - scheduled, status, size))


FLUSH_S = 0.2  # how often a child process sends its outcomes back


def _stream_in_child(
    spec: dict[str, Any],
    rate: Synchronized,  # type: ignore[type-arg]
    stop: Any,  # a multiprocessing Event
    out: Any,  # a multiprocessing Queue of outcome batches, then None
) -> None:
    """A child's whole life: run the stream, follow the parent's rate, send outcomes back."""
    # Ctrl-C reaches the whole process group; the parent stops its children itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    batch: list[Outcome] = []
    lock = threading.Lock()

    def keep(outcome: Outcome) -> None:
        with lock:
            batch.append(outcome)

    def flush() -> None:
        with lock:
            ready = batch[:]
            batch.clear()
        if ready:
            out.put(ready)

    stream = TenantStream(**spec, sink=keep)
    stream.start()
    out.put([])  # ready: an empty batch
    while not stop.wait(FLUSH_S):
        stream.rate_qps = rate.value
        flush()
    stream.stop()  # waits for the queries in flight
    flush()
    out.put(None)


class StreamProcess:
    """A :class:`TenantStream` in a child process of its own, seen from the parent.

    The parent reads ``stats`` (filled from the child's outcomes), sets ``rate_qps`` and
    calls :meth:`set_phase` at a phase's start: outcomes are counted in the phase of their
    scheduled arrival.
    """

    def __init__(self, *, tenant: str, model: str, targets: list[Target], sla_ms: float,
                 rate_qps: float, seed: int, key: str | None = None) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self.tenant = tenant
        self.sla_s = sla_ms / 1000
        self.stats = StreamStats(window_s=5.0)
        self.phase = "warm-up"  # until the first set_phase
        self._phases: list[tuple[float, str]] = [(float("-inf"), self.phase)]
        self._rate = context.Value("d", rate_qps)
        self._stop = context.Event()
        self._out: Any = context.Queue()
        spec = {"tenant": tenant, "model": model, "targets": targets, "sla_ms": sla_ms,
                "rate_qps": rate_qps, "seed": seed, "key": key}
        self._process = context.Process(
            target=_stream_in_child, args=(spec, self._rate, self._stop, self._out),
            name=f"load-{tenant}", daemon=True)
        self._collector = threading.Thread(target=self._collect, name=f"collect-{tenant}",
                                           daemon=True)
        self._ready = threading.Event()

    @property
    def rate_qps(self) -> float:
        return float(self._rate.value)

    @rate_qps.setter
    def rate_qps(self, value: float) -> None:
        self._rate.value = value

    def set_phase(self, name: str, since: float) -> None:
        """Queries scheduled from ``since`` (monotonic seconds) on count in phase ``name``."""
        self._phases.append((since, name))
        self.phase = name

    def _phase_of(self, scheduled: float) -> str:
        starts = [since for since, _ in self._phases]
        return self._phases[bisect.bisect_right(starts, scheduled) - 1][1]

    def start(self) -> None:
        self._process.start()
        self._collector.start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the child started sending within ``timeout_s`` (a busy machine takes seconds
        to start a Python process)."""
        return self._ready.wait(timeout_s)

    def _collect(self) -> None:
        while True:
            try:
                batch = self._out.get(timeout=1.0)
            except queue.Empty:
                if not self._process.is_alive():
                    return  # the child died without its last word
                continue
            if batch is None:
                return
            self._ready.set()
            for outcome in batch:
                self.stats.record(outcome, self._phase_of(outcome.scheduled), self.sla_s)

    def signal_stop(self) -> None:
        """Send no more queries; :meth:`stop` then waits for those in flight."""
        self._stop.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.signal_stop()
        if self._process.ident is None:
            return  # never started
        self._collector.join(timeout=timeout_s)
        self._process.join(timeout=5.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
