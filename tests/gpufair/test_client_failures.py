"""``gpufair.client.Client`` when things go wrong, over real HTTP.

The API is the real app (SQLite made by the real migrations) on uvicorn in this process, with
real tenants and keys; where a test needs a routing table of its choosing (a daemon whose host
does not answer), the API is a small Starlette app serving that table, and the daemon a real
listening socket. What a tenant's service relies on: a key the API refuses is an error at
once, not a wait and a misleading 404; an API it cannot reach yet says so in each query's
error; a refused key is not retried in a storm; an unreachable daemon costs a query no more
than its connect timeout; and close() leaves no thread or long-poll behind.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from executor.wire.routes import ModelRoutes, RouteReplica, RoutingTable
from gpufair.client import MAX_BACKOFF_S, Client, KeyRefused, QueryFailed, retry_delay_s
from tests.executor.cluster import migrated
from tests.executor.test_daemon_loop import ControlPlane
from tests.logs import LogRecords, captured
from tests.servers import BackgroundServer

MODEL = "7"
WAIT_S = 10.0  # the longest any condition below takes to come true
INFER = f"/v2/models/{MODEL}/infer"
OCTETS = {"content-type": "application/octet-stream"}


@pytest.fixture
def failures() -> Iterator[LogRecords]:
    """The client's records of failed routing table pulls."""
    with captured("gpufair.client", containing="routing table pull") as handler:
        yield handler


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated(tmp_path_factory.mktemp("template"))


@pytest.fixture
def control(tmp_path: Path, template: Path) -> Iterator[ControlPlane]:
    """The real API, not started: each test starts it when it should be up."""
    db = tmp_path / "gpufair.db"
    db.write_bytes(template.read_bytes())
    plane = ControlPlane(db)
    try:
        yield plane
    finally:
        plane.stop()


def follower_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gpufair-routes"]


def test_a_key_the_api_refuses_is_an_error_at_construction_not_a_wait(
    control: ControlPlane,
) -> None:
    control.start()
    api = control.admin()
    tenant, key = api.tenant("ads")
    r = api.client.post(f"/v1/tenants/{tenant['id']}/keys", json={"scope": "inference"},
                        headers=api.admin)  # fmt: skip
    inference_key = r.json()["key"]
    before = follower_threads()
    started = time.monotonic()
    with pytest.raises(KeyRefused) as unknown:
        Client(control.url, api_key="gft_not-a-key", ready_timeout_s=WAIT_S)
    assert unknown.value.status == 401 and "HTTP 401" in str(unknown.value)
    assert time.monotonic() - started < WAIT_S / 2  # not the ready timeout, waited out
    # An inference-only key cannot read the routing table (the API takes it for an unknown
    # one): the error says which key goes where.
    with pytest.raises(ValueError, match="query_key"):
        Client(control.url, api_key=inference_key, ready_timeout_s=WAIT_S)
    with Client(control.url, api_key=key, query_key=inference_key) as client:
        assert client.wait_ready(WAIT_S)
    assert follower_threads() == before  # nothing left running by a constructor that raised


def test_until_the_api_answers_queries_say_so_and_its_outage_is_logged_once(
    control: ControlPlane, failures: LogRecords
) -> None:
    control.start()
    api = control.admin()
    _, key = api.tenant("ads")
    control.stop()
    with Client(control.url, api_key=key, ready_timeout_s=0.2) as client:
        with pytest.raises(QueryFailed) as no_table:
            client.post(MODEL, INFER, b"", OCTETS)
        assert no_table.value.status == 503
        assert "no routing table yet" in str(no_table.value) and "ConnectError" in str(
            no_table.value
        )
        failures.wait_for(2, WAIT_S)
        levels = [r.levelno for r in failures.records]
        assert levels.count(logging.WARNING) == 1, levels  # the same failure: logged once
        # The API comes back: the same client gets its table, and tells an unknown model.
        control.start()
        assert client.wait_ready(WAIT_S)
        with pytest.raises(QueryFailed) as unknown:
            client.post(MODEL, INFER, b"", OCTETS)
        assert unknown.value.status == 404, unknown.value


