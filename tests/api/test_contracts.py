"""One typed contract per seam, used by both sides.

The daemon talks to the real API app here, in process: its HTTP client's transport hands every
request to the app's test client. So what the daemon builds — a heartbeat, a profile upload —
is what the API validates, and what the API stores — a plan, a certificate — is what the other
side parses. Each contract round-trips (built on one side, sent as JSON, parsed on the other,
the same object), a malformed body is a 422 naming its field, and the allocation routes' OpenAPI
schema names the certificate's fields.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.orm import Session

from allocator import (
    CertificateDocument,
    NodePlan,
    SolveOptions,
    ThroughputCurve,
    divide,
    instance_from_dict,
    parse_certificate,
    parse_throughput_curve,
)
from allocator.cluster.plan import seat_entry
from api.services.allocations import read_solve_input
from executor.fake import FakeBackend
from executor.metrics import ExecutorMetrics
from executor.plan_client import PlanClient
from executor.profiles import ProfileCurve, parse_profile_curve, plan_profiles
from executor.scheduling import NodeRuntime, SchedulerConfig
from executor.wire.heartbeat import MAX_REASON_CHARS, Heartbeat, parse_heartbeat
from executor.wire.names import MAX_ID
from executor.wire.profiles import ProfileEntry, ProfilesPut, parse_profiles_put
from gpufair.settings import Settings
from tests.api.conftest import Api, seat_on_node

# A curve of the architecture the test models use (conftest's Api.model: zoo:rmc1, 20 ms SLA).
CURVES = {"rmc1": ProfileCurve(qps=(100.0, 150.0, 180.0), kind="gpu", sla_p99_ms=10.0)}


def _forward(client: TestClient) -> httpx.MockTransport:
    """A transport that hands each of the daemon's requests to the API app."""

    def handle(request: httpx.Request) -> httpx.Response:
        headers = {
            key: request.headers[key]
            for key in ("authorization", "content-type", "if-none-match")
            if key in request.headers
        }
        answer = client.request(
            request.method,
            request.url.raw_path.decode(),
            headers=headers,
            content=request.content,
        )
        kept = {k: answer.headers[k] for k in ("etag", "content-type") if k in answer.headers}
        return httpx.Response(answer.status_code, headers=kept, content=answer.content)

    return httpx.MockTransport(handle)


@pytest.fixture
def runtime() -> Iterator[NodeRuntime]:
    r = NodeRuntime(FakeBackend(row_s=0, batch_s=0), SchedulerConfig(batch_max_delay_s=0))
    yield r
    r.close()


def _daemon(
    runtime: NodeRuntime, transport: httpx.BaseTransport, token: str, tmp_path: Path, **kw: Any
) -> PlanClient:
    return PlanClient(
        runtime,
        api_url="http://api.test",
        node="n1",
        token=token,
        artifact_dir=tmp_path,
        transport=transport,
        **kw,
    )


def _solve_input(settings: Settings) -> Any:
    engine = sqlalchemy.create_engine(settings.database.url)
    try:
        with Session(engine) as session:
            return read_solve_input(session=session, objective="utilitarian")
    finally:
        engine.dispose()


