"""``gpufair bench gateway``: what ``gpufair gateway`` costs, and what it keeps, over the wire.

Everything is a process of its own, as deployed: the API (``gpufair serve``, SQLite), daemons in
API mode (``gpufair executor --backend fake``: each query sleeps the fake backend's service
time, so the machine's CPU goes to HTTP, which is what a router adds), ``gpufair gateway``, and
the open-loop load client of ``gpufair bench serve --http`` (:mod:`bench.loadclient`: Poisson
arrivals of the docs/architecture.md §5 query sizes, binary Open Inference Protocol bodies,
latency from each query's scheduled arrival), every query carrying its tenant's key.

1. Cost (one node, tenants ``calm`` and ``flood``, a seat each): the same offered load
   (``--rate``) sent straight to the daemon and through the gateway, in turns rotated every
   repetition; p50 and p99 of each, and the added p50. Then the latency-bounded throughput of
   each (:func:`bench.serve.highest_rate_within_sla`: p99 within ``--sla-ms``), and the ratio.
2. Isolation through the gateway, with credentials: ``calm`` sends half its share, ``flood``
   five times its share to its own model and, with its own key, its share again naming
   ``calm``'s model (to spend the calm tenant's share); a share is half the direct throughput
   found in 1. Reported: the calm tenant's queries answered within the SLA, and what the
   flooder's queries for the calm model were answered (403).
3. Failover (two nodes, one model with a replica on each): ``--failover-rate`` through the
   gateway; one daemon killed with SIGKILL after ``--kill-at-s``. Reported: when the gateway
   first held the daemon dead (its ``/healthz``), every query's fate, and the share answered
   among those scheduled after that moment.

Results: ``gateway[-quick].{json,md}`` under ``--out`` (default ``bench/results/``) with the
command, the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.http import summarize
from bench.loadclient import FAILED, LoadClient, Stream, TrialSpec, schedule
from bench.machine import describe_machine, load_average, this_machine
from bench.serve import START_RATE, WARMUP_S, highest_rate_within_sla
from executor.fake import FAKE_SCHEMA
from gpufair.inputs import positive_number, results_folder, whole_number
from gpufair.localcluster import INFER, LocalCluster, ModelWanted

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Config:
    trial_s: float
    repeats: int
    rate: float
    sla_ms: float
    bisections: int
    isolation_s: float
    failover_rate: float
    failover_s: float
    kill_at_s: float
    row_us: float
    batch_us: float
    seed: int
    out: Path
    command: str


def tenant_stream(c: LocalCluster, base: str, tenant: str, model_of: str, rate: float,
                  salt: int) -> Stream:
    """``tenant``'s queries, with its key, for the model of ``model_of``."""
    auth = (("Authorization", f"Bearer {c.keys[tenant]}"),)
    return Stream(base + INFER.format(model=c.models[model_of]), rate, salt, auth)


@contextmanager
def cluster(work: Path, cfg: Config, tenants: dict[str, int],
            nodes: int) -> Iterator[LocalCluster]:  # fmt: skip
    """The API, ``nodes`` fake daemons and the gateway (:mod:`gpufair.localcluster`)."""
    shutil.rmtree(work, ignore_errors=True)  # a fresh database, state and logs every run
    work.mkdir(parents=True)
    with ExitStack() as stack:
        running = LocalCluster(work, stack, row_us=cfg.row_us, batch_us=cfg.batch_us)
        running.start({t: ModelWanted(r, cfg.sla_ms) for t, r in tenants.items()}, nodes)
        yield running


def _trial(client: LoadClient, cfg: Config, streams: tuple[Stream, ...], seconds: float,
           salt: int = 0) -> Any:  # fmt: skip
    sla_s = cfg.sla_ms / 1000
    result = client.run(TrialSpec(streams, seconds, cfg.seed + salt, timeout_s=4 * sla_s + 2))
    time.sleep(0.3)  # the queues empty between trials
    return result


