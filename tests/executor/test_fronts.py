"""Fronts and the engine: the fronts' in-flight bounds per tenant, their shared-buffer
allocator, the link's messages, and ``gpufair executor`` as an engine process with front
processes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import mmap
import os
import signal
import socket
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from executor import codec
from executor.credentials import Credentials
from executor.daemon import FrontApp, create_front
from executor.engine import link
from executor.engine.core import EngineCore
from executor.engine.server import MAX_FRONT_EXITS, FrontLink
from executor.fake import FAKE_SCHEMA, FakeBackend
from executor.front import http as front_http
from executor.front import process as front_process
from executor.front.budget import MIN_IN_FLIGHT, TenantBudgets
from executor.front.engine import Ticket
from executor.front.local import LocalEngine
from executor.front.remote import Arena, RemoteEngine
from executor.scheduling import ModelUnavailable, NodeRuntime, Overloaded, SchedulerConfig
from executor.scheduling.errors import NotPermitted
from executor.wire import oip
from executor.wire.credentials import CredentialDocument, key_digest, salted
from gpufair.servers import ChildServer
from tests.executor.scheduling_helpers import plan, queries, seat
from tests.servers import BackgroundFront, BackgroundServer
from tests.waiting import wait_until

# -- the tenants' in-flight bounds ------------------------------------------------------------


def _ticket(tenant: str, sla_s: float) -> Ticket:
    return Ticket(0, tenant, tenant, FAKE_SCHEMA, 0.0, sla_s)


def test_a_tenant_at_its_bound_is_refused_before_the_engine_is_asked_and_no_other() -> None:
    budgets = TenantBudgets(min_in_flight=3)
    assert budgets.claim("flood-model", "k1") is None  # not known here yet: the engine decides
    assert budgets.confirm("flood-model", _ticket("flood", 0.05), None, "k1") == "flood"
    for _ in range(2):  # known now: counted before the engine is asked
        assert budgets.claim("flood-model", "k1") == "flood"
    with pytest.raises(Overloaded, match="in flight") as refused:
        budgets.claim("flood-model", "k1")
    assert refused.value.retry_after_s > 0
    with pytest.raises(Overloaded, match="in flight"):  # one the engine admitted meanwhile
        budgets.confirm("flood-model", _ticket("flood", 0.05), None, "k1")
    assert budgets.in_flight("flood") == 3
    # Another tenant's bound is its own; a model moved to it by a plan swap moves its count.
    assert budgets.confirm("calm-model", _ticket("calm", 0.05), None, "k2") == "calm"
    assert budgets.confirm("moved-model", _ticket("calm", 0.05), "flood", "k2") == "calm"
    assert budgets.in_flight("flood") == 2 and budgets.in_flight("calm") == 2
    assert budgets.claim("flood-model", "k1") == "flood"


def test_a_key_the_engine_did_not_accept_for_a_models_tenant_counts_nowhere_before_it() -> None:
    """A flooder naming the calm tenant's model with its own, no or a made-up key is not
    counted in the calm tenant's bound before the engine checked the key (and refused it), so
    however many such requests arrive, the calm tenant's own requests still get in."""
    budgets = TenantBudgets(min_in_flight=2)
    budgets.confirm("calm-model", _ticket("calm", 0.05), None, "calm-key")
    budgets.leave("calm", answered=True)
    budgets.confirm("flood-model", _ticket("flood", 0.05), None, "flood-key")
    budgets.leave("flood", answered=True)
    for presented in ["flood-key", None, "made-up"] * 10:
        assert budgets.claim("calm-model", presented) is None
    assert budgets.in_flight("calm") == 0
    assert budgets.claim("calm-model", "calm-key") == "calm"


def test_without_keys_every_tenants_requests_are_counted_before_the_engine_is_asked() -> None:
    """A daemon that checks no keys (plan mode) accepts the absent key for every tenant: each
    tenant's requests are counted in its own bound before the engine is asked, however their
    admissions interleave (the absent key is not taken to be the last admitted tenant's alone,
    which sent every other tenant's requests to the engine before their bodies)."""
    budgets = TenantBudgets(min_in_flight=4)
    for tenant in ("calm", "flood", "calm", "flood"):
        budgets.confirm(f"{tenant}-model", _ticket(tenant, 0.05), None, None)
        budgets.leave(tenant, answered=True)
    assert budgets.claim("calm-model", None) == "calm"
    assert budgets.claim("flood-model", None) == "flood"
    assert budgets.claim("calm-model", "made-up") is None  # a key never accepted still is not
    budgets.forget(None)  # the engine refused it since: asked again before the next body
    assert budgets.claim("calm-model", None) is None


def test_a_tenant_past_half_its_bound_has_no_room_to_be_let_in_unasked() -> None:
    """Answered within its SLA a tenant has a quarter of its bound in flight; past half of it
    the front asks the engine before reading its bodies (no room), below it the front may let
    its requests in on its own."""
    budgets = TenantBudgets(min_in_flight=4)
    budgets.confirm("m", _ticket("t", 0.05), None, "k")
    assert budgets.roomy("t")  # 1 of 4
    budgets.claim("m", "k")
    assert budgets.roomy("t")  # 2 of 4
    budgets.claim("m", "k")
    assert not budgets.roomy("t")  # 3 of 4
    budgets.leave("t", answered=True)
    assert budgets.roomy("t")


def test_a_tenants_bound_follows_its_answer_rate_within_its_sla() -> None:
    """Little's law: answered at r/s within an SLA of s seconds, r × s requests are in flight;
    the bound is twice that, and answers older than the window no longer count."""
    now = [0.0]
    budgets = TenantBudgets(min_in_flight=4, headroom=2.0, window_s=1.0, clock=lambda: now[0])
    for k in range(200):  # answered at 200/s over the last second
        now[0] = k / 200
        budgets.confirm("m", _ticket("busy", 0.1), None, "key")
        budgets.leave("busy", answered=True)
    assert budgets.bound("busy") == 40  # 2 × 200/s × 0.1 s
    now[0] += 2.0  # a quiet spell: its rate is forgotten, the floor stays
    assert budgets.bound("busy") == 4
    budgets.confirm("m", _ticket("busy", 0.1), None, "key")
    budgets.leave("busy", answered=True)
    assert budgets.bound("busy") == 4