def test_what_the_daemon_builds_the_api_takes_and_what_the_api_stores_the_daemon_reads(
    api: Api, settings: Settings, runtime: NodeRuntime, tmp_path: Path
) -> None:
    _, key = api.tenant("ads")
    model = str(api.model(key, "ranker")["id"])
    _, token = api.node("n1")
    api.solve()
    # The metrics' clock stands still, so the served window a report states is the same each
    # time the daemon builds one.
    clock = [1000.0]
    metrics = ExecutorMetrics(runtime, clock=lambda: clock[0])
    daemon = _daemon(
        runtime, _forward(api.client), token, tmp_path, metrics=metrics, profiles=CURVES
    )
    try:
        # The plan: stored by the API, parsed by the daemon with the format's one parser; the
        # API's own reading of it (the tenant's seats and pool streams) is the daemon's.
        assert daemon.poll_once() is True
        plan = runtime.deployment.plan if runtime.deployment is not None else None
        assert plan is not None and plan.version == 1 and plan.replicas()
        served = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token)).json()
        assert NodePlan.from_dict(served) == plan
        assert json.loads(json.dumps(plan.to_dict())) == served
        mine = api.client.get("/v1/allocations/current/me", headers=api.bearer(key)).json()
        assert sorted(
            (s["device"], s["seat"], s["model_id"], s["dedicated_streams"], s["pool_streams"])
            for s in mine["seats"]
        ) == sorted(
            (d.device, s.seat, model, s.dedicated_streams, d.pool_streams(s))
            for d, s in plan.replicas()
        )

        # The profiles: the daemon's entries reach the snapshot as the allocator's curve, with
        # the bound they were measured against.
        devices = sorted({d.device for d, _ in plan.replicas()})
        assert daemon.upload_profiles() == len(devices)
        (snapshot_model,) = _solve_input(settings).snapshot.models
        assert snapshot_model.profiles == {
            f"n1/{device}": ThroughputCurve(
                qps=CURVES["rmc1"].qps, measured=True, sla_p99_ms=CURVES["rmc1"].sla_p99_ms
            )
            for device in devices
        }

        # The heartbeat: the report the API keeps is the daemon's, read back by the same model.
        metrics.observe("ads", model, "ok", 0.001, 0.02)
        metrics.observe("ads", model, "rejected", None, 0.02)
        clock[0] += 20
        daemon.heartbeat()
        report = api.client.get("/v1/nodes/n1", headers=api.admin).json()["report"]
        assert parse_heartbeat(report) == daemon.report()
        assert report["sla"] == [{"tenant": "ads", "model": model, "received": 2, "within_sla": 1}]
        assert report["served"] == [{"tenant": "ads", "model": model, "window_s": 20.0,
                                      "received": 2, "within_sla": 1, "answered": 1,
                                      "p99_ms": 1.0}]
    finally:
        daemon.stop()


# --- heartbeats ---------------------------------------------------------------------------------


def _heartbeat(runtime: NodeRuntime) -> Heartbeat:
    """A heartbeat as the daemon builds it: two replicas, one of them broken, SLA tallies."""
    runtime.apply(
        NodePlan.single_cpu_device(
            [
                seat_entry(0, model_id="7", tenant="ads", artifact="fake:ranker", sla_p99_ms=20),
                seat_entry(
                    1,
                    model_id="8",
                    tenant="feed",
                    artifact="fake:" + "x" * MAX_REASON_CHARS + "?fail=load",
                    sla_p99_ms=20,
                ),
            ],
            node="n1",
        )
    )
    metrics = ExecutorMetrics(runtime)
    metrics.observe("ads", "7", "ok", 0.001, 0.02)
    metrics.observe("feed", "8", "failed", None, 0.02)
    daemon = PlanClient(runtime, api_url="http://api.test", node="n1", token="t", metrics=metrics)
    try:
        return daemon.report()
    finally:
        daemon.stop()


def test_a_heartbeat_round_trips_and_a_load_error_is_clipped_to_the_contract(
    api: Api, settings: Settings, runtime: NodeRuntime
) -> None:
    heartbeat = _heartbeat(runtime)
    assert len(heartbeat.broken["8"]) == MAX_REASON_CHARS  # clipped, so the API takes it
    body = json.loads(json.dumps(heartbeat.model_dump(mode="json")))
    assert parse_heartbeat(body) == heartbeat
    _, token = api.node("n1")
    seat_on_node(settings.database.url, "n1", [("ads", "7"), ("feed", "8")])  # as served
    r = api.client.post("/v1/nodes/n1/heartbeat", json=body, headers=api.bearer(token))
    assert r.status_code == 200, r.text
    report = api.client.get("/v1/nodes/n1", headers=api.admin).json()["report"]
    assert report == body


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("replicas", 0, "seat"), -1, "replicas[0].seat"),
        (("replicas", 0, "busy_s"), "slow", "replicas[0].busy_s"),
        (("sla", 0, "within_sla"), 10**6, "sla[0].within_sla"),
        (("sla", 1, "tenant"), "", "sla[1].tenant"),
        (("broken", "8"), "x" * (MAX_REASON_CHARS + 1), "broken.8"),
        (("plan_version",), -1, "plan_version"),
        (("uptime_s",), 5, "uptime_s"),
    ],
)
def test_a_malformed_heartbeat_is_refused_by_both_sides_naming_the_field(
    api: Api, runtime: NodeRuntime, path: tuple[str | int, ...], value: Any, field: str
) -> None:
    body = _heartbeat(runtime).model_dump(mode="json")
    parent: Any = body
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    _, token = api.node("n1")
    r = api.client.post("/v1/nodes/n1/heartbeat", json=body, headers=api.bearer(token))
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.json()
    with pytest.raises(ValidationError) as refused:
        parse_heartbeat(body)
    assert refused.value.errors()[0]["loc"] == path


