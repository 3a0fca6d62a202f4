"""``gpufair bench api``: the control plane's latency where it matters (docs/architecture.md §5).

Two measurements against a real ``gpufair serve`` in a subprocess on loopback:

- **Plan reads** — ``GET /v1/nodes/{node}/plan``, the request every node daemon repeats.
  Open-loop: requests are scheduled with exponential gaps at the target rate (seeded), sent
  whether or not earlier ones have returned, and each latency is measured from its *scheduled*
  time, so a stalled server cannot hide its queueing (no coordinated omission). Reported as
  p50/p90/p99/max for full plan bodies (200) and for revalidations (``If-None-Match`` → 304).
- **Solve** — ``POST /v1/allocations`` for T tenants × G GPUs (64 × 64 by default): the
  wall time of the request, snapshot, solve, certificate check and store included.

Results go to ``bench/results/api-plan.{json,md}`` and ``bench/results/api-solve.{json,md}``,
each with the command that produced it and the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx

from bench.machine import describe_machine, this_machine
from gpufair.servers import ChildServer

ADMIN_TOKEN = "bench-admin-token-7f3a9c"
ARCHITECTURES = ("rmc1", "rmc2", "rmc3", "wnd", "din")
RESULTS = Path(__file__).resolve().parent / "results"
STARTUP_TIMEOUT_S = 60.0


def _serve(database_url: str, workdir: Path, name: str) -> ChildServer:
    """``gpufair serve`` in a child process on a database of its own (not started yet)."""
    env = {
        **os.environ,
        "GPUFAIR_DATABASE_URL": database_url,
        "GPUFAIR_API_ADMIN_TOKEN": ADMIN_TOKEN,
        "GPUFAIR_API_DEV_MODE": "true",
        "GPUFAIR_ALLOCATOR_TIME_LIMIT_S": "8",
    }
    env.pop("GPUFAIR_CONFIG", None)
    return ChildServer(
        f"gpufair serve ({name})",
        ["serve", "--no-access-log", "--log-level", "warning"],
        log_path=workdir / f"serve-{name}.log",
        env=env,
        cwd=workdir,
    )


def _populate(
    client: httpx.Client,
    *,
    tenants: int,
    gpus: int,
    gpus_per_node: int,
    seed: int,
    criteria: tuple[str, ...],
) -> dict[str, str]:
    """Register tenants (two models each) and nodes; return node name -> token."""
    rng = random.Random(seed)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for t in range(tenants):
        r = client.post(
            "/v1/tenants",
            json={
                "name": f"tenant-{t:03d}",
                "weight": rng.choice([1, 1, 2]),
                "criterion": criteria[t % len(criteria)],
            },
            headers=admin,
        )
        r.raise_for_status()
        key = client.post(f"/v1/tenants/{r.json()['id']}/keys", headers=admin).json()["key"]
        for m in range(2):
            arch = rng.choice(ARCHITECTURES)
            body = {
                "name": f"model-{m}",
                "artifact": f"zoo:{arch}?scale=0.1&seed={rng.randrange(1000)}",
                "memory_mb": rng.choice([2000, 4000, 8000]),
                "replicas_wanted": rng.randint(1, 3),
                "sla_p99_ms": rng.choice([10.0, 20.0, 50.0]),
                "demand_qps": float(rng.randrange(200, 5000, 100)),
            }
            client.post(
                "/v1/models", json=body, headers={"Authorization": f"Bearer {key}"}
            ).raise_for_status()
    tokens: dict[str, str] = {}
    for n in range((gpus + gpus_per_node - 1) // gpus_per_node):
        count = min(gpus_per_node, gpus - n * gpus_per_node)
        devices = [
            {"device": f"cuda:{k}", "kind": "gpu", "memory_mb": 40000, "streams": 8, "seats": 4}
            for k in range(count)
        ]
        r = client.post(
            "/v1/nodes", json={"name": f"node-{n:03d}", "devices": devices}, headers=admin
        )
        r.raise_for_status()
        tokens[r.json()["name"]] = r.json()["token"]
    return tokens


def _percentiles(latencies_s: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_s)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1] * 1000,
        "count": len(ordered),
    }


class _Connection:
    """One keep-alive HTTP/1.1 connection, spoken by hand.

    The load generator must cost far less than the server it measures, on the same machine:
    a minimal client over asyncio streams costs a fraction of a general one like httpx.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def get(self, path: str, headers: dict[str, str]) -> int:
        lines = [f"GET {path} HTTP/1.1", "Host: bench"] + [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def _open_loop(
    url: str,
    tokens: dict[str, str],
    etags: dict[str, str],
    *,
    rate: float,
    duration_s: float,
    revalidate: bool,
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    nodes = sorted(tokens)
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    # First in, first out, so every connection is reused well within the server's keep-alive
    # timeout rather than some idling at the bottom of a stack until the server drops them.
    idle: deque[_Connection] = deque()

    async def one(node: str, scheduled: float) -> None:
        nonlocal errors
        headers = {"Authorization": f"Bearer {tokens[node]}"}
        if revalidate:
            headers["If-None-Match"] = etags[node]
        # A free keep-alive connection if there is one, else a new one: the client never
        # makes a request wait for another to finish (open loop).
        connection = idle.popleft() if idle else await _Connection.open(host, int(port))
        try:
            status = await connection.get(f"/v1/nodes/{node}/plan", headers)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            connection.close()
            return
        latencies.append(time.perf_counter() - scheduled)
        statuses[status] = statuses.get(status, 0) + 1
        idle.append(connection)

    # Warm up: open connections and let the server settle before measuring.
    for _ in range(3):
        await asyncio.gather(*(one(n, time.perf_counter()) for n in nodes))
    latencies.clear()
    statuses.clear()
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.05
    at = start
    while at < start + duration_s:
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(nodes[len(tasks) % len(nodes)], at)))
        at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for connection in idle:
        connection.close()
    return {
        **_percentiles(latencies),
        "target_rate": rate,
        "sent": len(tasks),
        "achieved_rate": len(tasks) / elapsed,
        "statuses": statuses,
        "errors": errors,
    }


