"""``gpufair bench serve --http``: latency-bounded throughput and isolation over the wire.

What users get is what reaches them over HTTP, so every server here is a process of its own
and the load comes from another (:mod:`bench.loadclient`: open-loop Poisson arrivals of the
docs/architecture.md §5 query sizes, latency from each query's scheduled arrival, the
daemon's binary Open Inference Protocol bodies to ``/v2/models/{model}/infer``, parsed by the
project's own codec on every server). The client's CPU
use is reported beside every figure, and an echo server (no model) is driven at twice the
best rate found, to show the client and loopback were not the bottleneck.

Systems, each searched ``--repeats`` times, taking turns in an order rotated every repetition
so a busy spell of the shared machine falls on all of them alike; each is started for its
turn and stopped after it (no idle server shares the CPU with the one measured):

- ``gpufair``: the real daemon (``gpufair executor --plan``), one tenant on the whole node:
  one seat with ``--streams`` sessions (one per core on the CPU), the settings
  ``gpufair bench serve`` found best (no batching delay, batches of up to 1024 rows);
  ``gpufair-1`` / ``gpufair-N`` with ``--streams 1,N`` (one stream vs N per session group,
  for the GPU check);
- ``gpufair-inprocess``: the same scheduler driven in this process without HTTP
  (:func:`bench.serve.search`), the ceiling the wire is measured against (CPU only);
- ``naive``: :mod:`bench.peers.naive_fastapi`, one forward per query;
- ``ray``: :mod:`bench.peers.ray_serve`, tuned (``@serve.batch``, 2 replicas × 1 thread), run
  when ``--ray-python`` (default: this interpreter) can import ``ray.serve``.

The search is :mod:`bench.serve`'s: a warm-up at 20 qps (discarded), ×1.5 from 20 qps until
p99 breaks the SLA (a refused or failed query is a miss), then bisection.

Isolation: two tenants with equal shares, a share being half of gpufair's HTTP median; the
flooder sends ``--flood-factor`` (5) times its share and the calm tenant ``--calm-fraction``
of its share (0.5, as ``gpufair bench serve``), for ``--isolation-s`` seconds, each tenant
from a load client process of its own (two tenants are two clients: in one process the
flooder's megabyte writes delayed the calm tenant's sending, and that delay was charged to the
server); the calm tenant's queries within the SLA are reported for gpufair (a seat each and
equal weights in a pool of the cores left, one session per core in all) and for Ray Serve (one
deployment per tenant, one replica each).

Results: ``bench/results/serve-http[-quick].{json,md,png}`` with the command and the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from allocator.cluster.plan import NodePlan
from bench import serve as inproc
from bench.loadclient import LoadClient, Stream, TrialResult, TrialSpec
from bench.machine import describe_machine, load_average, session_niceness, this_machine
from bench.peers.common import INFER_PATH
from bench.serve import START_RATE, WARMUP_S, highest_rate_within_sla
from executor.models.schema import ModelSchema
from gpufair.inputs import positive_number, results_folder, whole_number
from gpufair.servers import ChildServer, ChildServerError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
START_TIMEOUT_S = 180.0  # a server's start: torch import and model load (Ray: its cluster too)
MODEL = "m"  # the one tenant's model id in the throughput runs


@dataclass(frozen=True)
class HttpConfig:
    name: str  # results go to serve-<name>.*
    scale: float
    user_tables: int
    sla_ms: float
    trial_s: float
    bisections: int
    repeats: int
    isolation_s: float
    isolation_repeats: int
    calm_fraction: float
    flood_factor: float
    cores: int
    device: str  # cpu or cuda
    streams: tuple[int, ...]  # sessions of gpufair's one seat; one system per entry
    systems: tuple[str, ...]  # which of gpufair, gpufair-inprocess, naive, ray to run
    ray_python: str
    clients: int  # load client processes
    share_qps: float  # > 0: only the isolation runs, with this share (no search)
    seed: int
    out_dir: Path
    command: str

    @property
    def artifact(self) -> str:
        return inproc.rmc2_artifact(self.scale, self.user_tables)

    @property
    def plan_device(self) -> str:
        return "cuda:0" if self.device == "cuda" else "cpu:0"


@dataclass
class HttpTrial:
    rate: float
    queries: int
    answered: int
    refused: int
    failed: int
    p50_ms: float
    p99_ms: float
    attainment: float  # fraction answered within the SLA
    ok: bool
    client_cpu: float  # cores the load client used over the trial


@dataclass
class HttpSearch:
    system: str
    repeat: int
    throughput_qps: float
    trials: list[HttpTrial] = field(default_factory=list)


def summarize(rate: float, latencies: list[float], sla_s: float, client_cpu: float) -> HttpTrial:
    raw = np.asarray(latencies, dtype=float)
    refused = int(np.isnan(raw).sum())
    values = np.sort(np.where(np.isnan(raw), math.inf, raw))
    answered = int(np.isfinite(values).sum())
    n = len(values)
    p99 = float(values[math.ceil(0.99 * n) - 1]) if n else math.inf
    p50 = float(values[math.ceil(0.5 * n) - 1]) if n else math.inf
    return HttpTrial(
        rate=round(rate, 2),
        queries=n,
        answered=answered,
        refused=refused,
        failed=n - answered - refused,
        p50_ms=p50 * 1000,
        p99_ms=p99 * 1000,
        attainment=float((values <= sla_s).mean()) if n else 0.0,
        ok=p99 <= sla_s,
        client_cpu=round(client_cpu, 3),
    )


# -- systems ----------------------------------------------------------------------------------


def daemon_plan(cfg: HttpConfig, seats: list[dict[str, Any]], pool: int) -> NodePlan:
    """The benchmark node's plan: one device (the CPU or cuda:0) with the seats given."""
    dedicated = sum(int(s.get("dedicated_streams", 0)) for s in seats)
    return NodePlan.from_dict(
        {
            "format": 1,
            "node": "bench",
            "version": 1,
            "devices": [
                {
                    "device": cfg.plan_device,
                    "kind": "gpu" if cfg.device == "cuda" else "cpu",
                    "streams": len(seats) + dedicated + pool,
                    "shared_pool_streams": pool,
                    "seats": seats,
                }
            ],
        }
    )


