"""``gpufair bench serve``: latency-bounded throughput of the executor against baselines.

The docs/architecture.md §5 workload: open-loop Poisson arrivals; each query is one user and K
candidates, K drawn uniformly from the 20 quantiles ``[100, 100, 200 ×12, 300, 300, 400, 500, 600,
700]`` (mean 270); latency runs from a query's *scheduled* arrival time to its scores, so a load
generator that falls behind is charged to the server, not hidden. A refused (429) or dropped
query counts as a miss. The latency-bounded throughput of a server is the highest arrival rate
whose p99 stays within the SLA, found by the same search for every server: a warm-up at a
low rate (discarded), then from that low rate the rate grows ×1.5 until the SLA breaks, then
bisection between the last good and the first bad rate.

Servers, on the same cores in the same run, driven in-process (the load generator thread
calls the scheduler's ``submit`` directly: no HTTP, so the comparison is of serving, not of
the web stack):

- ``gpufair``: the executor's session group — one session per core, each with one intra-op
  thread, structured features (user side once per query), dynamic batching, splitting of
  large queries across idle sessions, admission control;
- ``single-session``: the same scheduler and structured model with one session that has every
  core as intra-op threads (what a plain PyTorch server does);
- ``naive``: one query at a time on one session with every core, every candidate row carrying
  a copy of the user's features through the plain (unsplit) forward, no batching.

Isolation: two tenants on one device with equal shares (a seat each plus equal weights in a
shared pool of two sessions); one floods at 5× its share (its share = half the device's
latency-bounded throughput measured above), the other sends at half its share. The
well-behaved tenant's SLA attainment is reported for gpufair and for a shared-FIFO server
(the same sessions and admission control, one queue for both tenants).

Model: RMC2 (DeepRecInfra), tables scaled to ``--scale`` of their nominal rows, 28 of its
32 tables on the user side as in production ranking. Results go to
``bench/results/serve-<quick|full>.{json,md,png}`` with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from allocator.cluster.plan import NodePlan, seat_entry
from bench.machine import describe_machine, this_machine
from executor.features import Batch, Query
from executor.runtime import configure_cpu_threads
from executor.scheduling import NodeRuntime, Overloaded, SchedulerConfig, SchedulingError
from executor.scheduling.backend import Backend, Model, RuntimeBackend
from gpufair.inputs import positive_number, results_folder, whole_number
from gpufair.loadgen import QUERY_SIZES  # the docs/architecture.md §5 quantiles, one definition

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DISTINCT_QUERIES = 64  # pre-built queries per size, so generating load costs nothing
START_RATE = 20.0  # qps where every server's search starts (below any server's capacity)
GROWTH = 1.5  # rate multiplier while the SLA holds
WARMUP_S = 1.5  # seconds of arrivals at START_RATE before each search, discarded


def highest_rate_within_sla(trial: Callable[[float], bool], bisections: int) -> float:
    """The latency-bounded throughput search every server gets, in-process or over HTTP: from
    START_RATE the rate grows ×GROWTH while ``trial(rate)`` holds the SLA, then ``bisections``
    halvings between the last rate that held and the first that did not; the last that held."""
    good, bad = 0.0, START_RATE
    while trial(bad):
        good, bad = bad, bad * GROWTH
    for _ in range(bisections):
        mid = (good + bad) / 2
        if trial(mid):
            good = mid
        else:
            bad = mid
    return good


def rmc2_artifact(scale: float, user_tables: int) -> str:
    """The zoo reference of the benchmarks' RMC2 model (the in-process and the HTTP runs)."""
    return f"zoo:rmc2?scale={scale:g}&seed=0&user_tables={user_tables}"


@dataclass(frozen=True)
class ServeConfig:
    name: str  # results are written to serve-<name>.*
    scale: float  # RMC2 table rows as a fraction of the nominal 10⁶
    user_tables: int
    sla_ms: float
    trial_s: float  # seconds of arrivals per trial rate
    bisections: int
    repeats: int  # whole searches per server; the median is reported
    isolation_s: float
    calm_fraction: float  # the well-behaved tenant's rate, as a fraction of its share
    flood_factor: float  # the flooder's rate, as a multiple of its share
    cores: int
    seed: int
    out_dir: Path
    command: str

    @property
    def artifact(self) -> str:
        return rmc2_artifact(self.scale, self.user_tables)


