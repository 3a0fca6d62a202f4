"""The daemon end to end: a real uvicorn server on 127.0.0.1 with a free port, a real zoo model,
JSON and binary bodies, 4xx for bad input, 404, 429 with Retry-After, /healthz, /metrics, and
the command's refusal of a bad plan file."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from executor import codec
from executor.daemon import ERROR_ANSWERS, answer_error, create_app
from executor.fake import FAKE_SCHEMA, FakeBackend, FakeModel
from executor.features import Batch, Query
from executor.scheduling import (
    DeadlineExceeded,
    DeviceScheduler,
    GroupClosed,
    ModelFailed,
    ModelUnavailable,
    NodeRuntime,
    Overloaded,
    SchedulerConfig,
    SchedulingError,
    SessionGroup,
    SwapReport,
    UnknownModel,
)
from executor.scheduling.backend import RuntimeBackend
from executor.wire import oip
from gpufair.commands import executor as executor_command
from tests.executor.scheduling_helpers import plan, queries, seat
from tests.servers import BackgroundServer

ZOO = "zoo:rmc2?scale=0.001&seed=3&user_tables=28"


@contextmanager
def _serving_zoo() -> Iterator[tuple[httpx.Client, NodeRuntime]]:
    """A daemon serving the zoo model "rank" of tenant "ads", and a client of it."""
    runtime = NodeRuntime(RuntimeBackend(), SchedulerConfig(max_batch_candidates=256))
    runtime.apply(plan([seat(0, "rank", artifact=ZOO, tenant="ads", dedicated=1)], pool=1))
    with BackgroundServer(create_app(runtime)) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client, runtime
    runtime.close()


@pytest.fixture(scope="module")
def zoo_server():
    with _serving_zoo() as served:
        yield served


def direct(runtime: NodeRuntime, query) -> np.ndarray:
    """A plain single-query forward on a fresh session, outside the scheduler."""
    return runtime.group("rank").model.session().run(Batch.of([query]))


def test_json_bodies_score_like_a_direct_forward(zoo_server):
    client, runtime = zoo_server
    schema = runtime.group("rank").model.schema
    for query in queries(schema, [1, 7, 300, 700], seed=21):
        expected = direct(runtime, query)
        reply = client.post("/v1/models/rank/infer", json=codec.query_to_json(query))
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(reply.json()["scores"], expected, atol=1e-5)


def test_open_inference_protocol_bodies_score_like_a_direct_forward(zoo_server):
    client, runtime = zoo_server
    schema = runtime.group("rank").model.schema
    paths = ("/v2/models/rank/infer", "/v2/models/rank/versions/1/infer")
    for k, query in enumerate(queries(schema, [1, 120, 700], seed=27)):
        expected = direct(runtime, query)
        for binary in (True, False):
            body, header_length = codec.query_to_oip(query, binary=binary)
            headers = {} if header_length is None else {oip.HEADER_LENGTH: str(header_length)}
            reply = client.post(paths[k % 2], content=body, headers=headers)
            assert reply.status_code == 200, reply.text
            returned = reply.headers.get(oip.HEADER_LENGTH)
            assert (returned is not None) == binary
            scores = oip.decode_reply(reply.content, None if returned is None else int(returned))
            np.testing.assert_allclose(scores["scores"], expected, atol=1e-5)
    meta = client.get("/v2/models/rank").json()
    assert (meta["name"], meta["versions"]) == ("rank", ["1"])
    assert meta["inputs"] == codec.tensor_metadata(schema)[0]
    assert client.get("/v2/models/rank/ready").status_code == 200
    assert client.get("/v2/models/nope/ready").status_code == 404
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]


def test_open_inference_protocol_refusals_name_the_problem(zoo_server):
    client, runtime = zoo_server
    query = queries(runtime.group("rank").model.schema, [3], seed=28)[0]
    body, header_length = codec.query_to_oip(query)
    cases = [
        ({"Content-Encoding": "gzip", oip.HEADER_LENGTH: str(header_length)}, 415, "encoding"),
        ({oip.HEADER_LENGTH: "ten"}, 400, oip.HEADER_LENGTH),
        ({oip.HEADER_LENGTH: "¹".encode("latin-1")}, 400, "byte count in ASCII digits"),
        ({oip.HEADER_LENGTH: str(len(body) + 1)}, 400, "not within the body"),
        ({oip.HEADER_LENGTH: str(len(body))}, 400, "JSON"),
        ({}, 400, "JSON"),
    ]
    for headers, status, needle in cases:
        reply = client.post("/v2/models/rank/infer", content=body, headers=headers)
        assert reply.status_code == status, (needle, reply.text)
        assert needle.lower() in reply.json()["error"].lower()


def test_concurrent_requests_each_get_their_own_exact_scores(zoo_server):
    """Requests sent at once, whatever batches and splits the scheduler makes of them, each
    get their own query's scores (that it batches them is test_scheduler's and
    test_scheduling_rules' to show: on real threads a batch count would be timing)."""
    client, runtime = zoo_server
    schema = runtime.group("rank").model.schema
    batch = queries(schema, [3, 50, 120, 9, 260, 40, 5, 80], seed=22)
    replies: dict[int, list[float]] = {}

    def ask(k: int) -> None:
        body, header_length = codec.query_to_oip(batch[k])
        r = client.post(
            "/v2/models/rank/infer",
            content=body,
            headers={oip.HEADER_LENGTH: str(header_length)},
        )
        returned = int(r.headers[oip.HEADER_LENGTH])
        replies[k] = list(oip.decode_reply(r.content, returned)["scores"])

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, query in enumerate(batch):
        np.testing.assert_allclose(replies[k], direct(runtime, query), atol=1e-5)


