"""``gpufair gateway`` (gpufair.gateway) over real HTTP, against a fake API and a fake daemon.

Each is a real uvicorn server on loopback, in this process: the API serves one routing table
(or refuses the gateway's token), the daemon answers queries as the executor's front does in
what matters here (it refuses a body over its limit at once, without reading it, and closes
the connection). What a platform team relies on: every query gets its own answer or an error
that says what failed, a client's mistakes are never taken for a dead daemon, and the memory
the gateway holds for bodies is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from executor.daemon import DEFAULT_MAX_BODY_BYTES
from executor.wire.routes import ModelRoutes, RouteReplica, RoutingTable
from gpufair import gateway as gateway_module
from gpufair.commands import gateway as gateway_command
from gpufair.gateway import RoutesPull, create_gateway_app, follow_routes
from gpufair.routing import Routes
from gpufair.upstream import EXPECT_CONTINUE_BYTES
from tests.gpufair.test_bad_input import assert_flag_refused
from tests.logs import LogRecords, captured
from tests.servers import BackgroundServer

MODEL = "7"
DAEMON_MAX_BODY = 96 * 1024  # the fake daemon's limit, as the real one's 64 MiB
MAX_BODY = 128 * 1024  # the gateway's --max-body-bytes
MAX_BUFFERED = 192 * 1024  # the gateway's --max-buffered-bytes
TIMEOUT_S = 2.0  # the gateway's --timeout-s: a test that waits on it waits this long
WAIT_S = 10.0  # the longest any condition below takes to come true


@dataclass
class FakeDaemon:
    """What the fake daemon saw: the path and the body's size of each request it answered."""

    seen: list[tuple[str, int]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def infer(request: Request) -> Response:
            declared = int(request.headers.get("content-length", "0"))
            if declared > DAEMON_MAX_BODY:  # as the front: refused unread, connection closed
                return JSONResponse({"error": "body too large"}, 413, {"Connection": "close"})
            try:
                body = await request.body()
            except ClientDisconnect:  # the gateway gave up on the query: nothing to log
                return Response(status_code=400)
            self.seen.append((request.url.path, len(body)))
            return JSONResponse({"model": request.path_params["model"], "bytes": len(body)})

        async def metadata(request: Request) -> Response:
            self.seen.append((request.url.path, 0))
            return JSONResponse({"name": request.path_params["model"]})

        async def hang(request: Request) -> Response:
            await asyncio.Event().wait()
            raise AssertionError("never answered")

        return Starlette(routes=[
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/v2/models/{model}", metadata),
            Route("/v1/models/{model}/hang", hang),
        ])  # fmt: skip


def _table(url: str) -> RoutingTable:
    replica = RouteReplica(node="n0", url=url, device="cuda:0", seat=0, dedicated_streams=1,
                           pool_weight=0.5)  # fmt: skip
    return RoutingTable(version=1, models={MODEL: ModelRoutes(tenant="ads", replicas=[replica])})


def _fake_api(table: RoutingTable | None) -> Starlette:
    """``GET /v1/routes``: ``table`` (held ``?wait`` seconds when unchanged, then 304), or
    401 for every token when ``table`` is None."""
    etag = '"t1"'

    async def routes(request: Request) -> Response:
        if table is None:
            return JSONResponse({"error": {"message": "unknown, revoked or expired token"}}, 401)
        if request.headers.get("if-none-match") == etag:
            await asyncio.sleep(float(request.query_params.get("wait", "0")))
            return Response(status_code=304, headers={"ETag": etag})
        return Response(table.model_dump_json(), headers={"ETag": etag})

    return Starlette(routes=[Route("/v1/routes", routes)])


@pytest.fixture
def records() -> Iterator[LogRecords]:
    """The records of the gateway's logger (to DEBUG) and its server's."""
    with captured("gpufair.gateway", "uvicorn.error", debug=("gpufair.gateway",)) as handler:
        yield handler


@dataclass
class Setup:
    gateway: str
    daemon: FakeDaemon

    def health(self) -> dict[str, object]:
        document: dict[str, object] = httpx.get(f"{self.gateway}/healthz", timeout=5).json()
        return document

    def until(self, condition: Callable[[dict[str, object]], bool]) -> dict[str, object]:
        """The gateway's /healthz once ``condition`` holds of it (fails after WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        while not condition(health := self.health()):
            assert time.monotonic() < deadline, health
            time.sleep(0.02)
        return health


def _start(table_of: Callable[[str], RoutingTable | None]) -> Iterator[Setup]:
    """The fake daemon, the fake API serving ``table_of(daemon's URL)`` and the gateway."""
    daemon = FakeDaemon()
    with BackgroundServer(daemon.app(), graceful_shutdown_s=1) as daemon_server:
        api = _fake_api(table_of(daemon_server.url))
        with BackgroundServer(api, graceful_shutdown_s=1) as api_server:
            app = create_gateway_app(api_server.url, "admin-token", timeout_s=TIMEOUT_S,
                                     routes_wait_s=1.0, max_body_bytes=MAX_BODY,
                                     max_buffered_bytes=MAX_BUFFERED)  # fmt: skip
            with BackgroundServer(app, graceful_shutdown_s=1) as gateway_server:
                yield Setup(gateway_server.url, daemon)


@pytest.fixture
def setup() -> Iterator[Setup]:
    for running in _start(_table):
        running.until(lambda health: health["routes_version"] == 1)
        yield running


AUTH = {"Authorization": "Bearer gft_key"}


def _infer(setup: Setup, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{setup.gateway}/v2/models/{MODEL}/infer", content=content, timeout=WAIT_S,
                      headers={**AUTH, **(headers or {})})  # fmt: skip


def _stalled_upload(setup: Setup, declared: int, sent: bytes) -> socket.socket:
    """A connection whose query declares a body of ``declared`` bytes and sends ``sent``."""
    connection = socket.create_connection(("127.0.0.1", int(setup.gateway.rsplit(":", 1)[1])))
    connection.sendall(
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer k\r\n"
        f"Content-Length: {declared}\r\n\r\n".encode()
        + sent
    )
    return connection


def test_a_query_expecting_100_continue_gets_its_own_answer_and_so_do_the_next(
    setup: Setup,
) -> None:
    """The daemon's interim 100 Continue was relayed as the query's answer, and the query's
    real answer, left on the kept-alive connection, became the next query's answer."""
    answered = _infer(setup, b"x" * 10, {"Expect": "100-continue"})
    assert (answered.status_code, answered.json()) == (200, {"model": MODEL, "bytes": 10})
    for size in (3, 5):
        answered = _infer(setup, b"x" * size)
        assert (answered.status_code, answered.json()) == (200, {"model": MODEL, "bytes": size})
    metadata = httpx.get(f"{setup.gateway}/v2/models/{MODEL}", headers=AUTH, timeout=WAIT_S)
    assert (metadata.status_code, metadata.json()) == (200, {"name": MODEL})


def test_head_is_answered_at_once_with_the_get_answers_headers(setup: Setup) -> None:
    """A HEAD answer declares a length and sends no body: read as a GET's, it hung to 504."""
    got = httpx.get(f"{setup.gateway}/v2/models/{MODEL}", headers=AUTH, timeout=WAIT_S)
    started = time.monotonic()
    head = httpx.head(f"{setup.gateway}/v2/models/{MODEL}", headers=AUTH, timeout=WAIT_S)
    assert head.status_code == 200 and time.monotonic() - started < TIMEOUT_S
    assert head.content == b"" and head.headers["content-length"] == str(len(got.content))


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_body_over_the_limit_is_413_and_the_daemon_is_not_held_dead(
    setup: Setup, chunked: bool
) -> None:
    """The daemon refuses a body over its limit before reading it and closes the connection;
    the gateway, still writing the body, took that for a dead daemon (502, and no query to
    the node for a second). Refused at the gateway, by declared length or as it comes."""
    large = b"x" * (2 * 1024 * 1024)
    content = iter([large[i : i + 65536] for i in range(0, len(large), 65536)])
    refused = _infer(setup, content if chunked else large)  # type: ignore[arg-type]
    assert refused.status_code == 413, refused.text
    assert f"exceeds {MAX_BODY}" in refused.json()["error"] and setup.daemon.seen == []
    health = setup.health()
    assert health["dead"] == [] and health["body_bytes_held"] == 0
    answered = _infer(setup, b"x" * 1000)
    assert (answered.status_code, answered.json()["bytes"]) == (200, 1000)


def test_the_bodies_held_for_queries_in_flight_are_bounded(setup: Setup) -> None:
    """Every body in flight is kept for a retry: without a budget, slow uploads of large
    bodies held as much memory as clients sent. Past the budget: 503 with Retry-After."""
    held = 90 * 1024  # by each of two uploads that stall, within the daemon's limit
    stalled = [_stalled_upload(setup, DAEMON_MAX_BODY, b"x" * held) for _ in range(2)]
    try:
        setup.until(lambda health: health["body_bytes_held"] == 2 * held)
        refused = _infer(setup, b"x" * (MAX_BUFFERED - 2 * held + 1))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert f"holds {2 * held} bytes" in refused.json()["error"]
    finally:
        for connection in stalled:
            connection.close()
    setup.until(lambda health: health["body_bytes_held"] == 0)
    assert _infer(setup, b"x" * (MAX_BUFFERED - 2 * held + 1)).status_code == 200


def test_a_body_the_daemon_refuses_unread_is_never_sent_and_its_answer_relayed(
    setup: Setup,
) -> None:
    """A daemon that refuses a body before reading it (here: over its own limit, under the
    gateway's) and closes the connection reset the gateway's upload, which took the daemon
    for dead (502). A body that large waits for the daemon's 100 Continue: the refusal is
    the query's answer, the body never sent, and the daemon is not held dead."""
    size = DAEMON_MAX_BODY + 4096
    assert EXPECT_CONTINUE_BYTES < size <= MAX_BODY
    refused = _infer(setup, b"x" * size)
    assert (refused.status_code, refused.json()) == (413, {"error": "body too large"})
    assert setup.daemon.seen == []
    health = setup.health()
    assert health["dead"] == [] and health["body_bytes_held"] == 0
    answered = _infer(setup, b"x" * DAEMON_MAX_BODY)  # waits for 100 Continue, then is read
    assert (answered.status_code, answered.json()["bytes"]) == (200, DAEMON_MAX_BODY)


def test_a_client_gone_mid_body_is_no_error_in_the_log(setup: Setup, records: LogRecords) -> None:
    """A client that closes before its body is whole logged a traceback (ClientDisconnect out
    of the app): a client's timeout looked like a crash of the gateway."""
    _stalled_upload(setup, 1000, b"x" * 10).close()
    assert records.arrived.wait(WAIT_S)
    assert [r.levelno for r in records.records] == [logging.DEBUG], [
        r.getMessage() for r in records.records
    ]
    assert "closed its connection" in records.records[0].getMessage()


def test_a_body_that_does_not_come_is_408_not_a_504_blaming_the_node(
    setup: Setup, records: LogRecords
) -> None:
    """The query's time ran out waiting for the client's body, not for the daemon."""
    connection = _stalled_upload(setup, 1000, b"x" * 10)
    connection.settimeout(WAIT_S)
    with connection:
        answer = connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"body did not come in whole within 2 s" in answer
    assert not [r for r in records.records if r.levelno >= logging.WARNING]
    # A daemon that does not answer is 504 and named, in the answer and in the log.
    late = httpx.get(f"{setup.gateway}/v1/models/{MODEL}/hang", headers=AUTH, timeout=WAIT_S)
    assert late.status_code == 504 and "node n0 did not answer" in late.json()["error"]
    assert any("node n0 did not answer" in r.getMessage() for r in records.records)


def test_a_failing_routing_table_pull_says_why_on_healthz_and_in_one_log_line(
    records: LogRecords,
) -> None:
    """A wrong admin token left the gateway answering 503 with nothing but a multi-line httpx
    message in its log to say why."""
    for running in _start(lambda _: None):
        health = running.until(lambda health: health["routes_error"] is not None)
        assert health["routes_version"] == 0
        error = str(health["routes_error"])
        assert "/v1/routes: HTTP 401" in error and "unknown, revoked or expired token" in error
        # An API that refuses for an hour is one line, not one a retry: the same failure
        # again is at DEBUG.
        deadline = time.monotonic() + WAIT_S
        while sum("failed again" in r.getMessage() for r in records.records) < 2:
            assert records.arrived.wait(max(0.0, deadline - time.monotonic())), records.records
            records.arrived.clear()
    warnings = [r.getMessage() for r in records.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "HTTP 401" in warnings[0], warnings


def test_an_unknown_path_and_a_wrong_method_are_json_errors_as_all_others(setup: Setup) -> None:
    """Starlette's own 404 and 405 were plain text where every other error of the gateway is
    ``{"error": message}``: a client parsing errors as JSON failed on these two."""
    unknown = httpx.get(f"{setup.gateway}/v3/nothing", headers=AUTH, timeout=WAIT_S)
    assert unknown.status_code == 404 and "no such path: /v3/nothing" in unknown.json()["error"]
    wrong = httpx.put(f"{setup.gateway}/v2/models/{MODEL}/infer", headers=AUTH, timeout=WAIT_S)
    assert wrong.status_code == 405 and "method PUT not allowed" in wrong.json()["error"]
    assert {"GET", "POST"} <= set(wrong.headers["Allow"].split(", "))


@pytest.mark.parametrize("status", [404, 503])
def test_a_replica_that_cannot_serve_the_model_now_has_the_query_sent_to_another(
    status: int,
) -> None:
    """The routing table is the newest allocation's: a node that has not fetched the plan that
    brings a model answers 404, one loading it 503. Either way another replica may serve the
    query, and it is sent there once, not relayed as the client's error; the replica that
    refused is not held dead (it answered)."""
    asked: list[str] = []

    async def refuse(request: Request) -> Response:
        asked.append(request.url.path)
        return JSONResponse({"error": f"model {MODEL!r} is not served on this node"}, status)

    refusing = Starlette(routes=[Route("/v2/models/{model}/infer", refuse, methods=["POST"])])
    with BackgroundServer(refusing, graceful_shutdown_s=1) as refuser:

        def both(url: str) -> RoutingTable:
            table = _table(url)
            mover = table.models[MODEL].replicas[0].model_copy(update={"node": "n1",
                                                                       "url": refuser.url})
            table.models[MODEL].replicas.insert(0, mover)
            return table

        for running in _start(both):
            running.until(lambda health: health["routes_version"] == 1)
            answered = [_infer(running, b"q" * 10) for _ in range(4)]
            assert [a.status_code for a in answered] == [200] * 4, answered[-1].text
            assert len(asked) >= 2  # ties go round-robin: the refusing replica was tried first
            assert running.daemon.seen == [(f"/v2/models/{MODEL}/infer", 10)] * 4
            assert running.health()["dead"] == []


def test_a_model_named_by_its_name_is_told_to_use_its_id(setup: Setup) -> None:
    """Queries name a model by its id; an operator's first try by name got a bare 404."""
    refused = httpx.post(f"{setup.gateway}/v2/models/search-rank/infer", content=b"q",
                         headers=AUTH, timeout=WAIT_S)  # fmt: skip
    assert refused.status_code == 404
    assert "named by its id" in refused.json()["error"], refused.text


def test_an_https_replica_is_held_failed_with_its_scheme_named(records: LogRecords) -> None:
    """The gateway speaks no TLS: an https:// replica was sent plain text (on port 80 unless
    its URL named a port). It fails at once, a 502 that names the scheme, and is held dead."""
    for running in _start(lambda url: _table(url.replace("http://", "https://"))):
        running.until(lambda health: health["routes_version"] == 1)
        answered = _infer(running, b"x" * 10)
        assert answered.status_code == 502, answered.text
        assert "https:// URL scheme not supported" in answered.json()["error"]
        assert running.daemon.seen == [] and running.health()["dead"] != []
    assert any("https:// URL scheme" in r.getMessage() for r in records.records)


class WatchedRoutes(Routes):
    """Routes that raise each of ``failures`` in turn on an update, then take the tables,
    noting when each came; ``enough`` is set once ``wanted`` have."""

    def __init__(self, failures: list[Exception], wanted: int) -> None:
        super().__init__()
        self.failures = failures
        self.wanted = wanted
        self.came: list[float] = []
        self.enough = asyncio.Event()

    def update(self, table: RoutingTable, etag: str | None) -> None:
        if self.failures:
            raise self.failures.pop(0)
        super().update(table, etag)
        self.came.append(time.monotonic())
        if len(self.came) >= self.wanted:
            self.enough.set()


def _follow(api: Starlette, routes: WatchedRoutes, pull: RoutesPull) -> None:
    """``follow_routes`` against ``api`` until ``routes`` has had enough tables; fails at once
    if the follower ends (it must never)."""

    async def scenario() -> None:
        with BackgroundServer(api, graceful_shutdown_s=1) as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                follower = asyncio.create_task(follow_routes(client, routes, wait_s=0.1,
                                                             pull=pull))  # fmt: skip
                enough = asyncio.create_task(routes.enough.wait())
                await asyncio.wait({follower, enough}, timeout=WAIT_S,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                for task in (follower, enough):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task  # the follower's own exception, if it ended, fails the test
                assert enough.done() and not enough.cancelled(), "not enough tables came"

    asyncio.run(scenario())


def test_an_unexpected_error_is_logged_and_the_routing_table_still_followed(
    records: LogRecords,
) -> None:
    """An exception the follower did not expect ended its task without a word, and the
    gateway routed by a stale table for good: logged with its traceback, and retried."""
    routes, pull = WatchedRoutes([RuntimeError("a bug in update")], wanted=1), RoutesPull()
    _follow(_fake_api(_table("http://127.0.0.1:1")), routes, pull)
    assert routes.table.version == 1 and pull.error is None
    errors = [r for r in records.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "RuntimeError: a bug in update" in errors[0].getMessage()
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is RuntimeError


def test_a_table_without_an_etag_is_pulled_again_after_a_backoff_not_at_once(
    records: LogRecords,
) -> None:
    """With no ETag to long-poll with, every pull was answered at once: the follower asked
    the API again and again in a hot loop (a proxy in between may drop the ETag)."""
    table = _table("http://127.0.0.1:1")

    async def routes_without_etag(request: Request) -> Response:
        return Response(table.model_dump_json(), media_type="application/json")

    routes, pull = WatchedRoutes([], wanted=2), RoutesPull()
    _follow(Starlette(routes=[Route("/v1/routes", routes_without_etag)]), routes, pull)
    assert routes.came[1] - routes.came[0] >= 0.4  # the first backoff: 0.5 s
    assert routes.table.version == 1 and pull.error is None
    warnings = [r.getMessage() for r in records.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without an ETag" in warnings[0], warnings


@pytest.mark.parametrize(("flag", "value"), [
    ("--api", "gpufair-api:8080"), ("--api", "ftp://api"), ("--api", "http://[::1"),
    ("--api", "http://api:99999"), ("--timeout-s", "inf"), ("--timeout-s", "0"),
    ("--routes-wait-s", "4000"), ("--max-body-bytes", "0"), ("--max-buffered-bytes", "-1"),
])  # fmt: skip
def test_the_command_refuses_what_the_gateway_could_not_use(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --api the HTTP client cannot use was found only by the pull, retried for ever (or a
    traceback at start for http://[::1); a long-poll over the API's 3600 s bound was 422."""
    argv = ["--api", "http://api:8080", "--token", "t", flag, value]
    with pytest.raises(SystemExit) as exit_:
        gateway_command._parser().parse_args(argv)
    assert_flag_refused(exit_, capsys.readouterr().err, flag)


def test_the_commands_limits_are_the_gateways_and_the_daemons() -> None:
    args = gateway_command._parser().parse_args(["--api", "https://api/", "--token", "t"])
    assert args.max_body_bytes == gateway_module.MAX_BODY_BYTES == DEFAULT_MAX_BODY_BYTES
    assert args.max_buffered_bytes == gateway_module.MAX_BUFFERED_BYTES


def test_the_command_refuses_a_buffer_smaller_than_one_body(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--api", "http://api:8080", "--token", "t", "--max-body-bytes", "2000",
            "--max-buffered-bytes", "1000"]  # fmt: skip
    assert gateway_command.main(argv) == 2
    assert "--max-buffered-bytes must be at least --max-body-bytes" in capsys.readouterr().err