def cost(cfg: Config, client: LoadClient, c: LocalCluster) -> dict[str, Any]:
    """The same load straight to the daemon and through the gateway, in rotated turns."""
    node = c.serving[c.models["calm"]][0]
    bases = {"direct": c.daemons[node].url, "gateway": c.gateway_url()}
    sla_s = cfg.sla_ms / 1000
    warm = tuple(tenant_stream(c, b, "calm", "calm", START_RATE, 0) for b in bases.values())
    _trial(client, cfg, warm, WARMUP_S)
    fixed: dict[str, list[dict[str, Any]]] = {name: [] for name in bases}
    order = list(bases)
    for repeat in range(cfg.repeats):
        for name in order[repeat % 2 :] + order[: repeat % 2]:
            stream = tenant_stream(c, bases[name], "calm", "calm", cfg.rate, 1 + repeat)
            result = _trial(client, cfg, (stream,), cfg.trial_s, salt=repeat)
            fixed[name].append(asdict(summarize(cfg.rate, result.latencies[0], sla_s,
                                                result.client_cpu)))  # fmt: skip
            log.info("%s at %.0f qps: p50 %.2f ms p99 %.2f ms", name, cfg.rate,
                     fixed[name][-1]["p50_ms"], fixed[name][-1]["p99_ms"])  # fmt: skip
    p50 = {n: statistics.median(t["p50_ms"] for t in fixed[n]) for n in bases}
    throughput: dict[str, list[float]] = {name: [] for name in bases}
    for repeat in range(cfg.repeats):
        for name in order[repeat % 2 :] + order[: repeat % 2]:

            def holds(rate: float, base: str = bases[name], r: int = repeat) -> bool:
                result = _trial(client, cfg, (tenant_stream(c, base, "calm", "calm", rate, 7 + r),),
                                cfg.trial_s, salt=r)  # fmt: skip
                trial = summarize(rate, result.latencies[0], sla_s, result.client_cpu)
                log.info("%s search: %.1f qps -> p99 %.1f ms", base, rate, trial.p99_ms)
                return trial.ok

            throughput[name].append(round(highest_rate_within_sla(holds, cfg.bisections), 1))
    best = {n: statistics.median(v) for n, v in throughput.items()}
    return {
        "rate_qps": cfg.rate,
        "fixed_load": fixed,
        "p50_ms": p50,
        "added_p50_ms": p50["gateway"] - p50["direct"],
        "throughput_qps": throughput,
        "throughput_median_qps": best,
        "throughput_ratio": best["gateway"] / best["direct"] if best["direct"] else None,
    }


def isolation(cfg: Config, client: LoadClient, c: LocalCluster, share: float) -> dict[str, Any]:
    """Calm at half its share; the flooder at 5× its share on its model and at its share
    naming the calm model, all through the gateway with each tenant's own key."""
    sla_s = cfg.sla_ms / 1000
    base = c.gateway_url()
    streams = (
        tenant_stream(c, base, "calm", "calm", 0.5 * share, 11),
        tenant_stream(c, base, "flood", "flood", 5 * share, 12),
        tenant_stream(c, base, "flood", "calm", share, 13),
    )
    result = _trial(client, cfg, streams, cfg.isolation_s)
    calm = summarize(0.5 * share, result.latencies[0], sla_s, result.client_cpu)
    flood = summarize(5 * share, result.latencies[1], sla_s, result.client_cpu)
    stolen = result.latencies[2]
    return {
        "share_qps": round(share, 1),
        "calm": asdict(calm),
        "flood": asdict(flood),
        "flood_naming_calm": {"sent": len(stolen),
                              "answered_200": sum(x != FAILED and x == x for x in stolen)},
        "statuses": result.statuses,
    }  # fmt: skip


def failover(cfg: Config, client: LoadClient, c: LocalCluster) -> dict[str, Any]:
    """``--failover-rate`` through the gateway; one of the model's two daemons SIGKILLed."""
    model = c.models["ha"]
    victim = c.daemons[c.serving[model][0]]
    stream = tenant_stream(c, c.gateway_url(), "ha", "ha", cfg.failover_rate, 21)
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"] = _trial(client, cfg, (stream,), cfg.failover_s)

    runner = threading.Thread(target=run)
    runner.start()
    time.sleep(0.1 + cfg.kill_at_s)
    victim.kill()
    killed = time.time()
    seen = None
    while time.time() < killed + 10 and seen is None:
        if c.dead_seen(victim):
            seen = time.time()
        else:
            time.sleep(0.002)
    runner.join()
    result = outcome["result"]
    offsets = [t for t, _, _ in schedule(stream.rate, cfg.failover_s, cfg.seed, stream.salt)]
    latencies = result.latencies[0]
    scheduled = [result.began_at + t for t in offsets]
    after = [x for s, x in zip(scheduled, latencies, strict=True) if seen is not None and s >= seen]
    answered_after = sum(x == x and x != FAILED for x in after)
    return {
        "rate_qps": cfg.failover_rate,
        "queries": len(latencies),
        "answered": sum(x == x and x != FAILED for x in latencies),
        "statuses": result.statuses,
        "kill_at_s": round(killed - result.began_at, 3),
        "seen_dead_after_kill_s": None if seen is None else round(seen - killed, 3),
        "after_seen": len(after),
        "answered_after_seen": answered_after,
        "answered_after_seen_fraction": answered_after / len(after) if after else None,
    }