def test_schema_route_and_unknown_model(zoo_server):
    client, runtime = zoo_server
    schema = client.get("/v1/models/rank/schema")
    assert schema.status_code == 200
    assert schema.json() == runtime.group("rank").model.schema.to_dict()
    assert client.get("/v1/models/nope/schema").status_code == 404
    missing = client.post("/v1/models/nope/infer", json={})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_malformed_queries_get_4xx_naming_the_problem(zoo_server):
    client, runtime = zoo_server
    schema = runtime.group("rank").model.schema
    good = codec.query_to_json(queries(schema, [4], seed=23)[0])
    bad_id = json.loads(json.dumps(good))
    feature = next(iter(bad_id["user"]["sparse"]))
    bad_id["user"]["sparse"][feature][0] = 10**9
    no_candidates = {"user": good["user"]}
    cases = [
        (b"{not json", "application/json", 400, "JSON"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400, "nested too deeply"),
        (json.dumps(bad_id).encode(), "application/json", 400, feature),
        (json.dumps(no_candidates).encode(), "application/json", 400, "candidates"),
        (b"PK-not-a-zip", "application/x-npz", 415, "binary tensors to /v2"),
        (b"hello", "text/plain", 415, "content type"),
    ]
    for body, content_type, status, needle in cases:
        r = client.post(
            "/v1/models/rank/infer", content=body, headers={"Content-Type": content_type}
        )
        assert r.status_code == status, (needle, r.text)
        assert needle.lower() in r.json()["error"].lower()


def test_healthz_and_metrics():
    """A daemon of its own (the module's is shared, and its counts are cumulative): after one
    query answered in time, every series is there and the counts are that query's."""
    with _serving_zoo() as (client, runtime):
        schema = runtime.group("rank").model.schema
        query = codec.query_to_json(queries(schema, [5], 24)[0])
        answered = client.post("/v1/models/rank/infer", json=query)
        assert answered.status_code == 200, answered.text
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["plan_version"] == 1 and health.json()["models"] == ["rank"]
        text = client.get("/metrics").text
    for needle in (
        'gpufair_executor_latency_seconds_bucket{le="0.05",model="rank",tenant="ads"}',
        'gpufair_executor_sla_attainment{model="rank",tenant="ads"} 1.0\n',
        "gpufair_executor_queue_depth{",
        'gpufair_executor_session_busy_seconds_total{device="cpu:0",model="rank",seat="0",'
        'sessions="own",tenant="ads"}',
        'gpufair_executor_queries_total{model="rank",outcome="ok",tenant="ads"} 1.0\n',
        "gpufair_executor_plan_version 1.0",
    ):
        assert needle in text, needle


def _occupy(
    client: httpx.Client, runtime: NodeRuntime, body: dict
) -> tuple[threading.Thread, list[httpx.Response]]:
    """Send one slow query to model "m" on a thread and wait until it is in flight, so that
    the model's only queue slot is taken; join the thread, then read its reply from the list."""
    reply: list[httpx.Response] = []
    slow = threading.Thread(
        target=lambda: reply.append(client.post("/v1/models/m/infer", json=body))
    )
    slow.start()
    deadline = time.monotonic() + 5
    while runtime.group("m").in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    return slow, reply