def test_a_tenant_behind_has_no_headroom_and_one_answered_in_time_keeps_it() -> None:
    """A tenant refused at its bound with more than one request in ten ending unanswered in
    time (late, refused, dropped) is sent more than it is served: its bound is what it is
    answered in time, r × s, with a floor of 2, so that the front reads no more of its bodies
    than that. A tenant missing a few in a hundred, at the edge of its capacity, keeps its
    headroom for bursts; so does one answered late without ever coming to its bound — a calm
    tenant slowed by a flooder — whose bound would otherwise shrink under its own bursts."""
    now = [0.0]
    budgets = TenantBudgets(
        min_in_flight=8, min_in_flight_behind=2, headroom=4.0, window_s=1.0, clock=lambda: now[0]
    )
    for k in range(200):  # 200 ended over the last second, every fifth in time: a flooder
        now[0] = k / 200
        for tenant in ("flood", "calm"):  # and a calm tenant answered as late
            budgets.confirm(f"{tenant}-model", _ticket(tenant, 0.05), None, f"{tenant}-key")
            budgets.leave(tenant, answered=k % 5 == 0)
        budgets.confirm("edge-model", _ticket("edge", 0.05), None, "edge-key")
        budgets.leave("edge", answered=k % 50 != 0)  # 4 of 200 missed
    assert budgets.bound("edge") == 40  # 4 × 196/s × 0.05 s
    assert budgets.bound("flood") == budgets.bound("calm") == 8  # 4 × 40/s × 0.05 s
    for _ in range(8):
        budgets.claim("flood-model", "flood-key")
    with pytest.raises(Overloaded, match="in flight"):  # at its bound: it sends more
        budgets.claim("flood-model", "flood-key")
    assert budgets.bound("flood") == 2  # max(2, ⌈40/s × 0.05 s⌉), not 4 × that = 8
    assert budgets.bound("calm") == 8
    now[0] += 2.0  # its misses are forgotten with its answers: the floor of one in time again
    assert budgets.bound("flood") == 8


# -- the shared buffer and the link ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_the_arena_never_gives_out_a_byte_twice_and_merges_what_is_returned(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = 10_000
    arena = Arena(size)
    held: dict[int, int] = {}
    for _ in range(400):
        if held and rng.random() < 0.45:
            returned = list(held)[int(rng.integers(len(held)))]
            arena.release(returned)
            del held[returned]
            continue
        want = int(rng.integers(1, 800))
        offset = arena.allocate(want)
        if offset is None:  # only when no free block is that large
            assert size - sum(held.values()) < want or len(held) > 1, seed
            continue
        assert 0 <= offset and offset + want <= size, (seed, offset, want)
        for other, length in held.items():
            assert offset + want <= other or other + length <= offset, (seed, offset, other)
        held[offset] = want
    for returned in list(held):
        arena.release(returned)
    assert arena.used == 0 and arena.allocate(size) == 0  # one free block again


def test_queries_cross_the_buffer_exactly_side_by_side() -> None:
    """Two queries written one after the other (each where query_size says the previous one
    ends) come back exactly, as copies, however many candidates each has."""
    buffer = memoryview(bytearray(1 << 20))
    first, second = queries(FAKE_SCHEMA, [37, 5], seed=50)
    at = 128
    after = at + link.query_size(FAKE_SCHEMA, first.num_candidates)
    link.write_query(buffer, at, FAKE_SCHEMA, first)
    link.write_query(buffer, after, FAKE_SCHEMA, second)
    slots, size = link.query_layout(FAKE_SCHEMA, first.num_candidates)
    assert all(slot.at % link.ALIGN == 0 for slot in slots)
    ends = [slot.at + int(np.prod(slot.shape)) * slot.dtype.itemsize for slot in slots]
    assert all(end <= nxt.at for end, nxt in zip(ends, slots[1:], strict=False))
    assert ends[-1] <= size
    for offset, query in ((at, first), (after, second)):
        back = link.read_query(buffer, offset, FAKE_SCHEMA, query.num_candidates)
        sent, got = codec.query_to_tensors(query), codec.query_to_tensors(back)
        assert sent.keys() == got.keys()
        for name, array in sent.items():
            np.testing.assert_array_equal(got[name], array)
            assert got[name].dtype == array.dtype
            assert not np.shares_memory(got[name], np.frombuffer(buffer, np.uint8))


def test_errors_and_messages_cross_the_link_as_they_were() -> None:
    error = link.error_from_dict(link.error_to_dict(Overloaded("full", retry_after_s=3.0)))
    assert isinstance(error, Overloaded) and error.retry_after_s == 3.0 and str(error) == "full"
    header, payload = link.unframe(link.frame({"id": 4, "op": "x"}, b"\x00\x01"))
    assert header == {"id": 4, "op": "x"} and payload == b"\x00\x01"


# -- a tenant under its bound: one engine hop per query ----------------------------------------

SALT = "5a" * 32


def _document(keys: dict[str, str]) -> CredentialDocument:
    """The credentials of ``keys`` (tenant -> its one key)."""
    tenants = {t: [salted(SALT, key_digest(k))] for t, k in keys.items()}
    return CredentialDocument(node="node-a", salt=SALT, tenants=tenants)


@pytest.fixture
def engine_core() -> Iterator[EngineCore]:
    """An engine over tenants a and b (fake models), each with one key."""
    runtime = NodeRuntime(FakeBackend(), SchedulerConfig())
    runtime.apply(plan([seat(0, "a"), seat(1, "b")], pool=1))
    credentials = Credentials()
    credentials.update(_document({"tenant-a": "key-a", "tenant-b": "key-b"}))
    yield EngineCore(runtime, credentials=credentials)
    runtime.close()


