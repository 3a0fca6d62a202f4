"""``gpufair bench api``: the control plane's latency where it matters (docs/architecture.md §5).

Three measurements against a real ``gpufair serve`` in a subprocess on loopback, served by
``--workers`` processes (default: one per core of this machine, the deployment
docs/operations.md advises; the CPU figures are the server's processes together):

- **Mixed load** — ``--clients`` (400) client connections and ``--pollers`` (100) nodes, each
  holding a plan long-poll (``?wait=20`` with ``If-None-Match``) the whole time: 500
  concurrent connections, all open before the first measured request. The clients send,
  open-loop at ``--mixed-rate`` on their keep-alive connections (first in, first out),
  tenants' reads (models, themselves, their allocation), node plan reads, ``PATCH``es of
  models with ``If-Match`` (a stale one gets 412) and heartbeats; half-way an admin solve,
  sent beside the schedule, stores a new allocation, which must wake every held long-poll
  with its new plan. Then a burst: one request on every client connection at the same
  instant, with the long-polls still held, so ``clients + pollers`` requests are in flight
  together. Reported: latency per kind (reads: p50/p99/max), statuses, 5xx (there must be
  none), the most client requests in flight at once, and the CPU the server and this client
  used per request — which bounds the burst: it cannot drain faster than ``clients`` times
  the server's CPU per request, spread over at most one core per server process (the GIL).
  Every open-loop request's timeline (scheduled, written, response head, end) is in the JSON
  file; the report gives the reads'
  latencies by window around the solve (before it, while it solves, the 2 s after it stored,
  later) and the slowest reads, each split into its wait in this client, its wait for the
  response's head and the body's transfer: where the tail is.

- **Plan reads** — ``GET /v1/nodes/{node}/plan``, the request every node daemon repeats.
  Open-loop: requests are scheduled with exponential gaps at the target rate (seeded), sent
  whether or not earlier ones have returned, and each latency is measured from its *scheduled*
  time, so a stalled server cannot hide its queueing (no coordinated omission). Reported as
  p50/p90/p99/max for full plan bodies (200) and for revalidations (``If-None-Match`` → 304).
- **Solve** — ``POST /v1/allocations`` for T tenants × G GPUs (64 × 64 by default): the
  wall time of the request, snapshot, solve, certificate check and store included.

Results go to ``bench/results/api-mixed-<database>.{json,md}`` (and the open loop's requests
to ``api-mixed-<database>-timeline.csv``), ``api-plan.{json,md}`` and
``api-solve.{json,md}``, each with the command that produced it and the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import shlex
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.machine import describe_machine, load_average, process_tree_cpu_seconds, this_machine
from gpufair.inputs import positive_number, results_folder, whole_number
from gpufair.servers import ChildServer

ADMIN_TOKEN = "bench-admin-token-7f3a9c"
ARCHITECTURES = ("rmc1", "rmc2", "rmc3", "wnd", "din")
RESULTS = Path(__file__).resolve().parent / "results"
STARTUP_TIMEOUT_S = 60.0


def _serve(database_url: str, workdir: Path, name: str, workers: int) -> ChildServer:
    """``gpufair serve --workers`` in a child process on a database of its own (not started
    yet)."""
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
        ["serve", "--no-access-log", "--log-level", "warning", "--workers", str(workers)],
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
    keys: list[str] | None = None,
) -> dict[str, str]:
    """Register tenants (two models each) and nodes; return node name -> token. The tenants'
    API keys are appended to ``keys`` when given."""
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
        if keys is not None:
            keys.append(key)
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


@dataclass(frozen=True)
class _Reply:
    status: int
    etag: str
    body: bytes
    sent_at: float  # perf_counter when the request was written
    head_at: float  # perf_counter when the response's status line and headers had arrived


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
        return (await self.request("GET", path, headers)).status

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> _Reply:
        lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        sent_at = time.perf_counter()
        head = await self.reader.readuntil(b"\r\n\r\n")
        head_at = time.perf_counter()
        status = int(head[9:12])
        length = 0
        etag = ""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"etag":
                etag = value.strip().decode()
        content = await self.reader.readexactly(length) if length else b""
        return _Reply(status, etag, content, sent_at, head_at)

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


# --- the mixed load: many clients at once, long-polls held for every node -----------------------

# What the clients' requests are, with their weights: reads, optimistic updates, heartbeats.
MIXED_KINDS = (
    ("GET models", 30),
    ("GET tenant", 20),
    ("GET allocation", 15),
    ("GET plan", 15),
    ("PATCH model", 12),
    ("POST heartbeat", 8),
)
LONG_POLL_S = 20
# Between the long-polls' and clients' arrival and the first measured request: the server
# answers the pollers' first plan reads and takes the connections first.
SETTLE_S = 1.0


@dataclass
class _MixedWorld:
    keys: list[str]  # tenant API keys
    models: list[tuple[str, int]]  # (owner's key, model id)
    etags: dict[int, str]  # model id -> the ETag a client last saw
    tokens: dict[str, str]  # node -> token


class _Tally:
    """Latencies and statuses per request kind."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {}
        self.statuses: dict[str, dict[int, int]] = {}
        self.errors = 0
        # One row per request: kind, status, and its scheduled, sent, head and end times.
        self.timeline: list[tuple[str, int, float, float, float, float]] = []

    def add(self, kind: str, reply: _Reply, scheduled: float, end: float) -> None:
        self.latencies.setdefault(kind, []).append(end - scheduled)
        counts = self.statuses.setdefault(kind, {})
        counts[reply.status] = counts.get(reply.status, 0) + 1
        self.timeline.append((kind, reply.status, scheduled, reply.sent_at, reply.head_at, end))

    def server_errors(self) -> int:
        return sum(n for counts in self.statuses.values() for s, n in counts.items() if s >= 500)

    def summary(self) -> dict[str, Any]:
        reads = [x for kind, xs in self.latencies.items() if kind.startswith("GET") for x in xs]
        return {
            "reads": _percentiles(reads) if reads else {},
            "kinds": {
                kind: {**_percentiles(xs), "statuses": self.statuses[kind]}
                for kind, xs in sorted(self.latencies.items())
            },
            "server_errors": self.server_errors(),
            "connection_errors": self.errors,
        }


