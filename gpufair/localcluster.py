"""Many nodes on one machine: the API, N executor daemons on loopback ports and the gateway,
each a process of its own, registered through the REST API as an operator would.

Each daemon is ``gpufair executor --api ... --backend fake`` acting as one node with one
simulated GPU (the fake backend sleeps its service time, so N daemons cost no GPU and little
CPU); ``gpufair gateway`` follows the API's routing table in front of them. ``gpufair demo
--nodes N`` and ``gpufair bench gateway`` start their clusters here, so both run the data plane
exactly as deployed, and both stop every child however they end.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from allocator.cluster.plan import NodePlan
from gpufair.servers import ChildServer

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
START_S = 120.0  # a child's start on a busy 2-core machine
ARTIFACT = "zoo:rmc1?scale=0.0005&seed=1"  # any artifact: the fake backend serves it
INFER = "/v2/models/{model}/infer"
# One simulated GPU per node: two seats, four streams (two of them a shared pool).
NODE_DEVICES = ({"device": "cuda:0", "kind": "gpu", "memory_mb": 16000, "streams": 4,
                 "seats": 2},)  # fmt: skip


def fake_daemon_args(api_url: str, node: str, token: str, state_dir: Path, *,
                     row_us: float, batch_us: float) -> list[str]:
    """``gpufair`` arguments of node ``node``'s daemon: API mode, the fake backend, loopback
    (:class:`gpufair.servers.ChildServer` adds the port)."""
    # --token=VALUE: a random token may begin with "-".
    return ["executor", "--api", api_url, "--node", node, f"--token={token}",
            "--backend", "fake", "--fake-row-us", f"{row_us:g}", "--fake-batch-us",
            f"{batch_us:g}", "--host", "127.0.0.1", "--state-dir", str(state_dir)]  # fmt: skip


class ClusterError(RuntimeError):
    """A step of the cluster's set-up failed; the message says which and what the API said."""


@dataclass(frozen=True)
class ModelWanted:
    """One tenant's one model, as its admin registers it."""

    replicas: int
    sla_ms: float
    demand_qps: float = 100.0
    memory_mb: int = 100


class LocalCluster:
    """The API (``gpufair serve`` on SQLite under ``work``), then :meth:`start`'s daemons and
    gateway; ``stack`` stops them all. Logs: ``work/<child>.log``."""

    def __init__(self, work: Path, stack: ExitStack, *, row_us: float = 20.0,
                 batch_us: float = 500.0) -> None:  # fmt: skip
        self.work, self._stack = work, stack
        self.row_us, self.batch_us = row_us, batch_us
        self.token = secrets.token_urlsafe(24)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
        self.env.update({
            "GPUFAIR_DATABASE_URL": f"sqlite:///{(work / 'gpufair.db').resolve()}",
            "GPUFAIR_API_ADMIN_TOKEN": self.token, "GPUFAIR_API_DEV_MODE": "true",
            "GPUFAIR_EXECUTOR_HEARTBEAT_S": "0.5", "PYTHONPATH": str(ROOT),
        })  # fmt: skip
        self.api = self._child("api", ["serve", "--no-access-log"])
        self.api.wait_healthy(START_S)
        self.http = stack.enter_context(httpx.Client(
            base_url=self.api.url, timeout=60,
            headers={"Authorization": f"Bearer {self.token}"}))  # fmt: skip
        self.keys: dict[str, str] = {}  # tenant -> its API key
        self.models: dict[str, str] = {}  # tenant -> its model's id
        self.daemons: dict[str, ChildServer] = {}  # node -> its daemon
        self.serving: dict[str, list[str]] = {}  # model id -> the nodes seating it
        self.gateway: ChildServer | None = None

    def _child(self, name: str, args: list[str]) -> ChildServer:
        child = ChildServer(name, args, log_path=self.work / f"{name}.log", env=self.env)
        self._stack.enter_context(child)
        return child

    def _ok(self, response: httpx.Response, what: str) -> Any:
        if response.status_code >= 300:
            raise ClusterError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def start(self, tenants: dict[str, ModelWanted], nodes: int,
              devices: Sequence[Mapping[str, object]] = NODE_DEVICES) -> None:
        """Register the tenants, their models and ``nodes`` nodes (each with ``devices``, as
        ``POST /v1/nodes`` takes them), solve one allocation, start
        a daemon per node and the gateway; returns once every daemon serves the allocation and
        the gateway's routing table lists every replica."""
        for tenant, wanted in tenants.items():
            created = self._ok(self.http.post("/v1/tenants", json={"name": tenant}),
                               f"register tenant {tenant}")  # fmt: skip
            self.keys[tenant] = self._ok(self.http.post(f"/v1/tenants/{created['id']}/keys"),
                                         f"key of {tenant}")["key"]  # fmt: skip
            body = {"name": f"{tenant}-m", "artifact": ARTIFACT, "memory_mb": wanted.memory_mb,
                    "replicas_wanted": wanted.replicas, "sla_p99_ms": wanted.sla_ms,
                    "demand_qps": wanted.demand_qps}  # fmt: skip
            model = self._ok(self.http.post(
                "/v1/models", json=body, headers={"Authorization": f"Bearer {self.keys[tenant]}"}
            ), f"model of {tenant}")  # fmt: skip
            self.models[tenant] = str(model["id"])
        tokens = {}
        for k in range(nodes):
            node = self._ok(self.http.post("/v1/nodes", json={
                "name": f"node-{k}", "devices": list(devices)}), f"register node-{k}")
            tokens[node["name"]] = node["token"]
        self._ok(self.http.post("/v1/allocations", json={}), "solve allocation")
        for name, token in tokens.items():
            plan = NodePlan.from_dict(self._ok(self.http.get(
                f"/v1/nodes/{name}/plan", headers={"Authorization": f"Bearer {token}"}),
                f"plan of {name}"))  # fmt: skip
            for _, seat in plan.replicas():
                assert seat.replica is not None
                self.serving.setdefault(seat.replica.model_id, []).append(name)
            self.daemons[name] = self._child(name, fake_daemon_args(
                self.api.url, name, token, self.work / "state" / name,
                row_us=self.row_us, batch_us=self.batch_us))  # fmt: skip
        for daemon in self.daemons.values():
            daemon.wait_healthy(START_S, lambda health: health["plan_version"] == 1)
        # --token=VALUE: a random token may begin with "-".
        self.gateway = self._child(
            "gateway",
            ["gateway", "--api", self.api.url, f"--token={self.token}", "--host", "127.0.0.1"],
        )
        replicas = sum(len(nodes) for nodes in self.serving.values())

        def complete(_: object) -> bool:
            table = self._ok(self.http.get("/v1/routes"), "routing table")
            return sum(len(m["replicas"]) for m in table["models"].values()) == replicas

        self.gateway.wait_healthy(START_S, complete, every_s=0.2)
        time.sleep(1.0)  # the gateway's long-poll has the complete table by now
        log.info("cluster up: %d nodes, gateway %s", nodes, self.gateway.url)

    def gateway_url(self) -> str:
        if self.gateway is None:
            raise ClusterError("the gateway runs only once the cluster has started")
        return self.gateway.url

    def dead_seen(self, daemon: ChildServer) -> bool:
        """Whether the gateway's ``/healthz`` holds ``daemon`` dead now."""
        health = httpx.get(f"{self.gateway_url()}/healthz", timeout=5).json()
        return daemon.url in health["dead"]