Serve = Callable[[FrontApp], contextlib.AbstractContextManager[BackgroundServer | BackgroundFront]]


@pytest.fixture(params=["uvicorn", "front"])
def serving(request: pytest.FixtureRequest) -> Serve:
    """A server of the daemon's HTTP surface in this process: Starlette's app on uvicorn (as
    tests and tools serve :func:`executor.daemon.create_app`), or the front processes' own."""
    if request.param == "uvicorn":
        return lambda app: BackgroundServer(app.asgi)
    return BackgroundFront


class _CountingLink(FrontLink):
    """A front's link whose engine side records each message's operation."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.ops: list[str] = []

    def _handle(self, header: dict[str, Any]) -> None:
        self.ops.append(header["op"])
        super()._handle(header)


def test_a_presumed_query_crosses_the_link_in_one_message_and_is_checked_there(
    engine_core: EngineCore,
) -> None:
    """After its model's first admission at a front, a request is let in by the front and sent
    with its query in one message, which the engine admits as it would have admitted the
    request (the key checked), and scores like an admitted one; a refusal that says the terms
    may have changed (a revoked key) sends the model's next request to the engine first."""
    engine_end, front_end = socket.socketpair()
    buffer = mmap.mmap(-1, 1 << 22)
    counting = _CountingLink(engine_core, engine_end, buffer, "front-0")
    counting.start()
    first, second, third = queries(FAKE_SCHEMA, [9, 30, 4], seed=7)
    key_a = key_digest("key-a")

    async def run() -> None:
        remote = RemoteEngine(front_end, buffer, on_close=lambda: None)
        await remote.start()
        assert remote.presume("a", time.monotonic(), key_a) is None  # never admitted here
        admitted = await remote.admit("a", time.monotonic(), key_a)
        await remote.infer(admitted, first)
        assert counting.ops == ["admit", "submit"]
        presumed = remote.presume("a", time.monotonic(), key_a)
        assert presumed is not None and presumed.presumed is not None
        assert (presumed.tenant, presumed.sla_s) == (admitted.tenant, admitted.sla_s)
        scores = await remote.infer(presumed, second)
        assert counting.ops == ["admit", "submit", "query"]
        direct = engine_core.runtime.submit("a", second).future.result(5)
        np.testing.assert_array_equal(scores, direct)
        wrong = remote.presume("a", time.monotonic(), key_digest("key-b"))
        assert wrong is not None
        with pytest.raises(NotPermitted):  # b's key on a's model: refused by the engine
            await remote.infer(wrong, third)
        assert remote.presume("a", time.monotonic(), key_a) is None  # asked first again
        await remote.stop()

    asyncio.run(run())
    counting.join(timeout=5)


def test_the_engine_refuses_a_presumed_query_parsed_with_another_schema(engine_core) -> None:
    """A plan swap that serves a model with another artifact changes its schema: a query a
    front parsed on the old terms is refused (503), never scored with the wrong layout."""
    admission = engine_core.admit("a", time.monotonic(), key_digest("key-a"))
    assert engine_core.admit("a", time.monotonic(), key_digest("key-a"), admission.schema_key)
    with pytest.raises(ModelUnavailable, match="another schema"):
        engine_core.admit("a", time.monotonic(), key_digest("key-a"), "a:fake:old")


