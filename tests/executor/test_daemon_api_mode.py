"""API mode of the daemon against a tiny local control plane that mimics the API's node routes:
``GET /v1/nodes/{node}/plan`` (ETag, If-None-Match, ?wait= long-poll, bearer token),
``POST /v1/nodes/{node}/heartbeat`` and ``PUT /v1/nodes/{node}/profiles``. The daemon pulls and
applies plans, saves each one and resumes it after a restart, uploads profiles, sends
heartbeats with its SLA tallies, and keeps serving its last plan while the API is down.
(tests/executor/test_daemon_loop.py runs the same against the real API.)"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest

from allocator.cluster.plan import NodePlan
from executor.credentials import Credentials
from executor.fake import FAKE_SCHEMA, FakeBackend
from executor.metrics import ExecutorMetrics
from executor.plan_client import PlanClient, PlanState
from executor.profiles import ProfileCurve
from executor.scheduling import NodeRuntime, SchedulerConfig
from executor.scheduling.errors import NotPermitted
from executor.wire.credentials import key_digest, salted
from tests.executor.scheduling_helpers import plan, queries, seat

TOKEN = "node-secret"
SALT = "5a" * 32


class ControlPlane:
    """Serves one node's plan documents; publish() wakes waiting long-polls."""

    def __init__(self) -> None:
        self.plan: dict[str, Any] = plan([seat(0, "a")], version=1).to_dict()
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self.heartbeats: list[dict[str, Any]] = []
        self.profile_puts: list[dict[str, Any]] = []
        self.profile_status = 200
        self.heartbeat_status = 200
        self.artifact = b""
        self.credentials: dict[str, Any] = {"node": "node-a", "salt": SALT, "tenants": {}}
        self._changed = threading.Condition()
        control = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                control.requests.append((self.command, self.path, dict(self.headers)))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._reply(401, b'{"detail": "bad token"}')
                    return False
                return True

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                url = urlsplit(self.path)
                if url.path == "/v1/nodes/node-a/artifacts/7":
                    self._reply(200, control.artifact)
                    return
                if url.path == "/v1/nodes/node-a/credentials":  # no long-poll: tests call once
                    body = json.dumps(control.credentials).encode()
                    self._reply(200, body, {"ETag": f'"c-{hash(body)}"'})
                    return
                if url.path != "/v1/nodes/node-a/plan":
                    self._reply(404)
                    return
                wait = float(parse_qs(url.query).get("wait", ["0"])[0])
                deadline = time.monotonic() + wait
                with control._changed:
                    while True:
                        etag = f'"plan-{control.plan["version"]}"'
                        if self.headers.get("If-None-Match") != etag:
                            body = json.dumps(control.plan).encode()
                            self._reply(200, body, {"ETag": etag})
                            return
                        left = deadline - time.monotonic()
                        if left <= 0:
                            self._reply(304, headers={"ETag": etag})
                            return
                        control._changed.wait(left)

            def do_PUT(self) -> None:
                if not self._authorized():
                    return
                length = int(self.headers.get("Content-Length", 0))
                if urlsplit(self.path).path != "/v1/nodes/node-a/profiles":
                    self._reply(404)
                    return
                control.profile_puts.append(json.loads(self.rfile.read(length)))
                self._reply(control.profile_status, b'{"stored": 1}')

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                length = int(self.headers.get("Content-Length", 0))
                if urlsplit(self.path).path != "/v1/nodes/node-a/heartbeat":
                    self._reply(404)
                    return
                control.heartbeats.append(json.loads(self.rfile.read(length)))
                if control.heartbeat_status != 200:
                    self._reply(control.heartbeat_status, b'{"error": {"code": "forbidden"}}')
                    return
                self._reply(200, b'{"current_version": 1, "etag": "x"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, document: dict[str, Any]) -> None:
        with self._changed:
            self.plan = document
            self._changed.notify_all()

    def shut_down(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def control():
    c = ControlPlane()
    yield c
    c.shut_down()


@pytest.fixture
def runtime():
    r = NodeRuntime(FakeBackend(row_s=0, batch_s=0), SchedulerConfig(batch_max_delay_s=0))
    yield r
    r.close()


def client_for(runtime: NodeRuntime, url: str, tmp_path, **kw: Any) -> PlanClient:
    return PlanClient(
        runtime, api_url=url, node="node-a", token=TOKEN, artifact_dir=tmp_path, **kw
    )


def test_plan_pull_uses_etags_and_long_polls(control, runtime, tmp_path):
    client = client_for(runtime, control.url, tmp_path)
    assert client.poll_once() is True and runtime.plan_version == 1
    assert client.etag == '"plan-1"'
    began = time.monotonic()
    assert client.poll_once(wait_s=0.3) is False  # nothing new: 304 after the wait
    assert time.monotonic() - began >= 0.25
    method, path, headers = control.requests[-1]
    assert headers["If-None-Match"] == '"plan-1"' and "wait=0.3" in path
    threading.Timer(0.2, control.publish, [plan([seat(0, "b")], version=2).to_dict()]).start()
    began = time.monotonic()
    # Woken by the new plan after 0.2 s, not by the 60 s timeout (30 s leaves a loaded machine
    # all the slack it could need without confusing the two).
    assert client.poll_once(wait_s=60.0) is True
    assert time.monotonic() - began < 30.0
    assert runtime.plan_version == 2 and "b" in runtime.deployment.routes
    client.stop()


def test_bad_or_stale_plans_are_skipped_and_the_last_one_serves(control, runtime, tmp_path):
    client = client_for(runtime, control.url, tmp_path)
    client.poll_once()
    control.publish({"node": "node-a", "version": 5, "devices": "nope"})
    assert client.poll_once() is False and runtime.plan_version == 1
    assert client.poll_once() is False  # its ETag is remembered: not fetched again
    assert control.requests[-1][2]["If-None-Match"] == '"plan-5"'
    control.publish(plan([seat(0, "a")], version=0).to_dict())  # older than the one served
    assert client.poll_once() is False and runtime.plan_version == 1
    client.stop()


def test_a_wrong_token_is_an_error_not_a_plan(control, runtime, tmp_path):
    client = PlanClient(runtime, api_url=control.url, node="node-a", token="wrong")
    with pytest.raises(httpx.HTTPStatusError):
        client.poll_once()
    assert runtime.plan_version is None
    client.stop()


def test_background_loops_follow_plans_send_heartbeats_and_survive_the_api(
    control, runtime, tmp_path
):
    client = client_for(runtime, control.url, tmp_path, heartbeat_s=0.1, long_poll_s=1.0)
    client.start()
    try:
        deadline = time.monotonic() + 5
        while runtime.plan_version != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runtime.plan_version == 1
        q = queries(FAKE_SCHEMA, [10], seed=41)[0]
        runtime.submit("a", q).future.result(timeout=5)
        control.publish(plan([seat(0, "a"), seat(1, "c")], version=2).to_dict())
        while runtime.plan_version != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runtime.plan_version == 2
        while not control.heartbeats or control.heartbeats[-1]["plan_version"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        beat = control.heartbeats[-1]
        assert {r["model_id"] for r in beat["replicas"]} == {"a", "c"}
        assert beat["broken"] == {}
        control.shut_down()  # the API goes away: the node keeps serving its last plan
        time.sleep(0.3)
        scores = runtime.submit("c", q).future.result(timeout=5)
        assert np.isfinite(scores).all() and runtime.plan_version == 2
    finally:
        client.stop()


def test_api_artifacts_are_downloaded_and_served_from_a_file(control, runtime, tmp_path):
    control.artifact = b"torchscript bytes"
    document = plan([seat(0, "t", artifact="api:7")], version=3).to_dict()
    control.publish(document)
    loaded: list[str] = []

    class Recording(FakeBackend):
        def load(self, artifact: str, device: str):
            loaded.append(artifact)
            return super().load(artifact, device)

    runtime = NodeRuntime(Recording(), SchedulerConfig())
    try:
        client = client_for(runtime, control.url, tmp_path)
        assert client.poll_once() is True
        (artifact,) = loaded
        assert artifact.startswith("file:") and artifact.endswith(".pt")
        path = artifact.removeprefix("file:")
        assert open(path, "rb").read() == b"torchscript bytes"
        client.stop()
    finally:
        runtime.close()


def test_each_applied_plan_is_saved_and_a_restart_serves_it_before_asking_the_api(
    control, runtime, tmp_path
):
    state = tmp_path / "state"
    client = client_for(runtime, control.url, tmp_path, state_dir=state)
    assert client.poll_once() is True
    saved = json.loads((state / "plan.json").read_text())
    assert saved["etag"] == '"plan-1"' and saved["plan"]["version"] == 1
    client.stop()

    control.shut_down()  # the restarted daemon must not need the API to serve
    asked = len(control.requests)
    restarted = NodeRuntime(FakeBackend(row_s=0, batch_s=0), SchedulerConfig())
    try:
        again = client_for(restarted, control.url, tmp_path, state_dir=state)
        assert again.resume() is True
        assert restarted.plan_version == 1 and again.etag == '"plan-1"'
        assert len(control.requests) == asked
        q = queries(FAKE_SCHEMA, [6], seed=43)[0]
        assert restarted.submit("a", q).future.result(timeout=5).shape == (6,)
        again.stop()
    finally:
        restarted.close()


def test_a_resumed_plan_is_long_polled_with_its_etag(control, runtime, tmp_path):
    state = tmp_path / "state"
    first = client_for(runtime, control.url, tmp_path, state_dir=state)
    first.poll_once()
    first.stop()
    restarted = NodeRuntime(FakeBackend(row_s=0, batch_s=0), SchedulerConfig())
    try:
        again = client_for(restarted, control.url, tmp_path, state_dir=state)
        again.resume()
        assert again.poll_once() is False  # 304: the API has nothing newer
        assert control.requests[-1][2]["If-None-Match"] == '"plan-1"'
        control.publish(plan([seat(0, "a"), seat(1, "b")], version=2).to_dict())
        assert again.poll_once() is True and restarted.plan_version == 2
        assert json.loads((state / "plan.json").read_text())["etag"] == '"plan-2"'
        again.stop()
    finally:
        restarted.close()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{", "Expecting"),
        ('["not", "a", "state"]', "not a plan state"),
        ('{"format": 1, "plan": {"node": "node-a"}}', "plan.devices: missing"),
        ('{"format": 1, "etag": 5, "plan": {}}', "etag"),
        ("OTHER_NODE", "node 'node-b'"),
        ("OTHER_API", "http://elsewhere:8080"),
    ],
)
def test_a_saved_plan_that_cannot_be_used_is_logged_and_ignored(
    runtime, tmp_path, caplog, content, reason
):
    state = tmp_path / "state"
    good = PlanState(state, api_url="http://api:8080", node="node-a")
    if content == "OTHER_NODE":
        other = plan([seat(0, "a")]).to_dict() | {"node": "node-b"}
        good.save(NodePlan.from_dict(other), '"plan-1"')
    elif content == "OTHER_API":
        PlanState(state, api_url="http://elsewhere:8080", node="node-a").save(
            plan([seat(0, "a")]), '"plan-1"'
        )
    else:
        state.mkdir()
        good.path.write_text(content)
    (state / ".plan-left-by-a-kill.tmp").write_text("half")
    client = PlanClient(
        runtime, api_url="http://api:8080/", node="node-a", token=TOKEN, state_dir=state
    )
    with caplog.at_level(logging.WARNING, logger="executor.plan_client"):
        assert client.resume() is False
    assert runtime.plan_version is None and client.etag is None
    (record,) = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert reason in record.getMessage()
    assert not list(state.glob(".plan-*.tmp"))
    client.stop()


def test_the_state_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    state = PlanState(tmp_path / "state", api_url="http://api", node="node-a")
    state.save(plan([seat(0, "a")], version=1), '"plan-1"')

    def crash(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("executor.plan_client.os.replace", crash)
    with pytest.raises(OSError):
        state.save(plan([seat(0, "b")], version=2), '"plan-2"')
    monkeypatch.undo()
    loaded = state.load()
    assert loaded is not None and loaded[0].version == 1 and loaded[1] == '"plan-1"'
    assert [p.name for p in state.directory.iterdir()] == ["plan.json"]


CURVES = {
    "rmc1": ProfileCurve(qps=(100.0, 150.0), kind="cpu", sla_p99_ms=20.0),
    "din": ProfileCurve(qps=(50.0,), kind="gpu", sla_p99_ms=20.0),
}


def test_profiles_are_uploaded_once_for_each_applied_plan(control, runtime, tmp_path):
    control.publish(
        plan(
            [
                seat(0, "7", artifact="zoo:rmc1?scale=0.001", sla_ms=50),
                seat(1, "7", artifact="zoo:rmc1?scale=0.001", sla_ms=50),
                seat(2, "8", artifact="zoo:din?scale=0.001", sla_ms=50),  # a GPU curve only
            ],
            version=1,
        ).to_dict()
    )
    client = client_for(runtime, control.url, tmp_path, profiles=CURVES)
    assert client.upload_profiles() == 0 and control.profile_puts == []  # no plan yet
    client.poll_once()
    assert client.upload_profiles() == 1
    assert control.profile_puts == [
        {"profiles": [{"model_id": 7, "device": "cpu:0", "qps": [100.0, 150.0],
                       "sla_p99_ms": 20.0}], "footprints": []}
    ]
    assert client.upload_profiles() == 0 and len(control.profile_puts) == 1  # sent once

    control.profile_status = 422  # refused: logged, not sent again
    control.publish(plan([seat(0, "7", artifact="zoo:rmc1", sla_ms=50)], version=2).to_dict())
    client.poll_once()
    assert client.upload_profiles() == 0 and len(control.profile_puts) == 2
    assert client.upload_profiles() == 0 and len(control.profile_puts) == 2

    control.profile_status = 200
    control.publish(plan([seat(0, "7", artifact="zoo:rmc1", sla_ms=50)], version=3).to_dict())
    client.poll_once()
    control.shut_down()  # a transport failure keeps the upload due
    with pytest.raises(httpx.HTTPError):
        client.upload_profiles()
    client.stop()


def test_heartbeats_carry_the_sla_tallies(control, runtime, tmp_path):
    metrics = ExecutorMetrics(runtime)
    client = client_for(runtime, control.url, tmp_path, metrics=metrics)
    control.publish(plan([seat(0, "a"), seat(1, "b")], version=1).to_dict())
    client.poll_once()
    client.heartbeat()
    assert control.heartbeats[-1]["sla"] == []
    for outcome, latency in (("ok", 0.01), ("ok", 2.0), ("rejected", None), ("invalid", None)):
        metrics.observe("tenant-a", "a", outcome, latency, 1.0)
    metrics.observe("tenant-b", "b", "expired", None, 1.0)
    client.heartbeat()
    assert control.heartbeats[-1]["sla"] == [
        {"tenant": "tenant-a", "model": "a", "received": 3, "within_sla": 1},
        {"tenant": "tenant-b", "model": "b", "received": 1, "within_sla": 0},
    ]
    client.stop()


def test_a_failing_profile_upload_never_holds_plans_back(control, runtime, tmp_path):
    control.profile_status = 500
    control.publish(plan([seat(0, "7", artifact="zoo:rmc1", sla_ms=50)], version=1).to_dict())
    client = client_for(runtime, control.url, tmp_path, profiles=CURVES, long_poll_s=0.5)
    client.start()
    try:
        deadline = time.monotonic() + 5
        while runtime.plan_version != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        control.publish(plan([seat(0, "7", artifact="zoo:rmc1", sla_ms=50)], version=2).to_dict())
        while runtime.plan_version != 2 or len(control.profile_puts) < 3:
            assert time.monotonic() < deadline, (runtime.plan_version, control.profile_puts)
            time.sleep(0.02)
    finally:
        client.stop()


def test_a_plan_beyond_memory_is_refused_reported_and_its_footprints_uploaded(tmp_path):
    runtime = NodeRuntime(FakeBackend(row_s=0, batch_s=0), SchedulerConfig(memory_limit_mb=100))
    control = ControlPlane()
    control.publish(plan([seat(0, "7", artifact="fake:a?memory_mb=40")], version=1).to_dict())
    client = client_for(runtime, control.url, tmp_path)
    try:
        assert client.poll_once()
        assert client.upload_profiles() == 1
        assert control.profile_puts[-1] == {
            "profiles": [], "footprints": [{"model_id": 7, "device": "cpu:0", "memory_mb": 40}]
        }  # fmt: skip
        client.heartbeat()
        assert control.heartbeats[-1]["refused"] is None
        assert control.heartbeats[-1]["replicas"][0]["memory_mb"] == 40.0

        big = [seat(0, "7", artifact="fake:a?memory_mb=40"),
               seat(1, "8", artifact="fake:b?memory_mb=70.4")]  # fmt: skip
        control.publish(plan(big, version=2).to_dict())
        assert not client.poll_once()  # refused: version 1 serves on
        assert runtime.plan_version == 1
        assert not client.poll_once()  # the same plan is not fetched and refused again
        assert control.requests[-1][2].get("If-None-Match") == '"plan-2"'
        client.heartbeat()
        refused = control.heartbeats[-1]["refused"]
        assert refused is not None
        assert refused["version"] == 2 and refused["reason"].startswith(
            "device cpu:0 (on cpu:0) needs 70 MiB of weights (fake:b?memory_mb=70.4 70 MiB) but "
            "has room for 60 MiB"
        )
        assert control.heartbeats[-1]["plan_version"] == 1
        # What the refused plan would take, so that the next solve places it where it fits.
        assert client.upload_profiles() == 2
        assert control.profile_puts[-1]["footprints"] == [
            {"model_id": 7, "device": "cpu:0", "memory_mb": 40},
            {"model_id": 8, "device": "cpu:0", "memory_mb": 71},
        ]
    finally:
        client.stop()
        runtime.close()
        control.shut_down()


def _tallied(metrics: ExecutorMetrics) -> set[tuple[str, str]]:
    return {(t.tenant, t.model) for t in metrics.sla_tallies()}


def test_tallies_keep_only_the_pairs_of_the_served_and_the_drained_plan(
    control, runtime, tmp_path
):
    """The API accepts SLA counts only for pairs a recent plan of the node seats: a pair two
    plans back is dropped (counts and later stragglers), and a heartbeat refused with 403
    narrows the tallies to the served plan, so the next one is accepted."""
    metrics = ExecutorMetrics(runtime)
    client = client_for(runtime, control.url, tmp_path, metrics=metrics)

    def serve(version: int, *models: str) -> None:
        control.publish(plan([seat(k, m) for k, m in enumerate(models)], version=version)
                        .to_dict())
        assert client.poll_once() is True
        for m in ("a", "b", "c", "d"):
            metrics.observe(f"tenant-{m}", m, "ok", 0.01, 1.0)

    serve(1, "a", "b")
    assert _tallied(metrics) == {("tenant-a", "a"), ("tenant-b", "b")}
    serve(2, "c")  # a and b drain: their counts stay
    assert _tallied(metrics) == {("tenant-a", "a"), ("tenant-b", "b"), ("tenant-c", "c")}
    serve(3, "c", "d")  # plan 1 is two plans back
    assert _tallied(metrics) == {("tenant-c", "c"), ("tenant-d", "d")}
    assert metrics.sla_tallies()[0].received == 2  # c's counts survive both swaps
    control.heartbeat_status = 403
    serve(4, "d")
    with pytest.raises(httpx.HTTPStatusError):
        client.heartbeat()
    assert control.heartbeats[-1]["sla"][0]["tenant"] == "tenant-c"
    assert _tallied(metrics) == {("tenant-d", "d")}
    client.stop()


def test_a_plan_seating_a_tenant_the_credentials_lack_fetches_them_before_it_serves(
    control, runtime, tmp_path
):
    """The credential long-poll learns of a newly seated tenant up to a recheck late; the plan
    thread fetches the document itself first, so the new tenant's first query is not a 403."""
    keys = {"tenant-a": key_digest("key-of-a"), "tenant-b": key_digest("key-of-b")}
    credentials = Credentials()
    client = client_for(runtime, control.url, tmp_path, credentials=credentials)
    control.credentials["tenants"] = {"tenant-a": [salted(SALT, keys["tenant-a"])]}
    assert client.poll_once()  # v1 seats a: the document lacks it, so it is fetched first
    credentials.check("tenant-a", keys["tenant-a"])

    def credential_reads() -> int:
        return sum(path.startswith("/v1/nodes/node-a/credentials") for _, path, _ in
                   control.requests)  # fmt: skip

    assert credential_reads() == 1
    control.credentials["tenants"] = {t: [salted(SALT, d)] for t, d in keys.items()}
    control.publish(plan([seat(0, "a"), seat(1, "b")], version=2).to_dict())
    with pytest.raises(NotPermitted):  # the table has not been fetched yet
        credentials.check("tenant-b", keys["tenant-b"])
    assert client.poll_once()
    assert runtime.plan_version == 2
    credentials.check("tenant-b", keys["tenant-b"])  # served and accepted from the first query
    assert credential_reads() == 2
    control.publish(plan([seat(0, "b")], version=3).to_dict())
    assert client.poll_once()
    assert credential_reads() == 2  # every seated tenant known: no extra read