async def _one_mixed(
    connection: _Connection, world: _MixedWorld, kind: str, rng: random.Random
) -> _Reply:
    nodes = sorted(world.tokens)
    if kind == "GET plan" or kind == "POST heartbeat":
        node = rng.choice(nodes)
        auth = {"Authorization": f"Bearer {world.tokens[node]}"}
        if kind == "GET plan":
            return await connection.request("GET", f"/v1/nodes/{node}/plan", auth)
        body = json.dumps({"plan_version": 1}).encode()
        return await connection.request("POST", f"/v1/nodes/{node}/heartbeat", auth, body)
    if kind == "PATCH model":
        key, model = rng.choice(world.models)
        auth = {"Authorization": f"Bearer {key}"}
        body = json.dumps({"demand_qps": float(rng.randrange(200, 5000, 100))}).encode()
        headers = {**auth, "If-Match": world.etags[model]}
        reply = await connection.request("PATCH", f"/v1/models/{model}", headers, body)
        if reply.etag:
            world.etags[model] = reply.etag
        return reply
    auth = {"Authorization": f"Bearer {rng.choice(world.keys)}"}
    path = {
        "GET models": "/v1/models",
        "GET tenant": "/v1/tenants/me",
        "GET allocation": "/v1/allocations/current/me",
    }[kind]
    return await connection.request("GET", path, auth)