def test_over_http_a_tenant_under_its_bound_is_admitted_once_per_model_and_front(
    engine_core: EngineCore, serving: Serve
) -> None:
    """The daemon's app asks the engine to admit a tenant's first request for a model, then
    lets its requests in on those terms (one engine call each, not two); a revoked key is
    refused by the engine, and from then on before its body is read."""

    class Counting(LocalEngine):
        admits = 0

        async def admit(self, model: str, arrival: float, credential: str | None = None) -> Ticket:
            Counting.admits += 1
            return await super().admit(model, arrival, credential)

    app = create_front(Counting(engine_core))
    with serving(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        client.headers["Authorization"] = "Bearer key-a"
        assert [_infer(client, "a", k).status_code for k in range(6)] == [200] * 6
        assert Counting.admits == 1
        engine_core.credentials.update(_document({"tenant-b": "key-b"}))  # a's key revoked
        assert _infer(client, "a", 6).status_code == 403  # presumed: the engine refused it
        assert Counting.admits == 1
        assert _infer(client, "a", 7).status_code == 403
        assert Counting.admits == 2  # asked before the body this time


def _behind(budgets: TenantBudgets, model: str, credential: str, tenant: str) -> None:
    """Put ``tenant`` behind at ``budgets`` (a frozen clock keeps it there): refused at its
    bound, with every request it had in flight ended unanswered in time."""
    claimed = 0
    with pytest.raises(Overloaded):
        while True:
            budgets.claim(model, credential)
            claimed += 1
    for _ in range(claimed):
        budgets.leave(tenant, answered=False)


@pytest.mark.slow
def test_a_tenant_behind_has_its_bodies_read_one_at_a_time_and_others_at_once(
    engine_core: EngineCore, serving: Serve
) -> None:
    """While a tenant behind has a body being read at a front, its next request waits for its
    turn, and another tenant is served meanwhile. A body still coming in at its SLA (1 s here)
    is refused there, which passes the turn on to the next, read and served in time."""
    budgets = TenantBudgets(clock=lambda: 0.0)
    app = create_front(LocalEngine(engine_core), budgets=budgets)
    with serving(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for model in ("a", "b"):  # the front learns both tenants and their keys
            client.headers["Authorization"] = f"Bearer key-{model}"
            assert _infer(client, model, 0).status_code == 200
        _behind(budgets, "a", key_digest("key-a"), "tenant-a")
        turn = budgets.read_turn("tenant-a")
        assert turn is not None and budgets.read_turn("tenant-b") is None
        stalled_at = time.monotonic()
        stalled = _headers_only(server.url, "a", 4096, key="key-a")  # its body never comes
        with ThreadPoolExecutor(1) as pool:
            wait_until(turn.locked, "the stalled request to hold a's turn")
            # a's next request comes half the SLA after the stalled one (the scenario's timing,
            # not a wait for a state): the turn passes to it at the stalled body's cut-off,
            # leaving it half its SLA to be read and served, and b half the SLA to be served
            # before that cut-off.
            time.sleep(max(0.0, stalled_at + 0.5 - time.monotonic()))
            client.headers["Authorization"] = "Bearer key-a"
            waiting = pool.submit(_infer, client, "a", 1)  # its body sent whole, but not read
            wait_until(lambda: budgets.in_flight("tenant-a") == 2, "a's next request let in")
            with httpx.Client(base_url=server.url, timeout=30) as other:
                other.headers["Authorization"] = "Bearer key-b"
                assert _infer(other, "b", 2).status_code == 200
            # b was served while a's turn was held: the stalled request still holds it (it is
            # cut off at its SLA) and a's next request still waits for it. Had b waited for
            # a's turn, the stalled request would have ended first. (No wall-clock bound: the
            # turn, not a guess at this machine's speed, says b did not wait.)
            assert turn.locked() and budgets.in_flight("tenant-a") == 2 and not waiting.done()
            stalled.settimeout(10)
            cut_off = _reply(stalled)  # at its SLA, not when its client gives up
            stalled.close()
            served = waiting.result(timeout=30)
            served_after_s = time.monotonic() - stalled_at
        assert cut_off.startswith(b"HTTP/1.1 429") and b"still coming in" in cut_off
        assert served.status_code == 200
        # a's next body was read only once the stalled one was cut off, at its SLA (the seats'
        # 1 s) after it came, which was after stalled_at: a bound a slow machine only widens.
        assert served_after_s >= 1.0


# -- the fronts' HTTP server -------------------------------------------------------------------


def _post(model: str, query: Any, key: str, headers: str = "", body: bytes | None = None) -> bytes:
    """An inference request's bytes: its head (with ``headers`` lines added) and its body."""
    content, header_length = codec.query_to_oip(query)
    content = content if body is None else body
    framing = "" if "Transfer-Encoding" in headers else f"Content-Length: {len(content)}\r\n"
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {key}\r\n{oip.HEADER_LENGTH}: {header_length}\r\n"
        f"{framing}{headers}\r\n"
    )
    return head.encode() + (b"" if "Expect" in headers else content)


def _response(reader: Any) -> tuple[int, dict[str, str], bytes]:
    """The next response on a connection's reader: status, headers (lower-case names), body."""
    status = int(reader.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers.get("content-length", 0)))


def _scores(headers: dict[str, str], body: bytes) -> np.ndarray:
    return oip.decode_reply(body, int(headers[oip.HEADER_LENGTH.lower()]))["scores"]


@pytest.fixture
def front(engine_core: EngineCore) -> Iterator[BackgroundFront]:
    """The fronts' server over tenants a and b, in this process; bodies up to 1 MiB."""
    app = create_front(LocalEngine(engine_core), max_body_bytes=1 << 20)
    with BackgroundFront(app, max_body_bytes=1 << 20) as server:
        yield server


def _connect(server: BackgroundFront) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def test_requests_sent_at_once_on_one_connection_are_answered_in_order(
    front: BackgroundFront, engine_core: EngineCore
) -> None:
    """Two queries and a metadata request written in one go on a kept-alive connection: each
    is answered, in the order sent, with the scores a direct forward gives, and the
    connection stays open for more."""
    first, second = queries(FAKE_SCHEMA, [3, 11], seed=4)
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n"
    with _connect(front) as conn, conn.makefile("rb") as reader:
        conn.sendall(_post("a", first, "key-a") + _post("b", second, "key-b") + live)
        for query, model in ((first, "a"), (second, "b")):
            status, headers, body = _response(reader)
            assert status == 200 and headers.get("connection") != "close"
            direct = engine_core.runtime.submit(model, query).future.result(5)
            np.testing.assert_array_equal(_scores(headers, body), direct)
        assert _response(reader)[::2] == (200, b'{"live":true}')
        conn.sendall(live.replace(b"GET", b"HEAD"))  # the same headers, no body
        status, headers, body = _response(reader)
        assert (status, body) == (200, b"") and headers["content-length"] == "13"


def test_a_chunked_body_and_one_sent_after_100_continue_are_read(front: BackgroundFront) -> None:
    """A body in chunks is read whole (and its connection closed after the reply); a client
    that asks ``Expect: 100-continue`` is told to go on before its body is read."""
    query = queries(FAKE_SCHEMA, [6], seed=5)[0]
    content, _ = codec.query_to_oip(query)
    pieces = [content[:100], content[100:400], content[400:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    with _connect(front) as conn, conn.makefile("rb") as reader:
        conn.sendall(_post("a", query, "key-a", "Transfer-Encoding: chunked\r\n", chunked))
        status, headers, body = _response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert len(_scores(headers, body)) == 6
    with _connect(front) as conn, conn.makefile("rb") as reader:
        conn.sendall(_post("a", query, "key-a", "Expect: 100-continue\r\n"))
        assert reader.readline().startswith(b"HTTP/1.1 100")
        assert reader.readline() == b"\r\n"
        conn.sendall(content)
        status, headers, body = _response(reader)
        assert status == 200 and len(_scores(headers, body)) == 6


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET /v2 HTTP/1.1\r\nHost: test\r\nX-Long: " + b"x" * 70000 + b"\r\n\r\n", 431),
        (b"POST /v2/models/a/infer HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-a\r\n"
         b"Content-Length: 2000000\r\n\r\n", 413),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
        (b"POST /v2/models/a/infer HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-a\r\n"
         b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501),
    ],
)  # fmt: skip
def test_a_malformed_or_oversized_request_is_refused_and_its_connection_closed(
    front: BackgroundFront, sent: bytes, status: int
) -> None:
    """A request line that is not HTTP (400), a head over 64 KiB (431), a body declared over
    the limit (413, before a byte of it is read), a tunnel asked for (405) and a transfer
    coding other than chunked (501, its body not undone): answered with an error body, then
    closed."""
    with _connect(front) as conn:
        conn.sendall(sent)
        reply = _reply(conn)
    assert reply.startswith(b"HTTP/1.1 %d" % status), reply[:100]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower() and "error" in json.loads(body)
    if status == 405:
        assert b"allow: get, head, post" in head.lower()