@dataclass
class Trial:
    """One open-loop run at a fixed arrival rate."""

    rate: float  # offered queries per second
    queries: int
    answered: int
    refused: int  # refused at admission (429)
    dropped: int  # admitted but not answered (dropped past its deadline, or failed)
    p99_ms: float  # inf when more than 1% were not answered
    attainment: float  # fraction answered within the SLA
    ok: bool  # p99 within the SLA


@dataclass
class SearchResult:
    server: str
    throughput_qps: float  # highest rate found with p99 within the SLA
    trials: list[Trial] = field(default_factory=list)


# -- servers ---------------------------------------------------------------------------------


class NaiveSession:
    """The naive server's forward: user features copied onto every row, the unsplit model."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def run(self, batch: Batch) -> np.ndarray:
        return np.asarray(self._session.run_naive(batch))


class NaiveModel:
    def __init__(self, loaded: Any) -> None:
        self._loaded = loaded
        self.schema = loaded.schema
        self.footprint_bytes: int = loaded.footprint_bytes

    def session(self) -> NaiveSession:
        return NaiveSession(self._loaded.session())


class NaiveBackend(RuntimeBackend):
    def load(self, artifact: str, device: str) -> Model:
        return NaiveModel(super().load(artifact, device))


@dataclass(frozen=True)
class Server:
    name: str
    backend: Callable[[], Backend]
    sessions: int  # base + dedicated sessions of its one seat
    threads: int  # intra-op threads of every op (process-wide, set before it runs)
    config: SchedulerConfig


def servers(cfg: ServeConfig) -> list[Server]:
    # The knobs that served best on this 2-core machine for both structured servers: no wait
    # for company (a free session takes whatever is queued, so batches form under load only)
    # and batches up to 1024 rows. The naive server runs each query whole, one at a time.
    common = SchedulerConfig(
        max_queue=4096, expire_after_sla=2.0, batch_max_delay_s=0.0, max_batch_candidates=1024
    )
    naive = replace(common, admission=False, batching=False, splitting=False)
    return [
        Server("gpufair", RuntimeBackend, cfg.cores, 1, common),
        Server("single-session", RuntimeBackend, 1, cfg.cores, common),
        Server("naive", NaiveBackend, 1, cfg.cores, naive),
    ]


def node_plan(seats: list[dict[str, Any]], pool: int = 0) -> NodePlan:
    """The one-device CPU plan of the benchmark's node."""
    return NodePlan.single_cpu_device(seats, node="bench", pool=pool)


class BenchModel(Protocol):
    """What a benchmark's settings say of the model it serves (ServeConfig, HttpConfig)."""

    @property
    def artifact(self) -> str: ...

    @property
    def sla_ms(self) -> float: ...


def seat(
    index: int, model_id: str, cfg: BenchModel, dedicated: int, weight: float
) -> dict[str, Any]:
    """A seat of the benchmark's model, for a tenant named like the model: the one seat shape
    of the in-process and the HTTP benchmarks."""
    return seat_entry(
        index,
        model_id=model_id,
        tenant=model_id,
        artifact=cfg.artifact,
        sla_p99_ms=cfg.sla_ms,
        dedicated_streams=dedicated,
        pool_weight=weight,
    )


# -- load generation ---------------------------------------------------------------------------