async def _poll(
    host: str, port: int, node: str, token: str, stop: asyncio.Event, seen: dict[str, Any]
) -> None:
    """One node's daemon: long-poll its plan until ``stop``, counting the plans it receives."""
    connection = await _Connection.open(host, port)
    etag = ""
    try:
        while not stop.is_set():
            headers = {"Authorization": f"Bearer {token}"}
            if etag:
                headers["If-None-Match"] = etag
            seen["held"] += 1
            seen["max_held"] = max(seen["max_held"], seen["held"])
            try:
                reply = await connection.request(
                    "GET", f"/v1/nodes/{node}/plan?wait={LONG_POLL_S}", headers
                )
            finally:
                seen["held"] -= 1
            seen["statuses"][reply.status] = seen["statuses"].get(reply.status, 0) + 1
            if reply.status == 200:
                if etag:
                    seen["woken"].add(node)
                    seen["woken_at"].append(time.perf_counter())
                etag = reply.etag
    finally:
        connection.close()


class _CpuClock:
    """CPU seconds the server and this load client used over a phase: what a request costs, and
    whether the client, on the same cores, took a share that matters."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.started = self._now()

    def _now(self) -> tuple[float, float]:
        return process_tree_cpu_seconds(self.server_pid) or 0.0, time.process_time()

    def restart(self) -> None:
        self.started = self._now()

    def lap(self, requests: int, wall_s: float) -> dict[str, float]:
        """Since the start or the last lap: everything the server did (a solve, long-polls'
        rechecks) over the ``requests`` sent."""
        (server, client), (server0, client0) = self._now(), self.started
        self.started = self._now()
        return {
            "server_cpu_s": server - server0,
            "client_cpu_s": client - client0,
            "server_cpu_per_request_ms": 1000 * (server - server0) / max(requests, 1),
            "server_cores_busy": (server - server0) / wall_s,
        }


async def _mixed_load(
    url: str,
    world: _MixedWorld,
    *,
    server_pid: int,
    clients: int,
    pollers: int,
    rate: float,
    duration_s: float,
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    host, port_text = url.removeprefix("http://").split(":")
    port = int(port_text)
    kinds = [kind for kind, _ in MIXED_KINDS]
    weights = [weight for _, weight in MIXED_KINDS]
    stop = asyncio.Event()
    seen: dict[str, Any] = {
        "held": 0, "max_held": 0, "statuses": {}, "woken": set(), "woken_at": []
    }
    polls = [
        asyncio.create_task(_poll(host, port, node, world.tokens[node], stop, seen))
        for node in sorted(world.tokens)[:pollers]
    ]
    # One keep-alive connection per client, all open for the whole run beside the long-polls,
    # reused first in, first out; a request finding every client busy opens one more (counted).
    idle: deque[_Connection] = deque()
    tally = _Tally()
    clients_seen: dict[str, int] = {"in_flight": 0, "max_in_flight": 0, "extra": 0, "reopened": 0}

    async def connection_for_request() -> _Connection:
        if not idle:
            clients_seen["extra"] += 1
            return await _Connection.open(host, port)
        connection = idle.popleft()
        if connection.reader.at_eof():
            # The server closed it after its keep-alive timeout: the client dials again.
            clients_seen["reopened"] += 1
            connection.close()
            return await _Connection.open(host, port)
        return connection

    async def one(kind: str, scheduled: float, into: _Tally) -> None:
        clients_seen["in_flight"] += 1
        in_flight = clients_seen["in_flight"]
        clients_seen["max_in_flight"] = max(clients_seen["max_in_flight"], in_flight)
        connection: _Connection | None = None
        try:
            connection = await connection_for_request()
            reply = await _one_mixed(connection, world, kind, rng)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            into.errors += 1
            if connection is not None:
                connection.close()
            return
        finally:
            clients_seen["in_flight"] -= 1
        into.add(kind, reply, scheduled, time.perf_counter())
        idle.append(connection)

    # Let every long-poll take its first plan and settle into its wait, and open the clients.
    while seen["held"] < len(polls):
        await asyncio.sleep(0.05)
    idle.extend(await asyncio.gather(*(_Connection.open(host, port) for _ in range(clients))))
    await asyncio.sleep(SETTLE_S)
    admin = await _Connection.open(host, port)

    async def solve() -> _Reply:
        # A new allocation half-way: every held long-poll must wake with its new plan. Sent
        # beside the schedule, not in it: the clients' requests go on while it runs.
        seen["woken"].clear()
        seen["woken_at"].clear()
        reply = await admin.request(
            "POST", "/v1/allocations", {"Authorization": f"Bearer {ADMIN_TOKEN}"}, b"{}"
        )
        seen["held_at_solve"] = seen["held"]
        seen["solve_stored_at"] = time.perf_counter()
        return reply

    solving: asyncio.Task[_Reply] | None = None
    tasks: list[asyncio.Task[None]] = []
    cpu = _CpuClock(server_pid)
    start = time.perf_counter() + 0.05
    at = start
    while at < start + duration_s:
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if solving is None and at - start >= duration_s / 2:
            solving = asyncio.create_task(solve())
        kind = rng.choices(kinds, weights)[0]
        tasks.append(asyncio.create_task(one(kind, at, tally)))
        at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    solve_reply = await solving if solving is not None else None
    woken = len(seen["woken"])
    open_loop_cpu = cpu.lap(len(tasks), elapsed)
    open_loop_clients = dict(clients_seen)
    # The burst: one request on every client connection at once, with the long-polls held.
    burst = _Tally()
    # Fresh connections, one per client: ones idle past the server's keep-alive timeout would
    # be closed on it.
    while idle:
        idle.popleft().close()
    idle.extend(await asyncio.gather(*(_Connection.open(host, port) for _ in range(clients))))
    held_in_burst = seen["held"]
    now = time.perf_counter()
    cpu.restart()
    await asyncio.gather(*(one(rng.choices(kinds, weights)[0], now, burst) for _ in range(clients)))
    burst_cpu = cpu.lap(clients, time.perf_counter() - now)
    stop.set()
    for task in polls:
        task.cancel()
    await asyncio.gather(*polls, return_exceptions=True)
    admin.close()
    for connection in idle:
        connection.close()
    solve_times = (
        (solve_reply.sent_at, seen["solve_stored_at"]) if solve_reply is not None else None
    )
    return {
        "open_loop": {
            **tally.summary(),
            "timeline": _timeline(tally, start, solve_times, seen["woken_at"]),
            "target_rate": rate,
            "sent": len(tasks),
            "achieved_rate": len(tasks) / elapsed,
            "client_connections": clients,
            "max_in_flight": open_loop_clients["max_in_flight"],
            "extra_connections": open_loop_clients["extra"],
            "reopened_connections": open_loop_clients["reopened"],
            **open_loop_cpu,
        },
        "burst": {
            **burst.summary(),
            "requests": clients,
            "long_polls_held": held_in_burst,
            **burst_cpu,
        },
        "long_polls": {
            "nodes": len(polls),
            "max_held_at_once": seen["max_held"],
            "held_when_solved": seen.get("held_at_solve"),
            "woken_by_solve": woken,
            "statuses": seen["statuses"],
        },
        "solve_status": solve_reply.status if solve_reply is not None else None,
    }


# Where the open loop's requests fall, for the report of where its tail is: by when each was
# scheduled, relative to the half-way solve's request and reply (the reply is when the held
# long-polls are woken).
AFTER_SOLVE_WINDOW_S = 2.0
SLOWEST_SHOWN = 8


def _timeline(
    tally: _Tally,
    start: float,
    solve: tuple[float, float] | None,
    woken_at: list[float],
) -> dict[str, Any]:
    """Every request's times (seconds from the open loop's start: scheduled, written, response
    head, end) and the solve's and wake-ups' times, with the reads' latencies by window."""
    rows: list[dict[str, Any]] = [
        {
            "kind": kind,
            "status": status,
            "scheduled_s": round(scheduled - start, 4),
            "sent_s": round(sent - start, 4),
            "head_s": round(head - start, 4),
            "end_s": round(end - start, 4),
        }
        for kind, status, scheduled, sent, head, end in sorted(tally.timeline, key=lambda r: r[2])
    ]
    result: dict[str, Any] = {"requests": rows}
    if solve is None:
        return result
    sent, stored = (t - start for t in solve)
    result["solve_sent_s"], result["solve_stored_s"] = round(sent, 4), round(stored, 4)
    woken = sorted(t - start for t in woken_at)
    if woken:
        result["woken_s"] = {"first": round(woken[0], 4), "last": round(woken[-1], 4)}
    windows = (
        ("before the solve", float("-inf"), sent),
        ("while it solves", sent, stored),
        (f"first {AFTER_SOLVE_WINDOW_S:g} s after it stored", stored,
         stored + AFTER_SOLVE_WINDOW_S),
        ("later", stored + AFTER_SOLVE_WINDOW_S, float("inf")),
    )  # fmt: skip
    reads = [r for r in rows if r["kind"].startswith("GET")]
    result["reads_by_window"] = {
        label: _percentiles([r["end_s"] - r["scheduled_s"] for r in within])
        for label, low, high in windows
        if (within := [r for r in reads if low <= r["scheduled_s"] < high])
    }
    result["slowest_reads"] = sorted(
        reads, key=lambda r: r["scheduled_s"] - r["end_s"]
    )[:SLOWEST_SHOWN]
    return result


