"""An open-loop HTTP load client in its own process, for ``gpufair bench serve --http``.

The docs/architecture.md §5 workload sent over the wire: Poisson arrivals, K candidates drawn
from the 20 quantiles, latency from each query's *scheduled* arrival to the last byte of its
reply, so a client or server that falls behind is charged, never hidden. A reply other than
200 is a miss (429 refused, anything else failed).

Why a process of its own, and asyncio on raw sockets: the client shares the machine with the
server it measures, so it must cost little CPU and must not share the server's interpreter
(its GIL, its event loop). Each request is pre-encoded bytes written to a kept-alive HTTP/1.1
connection from a bounded pool; one event loop sends every request at its scheduled time
without waiting for earlier replies (open loop); a request that finds no free connection and
the pool at its bound is counted as a miss rather than queued in the client. The client
measures its own CPU time over each trial (``time.process_time``), which the benchmark reports
beside every figure to show that the client was not the bottleneck.

What goes on the wire is decided in one place, :func:`encode_query`: the daemon's binary body,
Open Inference Protocol tensors with the ``Inference-Header-Content-Length`` header
(:func:`executor.codec.query_to_oip`), which every server of the benchmark parses with the
daemon's codec; a new body format changes only it. Streams name their server's
``/v2/models/{model}/infer`` URL.

The benchmark talks to the client through :class:`LoadClient`, which starts the process
(``python -m bench.loadclient``) and sends it one :class:`TrialSpec` at a time over its
standard input (pickles between two processes of this tree, never from elsewhere).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np
import uvloop

from executor.codec import query_to_oip
from executor.features import Query
from executor.models.schema import ModelSchema
from executor.wire import oip
from gpufair.loadgen import QUERY_SIZES

log = logging.getLogger(__name__)

DISTINCT_QUERIES = 8  # pre-encoded bodies per size: encoding is not what is measured
MAX_CONNECTIONS = 512  # per trial; beyond, an arrival is a client-side miss
# A kept-alive connection idle longer than this is closed rather than reused: servers close
# theirs after 5 s idle (uvicorn's default, the daemon's fronts'), and a request written to a
# connection its server is closing fails through no fault of the server (as in HTTP clients
# with an idle-connection timeout below the server's).
IDLE_REUSE_S = 4.0
REFUSED = math.nan  # a 429
FAILED = math.inf  # any other non-200 reply, a timeout or a client-side miss


def encode_query(query: Query) -> tuple[dict[str, str], bytes]:
    """The headers and body a server is sent for a query (the one adapter between the
    benchmark and the wire format)."""
    body, header_length = query_to_oip(query)
    headers = {"Content-Type": oip.BINARY_CONTENT_TYPE, oip.HEADER_LENGTH: str(header_length)}
    return headers, body


@dataclass(frozen=True)
class Stream:
    """One tenant's arrivals in a trial: its own rate and endpoint."""

    url: str  # http://host:port/path of the inference endpoint
    rate: float  # queries per second
    salt: int  # with the trial's seed, the stream's schedule
    # Sent with each of its queries, e.g. the tenant's key: (("Authorization", "Bearer k"),).
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TrialSpec:
    streams: tuple[Stream, ...]
    seconds: float  # of arrivals
    seed: int
    timeout_s: float  # a reply later than this after its scheduled arrival is a miss
    # With several client processes, process ``part`` of ``parts`` sends every parts-th arrival
    # of the one schedule, from the same wall-clock start (``start_at``, time.time(); 0: now);
    # ``by_stream``: the arrivals of every parts-th stream instead, so that each tenant of an
    # isolation trial is a client of its own, as tenants are, and a flooder's sending never
    # delays another tenant's requests inside the client.
    part: int = 0
    parts: int = 1
    start_at: float = 0.0
    by_stream: bool = False


