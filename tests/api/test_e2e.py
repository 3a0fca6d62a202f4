"""End to end: ``gpufair serve`` in a subprocess on 127.0.0.1, driven over HTTP like a cluster.

The first start upgrades the empty SQLite database (development mode); a tenant registers a
model, a node registers, the admin solves, and the node pulls its plan with an ETag, gets 304
for it, and wakes from a long-poll as soon as the next allocation is stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from allocator import NodePlan
from gpufair.commands.serve import GRACEFUL_SHUTDOWN_S
from gpufair.servers import ChildServer, free_port
from tests.waiting import wait_until

TOKEN = "e2e-admin-token-91b2"


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
    env.update(
        GPUFAIR_DATABASE_URL=f"sqlite:///{tmp_path / 'var' / 'gpufair.db'}",
        GPUFAIR_API_ADMIN_TOKEN=TOKEN,
        GPUFAIR_ALLOCATOR_TIME_LIMIT_S="5",
        **extra,
    )
    return env


# What every read of a node's plan version sends (api.services.plans.current_version), as the
# server's statement log (GPUFAIR_DATABASE_ECHO) shows it: how the test sees that a long-poll
# made its first read and is held, without a guess of how long that takes.
VERSION_READ = "max(node_plans.version)"
# What every read of the routing table sends (api.services.dataplane.routing_table).
ROUTES_READ = "allocations.tenant_ids"


def _version_reads(log: Path) -> int:
    return log.read_text(errors="replace").count(VERSION_READ)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    env = _environment(tmp_path, GPUFAIR_API_DEV_MODE="true", GPUFAIR_DATABASE_ECHO="true")
    with ChildServer("gpufair serve", ["serve", "--no-access-log"],
                     log_path=tmp_path / "serve.log", env=env, cwd=tmp_path) as child:
        child.wait_healthy(60)
        yield child.url


def test_register_solve_and_pull_the_plan(server: str, tmp_path: Path) -> None:
    admin = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    ready = admin.get("/readyz")
    assert ready.json()["schema_revision"] is not None
    assert "server" not in ready.headers  # no banner naming what serves the API
    tenant = admin.post("/v1/tenants", json={"name": "ads", "criterion": "efm"}).json()
    key = admin.post(f"/v1/tenants/{tenant['id']}/keys").json()["key"]
    tenant_client = httpx.Client(
        base_url=server, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    model = tenant_client.post(
        "/v1/models",
        json={
            "name": "ranker",
            "artifact": "zoo:rmc2?scale=0.1&seed=7",
            "memory_mb": 800,
            "replicas_wanted": 2,
            "sla_p99_ms": 25,
            "demand_qps": 600,
        },
    ).json()
    devices = [{"device": "cpu:0", "kind": "cpu", "memory_mb": 8000, "streams": 4, "seats": 2}]
    node_token = admin.post("/v1/nodes", json={"name": "edge-1", "devices": devices}).json()[
        "token"
    ]
    node = httpx.Client(
        base_url=server, headers={"Authorization": f"Bearer {node_token}"}, timeout=60
    )

    assert admin.post("/v1/allocations").status_code == 201
    r = node.get("/v1/nodes/edge-1/plan")
    assert r.status_code == 200
    etag = r.headers["ETag"]
    plan = NodePlan.from_dict(r.json())
    assert plan.version == 1
    replicas = [s.replica for _, s in plan.replicas() if s.replica is not None]
    assert len(replicas) == len(plan.replicas())
    assert [r.model_id for r in replicas] == [str(model["id"])] * len(replicas)
    assert replicas[0].artifact == "zoo:rmc2?scale=0.1&seed=7"
    assert node.get("/v1/nodes/edge-1/plan", headers={"If-None-Match": etag}).status_code == 304

    woke: dict[str, object] = {}

    def long_poll() -> None:
        started = time.monotonic()
        response = node.get("/v1/nodes/edge-1/plan?wait=20", headers={"If-None-Match": etag})
        woke.update(
            status=response.status_code,
            etag=response.headers.get("ETag"),
            after=time.monotonic() - started,
        )

    log = tmp_path / "serve.log"
    reads = _version_reads(log)
    assert reads > 0  # the statement log shows the version reads of the requests above
    poller = threading.Thread(target=long_poll)
    poller.start()
    # Only the long-poll reads a plan version now: once its read is in the log it found plan 1
    # (allocation 2 is not asked for yet) and is held.
    wait_until(lambda: _version_reads(log) > reads, "the long-poll's first read")
    assert admin.post("/v1/allocations").status_code == 201
    poller.join(timeout=30)
    assert woke["status"] == 200 and woke["etag"] == '"plan-2"'
    after = woke["after"]  # woken by the new allocation, not by the 20 s timeout
    assert isinstance(after, float) and after < 10

    mine = tenant_client.get("/v1/allocations/current/me").json()
    assert mine["version"] == 2 and {s["model_id"] for s in mine["seats"]} == {str(model["id"])}
    heartbeat = node.post("/v1/nodes/edge-1/heartbeat", json={"plan_version": 2}).json()
    assert heartbeat == {"current_version": 2, "etag": '"plan-2"'}
    for client in (admin, tenant_client, node):
        client.close()


def test_serve_refuses_a_database_behind_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpufair.cli", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=_environment(tmp_path, GPUFAIR_API_DEV_MODE="false"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("gpufair serve: database schema is at")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://gpufair:secret@localhost/gpufair", "unsupported database 'mysql'"),
    ("postgresql+asyncpg://gpufair@localhost/gpufair", "driver 'asyncpg' is not installed"),
])
def test_serve_refuses_a_database_it_cannot_use_in_one_line(
    tmp_path: Path, url: str, says: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpufair.cli", "serve", "--port", str(free_port())],
        cwd=tmp_path, env={**_environment(tmp_path), "GPUFAIR_DATABASE_URL": url},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


def test_sigterm_ends_held_long_polls_within_the_graceful_shutdown(tmp_path: Path) -> None:
    """A long-poll held at SIGTERM (a router's routes, a node's plan: up to 30 s) kept `gpufair
    serve` running for its whole wait, 22-27 s, near the pod's default grace of 30 s. Requests
    get GRACEFUL_SHUTDOWN_S to finish; a long-poll still held then is cut, and its client
    retries elsewhere."""
    env = _environment(tmp_path, GPUFAIR_API_DEV_MODE="true", GPUFAIR_DATABASE_ECHO="true")
    log = tmp_path / "serve.log"
    with ChildServer("gpufair serve", ["serve", "--no-access-log"], log_path=log, env=env,
                     cwd=tmp_path) as child:  # fmt: skip
        child.wait_healthy(60)
        admin = {"Authorization": f"Bearer {TOKEN}"}
        first = httpx.get(f"{child.url}/v1/routes", headers=admin, timeout=30)
        reads = log.read_text(errors="replace").count(ROUTES_READ)
        assert first.status_code == 200 and reads > 0
        answers: list[int] = []

        def long_poll() -> None:
            headers = {**admin, "If-None-Match": first.headers["ETag"]}
            try:
                answers.append(httpx.get(f"{child.url}/v1/routes?wait=30", headers=headers,
                                         timeout=60).status_code)  # fmt: skip
            except httpx.HTTPError:
                answers.append(0)  # cut by the shutdown

        held = threading.Thread(target=long_poll)
        held.start()
        wait_until(lambda: log.read_text(errors="replace").count(ROUTES_READ) > reads,
                   "the long-poll's first read")  # fmt: skip
        began = time.monotonic()
        child.process.send_signal(signal.SIGTERM)
        # uvicorn ends by raising the signal again once it has shut down: -SIGTERM.
        assert child.process.wait(60) in (0, -signal.SIGTERM)
        stopped_s = time.monotonic() - began
        held.join(60)
    assert stopped_s < GRACEFUL_SHUTDOWN_S + 10, stopped_s
    assert answers in ([0], [304]), answers
