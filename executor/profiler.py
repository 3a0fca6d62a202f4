"""Profiler: a replica's latency-bounded throughput against its number of sessions (streams).

The allocator values seats and stream-pool shares by q_m(g, s), the highest query rate one
replica of model m sustains on device g with s streams while its p99 latency stays within the
SLA (docs/architecture.md §2, §5). This module measures that curve on this node, for the zoo models
or any loaded model, and returns one entry of a profile file (:mod:`executor.profiles`), which the
daemon uploads to the API.

Method (DeepRecSched's latency-bounded throughput, simplified to one replica):
queries follow docs/architecture.md §5 (one user, K candidates with K drawn from the 20 quantiles),
arrive open-loop with exponential gaps and are served first-come first-served by s worker threads,
each with its own :class:`~executor.runtime.Session` (one CUDA stream each on a GPU, one
thread with one intra-op thread each on a CPU). Latency counts from the scheduled arrival.
A short closed-loop run first measures the capacity μ_s; open-loop runs then try fractions of
μ_s from high to low and the first rate whose p99 meets the SLA is q(s); the full mode bisects
once more between it and the failing rate above. A curve is made non-decreasing (a replica can
leave a stream idle, so s+1 streams never serve less than s).

:func:`compare_forwards` times the structured forward against the naive one (every candidate
row carrying the user's features) on one query, the ratio that structured features buy.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from executor.features import Batch
from executor.profiles import ProfileCurve
from executor.runtime import LoadedModel, Session

log = logging.getLogger(__name__)

# docs/architecture.md §5: candidates per query, drawn uniformly from these 20 quantiles (mean 270).
QUERY_SIZE_QUANTILES = (100, 100) + (200,) * 12 + (300, 300, 400, 500, 600, 700)
# Fractions of the closed-loop capacity tried, from high to low.
LOAD_FRACTIONS = (0.95, 0.8, 0.65, 0.5, 0.35, 0.2, 0.1)


@dataclass(frozen=True)
class ProfileSettings:
    sla_p99_ms: float  # the latency bound the throughput is measured against
    max_sessions: int  # the curve has one point for each s = 1 … max_sessions
    closed_s: float = 1.0  # seconds of the closed-loop capacity run
    window_s: float = 2.0  # seconds of arrivals in each open-loop run
    refine: bool = True  # bisect once between the passing and the failing rate
    seed: int = 0


@dataclass(frozen=True)
class LoadResult:
    rate_qps: float  # offered arrival rate
    p99_ms: float  # p99 latency from scheduled arrival (inf when the run was cut short)
    completed: int  # queries answered


def query_pool(model: LoadedModel, count: int, seed: int) -> list[Batch]:
    """``count`` single-query batches of the benchmark's query sizes (docs/architecture.md §5),
    built before any timing."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice(QUERY_SIZE_QUANTILES, size=count)
    return [Batch.of([model.schema.random_query(rng, int(k))]) for k in sizes]