def _write(name: str, result: dict[str, Any], table: list[tuple[str, str]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# {result['title']}",
        "",
        f"Command: `{result['command']}`",
        "",
        describe_machine(result["machine"]),
        "",
        f"Database: {result['database']}.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in table]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpufair bench api", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="plan requests per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per phase")
    p.add_argument("--nodes", type=int, default=16, help="nodes pulling plans")
    p.add_argument("--tenants", type=int, default=16, help="tenants in the plan benchmark")
    p.add_argument("--solve-tenants", type=int, default=64)
    p.add_argument("--solve-gpus", type=int, default=64)
    p.add_argument("--skip-plan", action="store_true")
    p.add_argument("--skip-solve", action="store_true")
    p.add_argument("--database-url", help="an empty database (default: SQLite in a temp dir)")
    p.add_argument(
        "--criteria",
        default="prop_alpha,ef1,efm,prop1",
        help="fairness criteria of the solve benchmark's tenants, assigned round robin",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p


def _bench_plan(args: argparse.Namespace, command: str, workdir: Path) -> dict[str, Any]:
    url = args.database_url or f"sqlite:///{workdir / 'plan.db'}"
    if args.database_url:
        import migrations

        migrations.upgrade(url)
    with _serve(url, workdir, "plan") as server:
        server.wait_healthy(STARTUP_TIMEOUT_S)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            # The plan read does not depend on the criteria; EF1 is one the allocator always
            # meets, so this phase measures plans rather than the solver.
            tokens = _populate(
                client,
                tenants=args.tenants,
                gpus=args.nodes * 4,
                gpus_per_node=4,
                seed=args.seed,
                criteria=("ef1",),
            )
            client.post(
                "/v1/allocations", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ).raise_for_status()
            etags = {
                n: client.get(
                    f"/v1/nodes/{n}/plan", headers={"Authorization": f"Bearer {t}"}
                ).headers["ETag"]
                for n, t in tokens.items()
            }
        phases = {}
        for label, revalidate in (("full", False), ("revalidate", True)):
            phases[label] = asyncio.run(
                _open_loop(
                    server.url,
                    tokens,
                    etags,
                    rate=args.rate,
                    duration_s=args.duration,
                    revalidate=revalidate,
                    seed=args.seed,
                )
            )
    result = {
        "title": "GET /v1/nodes/{node}/plan latency, open loop on loopback",
        "command": command,
        "machine": this_machine(),
        "database": url.split(":")[0],
        "nodes": args.nodes,
        "tenants": args.tenants,
        "phases": phases,
    }
    table = []
    for label, phase in phases.items():
        table += [
            (f"{label}: {k}", f"{v:.2f}" if isinstance(v, float) else str(v))
            for k, v in phase.items()
        ]
    _write("api-plan", result, table, args.out)
    return result


def _bench_solve(args: argparse.Namespace, command: str, workdir: Path) -> dict[str, Any]:
    url = f"sqlite:///{workdir / 'solve.db'}" if not args.database_url else args.database_url
    with _serve(url, workdir, "solve") as server:
        server.wait_healthy(STARTUP_TIMEOUT_S)
        with httpx.Client(base_url=server.url, timeout=600) as client:
            _populate(
                client,
                tenants=args.solve_tenants,
                gpus=args.solve_gpus,
                gpus_per_node=8,
                seed=args.seed,
                criteria=tuple(args.criteria.split(",")),
            )
            started = time.perf_counter()
            r = client.post("/v1/allocations", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            wall = time.perf_counter() - started
    body = r.json()
    certificate = body.get("certificate", {})
    result = {
        "title": f"POST /v1/allocations, {args.solve_tenants} tenants x {args.solve_gpus} GPUs",
        "command": command,
        "machine": this_machine(),
        "database": url.split(":")[0],
        "status": r.status_code,
        "wall_s": wall,
        "solve_s": body.get("solve_seconds"),
        "solver": certificate.get("solver"),
        "solver_status": certificate.get("status"),
        "fair": certificate.get("fair"),
        "gap": certificate.get("gap"),
        "criteria": args.criteria,
        "error": body.get("error"),
    }
    table = [
        (k, f"{v:.3f}" if isinstance(v, float) else str(v))
        for k, v in result.items()
        if k not in ("title", "command", "machine", "database")
    ]
    _write("api-solve", result, table, args.out)
    return result


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    command = " ".join(["gpufair", "bench", "api", *map(shlex.quote, argv)])
    with tempfile.TemporaryDirectory(prefix="gpufair-bench-api-") as tmp:
        try:
            _run(args, command, Path(tmp))
        except (httpx.HTTPError, RuntimeError) as exc:
            print(f"gpufair bench api: {exc}", file=sys.stderr)
            return 1
    print(f"results under {args.out}")
    return 0


def _run(args: argparse.Namespace, command: str, workdir: Path) -> None:
    if not args.skip_plan:
        plan = _bench_plan(args, command, workdir)
        for label, phase in plan["phases"].items():
            print(
                f"plan {label}: p50 {phase['p50_ms']:.2f} ms, p99 {phase['p99_ms']:.2f} ms, "
                f"max {phase['max_ms']:.2f} ms at {phase['achieved_rate']:.0f} req/s "
                f"(statuses {phase['statuses']}, errors {phase['errors']})"
            )
    if not args.skip_solve:
        solve = _bench_solve(args, command, workdir)
        print(
            f"solve {args.solve_tenants}x{args.solve_gpus}: HTTP {solve['status']}, "
            f"{solve['wall_s']:.2f} s wall, solver {solve['solver']} {solve['solver_status']}"
        )
