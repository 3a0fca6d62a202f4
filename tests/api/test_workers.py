"""``gpufair serve --workers 2``: two processes serve one port over one database, on both
backends — what one process writes the other reads, a plan one stores wakes the long-polls the
other holds, and ``/metrics`` counts the requests of both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpufair.servers import ChildServer, free_port
from tests.waiting import wait_until

TOKEN = "workers-admin-token-5c1e"
WORKERS = 2
NODES = 6


def _worker_processes(pid: int) -> list[int]:
    """The serving processes the server ``pid`` started (multiprocessing's spawned children;
    not its resource tracker)."""
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[tuple[str, ChildServer]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
    env.update(
        GPUFAIR_DATABASE_URL=db_url,
        GPUFAIR_API_ADMIN_TOKEN=TOKEN,
        GPUFAIR_API_DEV_MODE="true",
        GPUFAIR_ALLOCATOR_TIME_LIMIT_S="5",
        # The statement log, where the test sees the long-polls' first reads (VERSION_READ).
        GPUFAIR_DATABASE_ECHO="true",
        # The processes' shared metrics directory is made here, where the test can look.
        TMPDIR=str(tmp_path),
    )
    with ChildServer(
        "gpufair serve --workers",
        ["serve", "--no-access-log", "--workers", str(WORKERS)],
        log_path=tmp_path / "serve.log",
        env=env,
        cwd=tmp_path,
    ) as child:
        child.wait_healthy(90)
        yield child.url, child


# What every read of a node's plan version sends (api.services.plans.current_version), as the
# processes' statement log shows it.
VERSION_READ = "max(node_plans.version)"


def _version_reads(log: Path) -> int:
    """How often the log shows a plan version read (a read may be logged more than once: once
    per handler the statement logger has)."""
    return log.read_text(errors="replace").count(VERSION_READ)


def _metrics_dirs(tmp_path: Path) -> list[Path]:
    return list(tmp_path.glob("gpufair-metrics-*"))


def test_two_processes_share_the_database_the_long_polls_and_the_metrics(
    served: tuple[str, ChildServer], tmp_path: Path
) -> None:
    url, child = served
    workers = _worker_processes(child.process.pid)
    assert len(workers) == WORKERS
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    tenant = admin.post("/v1/tenants", json={"name": "ads", "criterion": "ef1"}).json()
    key = admin.post(f"/v1/tenants/{tenant['id']}/keys").json()["key"]
    auth = {"Authorization": f"Bearer {key}"}
    model = {"name": "ranker", "artifact": "zoo:rmc2?scale=0.1&seed=3", "memory_mb": 800,
             "replicas_wanted": 1, "sla_p99_ms": 25, "demand_qps": 300}  # fmt: skip
    assert httpx.post(f"{url}/v1/models", json=model, headers=auth).status_code == 201
    devices = [{"device": "cpu:0", "kind": "cpu", "memory_mb": 8000, "streams": 4, "seats": 2}]
    tokens = {
        f"n{i}": admin.post("/v1/nodes", json={"name": f"n{i}", "devices": devices}).json()["token"]
        for i in range(NODES)
    }
    assert admin.post("/v1/allocations").status_code == 201
    log = child.log_path
    reads_before = _version_reads(log)
    etags = {
        node: httpx.get(
            f"{url}/v1/nodes/{node}/plan", headers={"Authorization": f"Bearer {t}"}
        ).headers["ETag"]
        for node, t in tokens.items()
    }
    # One version read per node, as many times in the log as it has handlers.
    after_reads = _version_reads(log)
    per_round = after_reads - reads_before
    assert per_round >= NODES and per_round % NODES == 0, (reads_before, after_reads)

    # Each node long-polls on a connection of its own, so the kernel hands them to both
    # processes; the next solve is stored by one, and every held long-poll must wake with it.
    woken: dict[str, tuple[int, str | None, float]] = {}

    def long_poll(node: str) -> None:
        started = time.monotonic()
        r = httpx.get(
            f"{url}/v1/nodes/{node}/plan?wait=25",
            headers={"Authorization": f"Bearer {tokens[node]}", "If-None-Match": etags[node]},
            timeout=60,
        )
        woken[node] = (r.status_code, r.headers.get("ETag"), time.monotonic() - started)

    polls = [threading.Thread(target=long_poll, args=(node,)) for node in tokens]
    for poll in polls:
        poll.start()
    # Only the long-polls read plan versions now: once the log shows a read of each (one per
    # node: a long-poll held with its node's newest plan reads nothing more until woken), all
    # found plan 1 (allocation 2 is not asked for yet) and are held.
    wait_until(lambda: _version_reads(log) >= after_reads + per_round,
               "every long-poll's first read")  # fmt: skip
    assert admin.post("/v1/allocations").status_code == 201
    for poll in polls:
        poll.join(timeout=40)
    assert {node: status for node, (status, _, _) in woken.items()} == dict.fromkeys(tokens, 200)
    assert {etag for _, etag, _ in woken.values()} == {'"plan-2"'}
    assert max(after for _, _, after in woken.values()) < 10  # woken, not timed out (25 s)

    # A write through one connection is read through every other, whichever process serves it.
    for _ in range(8):
        mine = httpx.get(f"{url}/v1/allocations/current/me", headers=auth).json()
        assert mine["version"] == 2

    # Every process counts into the shared directory, and /metrics answers their sum.
    before = _healthz_count(httpx.get(f"{url}/metrics").text)
    sent = 30
    for _ in range(sent):
        assert httpx.get(f"{url}/healthz").status_code == 200  # a connection each
    assert _healthz_count(httpx.get(f"{url}/metrics").text) == before + sent
    (directory,) = _metrics_dirs(tmp_path)
    counted_by = {
        int(m.group(1)) for f in directory.iterdir() if (m := re.search(r"_(\d+)\.db$", f.name))
    }
    assert counted_by == set(workers)  # both processes served requests
    admin.close()
    child.stop()
    assert _metrics_dirs(tmp_path) == []  # removed when the server stops


def _healthz_count(text: str) -> float:
    found = re.search(
        r'^gpufair_api_requests_total\{handler="healthz",method="GET",status="200"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


def test_serve_refuses_a_worker_count_out_of_range_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpufair.cli",
            "serve",
            "--workers",
            "0",
            "--port",
            str(free_port()),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "gpufair serve: --workers must be 1 to 64, got 0"
