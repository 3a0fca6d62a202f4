"""End to end: ``gpufair gateway`` in front of three daemons, all real processes.

The cluster of :mod:`tests.executor.cluster` (``ads``'s model on two nodes, ``news``'s on one)
with ``gpufair gateway`` as a child process following the API's routing table. What a tenant
relies on: one address for its queries, with the same credential rules as on a daemon; and a
daemon killed with SIGKILL under load costs no query silently: every query sent through the
gateway is answered or gets a clear error, and once the gateway has seen the death, at least
99 % are answered.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from executor.fake import FAKE_SCHEMA
from executor.wire.routes import ModelRoutes
from gpufair.client import Client, QueryFailed
from gpufair.servers import ChildServer
from tests.api.conftest import ADMIN_TOKEN
from tests.executor.cluster import START_S, Cluster, infer, migrated, oip_request, start_cluster
from tests.executor.test_daemon_loop import ROOT

pytestmark = pytest.mark.slow

RATE_QPS = 100.0
LOAD_S = 6.0
KILL_AT_S = 2.0


def start_gateway(workdir: Path, cluster: Cluster) -> ChildServer:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
    environment["PYTHONPATH"] = str(ROOT)
    gateway = ChildServer(
        "gateway",
        ["gateway", "--api", cluster.control.url, "--token", ADMIN_TOKEN, "--host", "127.0.0.1",
         "--timeout-s", "10"],
        log_path=workdir / "gateway.log",
        env=environment,
    )  # fmt: skip
    gateway.start()
    # Ready once its table lists every model with every replica (the daemons' URLs arrive
    # with their first heartbeats).
    replicas = sum(len(nodes) for nodes in cluster.serving.values())

    def complete(_: object) -> bool:
        table = httpx.get(f"{cluster.control.url}/v1/routes", headers=cluster.api.admin).json()
        listed = sum(len(m["replicas"]) for m in table["models"].values())
        return listed == replicas and all(
            infer(gateway.url, m, k).status_code == 200
            for m, k in ((cluster.models[t], cluster.keys[t]) for t in cluster.keys)
        )

    gateway.wait_healthy(START_S, complete, every_s=0.2)
    return gateway


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated(tmp_path_factory.mktemp("template"))


@pytest.fixture
def cluster(tmp_path: Path, template: Path) -> Iterator[Cluster]:
    running = start_cluster(tmp_path, template, nodes=3, tenants={"ads": 2, "news": 1})
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def gateway(tmp_path: Path, cluster: Cluster) -> Iterator[ChildServer]:
    child = start_gateway(tmp_path, cluster)
    try:
        yield child
    finally:
        child.stop()


def test_through_the_gateway_a_tenant_reaches_its_models_and_no_other_tenants(
    cluster: Cluster, gateway: ChildServer
) -> None:
    for tenant, model in cluster.models.items():
        other = next(t for t in cluster.keys if t != tenant)
        assert infer(gateway.url, model, cluster.keys[tenant]).status_code == 200
        assert infer(gateway.url, model, cluster.keys[other]).status_code == 403
        missing = infer(gateway.url, model, None)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert infer(gateway.url, "999999", cluster.keys["ads"]).status_code == 404
    # Its log says where it listens and whose routing table it follows, as serve's and the
    # daemons' do (it said nothing: uvicorn's own lines are off).
    assert f"gateway starting on {gateway.url}" in gateway.tail(200)
    # Refused before its body (another tenant's key), a body larger than the sockets' buffers:
    # the daemon answers and closes with the body unread, which resets the gateway's upload
    # midway. The query still gets the daemon's 403, and the daemon is not held dead for it.
    large = httpx.post(
        f"{gateway.url}/v2/models/{cluster.models['ads']}/infer",
        content=bytes(16 << 20),
        headers={"Authorization": f"Bearer {cluster.keys['news']}"},
        timeout=30,
    )
    assert large.status_code == 403, large.text
    assert not httpx.get(f"{gateway.url}/healthz", timeout=10).json()["dead"]
    # The model's schema comes through too, for a key of its tenant only.
    schema = f"{gateway.url}/v1/models/{cluster.models['ads']}/schema"
    r = httpx.get(schema, timeout=10, headers={"Authorization": f"Bearer {cluster.keys['ads']}"})
    assert r.status_code == 200 and r.json() == FAKE_SCHEMA.to_dict()
    assert httpx.get(schema, timeout=10).status_code == 401


@dataclass
class Sent:
    scheduled: float
    finished: float = 0.0
    status: int = 0  # 0: no HTTP answer
    error: str = ""


def test_a_daemon_killed_under_load_loses_no_query_and_the_gateway_moves_at_once(
    cluster: Cluster, gateway: ChildServer
) -> None:
    model, key = cluster.models["ads"], cluster.keys["ads"]
    victim = cluster.daemons[sorted(cluster.serving[model])[0]]
    content, headers = oip_request(8, 1)
    headers["Authorization"] = f"Bearer {key}"
    client = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=128))
    sent: list[Sent] = []

    def send(record: Sent) -> None:
        try:
            r = client.post(f"{gateway.url}/v2/models/{model}/infer", content=content,
                            headers=headers)  # fmt: skip
            record.status = r.status_code
            if r.status_code != 200:
                record.error = r.text
        except httpx.HTTPError as exc:
            record.error = f"{exc.__class__.__name__}: {exc}"
        record.finished = time.monotonic()

    seen_dead: list[float] = []

    def watch() -> None:  # when the gateway holds the victim dead
        while not seen_dead and time.monotonic() < killed[0] + 10:
            dead = httpx.get(f"{gateway.url}/healthz", timeout=5).json()["dead"]
            if victim.url in dead:
                seen_dead.append(time.monotonic())
            time.sleep(0.005)

    killed: list[float] = []
    start = time.monotonic()
    with ThreadPoolExecutor(128) as pool:
        k = 0
        while (now := time.monotonic()) < start + LOAD_S:
            if not killed and now >= start + KILL_AT_S:
                victim.kill()  # SIGKILL, as a crash
                killed.append(time.monotonic())
                threading.Thread(target=watch, daemon=True).start()
            scheduled = start + k / RATE_QPS
            if scheduled > now:
                time.sleep(scheduled - now)
            record = Sent(scheduled)
            sent.append(record)
            pool.submit(send, record)
            k += 1
    client.close()
    assert killed and seen_dead, "the gateway never held the killed daemon dead"
    # Nothing lost silently: every query has an HTTP answer or an error that says what failed.
    assert all(s.finished > 0 and (s.status == 200 or s.error) for s in sent)
    after = [s for s in sent if s.scheduled >= seen_dead[0]]
    answered = sum(s.status == 200 for s in after)
    assert after and answered >= 0.99 * len(after), (
        f"{answered}/{len(after)} answered after the death was seen "
        f"{seen_dead[0] - killed[0]:.3f} s after the kill; failures: "
        f"{[s.error for s in after if s.status != 200][:5]}"
    )
    # The surviving replica answered everything sent after the kill too.
    total = sum(s.status == 200 for s in sent)
    assert total >= 0.99 * len(sent), [s.error for s in sent if s.status != 200][:5]


def test_the_python_client_routes_a_tenants_queries_straight_to_the_daemons(
    cluster: Cluster,
) -> None:
    model = cluster.models["ads"]
    query = FAKE_SCHEMA.random_query(np.random.default_rng(3), 12)
    with Client(cluster.control.url, api_key=cluster.keys["ads"]) as client:
        deadline = time.monotonic() + START_S
        while len(client.routes.table.models.get(model, ModelRoutes(tenant="", replicas=[]))
                  .replicas) < 2:  # fmt: skip
            assert time.monotonic() < deadline, client.routes.table
            time.sleep(0.1)
        # Its table lists its own models only.
        assert set(client.routes.table.models) == {model}
        scores = client.infer(model, query)
        assert scores.shape == (12,) and np.isfinite(scores).all()
        with pytest.raises(QueryFailed) as refused:
            client.infer(cluster.models["news"], query)
        assert refused.value.status == 404
        # A replica's daemon killed: the next queries go to the other one, none fails.
        cluster.daemons[sorted(cluster.serving[model])[0]].kill()
        for _ in range(20):
            assert client.infer(model, query) == pytest.approx(scores)