def test_overload_answers_429_with_retry_after_and_waits_for_a_plan():
    runtime = NodeRuntime(FakeBackend(row_s=0, batch_s=0.5), SchedulerConfig(max_queue=1))
    with BackgroundServer(create_app(runtime)) as server, httpx.Client(
        base_url=server.url, timeout=10
    ) as client:
        assert client.get("/healthz").status_code == 503
        assert client.get("/livez").status_code == 200  # waiting for a plan is no failure
        assert client.post("/v1/models/m/infer", json={}).status_code == 503
        runtime.apply(plan([seat(0, "m", sla_ms=5000)]))
        body = codec.query_to_json(queries(FAKE_SCHEMA, [3], seed=25)[0])
        slow, first = _occupy(client, runtime, body)
        refused = client.post("/v1/models/m/infer", json=body)
        slow.join()
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert first[0].status_code == 200
        metrics = client.get("/metrics").text
        rejected = 'gpufair_executor_queries_total{model="m",outcome="rejected",tenant="tenant-m"}'
        assert f"{rejected} 1.0" in metrics
    runtime.close()


def test_the_command_refuses_a_bad_plan_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"node": "a", "version": 1, "devices": [{"device": "cpu:0"}]}))
    assert executor_command.main(["--plan", str(bad), "--backend", "fake"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plan.devices[0].kind: missing" in err
    assert executor_command.main(["--plan", str(tmp_path / "absent.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{")
    assert executor_command.main(["--plan", str(tmp_path / "junk.json")]) == 2
    assert "invalid JSON" in capsys.readouterr().err


def test_a_refused_query_is_answered_before_its_body_is_parsed(monkeypatch):
    """A tenant under its in-flight bound is let in at the front and its query admitted by the
    engine when it comes (one hop): a query that finds the replica full is refused after its
    body was read. From that refusal on, the model's requests are checked before their bodies
    are read: a flood of 6 MB bodies is refused unparsed until a request is admitted again."""
    parsed: list[int] = []
    for name in ("parse_query_json", "parse_query_oip"):
        real = getattr(codec, name)

        def counted(schema, body, *rest, real=real):
            parsed.append(len(body))
            return real(schema, body, *rest)

        monkeypatch.setattr(codec, name, counted)
    runtime = NodeRuntime(FakeBackend(row_s=0, batch_s=0.5), SchedulerConfig(max_queue=1))
    runtime.apply(plan([seat(0, "m", sla_ms=5000)]))
    app = create_app(runtime, max_body_bytes=8 * 2**20)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        body = codec.query_to_json(queries(FAKE_SCHEMA, [3], seed=26)[0])
        slow, first = _occupy(client, runtime, body)
        assert len(parsed) == 1
        presumed = client.post("/v1/models/m/infer", json=body)
        assert presumed.status_code == 429 and len(parsed) == 2  # read, then refused
        # A flooding tenant's 6 MB bodies, malformed so that parsing them would answer 400.
        flood = b'{"user": [' + b"0, " * 2_000_000 + b"}"
        for path, content_type in [
            ("/v1/models/m/infer", "application/json"),
            ("/v2/models/m/infer", oip.BINARY_CONTENT_TYPE),
        ]:
            refused = client.post(path, content=flood, headers={"Content-Type": content_type})
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
        too_big = client.post(
            "/v1/models/m/infer", content=flood * 2, headers={"Content-Type": "application/json"}
        )
        assert too_big.status_code == 413 and "exceeds" in too_big.json()["error"]
        assert len(parsed) == 2  # none of them was parsed
        slow.join()
        assert first[0].status_code == 200
        admitted = client.post(  # with room again the same body is parsed, and refused as such
            "/v1/models/m/infer", content=flood, headers={"Content-Type": "application/json"}
        )
        assert admitted.status_code == 400 and len(parsed) == 3
        metrics = client.get("/metrics").text
        rejected = 'gpufair_executor_queries_total{model="m",outcome="rejected",tenant="tenant-m"}'
        assert f"{rejected} 3.0" in metrics
    runtime.close()


# -- one replica per request: the early admission check judges the replica that gets the query

OPEN_GATE_S = 10.0  # longest a gated forward waits: a failing test must not hang its workers


@dataclass
class GatedModel(FakeModel):
    """A fake model whose forwards wait for the gate, so that queries stay in flight (and a
    replica's queue stays as a test left it) until the test opens it: no timing involved."""

    gate: threading.Event = field(default_factory=threading.Event)

    def run(self, batch: Batch) -> np.ndarray:
        self.gate.wait(OPEN_GATE_S)
        return super().run(batch)


class GatedBackend(FakeBackend):
    """Loads gated fake models that all wait for one gate."""

    def __init__(self) -> None:
        super().__init__(row_s=0.0, batch_s=0.0)
        self.gate = threading.Event()

    def load(self, artifact: str, device: str) -> GatedModel:
        return GatedModel(schema=FAKE_SCHEMA, row_s=0.0, batch_s=0.0, gate=self.gate)


@dataclass
class GatedDaemon:
    client: httpx.Client
    runtime: NodeRuntime
    gate: threading.Event
    checked: list[SessionGroup]  # the replicas the daemon's early admission checks judged


@pytest.fixture
def gated_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedDaemon]:
    """A daemon over gated fake models, two queue slots per replica and no latency estimate
    (only the queue limit refuses), recording the replica each early admission check judges."""
    checked: list[SessionGroup] = []
    check = DeviceScheduler.check

    def recorded(
        self: DeviceScheduler, group: SessionGroup, rows: int = 1, arrival: float | None = None
    ) -> None:
        try:
            check(self, group, rows, arrival)
        finally:  # recorded once it is decided, so that a test may change the queues after it
            checked.append(group)

    monkeypatch.setattr(DeviceScheduler, "check", recorded)
    backend = GatedBackend()
    config = SchedulerConfig(max_queue=2, admission=False, drain_timeout_s=OPEN_GATE_S)
    runtime = NodeRuntime(backend, config)
    with (
        BackgroundServer(create_app(runtime)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield GatedDaemon(client, runtime, backend.gate, checked)
        backend.gate.set()
    runtime.close()


class HeldRequest:
    """A query to model "m" whose headers are sent at once and whose body waits for release():
    the daemon resolves and checks it from the headers, then waits for the body meanwhile."""

    def __init__(self, client: httpx.Client, query: Query) -> None:
        self._body = json.dumps(codec.query_to_json(query)).encode()
        self._release = threading.Event()
        self.reply: list[httpx.Response] = []
        self._thread = threading.Thread(target=self._send, args=(client,))
        self._thread.start()

    def _chunks(self) -> Iterator[bytes]:
        self._release.wait(OPEN_GATE_S)
        yield self._body

    def _send(self, client: httpx.Client) -> None:
        headers = {"Content-Type": "application/json"}
        reply = client.post("/v1/models/m/infer", content=self._chunks(), headers=headers)
        self.reply.append(reply)

    def release(self) -> None:
        self._release.set()

    def result(self) -> httpx.Response:
        self._thread.join(timeout=30)
        return self.reply[0]


def _wait_until(condition: Callable[[], object], what: str) -> None:
    # Only a hang should reach the deadline: a loaded CI machine may take seconds for anything.
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def _fill(group: SessionGroup, sizes: list[int], seed: int) -> None:
    """Queue queries straight on one replica (not through routing), as other requests would."""
    assert group.device is not None
    for q in queries(FAKE_SCHEMA, sizes, seed=seed):
        group.device.submit(group, q)


def test_a_query_is_served_by_the_replica_its_early_check_admitted(gated_daemon):
    daemon = gated_daemon
    daemon.runtime.apply(plan([seat(0, "m"), seat(1, "m")]))
    free, full = daemon.runtime.deployment.routes["m"]
    _fill(full, [1, 1], seed=30)  # both of its slots taken, by little work
    request = HeldRequest(daemon.client, queries(FAKE_SCHEMA, [2], seed=31)[0])
    _wait_until(lambda: daemon.checked, "the early check is made")
    assert daemon.checked == [free]  # no work at all: the least loaded replica on arrival
    # While the body is read the free replica takes a large query: it holds more work than the
    # full one now, and a queue slot is still free for the query it admitted.
    _fill(free, [100], seed=32)
    request.release()
    _wait_until(lambda: request.reply or free.in_flight == 2, "the query is queued or answered")
    daemon.gate.set()
    reply = request.result()
    assert reply.status_code == 200, reply.text
    # A query's counter moves just after its future resolves, so the reply may come first.
    _wait_until(lambda: (free.stats.completed, full.stats.completed) == (2, 2),
                "both replicas have completed their two queries")
    assert full.stats.rejected == 0


def test_a_replica_that_fills_while_the_body_is_read_refuses_the_query_it_admitted(gated_daemon):
    daemon = gated_daemon
    daemon.runtime.apply(plan([seat(0, "m"), seat(1, "m")]))
    first, second = daemon.runtime.deployment.routes["m"]
    _fill(second, [1], seed=33)  # one slot of two taken: the first replica is the less loaded
    request = HeldRequest(daemon.client, queries(FAKE_SCHEMA, [2], seed=34)[0])
    _wait_until(lambda: daemon.checked, "the early check is made")
    assert daemon.checked == [first]
    _fill(first, [5, 5], seed=35)  # full now, while the body is read
    request.release()
    _wait_until(lambda: request.reply or second.in_flight == 2, "the query is queued or answered")
    daemon.gate.set()
    reply = request.result()
    # The replica that admitted it on arrival judges it again, with its rows, and refuses it;
    # the other replica never sees it.
    assert reply.status_code == 429, reply.text
    assert int(reply.headers["Retry-After"]) >= 1
    assert (first.stats.rejected, second.stats.rejected) == (1, 0)
    assert (first.stats.admitted, second.stats.admitted) == (2, 1)
    metrics = daemon.client.get("/metrics").text
    rejected = 'gpufair_executor_queries_total{model="m",outcome="rejected",tenant="tenant-m"}'
    assert f"{rejected} 1.0" in metrics


def test_a_replica_drained_for_a_plan_swap_while_the_body_is_read_hands_the_query_on(
    gated_daemon,
):
    daemon = gated_daemon
    runtime = daemon.runtime
    runtime.apply(plan([seat(0, "m")], version=1))
    (old,) = runtime.deployment.routes["m"]
    _fill(old, [3], seed=36)  # in flight until the gate opens: version 1 keeps draining
    request = HeldRequest(daemon.client, queries(FAKE_SCHEMA, [2], seed=37)[0])
    _wait_until(lambda: daemon.checked, "the early check is made")
    assert daemon.checked == [old]
    swaps: list[SwapReport | None] = []
    swap = threading.Thread(
        target=lambda: swaps.append(runtime.apply(plan([seat(0, "m", dedicated=1)], version=2)))
    )
    swap.start()
    _wait_until(lambda: old.closing, "version 1 drains")
    (new,) = runtime.deployment.routes["m"]
    request.release()
    _wait_until(lambda: request.reply or new.in_flight == 1, "the query is queued or answered")
    daemon.gate.set()
    reply = request.result()
    swap.join(timeout=30)
    assert reply.status_code == 200, reply.text
    assert swaps[0] is not None and swaps[0].drained_clean
    _wait_until(lambda: new.stats.completed == 1, "the new replica has completed the query")
    assert (old.stats.admitted, old.stats.rejected) == (1, 0)


# -- one table answers every error -------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "outcome"),
    [
        (UnknownModel("model 'x' is not served on this node"), 404, None),
        (ModelUnavailable("model 'x' failed to load: bad artifact"), 503, None),
        (GroupClosed("model 'x': replica is draining"), 503, None),
        (Overloaded("model 'x': 2 queries queued (limit 2)", retry_after_s=3.0), 429, "rejected"),
        (DeadlineExceeded("model 'x': dropped after 2000 ms"), 504, "expired"),
        (ModelFailed("model 'x' failed: boom"), 500, "failed"),
        (codec.QueryError("user.dense: missing"), 400, "invalid"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_each_error_is_answered_from_the_one_table(error, status, outcome):
    response, counted = answer_error(error)
    assert (response.status_code, counted) == (status, outcome)
    assert json.loads(bytes(response.body)) == {"error": str(error)}
    # When to come back: admission control's estimate, or a plan's load (about a second).
    expected = {Overloaded: "3", ModelUnavailable: "1"}.get(type(error))
    assert response.headers.get("Retry-After") == expected


def test_every_scheduling_error_has_an_answer():
    # The daemon answers any SchedulingError from the table: a new error class needs a row.
    assert set(SchedulingError.__subclasses__()) <= set(ERROR_ANSWERS)