def test_a_heartbeat_the_contract_refuses_is_not_sent(runtime: NodeRuntime) -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    metrics = ExecutorMetrics(runtime)
    metrics.observe("t" * 65, "7", "ok", 0.001, 0.02)  # longer than a tenant name can be
    daemon = PlanClient(
        runtime,
        api_url="http://api.test",
        node="n1",
        token="t",
        metrics=metrics,
        transport=httpx.MockTransport(answer),
    )
    try:
        with pytest.raises(ValidationError):
            daemon.heartbeat()
        assert sent == [] and daemon.heartbeats_sent == 0
    finally:
        daemon.stop()


# --- profiles -----------------------------------------------------------------------------------


def _upload() -> ProfilesPut:
    """A profile upload as the daemon builds it."""
    plan = NodePlan.from_dict(
        {
            "node": "n1",
            "version": 1,
            "devices": [
                {"device": "cuda:0", "kind": "gpu", "streams": 2, "shared_pool_streams": 0,
                 "seats": [seat_entry(0, model_id="1", tenant="ads", artifact="zoo:rmc1",
                                      sla_p99_ms=20.0)]},
            ],
        }
    )  # fmt: skip
    return ProfilesPut(profiles=plan_profiles(CURVES, plan))


def test_a_profile_upload_round_trips_and_its_curves_are_the_allocators() -> None:
    upload = _upload()
    assert upload.profiles == [
        ProfileEntry(model_id=1, device="cuda:0", qps=(100.0, 150.0, 180.0),
                     sla_p99_ms=CURVES["rmc1"].sla_p99_ms)
    ]
    assert parse_profiles_put(json.loads(json.dumps(upload.model_dump(mode="json")))) == upload
    # The profile file's curve is the allocator's curve, and both read back as written.
    curve = CURVES["rmc1"]
    assert isinstance(curve, ThroughputCurve)
    assert parse_profile_curve(json.loads(json.dumps(curve.to_dict())), "rmc1") == curve
    plain = ThroughputCurve(qps=curve.qps, measured=True)
    document = json.loads(json.dumps({"qps": list(plain.qps), "measured": True}))
    assert parse_throughput_curve(document) == plain


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("profiles", 0, "qps"), [100, 90], "profiles[0].qps"),
        (("profiles", 0, "qps"), [100, True], "profiles[0].qps[1]"),
        (("profiles", 0, "qps"), [100, "150"], "profiles[0].qps[1]"),
        (("profiles", 0, "qps"), [-1], "profiles[0].qps[0]"),
        (("profiles", 0, "qps"), [1.0] * 1025, "profiles[0].qps"),
        (("profiles", 0, "model_id"), 0, "profiles[0].model_id"),
        (("profiles", 0, "device"), "GPU0", "profiles[0].device"),
        (("profiles", 0, "measured"), True, "profiles[0].measured"),
        (("profiles", 0, "sla_p99_ms"), 0, "profiles[0].sla_p99_ms"),
        (("profiles", 0, "sla_p99_ms"), "fast", "profiles[0].sla_p99_ms"),
    ],
)
def test_a_malformed_profile_upload_is_refused_by_both_sides_naming_the_field(
    api: Api, path: tuple[str | int, ...], value: Any, field: str
) -> None:
    body = _upload().model_dump(mode="json")
    body["profiles"][0][path[-1]] = value
    _, token = api.node("n1")
    r = api.client.put("/v1/nodes/n1/profiles", json=body, headers=api.bearer(token))
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.json()
    with pytest.raises(ValidationError) as refused:
        parse_profiles_put(body)
    assert refused.value.errors()[0]["loc"][: len(path)] == path