def _isolation_lines(i: dict[str, Any] | None) -> list[str]:
    """The isolation section; without a share (the direct path held the SLA at no rate), a
    line saying it was not run rather than a calm tenant at 0 % of nothing."""
    if i is None:
        return ["## Isolation through the gateway", "",
                "Not run: the direct path kept p99 within the SLA at no rate searched, so "
                "there was no share to flood.", ""]  # fmt: skip
    return [
        f"## Isolation through the gateway (share {i['share_qps']:g} qps)",
        "",
        f"Calm tenant at half its share: **{i['calm']['attainment']:.2%}** within the SLA "
        f"({i['calm']['queries']} queries, p99 {i['calm']['p99_ms']:.1f} ms). Flooder at 5× "
        f"its share: {i['flood']['answered']} of {i['flood']['queries']} answered, "
        f"{i['flood']['refused']} refused (429). Flooder naming the calm tenant's model with "
        f"its own key: {i['flood_naming_calm']['answered_200']} of "
        f"{i['flood_naming_calm']['sent']} answered (the rest 403). Statuses: {i['statuses']}.",
        "",
    ]


def markdown(data: dict[str, Any]) -> str:
    c, i, f = data["cost"], data["isolation"], data["failover"]
    lines = [
        "# gpufair gateway: cost, isolation and failover over the wire",
        "",
        f"Command: `{data['command']}`  ",
        f"{data['machine_text']} 1-minute load average {data['load_average'][0]:.2f} at the "
        f"start, {data['load_average_end'][0]:.2f} at the end.  ",
        "Daemons: `gpufair executor --backend fake` (API mode, credentials checked), the "
        "gateway and the API each a process; load from `bench.loadclient` in its own process, "
        "every query with its tenant's key.",
        "",
        f"## Cost at the same offered load ({c['rate_qps']:g} qps, medians of "
        f"{len(c['fixed_load']['direct'])} trials)",
        "",
        "| path | p50 ms | p99 ms (trials) | latency-bounded throughput qps (trials) |",
        "|---|---|---|---|",
    ]
    for name in ("direct", "gateway"):
        p99s = ", ".join(f"{t['p99_ms']:.2f}" for t in c["fixed_load"][name])
        qps = ", ".join(f"{q:g}" for q in c["throughput_qps"][name])
        lines.append(f"| {name} | {c['p50_ms'][name]:.2f} | {p99s} | "
                     f"{c['throughput_median_qps'][name]:g} ({qps}) |")  # fmt: skip
    ratio = c["throughput_ratio"]
    lines += [
        "",
        f"Added p50: **{c['added_p50_ms']:.2f} ms** (goal ≤ 1 ms). Throughput through the "
        f"gateway: **{ratio:.0%}** of direct (goal ≥ 90 %). The search grows the rate ×1.5 "
        "from 20 qps while p99 holds the SLA, then bisects between the last rate that held and "
        "the first that did not (`--bisections`), so two paths within one grid step read the "
        "same." if ratio is not None else "",
        "",
        *_isolation_lines(i),
        f"## Failover: one of two daemons SIGKILLed at {f['rate_qps']:g} qps",
        "",
        f"Killed {f['kill_at_s']:.2f} s into the run; the gateway held it dead "
        f"**{f['seen_dead_after_kill_s']} s** after the kill (goal ≤ 1 s). All queries: "
        f"{f['answered']} of {f['queries']} answered, statuses {f['statuses']} (0: no HTTP "
        f"answer). Scheduled after the death was seen: {f['answered_after_seen']} of "
        f"{f['after_seen']} answered.",
        "",
    ]
    return "\n".join(lines)