@dataclass
class TrialResult:
    """Per stream, each query's latency in seconds (nan: refused, inf: failed); the client's
    CPU seconds and wall seconds over the trial."""

    latencies: list[list[float]]
    client_cpu_s: float
    wall_s: float
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    sent: list[list[int]] = field(default_factory=list)  # per stream, the indices this part sent
    began_at: float = 0.0  # time.time() of the schedule's offset 0

    @property
    def client_cpu(self) -> float:
        """The client's CPU use over the trial, in cores."""
        return self.client_cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def schedule(rate: float, seconds: float, seed: int, salt: int) -> list[tuple[float, int, int]]:
    """(offset s, size, variant) per arrival: exponential gaps, sizes uniform over the
    quantiles; seeded by (seed, salt, rate)."""
    if rate <= 0:
        return []
    rng = np.random.default_rng([seed, salt, int(rate * 1000)])
    count = max(1, int(rate * seconds))
    offsets = np.cumsum(rng.exponential(1.0 / rate, count))
    sizes = rng.choice(QUERY_SIZES, count)
    variants = rng.integers(0, DISTINCT_QUERIES, count)
    return [(float(t), int(k), int(v)) for t, k, v in zip(offsets, sizes, variants, strict=True)]


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Pool:
    """Kept-alive connections to one host:port, at most MAX_CONNECTIONS at a time; the most
    recently used is reused first, and one idle over IDLE_REUSE_S is closed instead."""

    def __init__(self, host: str, port: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[Connection, float]] = []  # (connection, idle since), oldest first
        self.open = 0
        self._clock = clock

    async def take(self) -> Connection | None:
        while self.idle:
            conn, since = self.idle.pop()
            if self._clock() - since <= IDLE_REUSE_S:
                return conn
            self.drop(conn)
        if self.open >= MAX_CONNECTIONS:
            return None
        self.open += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.open -= 1
            raise

    def give(self, conn: Connection) -> None:
        self.idle.append((conn, self._clock()))

    def drop(self, conn: Connection) -> None:
        self.open -= 1
        conn[1].close()

    def close(self) -> None:
        for (_, writer), _ in self.idle:
            writer.close()
        self.idle.clear()


async def _exchange(conn: Connection, request: bytes) -> tuple[int, bool]:
    """Send one request and read its reply whole; (status, keep the connection)."""
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, keep = 0, True
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, keep


async def _run_trial(
    spec: TrialSpec, bodies: dict[tuple[int, int], tuple[dict[str, str], bytes]]
) -> TrialResult:
    pools: dict[tuple[str, int], _Pool] = {}
    arrivals: list[tuple[float, int, int, bytes]] = []  # (offset, stream, index, request)
    latencies: list[list[float]] = []
    for s, stream in enumerate(spec.streams):
        url = urlsplit(stream.url)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        pools.setdefault((host, port), _Pool(host, port))
        planned = schedule(stream.rate, spec.seconds, spec.seed, stream.salt)
        latencies.append([FAILED] * len(planned))
        # One request's bytes per (size, variant) and stream, shared by its arrivals: a copy per
        # arrival took gigabytes and seconds to build for a flood of megabyte bodies.
        requests: dict[tuple[int, int], bytes] = {}
        for index, (offset, size, variant) in enumerate(planned):
            request = requests.get((size, variant))
            if request is None:
                headers, body = bodies[(size, variant)]
                fields = "".join(
                    f"{name}: {value}\r\n" for name, value in (*headers.items(), *stream.headers)
                )
                head = (
                    f"POST {url.path} HTTP/1.1\r\nHost: {host}:{port}\r\n{fields}"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode("latin-1")
                request = requests[(size, variant)] = head + body
            arrivals.append((offset, s, index, request))
    arrivals.sort(key=lambda a: a[0])
    if spec.by_stream:
        arrivals = [a for a in arrivals if a[1] % spec.parts == spec.part]
    else:
        arrivals = arrivals[spec.part :: spec.parts]
    sent: list[list[int]] = [[] for _ in spec.streams]
    for _, which, index, _ in arrivals:
        sent[which].append(index)
    pool_of = [
        pools[(urlsplit(s.url).hostname or "127.0.0.1", urlsplit(s.url).port or 80)]
        for s in spec.streams
    ]
    statuses: dict[int, int] = {}
    # time.monotonic, not loop.time(): uvloop's loop time is cached per loop iteration, in ms.
    clock = time.monotonic
    tasks: list[asyncio.Task[None]] = []

    async def one(stream: int, index: int, request: bytes, scheduled: float) -> None:
        pool = pool_of[stream]
        conn = None
        try:
            conn = await pool.take()
            if conn is None:
                statuses[0] = statuses.get(0, 0) + 1
                return
            status, keep = await asyncio.wait_for(_exchange(conn, request), spec.timeout_s)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            TimeoutError,
        ):
            if conn is not None:
                pool.drop(conn)
            statuses[0] = statuses.get(0, 0) + 1
            return
        if keep:
            pool.give(conn)
        else:
            pool.drop(conn)
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            latencies[stream][index] = clock() - scheduled
        elif status == 429:
            latencies[stream][index] = REFUSED

    cpu0 = time.process_time()
    begin = clock() + (max(spec.start_at - time.time(), 0.0) if spec.start_at else 0.05)
    began_at = time.time() + (begin - clock())
    for offset, which, index, request in arrivals:
        scheduled = begin + offset
        while (delay := scheduled - clock()) > 0:  # uvloop's timers may fire up to 1 ms early
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(which, index, request, scheduled)))
    if tasks:
        await asyncio.wait(tasks)
    wall = clock() - begin
    cpu = time.process_time() - cpu0
    for pool in pools.values():
        pool.close()
    return TrialResult(latencies, cpu, wall, statuses, sent, began_at)