def _mixed_world(client: httpx.Client, args: argparse.Namespace) -> _MixedWorld:
    keys: list[str] = []
    tokens = _populate(
        client,
        tenants=args.mixed_tenants,
        gpus=args.pollers,
        gpus_per_node=1,
        seed=args.seed,
        criteria=("ef1",),
        keys=keys,
    )
    models: list[tuple[str, int]] = []
    etags: dict[int, str] = {}
    for key in keys:
        auth = {"Authorization": f"Bearer {key}"}
        for model in client.get("/v1/models", headers=auth).json():
            models.append((key, model["id"]))
            etags[model["id"]] = client.get(f"/v1/models/{model['id']}", headers=auth).headers[
                "ETag"
            ]
    return _MixedWorld(keys=keys, models=models, etags=etags, tokens=tokens)


def _bench_mixed(args: argparse.Namespace, command: str, workdir: Path) -> dict[str, Any]:
    url = args.database_url or f"sqlite:///{workdir / 'mixed.db'}"
    if args.database_url:
        import migrations

        migrations.upgrade(url)
    database = url.split(":")[0].split("+")[0]
    with _serve(url, workdir, "mixed", args.workers) as server:
        server.wait_healthy(STARTUP_TIMEOUT_S)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            world = _mixed_world(client, args)
            client.post(
                "/v1/allocations", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ).raise_for_status()
        machine = this_machine()
        load = asyncio.run(
            _mixed_load(
                server.url,
                world,
                server_pid=server.process.pid,
                clients=args.clients,
                pollers=args.pollers,
                rate=args.mixed_rate,
                duration_s=args.duration,
                seed=args.seed,
            )
        )
    machine["load_average_end"] = load_average()
    result = {
        "title": (
            f"Mixed load: {args.clients + args.pollers} concurrent connections, "
            f"{args.clients} clients and {args.pollers} held plan long-polls"
        ),
        "command": command,
        "machine": machine,
        "database": database,
        "workers": args.workers,
        "tenants": args.mixed_tenants,
        "mix": dict(MIXED_KINDS),
        **load,
    }
    table = _mixed_table(result)
    _write(f"api-mixed-{database}", result, table, args.out)
    write_timeline(result, args.out / f"api-mixed-{database}-timeline.csv")
    return result