# What --quick changes, and the defaults it changes them from: a flag given explicitly wins
# either way, so the command recorded with the results is what was run.
QUICK: dict[str, float] = {"trial_s": 4.0, "repeats": 1, "bisections": 1, "isolation_s": 8.0}
FULL: dict[str, float] = {"trial_s": 5.0, "repeats": 3, "bisections": 3, "isolation_s": 20.0}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufair bench gateway",
        description="What gpufair gateway costs, and what it keeps, over the wire.",
    )
    p.add_argument("--quick", action="store_true",
                   help="short trials, one repetition: the defaults of --trial-s, --repeats, "
                        "--bisections and --isolation-s become "
                        + ", ".join(f"{v:g}" for v in QUICK.values()))
    p.add_argument("--trial-s", type=positive_number,
                   help=f"seconds of arrivals per trial (default {FULL['trial_s']:g})")
    p.add_argument("--repeats", type=whole_number(1),
                   help=f"repetitions of each trial (default {FULL['repeats']})")
    p.add_argument("--rate", type=positive_number, default=100.0,
                   help="the cost trials' offered qps")
    p.add_argument("--sla-ms", type=positive_number, default=100.0,
                   help="the models' p99 SLA: the throughput bound and the isolation target")
    p.add_argument("--bisections", type=whole_number(0),
                   help=f"halvings of the throughput search (default {FULL['bisections']})")
    p.add_argument("--isolation-s", type=positive_number,
                   help=f"seconds of the isolation run (default {FULL['isolation_s']:g})")
    p.add_argument("--failover-rate", type=positive_number, default=100.0)
    p.add_argument("--failover-s", type=positive_number, default=10.0,
                   help="seconds of arrivals of the failover run")
    p.add_argument("--kill-at-s", type=positive_number, default=4.0,
                   help="seconds into the failover run when a daemon is killed, below --failover-s")
    p.add_argument("--row-us", type=float, default=20.0, help="fake service time per row, µs")
    p.add_argument("--batch-us", type=float, default=500.0, help="fake time per batch, µs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=ROOT / "var" / "bench-gateway")
    p.add_argument("--out", type=results_folder, default=RESULTS_DIR,
                   help="results folder: gateway.{json,md} there, gateway-quick.* with --quick "
                        "(default bench/results)")  # fmt: skip
    return p


def _config(argv: list[str]) -> tuple[Config, Path]:
    """The run's configuration and its work folder; argparse's one-line error (SystemExit 2)
    for a flag out of range, before anything starts."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.kill_at_s >= args.failover_s:
        parser.error(f"--kill-at-s ({args.kill_at_s:g}) must be below --failover-s "
                     f"({args.failover_s:g}): a daemon killed after the arrivals end fails "
                     "nothing over")
    for flag, value in (("--row-us", args.row_us), ("--batch-us", args.batch_us)):
        if not (math.isfinite(value) and value >= 0):
            parser.error(f"{flag}: expected a number of at least 0, got {value:g}")
    defaults = QUICK if args.quick else FULL

    def chosen(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    config = Config(
        trial_s=chosen("trial_s"), repeats=chosen("repeats"), bisections=chosen("bisections"),
        isolation_s=chosen("isolation_s"), rate=args.rate, sla_ms=args.sla_ms,
        failover_rate=args.failover_rate, failover_s=args.failover_s,
        kill_at_s=args.kill_at_s, row_us=args.row_us, batch_us=args.batch_us, seed=args.seed,
        out=args.out / ("gateway-quick" if args.quick else "gateway"),
        command=shlex.join(["gpufair", "bench", "gateway", *argv]),
    )  # fmt: skip
    return config, args.work


def main(argv: list[str]) -> int:
    cfg, work = _config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started_load = load_average()
    data: dict[str, Any] = {"command": cfg.command, "load_average": started_load,
                            "config": {k: str(v) for k, v in asdict(cfg).items()}}  # fmt: skip
    machine = this_machine(["httpx", "uvicorn", "starlette"])
    data["machine"], data["machine_text"] = machine, describe_machine(machine)
    with LoadClient(FAKE_SCHEMA, seed=cfg.seed) as client:
        with cluster(work / "one-node", cfg, {"calm": 1, "flood": 1}, nodes=1) as c:
            data["cost"] = cost(cfg, client, c)
            share = data["cost"]["throughput_median_qps"]["direct"] / 2
            # No share to flood when the direct path held the SLA at no rate searched.
            data["isolation"] = isolation(cfg, client, c, share) if share > 0 else None
        with cluster(work / "two-nodes", cfg, {"ha": 2}, nodes=2) as c:
            data["failover"] = failover(cfg, client, c)
    data["load_average_end"] = load_average()
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    cfg.out.with_suffix(".md").write_text(markdown(data))
    sys.stdout.write(markdown(data))
    return 0
