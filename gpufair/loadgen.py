"""Open-loop HTTP load for the demo: docs/architecture.md §5 queries sent to executor daemons.

Queries go to the Open Inference Protocol route with binary tensors (:mod:`executor.wire.oip`),
the format the daemon decodes cheapest.

Each tenant's model gets its own Poisson arrival process (exponential gaps, K candidates drawn
from the 20 quantiles of docs/architecture.md §5). Latency is measured from the *scheduled*
arrival, so a client that falls behind cannot hide queueing; a 429 or any error counts as a miss.
Requests are sent by a bounded thread pool per stream; when it is full the arrival is counted as a
miss rather than queued without bound in the client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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


@dataclass
class StreamStats:
    """What the live view shows for one tenant's stream, over a sliding window."""

    window_s: float
    outcomes: deque[Outcome] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Whole-run counters by phase name: [answered within SLA, all queries].
    by_phase: dict[str, list[int]] = field(default_factory=dict)

    def record(self, outcome: Outcome, phase: str, sla_s: float) -> None:
        within = is_within_sla(
            answered=outcome.status == 200, latency_s=outcome.latency_s, sla_s=sla_s
        )
        with self.lock:
            self.outcomes.append(outcome)
            counts = self.by_phase.setdefault(phase, [0, 0])
            counts[0] += int(within)
            counts[1] += 1

    def window(self, now: float) -> list[Outcome]:
        with self.lock:
            while self.outcomes and self.outcomes[0].scheduled < now - self.window_s:
                self.outcomes.popleft()
            return list(self.outcomes)


class TenantStream:
    """Sends one model's queries at a (changeable) Poisson rate until stopped."""

    def __init__(
        self,
        *,
        tenant: str,
        model: str,
        url: str,
        schema: ModelSchema,
        sla_ms: float,
        rate_qps: float,
        seed: int,
        max_in_flight: int = 64,
    ) -> None:
        self.tenant = tenant
        self.model = model
        self.sla_s = sla_ms / 1000
        self.rate_qps = rate_qps
        self.phase = "steady"
        self.stats = StreamStats(window_s=5.0)
        self._url = f"{url}/v2/models/{model}/infer"
        self._rng = np.random.default_rng(seed)
        self._bodies = {
            k: [query_to_oip(q) for q in self._queries(schema, k)] for k in set(QUERY_SIZES)
        }
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
            size = int(self._rng.choice(QUERY_SIZES))
            body = self._bodies[size][int(self._rng.integers(DISTINCT_QUERIES))]
            phase = self.phase
            if not self._slots.acquire(blocking=False):
                self.stats.record(Outcome(next_at, float("inf"), 0), phase, self.sla_s)
                continue
            self._pool.submit(self._send, next_at, body, phase)

    def _send(self, scheduled: float, body: tuple[bytes, int | None], phase: str) -> None:
        content, header_length = body
        headers = {"content-type": oip.BINARY_CONTENT_TYPE}
        if header_length is not None:
            headers[oip.HEADER_LENGTH] = str(header_length)
        try:
            reply = self._client.post(self._url, content=content, headers=headers)
            status = reply.status_code
        except httpx.HTTPError as exc:
            log.debug("%s: request failed: %s", self.tenant, exc)
            status = 0
        finally:
            self._slots.release()
        outcome = Outcome(scheduled, time.monotonic() - scheduled, status)
        self.stats.record(outcome, phase, self.sla_s)