class Workload:
    """Pre-built queries of the docs/architecture.md §5 sizes and seeded Poisson schedules."""

    def __init__(self, schema: Any, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self._queries = {
            k: [schema.random_query(rng, k) for _ in range(DISTINCT_QUERIES)]
            for k in sorted(set(QUERY_SIZES))
        }
        self._seed = seed

    def schedule(
        self, rate: float, seconds: float, salt: int
    ) -> list[tuple[float, Query]]:
        """(offset in seconds, query) pairs: exponential gaps, sizes uniform over the quantiles."""
        rng = np.random.default_rng([self._seed, salt, int(rate * 1000)])
        count = max(1, int(rate * seconds))
        offsets = np.cumsum(rng.exponential(1.0 / rate, count))
        sizes = rng.choice(QUERY_SIZES, count)
        picks = rng.integers(0, DISTINCT_QUERIES, count)
        return [
            (float(t), self._queries[int(k)][int(j)])
            for t, k, j in zip(offsets, sizes, picks, strict=True)
        ]


def drive(
    runtime: NodeRuntime, arrivals: list[tuple[float, str, Query]], wait_s: float
) -> list[float]:
    """Submit each query at its scheduled time; latency in seconds per query (nan: refused
    at admission, inf: admitted but not answered)."""
    latencies = [math.inf] * len(arrivals)
    left = threading.Semaphore(0)
    begin = time.monotonic() + 0.05

    def finished(index: int, scheduled: float) -> Callable[[Any], None]:
        def record(future: Any) -> None:
            if not future.cancelled() and future.exception() is None:
                latencies[index] = time.monotonic() - scheduled
            left.release()

        return record

    for index, (offset, model_id, query) in enumerate(arrivals):
        scheduled = begin + offset
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            pending = runtime.submit(model_id, query, arrival=scheduled)
        except (Overloaded, SchedulingError):
            latencies[index] = math.nan
            left.release()
            continue
        pending.future.add_done_callback(finished(index, scheduled))
    end = time.monotonic() + wait_s
    for _ in arrivals:
        if not left.acquire(timeout=max(end - time.monotonic(), 0.0)):
            break
    return latencies


def summarize(rate: float, latencies: list[float], sla_s: float) -> Trial:
    raw = np.asarray(latencies, dtype=float)
    refused = int(np.isnan(raw).sum())
    values = np.sort(np.where(np.isnan(raw), math.inf, raw))
    answered = int(np.isfinite(values).sum())
    # Nearest-rank p99, which stays defined when some latencies are infinite (missed).
    p99 = float(values[math.ceil(0.99 * len(values)) - 1]) if len(values) else math.inf
    return Trial(
        rate=round(rate, 2),
        queries=len(values),
        answered=answered,
        refused=refused,
        dropped=len(values) - answered - refused,
        p99_ms=p99 * 1000 if math.isfinite(p99) else math.inf,
        attainment=float((values <= sla_s).mean()) if len(values) else 0.0,
        ok=p99 <= sla_s,
    )


def search(
    server: str, runtime: NodeRuntime, workload: Workload, cfg: ServeConfig, salt: int
) -> SearchResult:
    """The same search for every server: warm up, then from START_RATE grow ×GROWTH until the
    SLA breaks, then bisect between the last good and the first bad rate."""
    sla_s = cfg.sla_ms / 1000
    result = SearchResult(server, 0.0)

    def run(rate: float, seconds: float) -> Trial:
        arrivals = [(t, "m", q) for t, q in workload.schedule(rate, seconds, salt)]
        outcome = summarize(rate, drive(runtime, arrivals, 4 * sla_s + 2.0), sla_s)
        time.sleep(0.2)  # let the queues empty between trials
        return outcome

    def trial(rate: float) -> bool:
        outcome = run(rate, cfg.trial_s)
        result.trials.append(outcome)
        log.info("%s: %.1f qps -> p99 %.1f ms (%d refused, %d dropped)", server, rate,
                 outcome.p99_ms, outcome.refused, outcome.dropped)
        return outcome.ok

    # Warm-up (discarded): first-op costs of every session thread, allocator and caches, and a
    # measured service rate for admission control.
    run(START_RATE, WARMUP_S)
    result.throughput_qps = round(highest_rate_within_sla(trial, cfg.bisections), 1)
    return result


# -- runs -------------------------------------------------------------------------------------


def throughput(cfg: ServeConfig) -> dict[str, Any]:
    results: dict[str, list[SearchResult]] = {}
    runtimes: dict[str, NodeRuntime] = {}
    threads = {s.name: s.threads for s in servers(cfg)}
    workload: Workload | None = None
    for s in servers(cfg):
        configure_cpu_threads(s.threads)  # a worker thread keeps what it saw at its first op
        runtime = NodeRuntime(s.backend(), s.config)
        runtime.apply(node_plan([seat(0, "m", cfg, s.sessions - 1, 0.0)]))
        if workload is None:
            workload = Workload(runtime.group("m").model.schema, cfg.seed)
        runtimes[s.name] = runtime
    assert workload is not None
    try:
        # Servers take turns within each repeat, so a busy machine hurts them alike.
        for repeat in range(cfg.repeats):
            for name, runtime in runtimes.items():
                configure_cpu_threads(threads[name])
                found = search(name, runtime, workload, cfg, salt=repeat)
                results.setdefault(name, []).append(found)
    finally:
        for runtime in runtimes.values():
            runtime.close()
    medians = {n: statistics.median(r.throughput_qps for r in rs) for n, rs in results.items()}
    ratio = {
        "gpufair/naive": medians["gpufair"] / max(medians["naive"], 1e-9),
        "gpufair/single-session": medians["gpufair"] / max(medians["single-session"], 1e-9),
    }
    return {
        "throughput_qps": medians,
        "ratios": {k: round(v, 2) for k, v in ratio.items()},
        "searches": {n: [asdict(r) for r in rs] for n, rs in results.items()},
    }


def isolation(cfg: ServeConfig, device_qps: float) -> dict[str, Any]:
    """The calm tenant's SLA attainment while the other floods, for gpufair and shared FIFO."""
    share = device_qps / 2
    calm_rate, flood_rate = cfg.calm_fraction * share, cfg.flood_factor * share
    config = SchedulerConfig(max_queue=256, batch_max_delay_s=0.0, max_batch_candidates=1024)
    configure_cpu_threads(1)
    layouts = {
        # A seat (base session) per tenant and equal weights in a pool of one session per core.
        "gpufair": (
            node_plan(
                [seat(0, "flood", cfg, 0, 1.0), seat(1, "calm", cfg, 0, 1.0)], pool=cfg.cores
            ),
            {"flood": "flood", "calm": "calm"},
        ),
        # The same number of sessions, one queue for both tenants.
        "shared-fifo": (
            node_plan([seat(0, "shared", cfg, 1 + cfg.cores, 0.0)]),
            {"flood": "shared", "calm": "shared"},
        ),
    }
    out: dict[str, Any] = {"calm_qps": round(calm_rate, 1), "flood_qps": round(flood_rate, 1)}
    for name, (layout, route) in layouts.items():
        runtime = NodeRuntime(RuntimeBackend(), config)
        runtime.apply(layout)
        workload = Workload(runtime.group(route["calm"]).model.schema, cfg.seed)
        calm = [(t, "calm", q) for t, q in workload.schedule(calm_rate, cfg.isolation_s, 1)]
        flood = [(t, "flood", q) for t, q in workload.schedule(flood_rate, cfg.isolation_s, 2)]
        merged = sorted(calm + flood, key=lambda a: a[0])
        routed = [(t, route[tenant], q) for t, tenant, q in merged]
        try:
            latencies = drive(runtime, routed, 4 * cfg.sla_ms / 1000 + 2.0)
        finally:
            runtime.close()
        sla_s = cfg.sla_ms / 1000
        per: dict[str, Any] = {}
        for tenant in ("calm", "flood"):
            mine = [lat for lat, a in zip(latencies, merged, strict=True) if a[1] == tenant]
            per[tenant] = asdict(summarize(calm_rate if tenant == "calm" else flood_rate,
                                           mine, sla_s))
        out[name] = per
        log.info("isolation %s: calm attainment %.3f", name, per["calm"]["attainment"])
    return out


# -- reporting ----------------------------------------------------------------------------------


def write_results(cfg: ServeConfig, data: dict[str, Any]) -> list[Path]:
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    base = cfg.out_dir / f"serve-{cfg.name}"
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    md_path = base.with_suffix(".md")
    md_path.write_text(markdown(data))
    png_path = base.with_suffix(".png")
    plot(data, png_path)
    return [json_path, md_path, png_path]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def markdown(data: dict[str, Any]) -> str:
    t, iso, m, c = data["throughput"], data["isolation"], data["machine"], data["config"]
    lines = [
        f"# gpufair bench serve ({c['name']})",
        "",
        f"Command: `{data['command']}`",
        "",
        describe_machine(m),
        "",
        f"Model: RMC2, `{c['artifact']}`; p99 SLA {c['sla_ms']:g} ms; load driven in-process; "
        f"{c['repeats']} search(es) per server, median reported.",
        "",
        "| server | latency-bounded throughput (qps) |",
        "|---|---|",
    ]
    lines += [f"| {name} | {qps:.1f} |" for name, qps in t["throughput_qps"].items()]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {name} | {value:.2f}× |" for name, value in t["ratios"].items()]
    lines += [
        "",
        f"Isolation: two tenants with equal shares; the flooder sends {iso['flood_qps']} qps "
        f"(5× its share), the calm tenant {iso['calm_qps']} qps.",
        "",
        "| server | calm tenant SLA attainment | calm p99 (ms) | flooder attainment |",
        "|---|---|---|---|",
    ]
    for name in ("gpufair", "shared-fifo"):
        calm, flood = iso[name]["calm"], iso[name]["flood"]
        lines.append(
            f"| {name} | {calm['attainment']:.3f} | {_ms(calm['p99_ms'])} | "
            f"{flood['attainment']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "∞" if value is None or not math.isfinite(value) else f"{value:.1f}"


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    qps = data["throughput"]["throughput_qps"]
    colors = {"gpufair": "tab:green", "single-session": "tab:blue", "naive": "tab:gray"}
    left.bar(list(qps), list(qps.values()), color=[colors[n] for n in qps])
    left.set_ylabel("latency-bounded throughput (qps)")
    left.set_title(f"RMC2, p99 ≤ {data['config']['sla_ms']:g} ms")
    for name, searches in data["throughput"]["searches"].items():
        trials = [t for s in searches for t in s["trials"]]
        rates = [t["rate"] for t in trials]
        p99 = [min(t["p99_ms"] or 1e4, 1e4) for t in trials]
        middle.scatter(rates, p99, label=name, s=14, color=colors[name])
    middle.axhline(data["config"]["sla_ms"], color="red", linestyle="--", label="SLA")
    middle.set_xscale("log")
    middle.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    middle.set_yscale("log")
    middle.set_xlabel("arrival rate (qps)")
    middle.set_ylabel("p99 latency (ms)")
    middle.set_title("search trials")
    middle.legend()
    iso = data["isolation"]
    names = ["gpufair", "shared-fifo"]
    right.bar(names, [iso[n]["calm"]["attainment"] for n in names], color=["tab:green", "tab:red"])
    right.axhline(0.99, color="black", linestyle="--", label="99%")
    right.set_ylim(0, 1.05)
    right.set_ylabel("calm tenant SLA attainment")
    right.set_title("isolation: other tenant floods at 5× share")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufair bench serve",
        description="Latency-bounded throughput of the executor against naive and single-session "
        "servers, and tenant isolation (docs/architecture.md §5).",
    )
    p.add_argument(
        "--http",
        action="store_true",
        help="measure over HTTP instead, against a naive FastAPI server and Ray Serve, with a "
        "load client in its own process (see `gpufair bench serve --http --help`)",
    )
    p.add_argument("--quick", action="store_true", help="short trials, one search (< 2 minutes)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument(
        "--sla-ms", type=positive_number, default=50.0, help="p99 latency bound (default 50)"
    )
    p.add_argument("--scale", type=float, default=0.01, help="RMC2 table rows (default 0.01)")
    p.add_argument("--user-tables", type=whole_number(0), default=28)
    p.add_argument("--cores", type=whole_number(1), default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=results_folder, default=RESULTS_DIR, help="results folder")
    return p


def main(argv: list[str]) -> int:
    if "--http" in argv:  # the same benchmark over the wire: bench/http.py
        from bench import http

        return http.main([a for a in argv if a != "--http"])
    args = _parser().parse_args(argv)
    if not 0 < args.scale <= 1:
        sys.stderr.write("gpufair bench serve: 0 < --scale ≤ 1\n")
        return 2
    quick = args.quick
    cfg = ServeConfig(
        name="quick" if quick else "full",
        scale=args.scale,
        user_tables=args.user_tables,
        sla_ms=args.sla_ms,
        trial_s=2.0 if quick else 3.5,
        bisections=3 if quick else 4,
        repeats=1 if quick else 3,
        isolation_s=4.0 if quick else 15.0,
        calm_fraction=0.5,
        flood_factor=5.0,
        cores=args.cores,
        seed=args.seed,
        out_dir=args.out,
        command="gpufair bench serve " + shlex.join(argv),
    )
    began = time.monotonic()
    info = this_machine(("torch",))
    tput = throughput(cfg)
    iso = isolation(cfg, tput["throughput_qps"]["gpufair"])
    data = {
        "command": cfg.command,
        "machine": info,
        "config": {**asdict(cfg), "artifact": cfg.artifact, "out_dir": str(cfg.out_dir)},
        "throughput": tput,
        "isolation": iso,
        "wall_s": round(time.monotonic() - began, 1),
    }
    paths = write_results(cfg, data)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    sys.stdout.write(markdown(data))
    sys.stdout.write("results: " + ", ".join(str(p) for p in paths) + "\n")
    return 0