def gpufair_daemon(cfg: HttpConfig, plan: NodePlan, work: Path, name: str) -> ChildServer:
    """``gpufair executor --plan`` with the settings ``gpufair bench serve`` found best."""
    path = work / f"{name}-plan.json"
    path.write_text(json.dumps(plan.to_dict()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
    env.update(
        GPUFAIR_EXECUTOR_BATCH_MAX_DELAY_MS="0",
        GPUFAIR_EXECUTOR_MAX_BATCH_CANDIDATES="1024",
        GPUFAIR_EXECUTOR_MAX_QUEUE="4096",
        PYTHONPATH=str(ROOT),
    )
    return ChildServer(
        name,
        ["executor", "--plan", str(path), "--device", cfg.device, "--host", "127.0.0.1"],
        log_path=work / f"{name}.log",
        env=env,
        cwd=ROOT,
    )


def peer(
    cfg: HttpConfig, module: str, args: list[str], work: Path, name: str, python: str
) -> ChildServer:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
    env["PYTHONPATH"] = str(ROOT)
    return ChildServer(
        name,
        args,
        log_path=work / f"{name}.log",
        env=env,
        cwd=ROOT,
        command=[python, "-m", module],
    )


@functools.cache
def ray_unavailable_because(python: str) -> str | None:
    """None when ``python`` can import Ray Serve and gpufair's runtime (its peer serves gpufair's
    model); otherwise why not, in one line: the import error's last line, which says whether
    Ray or gpufair's own dependencies (its virtualenv's path to gpufair's) are missing. Asked
    once per interpreter and run: the throughput searches and the isolation run both need it,
    and importing Ray takes seconds."""
    try:
        done = subprocess.run(
            [python, "-c", "import ray.serve, executor.runtime"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def gpufair_name(cfg: HttpConfig, sessions: int) -> str:
    return "gpufair" if len(cfg.streams) == 1 else f"gpufair-{sessions}"


def http_systems(cfg: HttpConfig, work: Path) -> dict[str, Callable[[], ChildServer]]:
    """The systems served over HTTP, each a factory of its (not yet started) server."""
    systems: dict[str, Callable[[], ChildServer]] = {}
    if "gpufair" in cfg.systems:
        for sessions in cfg.streams:
            name = gpufair_name(cfg, sessions)
            plan = daemon_plan(cfg, [inproc.seat(0, MODEL, cfg, sessions - 1, 0.0)], pool=0)
            systems[name] = functools.partial(gpufair_daemon, cfg, plan, work, name)
    if "naive" in cfg.systems:
        naive = ["--artifact", cfg.artifact, "--threads", str(cfg.cores), "--device", cfg.device]
        systems["naive"] = functools.partial(
            peer, cfg, "bench.peers.naive_fastapi", naive, work, "naive", sys.executable
        )
    if "ray" in cfg.systems:
        missing = ray_unavailable_because(cfg.ray_python)
        if missing is None:
            ray = ["--artifact", cfg.artifact, "--models", MODEL, "--replicas", "2",
                   "--cpus", str(cfg.cores)]  # fmt: skip
            systems["ray"] = functools.partial(
                peer, cfg, "bench.peers.ray_serve", ray, work, "ray", cfg.ray_python
            )
        else:
            log.warning(
                "ray: %s cannot import ray.serve and gpufair's runtime (%s); Ray Serve is left out",
                cfg.ray_python,
                missing,
            )
    return systems


@contextmanager
def serving(factory: Callable[[], ChildServer]) -> Iterator[ChildServer]:
    server = factory()
    server.start()
    try:
        try:
            server.wait_healthy(START_TIMEOUT_S)
        except ChildServerError as exc:
            raise ChildServerError(f"{exc}\n{server.tail()}") from exc
        yield server
    finally:
        server.stop(timeout_s=30)


# -- search -----------------------------------------------------------------------------------


def search(
    system: str,
    run: Callable[[float, float], HttpTrial],
    cfg: HttpConfig,
    repeat: int,
) -> HttpSearch:
    """bench.serve's search: warm up, grow ×GROWTH from START_RATE while p99 holds, bisect."""
    result = HttpSearch(system, repeat, 0.0)

    def trial(rate: float) -> bool:
        outcome = run(rate, cfg.trial_s)
        result.trials.append(outcome)
        log.info(
            "%s: %.1f qps -> p99 %.1f ms (%d refused, %d failed; client %.2f cores)",
            system,
            rate,
            outcome.p99_ms,
            outcome.refused,
            outcome.failed,
            outcome.client_cpu,
        )
        return outcome.ok

    run(START_RATE, WARMUP_S)
    result.throughput_qps = round(highest_rate_within_sla(trial, cfg.bisections), 1)
    return result


def over_http(
    client: LoadClient, url: str, cfg: HttpConfig, salt: int
) -> Callable[[float, float], HttpTrial]:
    sla_s = cfg.sla_ms / 1000

    def run(rate: float, seconds: float) -> HttpTrial:
        spec = TrialSpec((Stream(url, rate, salt),), seconds, cfg.seed, timeout_s=4 * sla_s + 2)
        result = client.run(spec)
        time.sleep(0.3)  # let the server's queues empty between trials
        return summarize(rate, result.latencies[0], sla_s, result.client_cpu)

    return run


def in_process(cfg: HttpConfig) -> Callable[[int], HttpSearch]:
    """The gpufair scheduler driven in this process (bench.serve), for the same search."""
    from executor.runtime import configure_cpu_threads
    from executor.scheduling import NodeRuntime, SchedulerConfig
    from executor.scheduling.backend import RuntimeBackend

    serve_cfg = inproc.ServeConfig(
        name="http",
        scale=cfg.scale,
        user_tables=cfg.user_tables,
        sla_ms=cfg.sla_ms,
        trial_s=cfg.trial_s,
        bisections=cfg.bisections,
        repeats=1,
        isolation_s=0,
        calm_fraction=cfg.calm_fraction,
        flood_factor=cfg.flood_factor,
        cores=cfg.cores,
        seed=cfg.seed,
        out_dir=cfg.out_dir,
        command="",
    )

    def run_search(repeat: int) -> HttpSearch:
        configure_cpu_threads(1)
        config = SchedulerConfig(max_queue=4096, batch_max_delay_s=0.0, max_batch_candidates=1024)
        runtime = NodeRuntime(RuntimeBackend(), config)
        runtime.apply(inproc.node_plan([inproc.seat(0, "m", serve_cfg, cfg.cores - 1, 0.0)]))
        try:
            workload = inproc.Workload(runtime.group("m").model.schema, cfg.seed)
            found = inproc.search("gpufair-inprocess", runtime, workload, serve_cfg, salt=repeat)
        finally:
            runtime.close()
        trials = [
            HttpTrial(
                t.rate,
                t.queries,
                t.answered,
                t.refused,
                t.dropped,
                math.nan,
                t.p99_ms,
                t.attainment,
                t.ok,
                0.0,
            )
            for t in found.trials
        ]
        return HttpSearch("gpufair-inprocess", repeat, found.throughput_qps, trials)

    return run_search


def throughput(cfg: HttpConfig, client: LoadClient, work: Path) -> dict[str, Any]:
    systems = http_systems(cfg, work)
    order: list[str] = list(systems)
    inproc = in_process(cfg) if "gpufair-inprocess" in cfg.systems else None
    if inproc is not None:
        order.append("gpufair-inprocess")
    searches: dict[str, list[HttpSearch]] = {name: [] for name in order}
    for repeat in range(cfg.repeats):
        turn = order[repeat % len(order) :] + order[: repeat % len(order)]
        for name in turn:
            if name == "gpufair-inprocess":
                assert inproc is not None
                searches[name].append(inproc(repeat))
                continue
            with serving(systems[name]) as server:
                url = server.url + INFER_PATH.format(model=MODEL)
                searches[name].append(
                    search(name, over_http(client, url, cfg, repeat), cfg, repeat)
                )
            log.info("%s, repeat %d: %.1f qps", name, repeat, searches[name][-1].throughput_qps)
    medians = {n: statistics.median(s.throughput_qps for s in ss) for n, ss in searches.items()}
    ranges = {
        n: [min(s.throughput_qps for s in ss), max(s.throughput_qps for s in ss)]
        for n, ss in searches.items()
    }
    return {
        "order": order,
        "throughput_qps": medians,
        "range_qps": ranges,
        "ratios": ratios(medians, cfg),
        "searches": {n: [asdict(s) for s in ss] for n, ss in searches.items()},
    }


def ratios(medians: dict[str, float], cfg: HttpConfig) -> dict[str, float]:
    best = gpufair_name(cfg, max(cfg.streams))
    out: dict[str, float] = {}
    if best not in medians:
        return out
    for other in ("gpufair-inprocess", "ray", "naive", gpufair_name(cfg, min(cfg.streams))):
        if other in medians and other != best:
            out[f"{best}/{other}"] = round(medians[best] / max(medians[other], 1e-9), 2)
    return out


def client_check(cfg: HttpConfig, client: LoadClient, work: Path, rate: float) -> dict[str, Any]:
    """The echo server (no model) at ``rate``: what the client and loopback carry."""

    def factory() -> ChildServer:
        return peer(cfg, "bench.peers.echo", [], work, "echo", sys.executable)

    with serving(factory) as server:
        run = over_http(client, server.url + INFER_PATH.format(model=MODEL), cfg, salt=99)
        run(START_RATE, WARMUP_S)
        trial = run(rate, cfg.trial_s)
    log.info(
        "echo at %.1f qps: p99 %.1f ms, client %.2f cores", rate, trial.p99_ms, trial.client_cpu
    )
    return asdict(trial)


# -- isolation --------------------------------------------------------------------------------


def isolation(cfg: HttpConfig, client: LoadClient, work: Path, share: float) -> dict[str, Any]:
    """The calm tenant beside the flooder, each system in turn; ``share`` is a tenant's share
    in qps (half of gpufair's HTTP median, or ``--share-qps``); ``client`` has a process per
    tenant."""
    calm_rate, flood_rate = cfg.calm_fraction * share, cfg.flood_factor * share
    sla_s = cfg.sla_ms / 1000
    systems: dict[str, Callable[[], ChildServer]] = {}
    if "gpufair" in cfg.systems:
        seats = [inproc.seat(0, "flood", cfg, 0, 1.0), inproc.seat(1, "calm", cfg, 0, 1.0)]
        # On the CPU, one session per core in all, as in the throughput runs: a seat each and
        # a shared pool of the cores left (none on 2 cores). Sessions beyond the cores only
        # time-slice them, and over HTTP they take the CPU the fronts need: with a pool of one
        # session per core on top of the seats (4 sessions on 2 cores, in-process bench
        # serve's plan), a flooder's batches kept every core busy and the front's queue,
        # every tenant's, grew. On a GPU: a pool of the most streams a seat gets in the
        # throughput runs.
        pool = max(0, cfg.cores - len(seats)) if cfg.device == "cpu" else max(cfg.streams)
        plan = daemon_plan(cfg, seats, pool=pool)
        systems["gpufair"] = functools.partial(gpufair_daemon, cfg, plan, work, "gpufair-isolation")
    if "ray" in cfg.systems and ray_unavailable_because(cfg.ray_python) is None:
        args = [
            "--artifact",
            cfg.artifact,
            "--models",
            "flood,calm",
            "--replicas",
            "1",
            "--cpus",
            str(cfg.cores),
        ]
        systems["ray"] = functools.partial(
            peer, cfg, "bench.peers.ray_serve", args, work, "ray-isolation", cfg.ray_python
        )
    out: dict[str, Any] = {
        "calm_qps": round(calm_rate, 1),
        "flood_qps": round(flood_rate, 1),
        "share_qps": round(share, 1),
        "runs": {},
    }
    order = list(systems)
    for repeat in range(cfg.isolation_repeats):
        turn = order[repeat % len(order) :] + order[: repeat % len(order)] if order else []
        for name in turn:
            with serving(systems[name]) as server:
                streams = (
                    Stream(
                        server.url + INFER_PATH.format(model="calm"), calm_rate, 1 + 10 * repeat
                    ),
                    Stream(
                        server.url + INFER_PATH.format(model="flood"), flood_rate, 2 + 10 * repeat
                    ),
                )
                warm = TrialSpec(
                    tuple(Stream(s.url, START_RATE / 2, 0) for s in streams),
                    WARMUP_S,
                    cfg.seed,
                    4 * sla_s + 2,
                )
                client.run(warm)
                time.sleep(0.3)
                trial = TrialSpec(streams, cfg.isolation_s, cfg.seed, 4 * sla_s + 2, by_stream=True)
                result = client.run(trial)
            run = isolation_run(result, calm_rate, flood_rate, sla_s)
            out["runs"].setdefault(name, []).append(run)
            log.info(
                "isolation %s, repeat %d: calm within SLA %.3f",
                name,
                repeat,
                run["calm"]["attainment"],
            )
    out["calm_attainment"] = {
        name: statistics.median(r["calm"]["attainment"] for r in runs)
        for name, runs in out["runs"].items()
    }
    return out


def isolation_run(result: TrialResult, calm: float, flood: float, sla_s: float) -> dict[str, Any]:
    return {
        "calm": asdict(summarize(calm, result.latencies[0], sla_s, result.client_cpu)),
        "flood": asdict(summarize(flood, result.latencies[1], sla_s, result.client_cpu)),
        "statuses": result.statuses,
    }


# -- reporting --------------------------------------------------------------------------------


def write_results(cfg: HttpConfig, data: dict[str, Any]) -> list[Path]:
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    base = cfg.out_dir / f"serve-{cfg.name}"
    paths = [base.with_suffix(".json"), base.with_suffix(".md"), base.with_suffix(".png")]
    paths[0].write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    paths[1].write_text(markdown(data))
    plot(data, paths[2])
    return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _ms(value: float | None) -> str:
    return "∞" if value is None or not math.isfinite(value) else f"{value:.1f}"


def _max_client_cpu(searches: list[dict[str, Any]]) -> float:
    return max((t["client_cpu"] for s in searches for t in s["trials"]), default=0.0)


def markdown(data: dict[str, Any]) -> str:
    t, c, m = data["throughput"], data["config"], data["machine"]
    lines = [
        f"# gpufair bench serve --http ({c['name']})",
        "",
        f"Command: `{data['command']}`",
        "",
        describe_machine(m),
        "",
        f"Model: RMC2, `{c['artifact']}` on `{c['device']}`; p99 SLA {c['sla_ms']:g} ms; "
        "open-loop Poisson load from a client process of its own, binary Open Inference "
        f"Protocol bodies of {data['mean_body_bytes'] / 1e6:.2f} MB on average, parsed by "
        "gpufair's codec on every server.",
    ]
    if t is not None:
        lines += [
            "",
            f"Each system searched {c['repeats']} time(s), taking turns in the order "
            f"{', '.join(t['order'])} rotated each repetition; median (range).",
            "",
            "| system | latency-bounded throughput (qps) | range | client CPU at most (cores) |",
            "|---|---|---|---|",
        ]
        for name, qps in t["throughput_qps"].items():
            low, high = t["range_qps"][name]
            client = (
                "in-process"
                if name == "gpufair-inprocess"
                else (f"{_max_client_cpu(t['searches'][name]):.2f}")
            )
            lines.append(f"| {name} | {qps:.1f} | {low:.1f}–{high:.1f} | {client} |")
        if t["ratios"]:
            lines += ["", "| ratio of medians | value |", "|---|---|"]
            lines += [f"| {k} | {v:.2f}× |" for k, v in t["ratios"].items()]
    echo = data.get("client_check")
    if echo:
        lines += [
            "",
            f"Client check: against an echo server (no model) at {echo['rate']:.1f} qps, twice "
            f"the best rate found, p99 {_ms(echo['p99_ms'])} ms, {echo['attainment']:.3f} within "
            f"SLA, the client using {echo['client_cpu']:.2f} cores.",
        ]
    iso = data.get("isolation")
    if iso and iso["runs"]:
        lines += [
            "",
            f"Isolation: two tenants with equal shares ({iso['share_qps']} qps each, "
            f"{'given' if c['share_qps'] else 'half of gpufair' + chr(39) + 's HTTP median'}); "
            f"the flooder sends {iso['flood_qps']} qps ({c['flood_factor']:g}× its share), "
            f"the calm tenant {iso['calm_qps']} qps, for {c['isolation_s']:g} s, each tenant "
            f"from a load client process of its own; {c['isolation_repeats']} run(s) each, "
            "median.",
            "",
            "| system | calm tenant within SLA | calm p50 / p99 (ms) | calm refused / failed "
            "| flooder within SLA | flooder refused |",
            "|---|---|---|---|---|---|",
        ]
        for name, runs in iso["runs"].items():
            mid = sorted(runs, key=lambda r: r["calm"]["attainment"])[len(runs) // 2]
            calm, flood = mid["calm"], mid["flood"]
            each = ", ".join(f"{r['calm']['attainment']:.3f}" for r in runs)
            lines.append(
                f"| {name} | {iso['calm_attainment'][name]:.3f} ({each}) | "
                f"{_ms(calm['p50_ms'])} / {_ms(calm['p99_ms'])} | {calm['refused']} / "
                f"{calm['failed']} of {calm['queries']} | {flood['attainment']:.3f} | "
                f"{flood['refused']} of {flood['queries']} |"
            )
    elif iso is None:
        lines += ["", "Isolation: not run, as gpufair served no rate within the SLA here."]
    end = ", ".join(f"{x:g}" for x in data.get("load_average_end", []))
    lines += ["", f"Wall time {data['wall_s']:.0f} s; load average at the end {end}."]
    if data.get("niceness"):
        session = data.get("session_niceness")
        lines += [
            f"Run at niceness {data['niceness']}, which every server, peer and load client "
            "inherited, so that other jobs on the shared machine took less of its CPU"
            + (
                f"; its session's niceness (the kernel's autogroup, which weighs it against other "
                f"sessions) was {session} for the run."
                if session is not None
                else "."
            )
        ]
    return "\n".join(lines) + "\n"


def throughput_panels(data: dict[str, Any], left: Any, middle: Any) -> None:
    t = data["throughput"]
    names = list(t["throughput_qps"])
    medians = [t["throughput_qps"][n] for n in names]
    errors = np.array(
        [
            [m - t["range_qps"][n][0], t["range_qps"][n][1] - m]
            for n, m in zip(names, medians, strict=True)
        ]
    ).T
    left.bar(names, medians, yerr=errors, capsize=4, color="tab:green")
    left.set_ylabel("latency-bounded throughput (qps)")
    left.set_title(f"over HTTP, p99 ≤ {data['config']['sla_ms']:g} ms")
    left.tick_params(axis="x", rotation=20)
    for name, searches in t["searches"].items():
        trials = [x for s in searches for x in s["trials"]]
        middle.scatter(
            [x["rate"] for x in trials],
            [min(x["p99_ms"] or 1e4, 1e4) for x in trials],
            s=12,
            label=name,
        )
    middle.axhline(data["config"]["sla_ms"], color="red", linestyle="--", label="SLA")
    middle.set_xscale("log")
    middle.set_yscale("log")
    middle.set_xlabel("arrival rate (qps)")
    middle.set_ylabel("p99 latency (ms)")
    middle.set_title("search trials")
    middle.legend(fontsize=8)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = data["throughput"]
    if t is None:  # the isolation runs only
        fig, right = plt.subplots(1, 1, figsize=(5, 4.2))
    else:
        fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
        throughput_panels(data, left, middle)
    iso = data.get("isolation") or {}
    attained = iso.get("calm_attainment", {})
    right.bar(list(attained), list(attained.values()), color="tab:blue")
    right.axhline(0.99, color="black", linestyle="--", label="99 %")
    right.set_ylim(0, 1.05)
    right.set_ylabel("calm tenant within SLA")
    flood_factor = data["config"]["flood_factor"]
    right.set_title(f"isolation: the other tenant sends {flood_factor:g}× its share")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------

SYSTEMS = ("gpufair", "gpufair-inprocess", "naive", "ray")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufair bench serve --http",
        description="Latency-bounded throughput and tenant isolation over HTTP: the gpufair "
        "daemon, the same scheduler in-process, a naive FastAPI server and Ray Serve, each "
        "a process of its own, driven by an open-loop load client in another "
        "(docs/benchmarks.md).",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: short trials, one search each, no Ray, a short isolation "
        "run (about 2 minutes on 2 cores)",
    )
    p.add_argument(
        "--sla-ms", type=positive_number, default=50.0, help="p99 latency bound (default 50)"
    )
    p.add_argument("--scale", type=float, default=0.01, help="RMC2 table rows (default 0.01)")
    p.add_argument("--user-tables", type=whole_number(0), default=28)
    p.add_argument(
        "--cores",
        type=int,
        default=os.cpu_count() or 1,
        help="sessions of gpufair on the CPU, threads of the naive server",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--streams",
        default="",
        help="comma-separated sessions of gpufair's seat, one system each, e.g. 1,4 "
        "(default: --cores)",
    )
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"which to run, of {', '.join(SYSTEMS)} (default: all)",
    )
    p.add_argument(
        "--repeats", type=whole_number(1), help="searches per system (default 3; quick 1)"
    )
    p.add_argument(
        "--isolation-s",
        type=positive_number,
        help="seconds of the isolation run (default 15; quick 4)",
    )
    p.add_argument(
        "--calm-fraction",
        type=positive_number,
        default=0.5,
        help="the calm tenant's rate as a fraction of its share (default 0.5)",
    )
    p.add_argument(
        "--flood-factor",
        type=positive_number,
        default=5.0,
        help="the flooder's rate as a multiple of its share (default 5; 1 or less: a "
        "tenant within its share beside the calm one, the isolation runs' baseline)",
    )
    p.add_argument(
        "--ray-python",
        default=sys.executable,
        help="interpreter that can import ray.serve (bench/peers/requirements-ray.txt)",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=1,
        help="load client processes sharing the schedule (default 1)",
    )
    p.add_argument(
        "--share-qps",
        type=positive_number,
        help="run only the isolation scenario, with this share per tenant in qps, in place "
        "of half of gpufair's HTTP median (no throughput search, no client check)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=results_folder, default=RESULTS_DIR, help="results folder")
    p.add_argument("--name", help="results go to serve-NAME.* (default http, quick: http-quick)")
    return p


def _config(args: argparse.Namespace, argv: list[str]) -> HttpConfig:
    systems = tuple(s for s in args.systems.split(",") if s)
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"--systems: unknown {', '.join(unknown)}; choose of {', '.join(SYSTEMS)}")
    default = args.systems == ",".join(SYSTEMS)
    if args.quick and default:
        systems = tuple(s for s in systems if s != "ray")
    if args.device == "cuda" and "gpufair-inprocess" in systems:
        if not default:
            raise ValueError("--systems: gpufair-inprocess runs on the CPU only")
        systems = tuple(s for s in systems if s != "gpufair-inprocess")
    try:
        streams = tuple(int(s) for s in args.streams.split(",") if s) or (args.cores,)
    except ValueError:
        raise ValueError(f"--streams: expected numbers like 1,4, got {args.streams!r}") from None
    if args.sla_ms <= 0 or not 0 < args.scale <= 1 or min(args.cores, args.clients, *streams) < 1:
        raise ValueError("--sla-ms > 0, 0 < --scale ≤ 1, --cores, --clients and --streams ≥ 1")
    if shutil.which(args.ray_python) is None:
        # Found missing only when Ray's turn came, minutes into the run, it left Ray out.
        raise ValueError(f"--ray-python: {args.ray_python}: no such interpreter")
    quick = args.quick
    return HttpConfig(
        name=args.name or ("http-quick" if quick else "http"),
        scale=args.scale,
        user_tables=args.user_tables,
        sla_ms=args.sla_ms,
        trial_s=1.5 if quick else 3.0,
        bisections=1 if quick else 3,
        repeats=args.repeats or (1 if quick else 3),
        isolation_s=args.isolation_s or (4.0 if quick else 15.0),
        isolation_repeats=1 if quick else (args.repeats or 3),
        calm_fraction=args.calm_fraction,
        flood_factor=args.flood_factor,
        cores=args.cores,
        device=args.device,
        streams=streams,
        systems=systems,
        ray_python=args.ray_python,
        clients=args.clients,
        share_qps=args.share_qps or 0.0,
        seed=args.seed,
        out_dir=args.out,
        command="gpufair bench serve --http " + shlex.join(argv),
    )


def measure(
    cfg: HttpConfig, client: LoadClient, work: Path, schema: ModelSchema
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
    """The throughput searches, the client check and the isolation runs (only the last with
    ``--share-qps``)."""

    def tenants(share: float) -> dict[str, Any]:
        with LoadClient(schema, cfg.seed, processes=2) as per_tenant:
            return isolation(cfg, per_tenant, work, share)

    if cfg.share_qps:
        return None, None, tenants(cfg.share_qps)
    tput = throughput(cfg, client, work)
    http_best = max(
        (q for n, q in tput["throughput_qps"].items() if n != "gpufair-inprocess"),
        default=START_RATE,
    )
    check = client_check(cfg, client, work, 2 * max(http_best, START_RATE))
    best = gpufair_name(cfg, max(cfg.streams))
    # No share to flood without a rate gpufair serves within the SLA.
    qps = tput["throughput_qps"].get(best, 0)
    return tput, check, tenants(qps / 2) if qps > 0 else None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = _config(args, argv)
    except ValueError as exc:
        sys.stderr.write(f"gpufair bench serve --http: {exc}\n")
        return 2
    from executor.models import build_model, parse_zoo_artifact

    schema = build_model(parse_zoo_artifact(cfg.artifact)).schema
    began = time.monotonic()
    info = this_machine(("torch", "fastapi", "uvicorn", "starlette"))
    with (
        tempfile.TemporaryDirectory(prefix="gpufair-bench-http-") as tmp,
        session_niceness() as session_nice,
        LoadClient(schema, cfg.seed, cfg.clients) as client,
    ):
        work = Path(tmp)
        try:
            tput, check, iso = measure(cfg, client, work, schema)
        except ChildServerError as exc:
            sys.stderr.write(f"gpufair bench serve --http: {exc}\n")
            return 1
    data = {
        "command": cfg.command,
        "machine": info,
        "config": {**asdict(cfg), "artifact": cfg.artifact, "out_dir": str(cfg.out_dir)},
        "mean_body_bytes": client.mean_body_bytes,
        "throughput": tput,
        "client_check": check,
        "isolation": iso,
        "wall_s": round(time.monotonic() - began, 1),
        "load_average_end": load_average(),
        # Every server and load client inherits it (e.g. nice -n -10 on a shared machine).
        "niceness": os.nice(0),
        # And the session's (its autogroup's), which weighs all of them against other sessions.
        "session_niceness": session_nice,
    }
    paths = write_results(cfg, data)
    sys.stdout.write(markdown(data))
    sys.stdout.write("results: " + ", ".join(str(p) for p in paths) + "\n")
    return 0