def test_the_daemon_builds_no_entry_the_api_would_refuse(caplog: pytest.LogCaptureFixture) -> None:
    plan = NodePlan.single_cpu_device(
        [seat_entry(0, model_id=str(MAX_ID + 1), tenant="ads", artifact="zoo:rmc1",
                    sla_p99_ms=20.0)],
        node="n1",
    )  # fmt: skip
    curves = {"rmc1": ProfileCurve(qps=(1.0,), kind="cpu", sla_p99_ms=10.0)}
    with caplog.at_level(logging.WARNING, logger="executor.profiles"):
        assert plan_profiles(curves, plan) == []
    assert f"model {MAX_ID + 1} on cpu:0" in caplog.text and "model_id" in caplog.text


# --- the certificate ----------------------------------------------------------------------------

INSTANCE = {
    "agents": [{"name": "ads", "criterion": "prop_alpha", "weight": 1.0},
               {"name": "feed", "criterion": "ef1"}],
    "indivisible": ["seat-0", "seat-1"],
    "divisible": ["pool-0"],
    "values": {"ads": {"seat-0": 3, "seat-1": 1, "pool-0": 6},
               "feed": {"seat-0": 2, "seat-1": 2, "pool-0": 2}},
    "objective": "utilitarian",
}  # fmt: skip


def test_the_certificate_document_round_trips_exactly() -> None:
    certificate = divide(instance_from_dict(INSTANCE), SolveOptions(time_limit_s=20)).certificate
    document = certificate.to_dict()
    parsed = parse_certificate(json.loads(json.dumps(document)))
    assert parsed == certificate.document()
    assert parsed.model_dump() == document  # "lambda", not the attribute's name
    assert document["lambda"] == certificate.lambda_ef
    assert document["agents"]["feed"]["lambda"] == certificate.agents["feed"].lam
    with pytest.raises(ValidationError) as refused:
        parse_certificate(document | {"agents": {"ads": {**document["agents"]["ads"], "x": 1}}})
    assert refused.value.errors()[0]["loc"] == ("agents", "ads", "x")


def _stored_certificate(settings: Settings, allocation_id: int) -> Any:
    engine = sqlalchemy.create_engine(settings.database.url)
    try:
        with engine.connect() as connection:
            text = sqlalchemy.text("SELECT certificate FROM allocations WHERE id = :id")
            stored = connection.execute(text, {"id": allocation_id}).scalar_one()
    finally:
        engine.dispose()
    return json.loads(stored) if isinstance(stored, str) else stored


def test_the_allocation_routes_return_the_stored_certificate_as_it_is(
    api: Api, settings: Settings
) -> None:
    _, ads = api.tenant("ads")
    _, feed = api.tenant("feed")
    api.model(ads, "ranker")
    api.model(feed, "ranker")
    api.node("n1")
    created = api.solve()
    stored = _stored_certificate(settings, created["id"])
    assert created["certificate"] == stored
    assert (
        api.client.get("/v1/allocations/current", headers=api.admin).json()["certificate"] == stored
    )
    assert CertificateDocument.model_validate(stored).model_dump(mode="json") == stored
    mine = api.client.get("/v1/allocations/current/me", headers=api.bearer(ads)).json()
    own = stored["agents"]["ads"]
    assert mine["certificate"] == {**own, "envy": {"other-1": own["envy"]["feed"]}}


def test_the_openapi_schema_names_the_certificates_fields(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return components[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def response(path: str, method: str, status: str) -> dict[str, Any]:
        content = schema["paths"][path][method]["responses"][status]["content"]
        return resolve(content["application/json"]["schema"])

    for path, method, status in [
        ("/v1/allocations", "post", "201"),
        ("/v1/allocations/current", "get", "200"),
        ("/v1/allocations/{allocation}", "get", "200"),
    ]:
        certificate = resolve(response(path, method, status)["properties"]["certificate"])
        fields = set(certificate["properties"])
        assert {"fair", "relaxed", "violations", "agents", "lambda", "lambda_lower_bound",
                "notes"} <= fields, path
        assert "holds" not in fields, path
        row = resolve(certificate["properties"]["agents"]["additionalProperties"])
        assert {"holds", "slack", "lambda", "envy"} <= set(row["properties"]), path
    own = response("/v1/allocations/current/me", "get", "200")["properties"]["certificate"]
    assert {"holds", "slack", "lambda", "envy"} <= set(resolve(own)["properties"])