def test_a_key_revoked_while_followed_is_retried_rarely_and_the_last_table_kept(
    control: ControlPlane, failures: LogRecords
) -> None:
    control.start()
    api = control.admin()
    tenant, _ = api.tenant("ads")
    r = api.client.post(f"/v1/tenants/{tenant['id']}/keys", headers=api.admin)
    key, key_id = r.json()["key"], r.json()["id"]
    with Client(control.url, api_key=key, routes_wait_s=0.1) as client:
        assert client.wait_ready(WAIT_S)
        r = api.client.delete(f"/v1/tenants/{tenant['id']}/keys/{key_id}", headers=api.admin)
        assert r.status_code == 200, r.text
        failures.wait_for(1, WAIT_S)
        assert "HTTP 401" in failures.records[0].getMessage()
        # Each refusal counts against the service's address at the API (30 a minute make it
        # refuse every token from there): no second try within the next seconds.
        failures.arrived.clear()
        assert not failures.arrived.wait(1.5), [r.getMessage() for r in failures.records]
        assert client.routes.received


def test_close_ends_the_long_poll_at_once(control: ControlPlane) -> None:
    control.start()
    api = control.admin()
    _, key = api.tenant("ads")
    before = follower_threads()
    client = Client(control.url, api_key=key, routes_wait_s=30.0)
    assert client.wait_ready(WAIT_S)
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 2.0
    assert follower_threads() == before  # not parked in a 30 s long-poll on a closed client
    client.close()  # idempotent


def _serving_api(table: RoutingTable) -> Starlette:
    """``GET /v1/routes/me``: ``table``, held ``?wait`` seconds when unchanged, then 304."""
    etag = '"t1"'

    async def routes(request: Request) -> Response:
        if request.headers.get("if-none-match") == etag:
            await asyncio.sleep(float(request.query_params.get("wait", "0")))
            return Response(status_code=304, headers={"ETag": etag})
        return Response(table.model_dump_json(), headers={"ETag": etag})

    return Starlette(routes=[Route("/v1/routes/me", routes)])


def _answering_daemon() -> Starlette:
    async def infer(request: Request) -> Response:
        return JSONResponse({"model": request.path_params["model"]})

    return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])


def _replica(node: str, url: str) -> RouteReplica:
    return RouteReplica(node=node, url=url, device="cuda:0", seat=0, dedicated_streams=1,
                        pool_weight=0.5)  # fmt: skip


def test_a_daemon_whose_host_does_not_answer_is_held_dead_and_the_query_sent_elsewhere() -> None:
    # A listener whose accept queue is full: its kernel drops new connections' SYNs, as a
    # powered-off host's network does, so connecting times out rather than being refused.
    with socket.socket() as silent, socket.socket() as queued:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        queued.connect(silent.getsockname())
        silent_url = "http://{}:{}".format(*silent.getsockname())
        with BackgroundServer(_answering_daemon()) as daemon:
            table = RoutingTable(version=1, models={MODEL: ModelRoutes(
                tenant="ads", replicas=[_replica("n0", silent_url), _replica("n1", daemon.url)]
            )})  # fmt: skip
            with (
                BackgroundServer(_serving_api(table), graceful_shutdown_s=1) as api,
                Client(api.url, api_key="gft_k", timeout_s=0.5) as client,
            ):
                assert client.wait_ready(WAIT_S)
                answered = [client.post(MODEL, INFER, b"q", OCTETS) for _ in range(3)]
                assert [r.status_code for r in answered] == [200, 200, 200]
                assert client.routes.dead() == [silent_url]