def _serve(inbox: IO[bytes], outbox: IO[bytes]) -> None:
    """The client process: build the bodies once, then run the trials it is sent."""
    schema_doc, seed = pickle.load(inbox)
    schema = ModelSchema.from_dict(schema_doc)
    rng = np.random.default_rng(seed)
    bodies = {
        (k, v): encode_query(schema.random_query(rng, k))
        for k in sorted(set(QUERY_SIZES))
        for v in range(DISTINCT_QUERIES)
    }
    # Weighted as the sizes are drawn: the mean body a trial sends.
    mean = np.mean([len(bodies[(k, v)][1]) for k in QUERY_SIZES for v in range(DISTINCT_QUERIES)])
    _send(outbox, float(mean))
    while True:
        spec = pickle.load(inbox)
        if spec is None:
            return
        _send(outbox, run_trial(spec, bodies))


def run_trial(
    spec: TrialSpec, bodies: dict[tuple[int, int], tuple[dict[str, str], bytes]]
) -> TrialResult:
    """One trial on a fresh event loop, with the cyclic collector off until it ends.

    uvloop, as the daemon's fronts: the client's CPU is taken from the servers it measures. The
    collector is off because a pass of it over a flood's thousands of arrivals and tasks paused
    the client for 11-30 ms, and every query it sent late meanwhile was charged to the server
    (latency runs from the scheduled arrival). What a trial leaves is collected after it, before
    its event loop closes, so that the transports among it are finalised with their loop.
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        gc.disable()
        try:
            return runner.run(_run_trial(spec, bodies))
        finally:
            gc.enable()
            gc.collect()


def _send(outbox: IO[bytes], value: object) -> None:
    pickle.dump(value, outbox)
    outbox.flush()


class LoadClient:
    """The load client: ``processes`` processes of its own (``python -m bench.loadclient``,
    spoken to over their standard input and output), which share each trial's one schedule
    (every ``processes``-th arrival each, from one start); ``run(spec)`` returns the merged
    result, the client CPU summed over the processes."""

    def __init__(self, schema: ModelSchema, seed: int = 0, processes: int = 1) -> None:
        root = Path(__file__).resolve().parents[1]
        self._processes = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.loadclient"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=root,
                env={**os.environ, "PYTHONPATH": str(root)},
            )
            for _ in range(processes)
        ]
        for process in self._processes:
            _send(self._stdin(process), (schema.to_dict(), seed))
        self.mean_body_bytes: float = [self._receive(p) for p in self._processes][0]

    @staticmethod
    def _stdin(process: subprocess.Popen[bytes]) -> IO[bytes]:
        assert process.stdin is not None
        return process.stdin

    @staticmethod
    def _receive(process: subprocess.Popen[bytes]) -> Any:
        assert process.stdout is not None
        try:
            return pickle.load(process.stdout)
        except EOFError:
            raise RuntimeError(f"the load client exited with status {process.wait()}") from None
        except pickle.UnpicklingError as exc:
            raise RuntimeError(
                f"the load client (pid {process.pid}) sent a reply that is no pickle: {exc}"
            ) from exc

    def run(self, spec: TrialSpec) -> TrialResult:
        parts = len(self._processes)
        start_at = time.time() + 0.1 * parts  # time for every part to get its spec
        for part, process in enumerate(self._processes):
            _send(
                self._stdin(process),
                dataclasses.replace(spec, part=part, parts=parts, start_at=start_at),
            )
        results: list[TrialResult] = [self._receive(p) for p in self._processes]
        merged = results[0]
        statuses = dict(merged.statuses)
        for other in results[1:]:
            for stream, indices in enumerate(other.sent):
                for index in indices:
                    merged.latencies[stream][index] = other.latencies[stream][index]
            for status, count in other.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        return TrialResult(
            latencies=merged.latencies,
            client_cpu_s=sum(r.client_cpu_s for r in results),
            wall_s=max(r.wall_s for r in results),
            statuses=statuses,
            sent=[sorted(i for r in results for i in r.sent[s]) for s in range(len(spec.streams))],
            began_at=min(r.began_at for r in results),
        )

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                try:
                    _send(self._stdin(process), None)
                    process.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    process.kill()
                    process.wait()

    def __enter__(self) -> LoadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    # Through the module's own name, so that what it pickles names bench.loadclient's classes.
    from bench.loadclient import _serve as serve

    # The replies go out on a copy of standard output, and standard output itself now goes to
    # standard error: whatever else writes to it (a library, C code) cannot break the replies.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)