TIMELINE_COLUMNS = ("kind", "status", "scheduled_s", "sent_s", "head_s", "end_s")


def write_timeline(result: dict[str, Any], path: Path) -> None:
    """The open loop's requests, one a line (seconds from its start), beside the results: the
    JSON file keeps the timeline's summary only (thousands of rows would swamp it)."""
    requests = result["open_loop"]["timeline"]["requests"]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(TIMELINE_COLUMNS)
        writer.writerows([row[column] for column in TIMELINE_COLUMNS] for row in requests)


def _mixed_table(result: dict[str, Any]) -> list[tuple[str, str]]:
    def ms(values: dict[str, Any]) -> str:
        return (
            f"p50 {values['p50_ms']:.1f} / p99 {values['p99_ms']:.1f} / "
            f"max {values['max_ms']:.1f} ms (n={values['count']})"
            if values
            else "-"
        )

    def cpu(phase: dict[str, Any]) -> str:
        return (
            f"server {phase['server_cpu_per_request_ms']:.2f} ms per request "
            f"({phase['server_cores_busy']:.2f} cores busy), load client "
            f"{phase['client_cpu_s']:.1f} s of {phase['server_cpu_s']:.1f} s server CPU"
        )

    loop, burst, polls = result["open_loop"], result["burst"], result["long_polls"]
    table = [
        (
            "open loop: connections open at once",
            f"{loop['client_connections'] + polls['nodes']} ({loop['client_connections']} clients "
            f"+ {polls['nodes']} nodes holding a long-poll); "
            f"{loop['extra_connections']} extra, {loop['reopened_connections']} re-dialled "
            "after the server's keep-alive timeout",
        ),
        ("open loop: rate", f"{loop['achieved_rate']:.0f} req/s of {loop['target_rate']:.0f}"),
        (
            "open loop: most client requests in flight at once",
            f"{loop['max_in_flight']} (+ the held long-polls)",
        ),
        ("open loop: reads", ms(loop["reads"])),
        ("open loop: CPU", cpu(loop)),
        ("open loop: 5xx", str(loop["server_errors"])),
        ("open loop: connection errors", str(loop["connection_errors"])),
    ]
    table += [
        (f"open loop: {kind}", f"{ms(values)}, statuses {values['statuses']}")
        for kind, values in loop["kinds"].items()
    ]
    table += _timeline_rows(loop["timeline"], ms)
    table += [
        (
            "burst: requests at once",
            f"{burst['requests']} + {burst['long_polls_held']} held long-polls",
        ),
        ("burst: reads", ms(burst["reads"])),
        ("burst: CPU", cpu(burst)),
        ("burst: 5xx", str(burst["server_errors"])),
        ("burst: connection errors", str(burst["connection_errors"])),
        ("long-polls: nodes", str(polls["nodes"])),
        ("long-polls: most held at once", str(polls["max_held_at_once"])),
        ("long-polls: held when the solve stored", str(polls["held_when_solved"])),
        ("long-polls: woken by the solve with a new plan", str(polls["woken_by_solve"])),
        ("long-polls: statuses", str(polls["statuses"])),
        ("solve during the load: status", str(result["solve_status"])),
    ]
    return table