@pytest.mark.parametrize("status", [404, 503])
def test_a_replica_that_cannot_serve_the_model_now_has_the_query_sent_to_another(
    status: int,
) -> None:
    """A node that has not fetched the plan that brings a model (404), or is loading it (503),
    costs a query a second try elsewhere, not an error; it is not held dead (it answered)."""
    asked: list[str] = []

    async def refuse(request: Request) -> Response:
        asked.append(request.url.path)
        return JSONResponse({"error": f"model {MODEL!r} is not served on this node"}, status)

    refusing = Starlette(routes=[Route("/v2/models/{model}/infer", refuse, methods=["POST"])])
    with (
        BackgroundServer(refusing) as refuser,
        BackgroundServer(_answering_daemon()) as daemon,
    ):
        table = RoutingTable(version=1, models={MODEL: ModelRoutes(
            tenant="ads", replicas=[_replica("n0", refuser.url), _replica("n1", daemon.url)]
        )})  # fmt: skip
        with (
            BackgroundServer(_serving_api(table), graceful_shutdown_s=1) as api,
            Client(api.url, api_key="gft_k") as client,
        ):
            assert client.wait_ready(WAIT_S)
            answered = [client.post(MODEL, INFER, b"q", OCTETS) for _ in range(4)]
            assert [r.status_code for r in answered] == [200] * 4, answered[-1].text
            assert len(asked) >= 2  # ties go round-robin: the refusing replica was tried first
            assert client.routes.dead() == []


def test_a_query_that_finds_every_connection_busy_blames_the_client_not_the_node() -> None:
    """With all of the client's connections busy, a query waited for one and failed as a
    504 "node did not answer", blaming a node it never reached: now 503 saying what to change,
    and the node is not held dead."""
    release, started = threading.Event(), threading.Event()

    async def trickle(request: Request) -> Response:
        started.set()

        async def body() -> AsyncIterator[bytes]:
            while not release.is_set():  # a byte at a time: the client's reads never time out
                yield b" "
                await asyncio.sleep(0.05)

        return StreamingResponse(body())

    daemon_app = Starlette(routes=[Route("/v2/models/{model}/infer", trickle, methods=["POST"])])
    with BackgroundServer(daemon_app, graceful_shutdown_s=1) as daemon:
        table = RoutingTable(version=1, models={MODEL: ModelRoutes(
            tenant="ads", replicas=[_replica("n0", daemon.url)]
        )})  # fmt: skip
        with (
            BackgroundServer(_serving_api(table), graceful_shutdown_s=1) as api,
            Client(api.url, api_key="gft_k", timeout_s=0.5, max_connections=1) as client,
            ThreadPoolExecutor(1) as pool,
        ):
            assert client.wait_ready(WAIT_S)
            busy = pool.submit(client.post, MODEL, INFER, b"q", OCTETS)
            assert started.wait(WAIT_S), "the first query did not reach the daemon"
            try:
                with pytest.raises(QueryFailed) as refused:
                    client.post(MODEL, INFER, b"q", OCTETS)
            finally:
                release.set()
            assert refused.value.status == 503
            assert "all 1 connections of this client are busy" in str(refused.value)
            assert busy.result(WAIT_S).status_code == 200
            assert client.routes.dead() == []


def test_a_table_without_an_etag_is_pulled_again_after_a_wait_not_at_once() -> None:
    """A proxy in the way that drops the ETag leaves nothing to long-poll with: each pull is
    answered at once, and the client asked again at once, hundreds of times a second."""
    pulls: list[float] = []
    table = RoutingTable(version=1, models={})

    async def routes(request: Request) -> Response:
        pulls.append(time.monotonic())
        return Response(table.model_dump_json())  # no ETag

    no_etag = Starlette(routes=[Route("/v1/routes/me", routes)])
    with (
        BackgroundServer(no_etag, graceful_shutdown_s=1) as api,
        Client(api.url, api_key="gft_k", routes_wait_s=0.5) as client,
    ):
        assert client.wait_ready(WAIT_S)
        time.sleep(1.2)  # the span observed: pulls over it are counted, not waited for
    assert 2 <= len(pulls) <= 4, pulls  # one at start, then one per routes_wait_s


def test_retry_delays_double_to_the_cap_and_are_spread_across_clients() -> None:
    """Every client that lost the API at once (a restart) retried at the same instants, 0.5,
    1, 2 s... after it: the delays are now drawn in [0.5, 1) of each step."""
    for failures, step in ((1, 0.5), (2, 1.0), (3, 2.0), (10, MAX_BACKOFF_S), (10**6, 10.0)):
        delays = [retry_delay_s(failures, random.Random(seed)) for seed in range(20)]
        assert all(step / 2 <= d < step for d in delays), (failures, delays)
        assert len(set(delays)) == len(delays)  # twenty clients, twenty instants