def test_an_upgrade_is_ignored_and_the_request_answered_over_http_1_1(
    front: BackgroundFront,
) -> None:
    """A request that asks to switch protocols (``curl --http2`` asks for h2c) is answered as
    any other, over HTTP/1.1 and with its connection kept, its body read whichever way it is
    framed; so is one whose absolute-form target has no path (it names "/")."""
    upgrade = (
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    )
    query = queries(FAKE_SCHEMA, [4], seed=9)[0]
    content, _ = codec.query_to_oip(query)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(content), content)
    with _connect(front) as conn, conn.makefile("rb") as reader:
        conn.sendall(f"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n{upgrade}\r\n".encode())
        assert _response(reader)[::2] == (200, b'{"live":true}')
        conn.sendall(_post("a", query, "key-a", upgrade))
        status, headers, body = _response(reader)
        assert status == 200 and len(_scores(headers, body)) == 4
        conn.sendall(b"GET http://test HTTP/1.1\r\nHost: test\r\n\r\n")
        status, headers, body = _response(reader)
        assert (status, json.loads(body)) == (404, {"error": "no route for /"})
        conn.sendall(b"GET http://test/v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        assert _response(reader)[::2] == (200, b'{"live":true}')
    with _connect(front) as conn, conn.makefile("rb") as reader:
        transfer = upgrade + "Transfer-Encoding: chunked\r\n"
        conn.sendall(_post("a", query, "key-a", transfer, chunked))
        status, headers, body = _response(reader)
        assert status == 200 and len(_scores(headers, body)) == 4


def test_an_unmatched_route_or_method_is_answered_with_the_error_body(
    engine_core: EngineCore, serving: Serve
) -> None:
    """Every error, routing's included, is ``{"error": message}``, whichever server answers."""
    with serving(create_front(LocalEngine(engine_core))) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            missing = client.post("/v2/models/a%2Fb/infer", content=b"{}")
            assert missing.status_code == 404
            assert missing.json() == {"error": "no route for /v2/models/a/b/infer"}
            wrong = client.get("/v2/models/a/infer")
            assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
            assert wrong.json() == {"error": "GET is not allowed on /v2/models/a/infer"}


def _eventually(condition: Callable[[], bool], what: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_body_still_coming_in_at_its_sla_is_refused_there_and_frees_its_place(
    engine_core: EngineCore, serving: Serve
) -> None:
    """Requests whose bodies stop coming in are answered 429 at their SLA (1 s here) by either
    server, and give their places in their tenant's bound back: stalled clients hold their
    tenant's bound no longer than that, and its next request is served."""
    budgets = TenantBudgets()
    app = create_front(LocalEngine(engine_core), budgets=budgets)
    with serving(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        client.headers["Authorization"] = "Bearer key-a"
        assert _infer(client, "a", 0).status_code == 200  # the front learns a's key
        stalled = [_headers_only(server.url, "a", 4096, "key-a") for _ in range(MIN_IN_FLIGHT)]
        try:
            for conn in stalled:
                conn.sendall(b"{" * 100)  # a part of its body, and no more
                conn.settimeout(10)
            replies = [_reply(conn) for conn in stalled]
        finally:
            for conn in stalled:
                conn.close()
        for reply in replies:
            assert reply.startswith(b"HTTP/1.1 429"), reply[:200]
            assert b"still coming in at its SLA" in reply
        assert budgets.in_flight("tenant-a") == 0
        assert _infer(client, "a", 1).status_code == 200


@pytest.mark.parametrize(
    "sent",
    [
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc",
        b"POST /v2/models/a/infer HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-a\r\n"
        b"Content-Length: 4096\r\n\r\n" + b"{" * 100,
        b"POST /v2/models/a/infer HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-a\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\n{{{{{\r\n",
    ],
    ids=["asgi-route", "content-length", "chunked"],
)
def test_a_body_that_stalls_is_answered_408_and_ends_its_request(
    engine_core: EngineCore, monkeypatch: pytest.MonkeyPatch, sent: bytes
) -> None:
    """Whatever its route and framing, a body of which no byte comes for BODY_STALL_S (0.2 s
    here, before the SLA of 1 s) is answered 408 and its connection closed, and an inference
    request gives its place in its tenant's bound back."""
    monkeypatch.setattr(front_http, "BODY_STALL_S", 0.2)
    budgets = TenantBudgets()
    query = queries(FAKE_SCHEMA, [3], seed=10)[0]
    with BackgroundFront(create_front(LocalEngine(engine_core), budgets=budgets)) as front:
        with _connect(front) as conn, conn.makefile("rb") as reader:  # the front learns a's key
            conn.sendall(_post("a", query, "key-a"))
            assert _response(reader)[0] == 200
        with _connect(front) as conn:
            conn.settimeout(5)
            conn.sendall(sent)
            reply = _reply(conn)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        head, _, body = reply.partition(b"\r\n\r\n")
        assert b"connection: close" in head.lower() and "stalled" in json.loads(body)["error"]
        _eventually(lambda: budgets.in_flight("tenant-a") == 0, "the stalled request is held")


def test_a_trickled_body_of_another_route_is_cut_off_at_its_deadline(
    engine_core: EngineCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body for a route other than inference that keeps coming a byte at a time, never
    stalling, is answered 408 once OTHER_BODY_S (0.5 s here) has passed since its head, and
    its connection closed: a trickle cannot hold a connection and its request for ever."""
    monkeypatch.setattr(front_http, "OTHER_BODY_S", 0.5)
    with (
        BackgroundFront(create_front(LocalEngine(engine_core))) as front,
        _connect(front) as conn,
    ):
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n")
        sent_at = time.monotonic()

        def trickle() -> None:
            with contextlib.suppress(OSError):  # the server closes mid-trickle
                for _ in range(100):
                    conn.sendall(b" ")
                    time.sleep(0.05)

        with ThreadPoolExecutor(1) as pool:
            pool.submit(trickle)
            reply = _reply(conn)
            waited_s = time.monotonic() - sent_at
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert "did not come in whole" in json.loads(body)["error"]
    assert 0.5 <= waited_s < 3.0  # at the deadline, long before the trickle's 5 s would end


def _memory_mib(field: str) -> float:
    """This process's ``field`` of /proc/self/status (VmRSS, VmHWM: its peak) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def test_a_declared_body_costs_the_front_what_came_of_it_not_its_length(
    engine_core: EngineCore,
) -> None:
    """Four requests that declare 64 MiB bodies and send 64 KiB of them, waiting for the rest,
    grow the front's memory by about what came (a buffer of the declared length zeroed at once
    cost all 256 MiB)."""
    limit = 64 << 20
    budgets = TenantBudgets()
    query = queries(FAKE_SCHEMA, [3], seed=11)[0]
    app = create_front(LocalEngine(engine_core), max_body_bytes=limit, budgets=budgets)
    with BackgroundFront(app, max_body_bytes=limit) as front:
        with _connect(front) as conn, conn.makefile("rb") as reader:  # the front learns a's key
            conn.sendall(_post("a", query, "key-a"))
            assert _response(reader)[0] == 200
        before = _memory_mib("VmRSS")
        waiting = [_headers_only(front.url, "a", limit, "key-a") for _ in range(4)]
        try:
            for conn in waiting:
                conn.sendall(bytes(65536))
            _eventually(lambda: budgets.in_flight("tenant-a") == 4, "the requests were let in")
            with _connect(front) as conn, conn.makefile("rb") as reader:  # after their reads
                conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
                assert _response(reader)[0] == 200
            grown = _memory_mib("VmRSS") - before
        finally:
            for conn in waiting:
                conn.close()
    assert grown < 32, f"{grown:.0f} MiB for 256 KiB received"


def test_a_chunked_body_costs_the_front_about_its_payload(engine_core: EngineCore) -> None:
    """A body in 500 000 two-byte chunks (3.5 MB on the wire, 1 MB of payload) is received into
    one buffer: the front's peak memory grows by a few MiB, not by a ``bytes`` per chunk."""
    limit = 64 << 20
    request = (
        b"POST /v2/models/a/infer HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-a\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"2\r\n{{\r\n" * 500_000 + b"0\r\n\r\n"
    )
    app = create_front(LocalEngine(engine_core), max_body_bytes=limit)
    with BackgroundFront(app, max_body_bytes=limit) as front:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
        before = _memory_mib("VmRSS")
        with _connect(front) as conn:
            conn.sendall(request)
            reply = _reply(conn)
        peak = _memory_mib("VmHWM") - before
    assert reply.startswith(b"HTTP/1.1 400") and b"invalid JSON" in reply  # read whole
    assert peak < 12, f"{peak:.0f} MiB at the peak for 1 MB of payload"


def test_a_connection_is_freed_as_it_closes_without_the_cycle_collector(
    engine_core: EngineCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A front freezes what it built and its collector seldom runs a full pass: each connection
    must be freed as it closes, however its request ended (answered, its client gone with half
    its body sent, its body stalled), or it keeps its buffers."""
    monkeypatch.setattr(front_http, "BODY_STALL_S", 0.2)
    made: list[weakref.ref[front_http._Connection]] = []
    connection_made = front_http._Connection.connection_made

    def recorded(self: front_http._Connection, transport: asyncio.BaseTransport) -> None:
        made.append(weakref.ref(self))
        connection_made(self, transport)

    monkeypatch.setattr(front_http._Connection, "connection_made", recorded)
    request = _post("a", queries(FAKE_SCHEMA, [5], seed=12)[0], "key-a")
    gc.collect()
    gc.disable()
    try:
        with BackgroundFront(create_front(LocalEngine(engine_core))) as front:
            with _connect(front) as conn, conn.makefile("rb") as reader:
                conn.sendall(request)
                assert _response(reader)[0] == 200
            with _connect(front) as conn:
                conn.sendall(request[: len(request) // 2])
                conn.shutdown(socket.SHUT_WR)  # gone
                assert _reply(conn) == b""
            with _connect(front) as conn:
                conn.sendall(request[: len(request) // 2])  # and no more
                assert _reply(conn).startswith(b"HTTP/1.1 408")
            _eventually(
                lambda: len(made) == 3 and all(ref() is None for ref in made),
                "a closed connection lives on until the cycle collector runs",
            )
    finally:
        gc.enable()


def _unread(port: int) -> socket.socket:
    """A connection to ``port`` whose client takes as little of what it is sent as it can."""
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.settimeout(10)
    conn.connect(("127.0.0.1", port))
    return conn


def test_a_client_that_reads_no_replies_is_read_no_further_and_closed(
    engine_core: EngineCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends requests at once and reads none of their replies: the front stops
    reading its requests once replies wait to be written, rather than hold every reply, and
    closes the connection when the client takes none of them for WRITE_STALL_S (0.3 s here)."""
    monkeypatch.setattr(front_http, "WRITE_STALL_S", 0.3)
    requests = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n" * 2000  # replies of 15 MB
    with BackgroundFront(create_front(LocalEngine(engine_core))) as front:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
        before = _memory_mib("VmRSS")
        with _unread(front.port) as conn:
            conn.sendall(requests)

            def closed() -> bool:  # by the server: reset, or ended (the state, read nothing)
                state = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
                return state in (7, 8)  # TCP_CLOSE, TCP_CLOSE_WAIT

            _eventually(closed, "the connection was not closed")
        peak = _memory_mib("VmHWM") - before
    assert peak < 8, f"{peak:.0f} MiB at the peak"


def test_replies_held_back_for_a_slow_reader_all_come_in_order(front: BackgroundFront) -> None:
    """Requests not read while their connection's replies wait to be written are read, and
    answered in order, once the client takes its replies."""
    metrics = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n"
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n"
    with _unread(front.port) as conn, conn.makefile("rb") as reader:
        conn.sendall((metrics + live) * 200)
        time.sleep(0.3)  # the front's replies pile up meanwhile
        for _ in range(200):
            status, headers, _ = _response(reader)
            assert status == 200 and headers["content-type"].startswith("text/plain")
            assert _response(reader)[::2] == (200, b'{"live":true}')


def test_a_client_gone_mid_body_or_idle_frees_what_it_held(
    engine_core: EngineCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients that leave with half their bodies sent end their requests: their tenant's
    places at the front are given back, three times its bound of them, and its next request
    is served. An idle kept-alive connection is closed after the keep-alive time."""
    monkeypatch.setattr(front_http, "KEEP_ALIVE_S", 0.3)
    budgets = TenantBudgets()
    query = queries(FAKE_SCHEMA, [8], seed=6)[0]
    request = _post("a", query, "key-a")
    with BackgroundFront(create_front(LocalEngine(engine_core), budgets=budgets)) as front:
        with _connect(front) as conn, conn.makefile("rb") as reader:  # the front learns a's key
            conn.sendall(request)
            assert _response(reader)[0] == 200
        for _ in range(3 * MIN_IN_FLIGHT):  # one after another: none is refused at the bound
            with _connect(front) as conn:
                conn.sendall(request[: len(request) // 2])
                conn.shutdown(socket.SHUT_WR)  # gone: the front sees the end of its body
                assert _reply(conn) == b""  # and closes the connection, with no answer
        deadline = time.monotonic() + 10
        while budgets.in_flight("tenant-a"):
            assert time.monotonic() < deadline, "a request whose client left is still held"
            time.sleep(0.05)
        with _connect(front) as conn, conn.makefile("rb") as reader:
            conn.sendall(request)
            assert _response(reader)[0] == 200
            began = time.monotonic()
            assert conn.recv(1) == b""  # closed by the server, idle
            assert time.monotonic() - began < 5


def test_a_front_freezes_what_it_built_before_its_first_request_and_stops_with_its_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A front's imports and app live as long as it does: they are moved out of the cyclic
    collector's generations once it serves (a full pass over them paused every request of the
    front for 20-30 ms), once; and a front whose engine closes the link stops."""
    frozen: list[bool] = []
    monkeypatch.setattr("gc.freeze", lambda: frozen.append(True))
    engine_end, front_end = socket.socketpair()
    listener = socket.create_server(("127.0.0.1", 0))

    async def scenario() -> None:
        front = asyncio.create_task(
            front_process._serve(
                listener, front_end, mmap.mmap(-1, 4096), front_process.FrontOptions(1 << 20)
            )
        )
        for _ in range(100):
            if frozen:
                break
            await asyncio.sleep(0.02)
        assert frozen == [True]
        with socket.create_connection(listener.getsockname(), timeout=5):
            pass  # the front accepts connections
        engine_end.close()
        await asyncio.wait_for(front, 10)

    try:
        asyncio.run(scenario())
    finally:
        listener.close()
    assert frozen == [True]


# -- the daemon as processes ---------------------------------------------------------------------


def _two_tenants(folder: Path, fronts: int) -> Iterator[ChildServer]:
    """``gpufair executor`` with ``fronts`` fronts over tenants a and b (fake models)."""
    plan_path = folder / "plan.json"
    node_plan = plan([seat(0, "a", sla_ms=5000), seat(1, "b", sla_ms=5000)], pool=1)
    plan_path.write_text(json.dumps(node_plan.to_dict()))
    args = ["executor", "--plan", str(plan_path), "--backend", "fake", "--fronts", str(fronts)]
    with ChildServer("gpufair executor", args, log_path=folder / "daemon.log") as child:
        child.wait_healthy(120)
        yield child


def test_an_empty_host_is_every_interface_not_the_settings_host(tmp_path: Path) -> None:
    """``--host ""`` names every interface, as an empty address does to the socket API; it is
    not taken for a missing flag: the daemon listens (on the loopback interface too) where the
    settings' host, an address this machine does not have, would fail."""
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan([seat(0, "a")]).to_dict()))
    args = ["executor", "--plan", str(plan_path), "--backend", "fake", "--host", ""]
    env = {**os.environ, "GPUFAIR_EXECUTOR_HOST": "192.0.2.1"}  # TEST-NET-1: nobody's
    with ChildServer("gpufair executor", args, log_path=tmp_path / "daemon.log", env=env) as child:
        assert child.wait_healthy(120)["status"] == "serving"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildServer]:
    yield from _two_tenants(tmp_path_factory.mktemp("fronts"), fronts=2)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _fronts(daemon: ChildServer) -> list[int]:
    """The front processes (children that map no torch library and run the front's main)."""
    fronts = []
    for pid in _children(daemon.process.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:  # it ended since it was listed (a front killed by a test)
            continue
        if b"multiprocessing" in command and b"resource_tracker" not in command:
            fronts.append(pid)
    return fronts


def _infer(client: httpx.Client, model: str, seed: int) -> httpx.Response:
    query = queries(FAKE_SCHEMA, [5 + seed % 7], seed=seed)[0]
    body, header_length = codec.query_to_oip(query)
    headers = {oip.HEADER_LENGTH: str(header_length)}
    return client.post(f"/v2/models/{model}/infer", content=body, headers=headers)


@pytest.mark.slow
def test_queries_through_every_front_are_served_and_counted_once(daemon) -> None:
    fronts = _fronts(daemon)
    assert len(fronts) == 2
    for pid in fronts:  # a front parses queries; it never loads torch
        assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        before = client.get("/metrics").text
        # Fresh connections, so that both fronts get some (the kernel spreads them).
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda k: _infer(httpx.Client(base_url=daemon.url,
                                                                  timeout=30), "ab"[k % 2], k),
                                    range(40)))  # fmt: skip
        assert [r.status_code for r in replies] == [200] * 40
        for reply in replies:
            header_length = int(reply.headers[oip.HEADER_LENGTH])
            assert oip.decode_reply(reply.content, header_length)["scores"].dtype == np.float32
        metrics = client.get("/metrics").text
    for model in "ab":
        labels = f'model="{model}",outcome="ok",tenant="tenant-{model}"'
        line = f"gpufair_executor_queries_total{{{labels}}}"
        counted = _value(metrics, line) - _value(before, line)
        assert counted == 20, model


@pytest.mark.slow
def test_the_engines_threads_and_the_fronts_run_at_the_processs_priority(daemon) -> None:
    """The fronts and every thread of the engine keep the process's priority; only a backlog
    lane (a worker's second thread, for its group's batches with work queued behind them)
    runs under SCHED_IDLE."""
    pid = daemon.process.pid
    main = os.getpriority(os.PRIO_PROCESS, pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        if os.sched_getscheduler(tid) != getattr(os, "SCHED_IDLE", None):
            assert os.getpriority(os.PRIO_PROCESS, tid) == main
            assert os.sched_getscheduler(tid) == os.sched_getscheduler(pid)
    for front in _fronts(daemon):
        assert os.getpriority(os.PRIO_PROCESS, front) == main
        assert os.sched_getscheduler(front) == os.sched_getscheduler(pid)


def _value(metrics: str, prefix: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
def test_a_front_that_dies_is_started_again(daemon) -> None:
    victim = _fronts(daemon)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        fronts = _fronts(daemon)
        if len(fronts) == 2 and victim not in fronts:
            break
        assert time.monotonic() < deadline, "the front was not started again"
        time.sleep(0.2)
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        assert all(_infer(client, "a", k).status_code == 200 for k in range(10))


@pytest.mark.slow
def test_fronts_that_keep_dying_stop_the_daemon_with_an_error(tmp_path: Path) -> None:
    """A front that dies again as soon as it is started (always killed, a broken build) was
    started again every second for ever, the node serving nothing and its supervisor seeing a
    running daemon. Past MAX_FRONT_EXITS exits within a minute the daemon stops, status 1,
    saying why."""
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan([seat(0, "a")]).to_dict()))
    args = ["executor", "--plan", str(plan_path), "--backend", "fake", "--fronts", "1"]
    log_path = tmp_path / "daemon.log"
    with ChildServer("gpufair executor", args, log_path=log_path) as child:
        child.wait_healthy(120)
        killed: set[int] = set()
        deadline = time.monotonic() + 120
        while child.process.poll() is None:
            assert time.monotonic() < deadline, f"still running after {len(killed)} kills"
            for pid in set(_fronts(child)) - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)
        assert child.process.returncode == 1
    assert len(killed) == MAX_FRONT_EXITS + 1
    assert "not starting it again; the daemon stops" in log_path.read_text()


@pytest.fixture(scope="module")
def one_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildServer]:
    """A daemon with one front, so that every connection meets the same tenants' bounds."""
    yield from _two_tenants(tmp_path_factory.mktemp("one-front"), fronts=1)


def _headers_only(url: str, model: str, body_bytes: int, key: str | None = None) -> socket.socket:
    """A connection that sent an inference request's headers (with ``key``'s Authorization),
    declaring a body it never sends."""
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=30)
    authorization = "" if key is None else f"Authorization: Bearer {key}\r\n"
    conn.sendall(
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}\r\n{authorization}"
        f"Content-Type: {oip.BINARY_CONTENT_TYPE}\r\nContent-Length: {body_bytes}\r\n\r\n"
        .encode()
    )  # fmt: skip
    return conn


