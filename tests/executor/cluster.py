"""A data plane of real processes for end-to-end tests: the API and N daemons on loopback ports.

The API is the real app (SQLite made by the real migrations) on uvicorn in the test process
(:class:`tests.executor.test_daemon_loop.ControlPlane`); each daemon is ``gpufair executor
--api ... --backend fake`` in a child process of its own, on a port of its own, acting as one
node (the fake backend sleeps its service time: no torch to import, so N daemons start in
seconds on a busy machine). Tenants, models and nodes are registered through the REST API and
one allocation is solved, as an operator would.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import migrations
from allocator import NodePlan
from executor.codec import query_to_oip
from executor.fake import FAKE_SCHEMA
from executor.wire import oip
from gpufair.localcluster import ARTIFACT, NODE_DEVICES, fake_daemon_args
from gpufair.servers import ChildServer
from tests.api.conftest import Api
from tests.executor.test_daemon_loop import ROOT, ControlPlane

START_S = 60.0  # a fake daemon's start on a busy 2-core machine


def migrated(directory: Path) -> Path:
    path = directory / "gpufair.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


def oip_request(candidates: int, seed: int) -> tuple[bytes, dict[str, str]]:
    """A binary Open Inference Protocol query of the fake models' schema, and its headers."""
    query = FAKE_SCHEMA.random_query(np.random.default_rng(seed), candidates)
    content, header_length = query_to_oip(query)
    headers = {"content-type": oip.BINARY_CONTENT_TYPE}
    if header_length is not None:
        headers[oip.HEADER_LENGTH] = str(header_length)
    return content, headers


class FakeDaemon(ChildServer):
    """``gpufair executor`` in API mode with the fake backend, as one node."""

    def __init__(self, workdir: Path, api_url: str, node: str, token: str) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
        environment["GPUFAIR_EXECUTOR_HEARTBEAT_S"] = "0.5"
        environment["PYTHONPATH"] = str(ROOT)
        args = [*fake_daemon_args(api_url, node, token, workdir / "state" / node,
                                  row_us=20, batch_us=500), "--fronts", "1"]
        super().__init__(
            f"executor {node}", args, log_path=workdir / f"executor-{node}.log", env=environment
        )
        self.node = node


@dataclass
class Cluster:
    """The API, the tenants' keys, the models' ids and the daemons of :func:`start_cluster`."""

    control: ControlPlane
    api: Api
    keys: dict[str, str]  # tenant -> API key
    models: dict[str, str]  # tenant -> its model's id
    daemons: dict[str, FakeDaemon] = field(default_factory=dict)  # node -> its daemon
    serving: dict[str, set[str]] = field(default_factory=dict)  # model id -> nodes seating it

    def tenant_id(self, tenant: str) -> int:
        me = self.api.client.get("/v1/tenants/me", headers=self.api.bearer(self.keys[tenant]))
        return int(me.json()["id"])

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()
        self.control.stop()


def start_cluster(
    workdir: Path, template: Path, *, nodes: int, tenants: dict[str, int]
) -> Cluster:
    """The API and ``nodes`` fake daemons, one GPU of two seats each, serving one model per
    tenant with the given replica counts; every daemon is serving the allocation on return."""
    db = workdir / "gpufair.db"
    shutil.copy(template, db)
    control = ControlPlane(db)
    control.start()
    api = control.admin()
    keys, models = {}, {}
    for tenant, replicas in tenants.items():
        _, keys[tenant] = api.tenant(tenant)
        models[tenant] = str(
            api.model(keys[tenant], f"{tenant}-ranker", artifact=ARTIFACT, memory_mb=100,
                      replicas_wanted=replicas, sla_p99_ms=200.0, demand_qps=100.0)["id"]
        )  # fmt: skip
    tokens = {}
    for k in range(nodes):
        name = f"node-{k}"
        r = api.client.post("/v1/nodes", json={"name": name, "devices": list(NODE_DEVICES)},
                            headers=api.admin)  # fmt: skip
        assert r.status_code == 201, r.text
        tokens[name] = r.json()["token"]
    cluster = Cluster(control, api, keys, models)
    try:
        api.solve()
        for name, token in tokens.items():
            plan = api.client.get(f"/v1/nodes/{name}/plan", headers=api.bearer(token)).json()
            for _, seat in NodePlan.from_dict(plan).replicas():
                assert seat.replica is not None
                cluster.serving.setdefault(seat.replica.model_id, set()).add(name)
            cluster.daemons[name] = FakeDaemon(workdir, control.url, name, token)
            cluster.daemons[name].start()
        for daemon in cluster.daemons.values():
            daemon.wait_healthy(START_S, lambda health: health["plan_version"] == 1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def infer(url: str, model: str, key: str | None, seed: int = 0, **kw: Any) -> httpx.Response:
    """One binary OIP query to ``url`` (a daemon or a gateway) with ``key``, or none."""
    content, headers = oip_request(8, seed)
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{url}/v2/models/{model}/infer", content=content, headers=headers,
                      timeout=kw.pop("timeout", 30), **kw)  # fmt: skip
