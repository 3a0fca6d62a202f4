"""Open-loop HTTP load for the demo: docs/architecture.md §5 queries sent to executor daemons.

Each tenant's model gets its own Poisson arrival process (exponential gaps, K candidates drawn
from the 20 quantiles of docs/architecture.md §5). A model served by several nodes gets each query
sent to one of them, drawn in proportion to the capacity its plan gives the model there (the
client-side balancing a platform's router would do). Latency is measured from the *scheduled*
arrival, so a client that falls behind cannot hide queueing; a 429 or any error counts as a miss.
Requests are sent by a bounded thread pool per stream; when it is full the arrival is counted as a
miss rather than queued without bound in the client.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np

from executor.codec import query_to_npz
from executor.features import Query
from executor.models.schema import ModelSchema
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
    received_rows: int = 0  # candidate rows of the queries received
    answered_rows: int = 0  # candidate rows of the queries answered 200


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
            counts.received_rows += outcome.candidates
            counts.answered_rows += outcome.candidates if outcome.status == 200 else 0

    def phase(self, name: str) -> PhaseCounts:
        """A copy of one phase's counters (zeros when the phase saw no query)."""
        with self.lock:
            return dataclasses.replace(self.by_phase.get(name, PhaseCounts()))

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

    ``phase`` names the period the next queries are counted in (:attr:`StreamStats.by_phase`);
    the demo sets it for every stream at once, so each tenant's counts cover the same spans.
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
        max_in_flight: int = 64,
    ) -> None:
        if not targets or any(not t.weight > 0 for t in targets):
            raise ValueError(f"{tenant}: a stream needs targets with positive weights")
        self.tenant = tenant
        self.model = model
        self.sla_s = sla_ms / 1000
        self.rate_qps = rate_qps
        self.phase = "steady"
        self.stats = StreamStats(window_s=5.0)
        self._urls = [f"{t.url}/v1/models/{model}/infer" for t in targets]
        weights = np.array([t.weight for t in targets], dtype=float)
        self._odds = weights / weights.sum()
        self._rng = np.random.default_rng(seed)
        # Per target, per query size: pre-encoded bodies of that daemon's schema.
        self._bodies = [
            {k: [query_to_npz(q) for q in self._queries(t.schema, k)] for k in set(QUERY_SIZES)}
            for t in targets
        ]
        self._client = httpx.Client(timeout=max(5.0, 10 * self.sla_s))
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
            phase = self.phase
            if not self._slots.acquire(blocking=False):
                self.stats.record(Outcome(next_at, float("inf"), 0, size), phase, self.sla_s)
                continue
            self._pool.submit(self._send, next_at, self._urls[target], body, size, phase)

    def _send(self, scheduled: float, url: str, body: bytes, size: int, phase: str) -> None:
        try:
            reply = self._client.post(
                url, content=body, headers={"content-type": "application/x-npz"}
            )
            status = reply.status_code
        except httpx.HTTPError as exc:
            log.debug("%s: request failed: %s", self.tenant, exc)
            status = 0
        finally:
            self._slots.release()
        outcome = Outcome(scheduled, time.monotonic() - scheduled, status, size)
        self.stats.record(outcome, phase, self.sla_s)