def _reply(conn: socket.socket) -> bytes:
    """All the server sends until it closes the connection."""
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


@pytest.mark.slow
def test_a_tenant_over_its_bound_is_refused_unread_and_others_are_served(one_front) -> None:
    """Requests whose bodies never come hold tenant a's bound (8 in flight at a front); a's next
    request is answered 429 with Retry-After before its body is sent, and the connection is
    closed rather than drained, while tenant b is served."""
    with httpx.Client(base_url=one_front.url, timeout=30) as client:
        assert _infer(client, "a", 0).status_code == 200  # the front learns a's tenant
        before = client.get("/metrics").text
        stalled = [_headers_only(one_front.url, "a", 4096) for _ in range(MIN_IN_FLIGHT)]
        try:
            while True:  # until a request finds the bound held
                probe = _headers_only(one_front.url, "a", 10**6)
                probe.settimeout(2.0)
                try:
                    reply = _reply(probe)
                except TimeoutError:  # admitted before the others were: it waits for its body
                    stalled.append(probe)
                    assert len(stalled) < 2 * MIN_IN_FLIGHT, "the bound was never held"
                    continue
                probe.close()
                break
            assert reply.startswith(b"HTTP/1.1 429"), reply[:200]
            head = reply.split(b"\r\n\r\n", 1)[0].lower()
            assert b"retry-after: 1" in head and b"connection: close" in head
            assert _infer(client, "b", 1).status_code == 200
        finally:
            for conn in stalled:
                conn.close()
        line = 'gpufair_executor_queries_total{model="a",outcome="rejected",tenant="tenant-a"}'
        deadline = time.monotonic() + 30
        while _value(client.get("/metrics").text, line) == _value(before, line):
            assert time.monotonic() < deadline, "the front's refusal was not counted"
            time.sleep(0.1)
        assert _infer(client, "a", 2).status_code == 200  # its bound is free again
