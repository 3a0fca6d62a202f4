"""The engine's side of the fronts' links, and the daemon's processes, when something goes wrong:
a front that goes away or stops reading its link, a message no front should send, a SIGTERM
under load (docs/executor.md, "Fronts and the engine")."""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from executor import codec
from executor.engine import link
from executor.engine.core import EngineCore
from executor.engine.server import FrontLink
from executor.fake import FAKE_SCHEMA, FakeBackend
from executor.front.remote import ENGINE_ANSWER_S, RemoteEngine
from executor.scheduling import ModelUnavailable, NodeRuntime, SchedulerConfig
from executor.wire import oip
from gpufair.servers import ChildServer
from tests.executor.scheduling_helpers import plan, queries, seat

SCHEMA_KEY = "a:fake:a"  # model a's id and artifact: what a presumed query names its schema by


def _eventually(condition: Callable[[], bool], what: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture
def one_session() -> Iterator[EngineCore]:
    """An engine serving model a on one session, a query per batch, each taking 0.2 s whatever
    its size, none dropped or refused for lateness: what is queued stays queued until served."""
    config = SchedulerConfig(
        batching=False, splitting=False, admission=False, max_batch_candidates=1 << 20
    )
    runtime = NodeRuntime(FakeBackend(row_s=0.0, batch_s=0.2), config)
    runtime.apply(plan([seat(0, "a", sla_ms=60_000)]))
    yield EngineCore(runtime)
    runtime.close()


def _query_message(key: int, offset: int, rows: int) -> dict[str, Any]:
    """A presumed query of model a in the front's buffer at ``offset``."""
    return {
        "op": "query", "id": key, "model": "a", "arrival": time.monotonic(), "credential": None,
        "schema_key": SCHEMA_KEY, "offset": offset, "rows": rows,
    }  # fmt: skip


def _link(core: EngineCore, buffer: mmap.mmap) -> tuple[FrontLink, socket.socket]:
    """A started link of ``core`` to a front, and the front's end of it."""
    engine_end, front_end = socket.socketpair()
    front_link = FrontLink(core, engine_end, buffer, "front-0")
    front_link.start()
    front_end.settimeout(10)
    return front_link, front_end


def test_a_front_that_goes_away_has_its_queued_queries_taken_off_unserved(
    one_session: EngineCore, caplog: pytest.LogCaptureFixture
) -> None:
    """Queries a front submitted are cancelled when its link closes (the front died): the
    scheduler discards those still queued instead of serving them to nobody, ahead of the
    live fronts' queries, and none is counted as served."""
    group = one_session.runtime.group("a")
    buffer = mmap.mmap(-1, 1 << 20)
    front_link, front_end = _link(one_session, buffer)
    messages = []
    for key, query in enumerate(queries(FAKE_SCHEMA, [4] * 8, seed=3)):
        offset = key * 4096
        link.write_query(memoryview(buffer), offset, FAKE_SCHEMA, query)
        messages.append(link.frame(_query_message(key, offset, query.num_candidates)))
    front_end.sendall(b"".join(messages))
    _eventually(lambda: group.in_flight == 8, "the queries were not queued")
    front_end.close()  # as the kernel closes it when the front is killed
    front_link.join(10)
    _eventually(lambda: group.in_flight == 0, "the queue was not emptied")
    assert group.stats.completed == 0, "queries of a front that is gone were served"
    served = 'gpufair_executor_queries_total{model="a",outcome="ok",tenant="tenant-a"}'
    assert served not in one_session.metrics.render().decode()
    assert "taken off the queues" in caplog.text
    assert "exception calling callback" not in caplog.text


def test_a_front_that_reads_nothing_holds_no_session_and_gets_its_replies_later(
    one_session: EngineCore,
) -> None:
    """A reply larger than the link's socket takes, to a front that is not reading (busy,
    stopped): the session that scored it serves on (another front's query is answered),
    and the reply reaches the stalled front whole, in order, once it reads."""
    stalled_buffer = mmap.mmap(-1, 8 << 20)
    stalled_link, stalled = _link(one_session, stalled_buffer)
    big, small = queries(FAKE_SCHEMA, [200_000, 3], seed=4)  # 800 kB of scores
    link.write_query(memoryview(stalled_buffer), 0, FAKE_SCHEMA, big)
    buffer = mmap.mmap(-1, 1 << 20)
    engine_end, front_end = socket.socketpair()
    other_link = FrontLink(one_session, engine_end, buffer, "front-1")
    other_link.start()

    async def other_front() -> np.ndarray:
        remote = RemoteEngine(front_end, buffer, on_close=lambda: None)
        await remote.start()
        try:
            ticket = await remote.admit("a", time.monotonic())
            return await asyncio.wait_for(remote.infer(ticket, small), 5)
        finally:
            await remote.stop()

    try:
        stalled.sendall(
            link.frame(_query_message(1, 0, big.num_candidates))
            + link.frame(_query_message(2, 0, big.num_candidates))
        )
        group = one_session.runtime.group("a")
        _eventually(lambda: group.stats.completed == 2, "a front reading nothing holds a session")
        assert asyncio.run(other_front()).shape == (3,)
        with stalled.makefile("rb") as replies:
            for key in (1, 2):
                head_len, payload_len = link.FRAME.unpack(replies.read(link.FRAME.size))
                header = json.loads(replies.read(head_len))
                scores = np.frombuffer(replies.read(payload_len), "<f4")
                assert header == {"id": key} and scores.shape == (big.num_candidates,)
    finally:
        stalled.close()  # frees a session held by it
    stalled_link.join(10)
    other_link.join(10)


def _reply(conn: socket.socket) -> dict[str, Any]:
    head_len, payload_len = link.FRAME.unpack(conn.recv(link.FRAME.size, socket.MSG_WAITALL))
    header: dict[str, Any] = json.loads(conn.recv(head_len, socket.MSG_WAITALL))
    if payload_len:
        conn.recv(payload_len, socket.MSG_WAITALL)
    return header


def test_a_malformed_message_fails_alone_and_an_oversized_frame_closes_only_its_link(
    one_session: EngineCore, caplog: pytest.LogCaptureFixture
) -> None:
    """The link is internal, but a front's bug must not take the engine down or its other
    requests with it: a message the engine cannot read is answered as failed (500) when it
    carries an id, dropped when it does not, and the link serves on; a frame that declares
    more than the engine reads closes that link at once, without buffering what it declares,
    and the engine serves on."""
    size = 1 << 20
    buffer = mmap.mmap(-1, size)
    link.write_query(memoryview(buffer), 0, FAKE_SCHEMA, queries(FAKE_SCHEMA, [3], seed=5)[0])
    front_link, conn = _link(one_session, buffer)
    raw = link.FRAME.pack(8, 0) + b"not json" + link.FRAME.pack(2, 0) + b"[]"
    malformed: list[dict[str, Any]] = [
        {"id": 1},  # no operation
        {"id": 2, "op": "teleport"},
        {"id": 3, "op": "submit", "offset": 0, "rows": 3},  # never admitted
        {"id": 4, "op": "admit", "model": "a", "arrival": "soon"},
        _query_message(5, -64, 3),  # before the buffer
        _query_message(6, 0, 0),  # no candidate
        _query_message(7, size - 64, 1000),  # past its end
        {"id": 8, "op": "refused", "counts": {"a": "many"}},
    ]
    conn.sendall(raw + b"".join(link.frame(message) for message in malformed))
    for message in malformed:
        reply = _reply(conn)
        assert reply["id"] == message["id"] and reply["error"]["type"] == "ModelFailed", reply
    conn.sendall(link.frame(_query_message(9, 0, 3)))
    reply = _reply(conn)
    assert reply == {"id": 9}, "a well-formed query after them was not served"
    assert caplog.text.count("cannot read") == 2 and caplog.text.count("malformed") == 8
    conn.sendall(link.FRAME.pack(1 << 30, 0))  # a gigabyte declared
    assert conn.recv(1) == b"", "the link was not closed"
    front_link.join(10)
    assert not front_link.is_alive()
    assert "will not read" in caplog.text
    served = one_session.runtime.submit("a", queries(FAKE_SCHEMA, [2], seed=6)[0])
    assert served.future.result(5).shape == (2,)


def test_a_front_whose_engine_died_with_messages_unread_says_so_and_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An engine that dies with messages of the front unread resets the link instead of ending
    it: the front fails its calls in flight (503), logs why it stops and stops."""
    engine_end, front_end = socket.socketpair()
    stopped = threading.Event()

    async def front() -> None:
        remote = RemoteEngine(front_end, mmap.mmap(-1, 4096), on_close=stopped.set)
        await remote.start()
        health = asyncio.ensure_future(remote.health())
        await asyncio.sleep(0)  # the health message is written
        _eventually(lambda: bool(engine_end.recv(1, socket.MSG_PEEK)), "nothing was sent")
        engine_end.close()  # with the message unread: the front's socket is reset
        with pytest.raises(Exception, match="engine is not running"):
            await asyncio.wait_for(health, 5)
        await remote.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(front())
    assert stopped.is_set()
    assert "the engine closed this front's link" in caplog.text


def test_an_engine_that_does_not_answer_fails_the_call_and_the_late_reply_is_dropped() -> None:
    """A front waited for ever on an engine that had stopped answering (wedged: its link
    thread holds no GIL it gives back), so /healthz hung and a TCP liveness probe passed. A
    call other than a query now fails after the front's wait (503), keeping nothing for it; a
    reply that comes after is dropped, and the next call is answered."""
    engine_end, front_end = socket.socketpair()
    engine_end.settimeout(10)

    async def front() -> None:
        remote = RemoteEngine(front_end, mmap.mmap(-1, 4096), on_close=lambda: None, answer_s=0.3)
        await remote.start()
        began = time.monotonic()
        with pytest.raises(ModelUnavailable, match=r"did not answer in 0\.3 s"):
            await remote.health()
        assert time.monotonic() - began < 5
        assert remote._waiting == {}  # nothing kept for the call given up
        header, _ = link.receive(engine_end)
        assert header["op"] == "health"
        engine_end.sendall(link.frame({"id": header["id"], "health": {"late": True}}))
        answered = asyncio.ensure_future(remote.health())
        header, _ = await asyncio.to_thread(link.receive, engine_end)
        engine_end.sendall(link.frame({"id": header["id"], "health": {"plan_version": 1}}))
        assert await asyncio.wait_for(answered, 5) == {"plan_version": 1}
        await remote.stop()

    asyncio.run(front())


# -- the daemon as processes ---------------------------------------------------------------------


def _in_flight(url: str) -> float:
    """Model a's queries admitted and not yet answered, from the daemon's metrics."""
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return sum(
        float(line.split()[-1])
        for line in lines
        if line.startswith("gpufair_executor_in_flight{") and 'model="a"' in line
    )


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.slow
def test_sigterm_refuses_new_connections_at_once_serves_those_in_flight_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """On SIGTERM the daemon stops listening at once (a client connecting during the drain is
    refused and can go elsewhere, rather than queue unaccepted and be reset when the drain
    ends), answers the query in flight, and exits leaving no process of it and nothing in
    /dev/shm."""
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan([seat(0, "a", sla_ms=20_000)]).to_dict()))
    args = ["executor", "--plan", str(plan_path), "--backend", "fake", "--fronts", "1",
            "--fake-row-us", "200000"]  # fmt: skip
    shm_before = set(os.listdir("/dev/shm"))
    query = queries(FAKE_SCHEMA, [20], seed=8)[0]  # 4 s to score
    body, header_length = codec.query_to_oip(query)
    with ChildServer("gpufair executor", args, log_path=tmp_path / "daemon.log") as child:
        child.wait_healthy(120)
        processes = _descendants(child.process.pid)
        with ThreadPoolExecutor(1) as pool:
            answer: Future[httpx.Response] = pool.submit(
                httpx.post, f"{child.url}/v2/models/a/infer", content=body, timeout=60,
                headers={oip.HEADER_LENGTH: str(header_length)},
            )  # fmt: skip
            _eventually(lambda: _in_flight(child.url) == 1, "the query was not queued")
            child.process.send_signal(signal.SIGTERM)
            _eventually(lambda: _refused(child.port), "new connections were not refused")
            assert not answer.done(), "refused only once the query in flight was answered"
            assert answer.result().status_code == 200
        assert child.process.wait(30) == 0
        assert "executor stopped" in child.tail(20)  # its log says the daemon ended, not died
    assert processes
    _eventually(lambda: not any(map(_running, processes)), "a process of the daemon was left")
    assert set(os.listdir("/dev/shm")) <= shm_before


@pytest.mark.slow
def test_livez_fails_while_the_engine_is_stopped_and_passes_again_after(tmp_path: Path) -> None:
    """The daemon's liveness: an engine that answers nothing (here stopped with SIGSTOP, as a
    wedged one) fails /livez with 503 after the front's wait, where the TCP probe the
    DaemonSet had passed, and passes again once it answers."""
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan([seat(0, "a")]).to_dict()))
    args = ["executor", "--plan", str(plan_path), "--backend", "fake", "--fronts", "1"]
    with ChildServer("gpufair executor", args, log_path=tmp_path / "daemon.log") as child:
        child.wait_healthy(120)
        assert httpx.get(f"{child.url}/livez", timeout=30).json() == {"status": "alive"}
        child.process.send_signal(signal.SIGSTOP)  # the engine; the front runs on
        try:
            began = time.monotonic()
            wedged = httpx.get(f"{child.url}/livez", timeout=60)
            waited = time.monotonic() - began
        finally:
            child.process.send_signal(signal.SIGCONT)
        assert wedged.status_code == 503, wedged.text
        assert "the engine did not answer in" in wedged.json()["error"]
        assert ENGINE_ANSWER_S - 1 <= waited < ENGINE_ANSWER_S + 20
        _eventually(
            lambda: httpx.get(f"{child.url}/livez", timeout=30).status_code == 200,
            "/livez did not pass once the engine answered again",
            within_s=30,
        )
