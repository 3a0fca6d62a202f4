"""Isolation over HTTP: a calm tenant's SLA attainment while another floods the same daemon.

``python -m bench.http_isolation --url URL --body oip|npz [--seconds 30] [--calm-qps 14]
[--flood-qps 137] [--sla-ms 50]`` is an open-loop client, meant to run in its own process
beside an executor daemon serving two models, ``calm`` and ``flood`` (one tenant each, equal
shares): each tenant gets Poisson arrivals of docs/architecture.md §5 queries (sizes of
:data:`gpufair.loadgen.QUERY_SIZES`), sent as binary Open Inference Protocol tensors to
``/v2`` (``--body oip``) or as ``.npz`` to ``/v1`` (``--body npz``, what daemons before issue
11 read). Latency runs from the *scheduled* arrival; a refusal, a drop or an error is a miss.
Prints one JSON object: per tenant, queries sent, within SLA, attainment, p50/p99 of answered
ones, and the client's own CPU seconds (the client must not be the bottleneck).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from executor import codec
from executor.models.schema import ModelSchema
from executor.wire import oip
from gpufair.loadgen import QUERY_SIZES

DISTINCT = 4  # pre-encoded bodies per size


def bodies(schema: ModelSchema, kind: str, seed: int) -> dict[int, list[tuple[bytes, dict]]]:
    rng = np.random.default_rng(seed)
    out: dict[int, list[tuple[bytes, dict]]] = {}
    for size in set(QUERY_SIZES):
        encoded = []
        for _ in range(DISTINCT):
            query = schema.random_query(rng, size)
            if kind == "oip":
                body, header_length = codec.query_to_oip(query)
                encoded.append((body, {oip.HEADER_LENGTH: str(header_length)}))
            else:
                headers = {"content-type": "application/x-npz"}
                encoded.append((codec.query_to_npz(query), headers))
        out[size] = encoded
    return out


def stream(url: str, model: str, kind: str, rate: float, seconds: float, sla_s: float,
           seed: int) -> dict[str, Any]:  # fmt: skip
    schema = ModelSchema.from_dict(httpx.get(f"{url}/v1/models/{model}/schema").json())
    pool_bodies = bodies(schema, kind, seed)
    path = f"{url}/v2/models/{model}/infer" if kind == "oip" else f"{url}/v1/models/{model}/infer"
    rng = np.random.default_rng(seed + 1)
    client = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=64))
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def send(scheduled: float, body: bytes, headers: dict) -> None:
        try:
            status = client.post(path, content=body, headers=headers).status_code
        except httpx.HTTPError:
            status = 0
        latency = time.monotonic() - scheduled
        with lock:
            statuses.append(status)
            latencies.append(latency if status == 200 else float("inf"))

    with ThreadPoolExecutor(64) as pool:
        began = time.monotonic()
        at = began
        while True:
            at += float(rng.exponential(1.0 / rate))
            if at - began > seconds:
                break
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            size = int(rng.choice(QUERY_SIZES))
            body, headers = pool_bodies[size][int(rng.integers(DISTINCT))]
            pool.submit(send, at, body, headers)
    client.close()
    answered = [x for x in latencies if x != float("inf")]
    within = sum(1 for x in latencies if x <= sla_s)
    return {
        "model": model,
        "rate_qps": rate,
        "sent": len(latencies),
        "within_sla": within,
        "attainment": within / max(len(latencies), 1),
        "status_counts": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "p50_ms": 1000 * float(np.percentile(answered, 50)) if answered else None,
        "p99_ms": 1000 * float(np.percentile(answered, 99)) if answered else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_isolation", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", choices=("oip", "npz"), default="oip")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--calm-qps", type=float, default=14.0)
    parser.add_argument("--flood-qps", type=float, default=137.0)
    parser.add_argument("--sla-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    cpu = time.process_time()

    def run(name: str, rate: float, seed: int) -> None:
        results[name] = stream(args.url, name, args.body, rate, args.seconds,
                               args.sla_ms / 1000, seed)  # fmt: skip

    threads = [
        threading.Thread(target=run, args=("calm", args.calm_qps, 1)),
        threading.Thread(target=run, args=("flood", args.flood_qps, 2)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results["client_cpu_s"] = time.process_time() - cpu
    results["seconds"] = args.seconds
    sys.stdout.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