def _without_requests(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without the open loop's per-request rows (:func:`write_timeline`)."""
    timeline = result.get("open_loop", {}).get("timeline")
    if timeline is None:
        return result
    summary = {key: value for key, value in timeline.items() if key != "requests"}
    return {**result, "open_loop": {**result["open_loop"], "timeline": summary}}


def _timeline_rows(timeline: dict[str, Any], ms: Any) -> list[tuple[str, str]]:
    """The timeline's report: the solve and its wake-ups, reads by window, the slowest reads
    with where their time went (queued in this client before being written, then waiting
    for the response's head, then its body). The whole timeline is in the JSON file."""
    if "solve_sent_s" not in timeline:
        return []
    rows = [
        (
            "timeline: solve (s from the open loop's start)",
            f"sent {timeline['solve_sent_s']:.2f}, stored {timeline['solve_stored_s']:.2f}"
            + (
                f"; long-polls woken {timeline['woken_s']['first']:.2f}–"
                f"{timeline['woken_s']['last']:.2f}"
                if "woken_s" in timeline
                else ""
            ),
        )
    ]
    rows += [
        (f"timeline: reads scheduled {label}", ms(values))
        for label, values in timeline["reads_by_window"].items()
    ]
    stored = timeline["solve_stored_s"]
    rows += [
        (
            f"timeline: slowest read {n}",
            f"{r['kind']} scheduled {r['scheduled_s'] - stored:+.2f} s from the solve's "
            f"reply: {1000 * (r['end_s'] - r['scheduled_s']):.0f} ms = "
            f"{1000 * (r['sent_s'] - r['scheduled_s']):.0f} before it was written + "
            f"{1000 * (r['head_s'] - r['sent_s']):.0f} to the response's head + "
            f"{1000 * (r['end_s'] - r['head_s']):.0f} to its end",
        )
        for n, r in enumerate(timeline["slowest_reads"], start=1)
    ]
    return rows


def _write(name: str, result: dict[str, Any], table: list[tuple[str, str]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(_without_requests(result), indent=2) + "\n")
    lines = [
        f"# {result['title']}",
        "",
        f"Command: `{result['command']}`",
        "",
        describe_machine(result["machine"]),
        "",
        f"Database: {result['database']}; `gpufair serve --workers {result['workers']}`.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in table]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufair bench api",
        description="The control plane's latency where it matters (docs/architecture.md §5).",
    )
    p.add_argument(
        "--rate", type=positive_number, default=200.0, help="plan requests per second"
    )
    p.add_argument(
        "--duration", type=positive_number, default=20.0, help="seconds of load per phase"
    )
    p.add_argument("--nodes", type=whole_number(1), default=16, help="nodes pulling plans")
    p.add_argument(
        "--tenants", type=whole_number(1), default=16, help="tenants in the plan benchmark"
    )
    p.add_argument("--solve-tenants", type=whole_number(1), default=64)
    p.add_argument("--solve-gpus", type=whole_number(1), default=64)
    p.add_argument(
        "--clients", type=whole_number(1), default=400, help="mixed load: client connections"
    )
    p.add_argument(
        "--pollers",
        type=whole_number(0),
        default=100,
        help="mixed load: nodes holding a plan long-poll",
    )
    p.add_argument(
        "--mixed-rate", type=positive_number, default=150.0, help="mixed load: requests/s"
    )
    p.add_argument(
        "--mixed-tenants", type=whole_number(1), default=16, help="mixed load: tenants"
    )
    p.add_argument("--skip-plan", action="store_true")
    p.add_argument("--skip-solve", action="store_true")
    p.add_argument("--skip-mixed", action="store_true")
    p.add_argument("--database-url", help="an empty database (default: SQLite in a temp dir)")
    p.add_argument(
        "--workers",
        type=whole_number(1),
        default=len(os.sched_getaffinity(0)),
        help="API processes (gpufair serve --workers; default: this machine's cores, one per "
        "core as docs/operations.md advises)",
    )
    p.add_argument(
        "--criteria",
        default="prop_alpha,ef1,efm,prop1",
        help="fairness criteria of the solve benchmark's tenants, assigned round robin",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=results_folder, default=RESULTS, help="results folder")
    return p


def _bench_plan(args: argparse.Namespace, command: str, workdir: Path) -> dict[str, Any]:
    url = args.database_url or f"sqlite:///{workdir / 'plan.db'}"
    if args.database_url:
        import migrations

        migrations.upgrade(url)
    with _serve(url, workdir, "plan", args.workers) as server:
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
        "workers": args.workers,
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
    with _serve(url, workdir, "solve", args.workers) as server:
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
        "workers": args.workers,
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
        if k not in ("title", "command", "machine", "database", "workers")
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
    if not args.skip_mixed:
        mixed = _bench_mixed(args, command, workdir)
        loop, burst = mixed["open_loop"], mixed["burst"]
        print(
            f"mixed ({mixed['database']}): reads p99 {loop['reads']['p99_ms']:.1f} ms at "
            f"{loop['achieved_rate']:.0f} req/s, {loop['server_errors']} x 5xx; burst of "
            f"{burst['requests']} + {burst['long_polls_held']} long-polls: "
            f"{burst['server_errors']} x 5xx; {mixed['long_polls']['woken_by_solve']} of "
            f"{mixed['long_polls']['nodes']} long-polls woken by the solve"
        )
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