def closed_loop_capacity(sessions: list[Session], pool: list[Batch], duration_s: float) -> float:
    """Queries per second with every session running queries back to back."""
    done = [0] * len(sessions)
    stop = time.perf_counter() + duration_s

    def work(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            sessions[k].run(pool[i % len(pool)])
            done[k] += 1
            i += len(sessions)

    start = time.perf_counter()
    _run_threads([lambda k=k: work(k) for k in range(len(sessions))])
    return sum(done) / (time.perf_counter() - start)


def open_loop(
    sessions: list[Session],
    pool: list[Batch],
    rate_qps: float,
    window_s: float,
    sla_p99_ms: float,
    rng: np.random.Generator,
) -> LoadResult:
    """Poisson arrivals at ``rate_qps`` for ``window_s``, served FCFS by the sessions."""
    arrivals = np.cumsum(rng.exponential(1.0 / rate_qps, size=max(1, int(rate_qps * window_s))))
    arrivals = arrivals[arrivals < window_s]
    backlog: queue.Queue[tuple[float, Batch] | None] = queue.Queue()
    latencies: list[float] = []
    lock = threading.Lock()
    # A backlog this deep already breaks the SLA: stop early instead of serving it out.
    give_up = threading.Event()

    def serve(session: Session) -> None:
        while (item := backlog.get()) is not None:
            scheduled, batch = item
            if give_up.is_set():
                continue
            session.run(batch)
            latency = time.perf_counter() - scheduled
            with lock:
                latencies.append(latency)
            if latency * 1e3 > 4 * sla_p99_ms:
                give_up.set()

    workers = [threading.Thread(target=serve, args=(s,), daemon=True) for s in sessions]
    for w in workers:
        w.start()
    start = time.perf_counter()
    for k, offset in enumerate(arrivals):
        delay = start + offset - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if give_up.is_set():
            break
        backlog.put((start + offset, pool[k % len(pool)]))
    for _ in workers:
        backlog.put(None)
    for w in workers:
        w.join()
    if give_up.is_set() or not latencies:
        return LoadResult(rate_qps, float("inf"), len(latencies))
    return LoadResult(rate_qps, float(np.percentile(latencies, 99) * 1e3), len(latencies))


def latency_bounded_qps(
    sessions: list[Session], pool: list[Batch], settings: ProfileSettings
) -> float:
    """The highest tried arrival rate whose p99 latency meets the SLA (0 if none does)."""
    rng = np.random.default_rng(settings.seed)
    capacity = closed_loop_capacity(sessions, pool, settings.closed_s)
    failing = None
    for fraction in LOAD_FRACTIONS:
        rate = capacity * fraction
        result = open_loop(sessions, pool, rate, settings.window_s, settings.sla_p99_ms, rng)
        log.debug("rate %.1f qps: p99 %.1f ms", rate, result.p99_ms)
        if result.p99_ms <= settings.sla_p99_ms:
            if settings.refine and failing is not None:
                middle = (rate + failing) / 2
                check = open_loop(
                    sessions, pool, middle, settings.window_s, settings.sla_p99_ms, rng
                )
                if check.p99_ms <= settings.sla_p99_ms:
                    return middle
            return rate
        failing = rate
    return 0.0


def profile_model(model: LoadedModel, settings: ProfileSettings) -> dict[str, Any]:
    """q(s) for s = 1 … max_sessions, as one entry of a profile file (executor.profiles)."""
    pool = query_pool(model, 64, settings.seed)
    sessions = [model.session() for _ in range(settings.max_sessions)]
    for batch in pool[:4]:  # warm-up: first calls allocate and pick kernels
        sessions[0].run(batch)
    qps: list[float] = []
    for s in range(1, settings.max_sessions + 1):
        measured = latency_bounded_qps(sessions[:s], pool, settings)
        qps.append(max([measured, *qps]))
        log.info(
            "%s: %d session(s): %.1f qps within p99 %.0f ms",
            model.artifact,
            s,
            measured,
            settings.sla_p99_ms,
        )
    return ProfileCurve(
        qps=tuple(round(q, 2) for q in qps),
        kind="gpu" if model.device.type == "cuda" else "cpu",
        sla_p99_ms=settings.sla_p99_ms,
        device=_device_name(model.device),
        artifact=model.artifact,
    ).to_dict()


def compare_forwards(model: LoadedModel, candidates: int = 270, reps: int = 20) -> dict[str, Any]:
    """Median time of the structured and the naive forward on queries of ``candidates``: four
    random queries, taken in turn, so no one query's features decide the timing."""
    pool = [
        Batch.of([model.schema.random_query(np.random.default_rng(k), candidates)])
        for k in range(4)
    ]
    session = model.session()
    timings: dict[str, list[float]] = {"structured": [], "naive": []}
    runs = {"structured": session.run, "naive": session.run_naive}
    for i in range(reps + 2):
        for name, run in runs.items():  # interleaved, so machine noise hits both alike
            start = time.perf_counter()
            run(pool[i % len(pool)])
            if i >= 2:
                timings[name].append(time.perf_counter() - start)
    structured = float(np.median(timings["structured"]) * 1e3)
    naive = float(np.median(timings["naive"]) * 1e3)
    return {
        "artifact": model.artifact,
        "candidates": candidates,
        "device": _device_name(model.device),
        "threads": torch.get_num_threads(),
        "structured_ms": round(structured, 3),
        "naive_ms": round(naive, 3),
        "speedup": round(naive / structured, 2),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} intra-op thread(s))"


def _run_threads(targets: list[Any]) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
