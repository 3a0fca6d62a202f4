"""Fronts and the engine: the fronts' fair read queues, their shared-buffer allocator, the link's
messages, and ``gpufair executor`` as an engine process with front processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from executor import codec
from executor.engine import link
from executor.fake import FAKE_SCHEMA
from executor.front.fair import FairReader
from executor.front.remote import Arena
from executor.scheduling import Overloaded
from executor.wire import oip
from gpufair.servers import ChildServer
from tests.executor.scheduling_helpers import plan, queries, seat

# -- the read queues --------------------------------------------------------------------------


async def _grant_order(reader: FairReader, arrivals: list[tuple[str, float, int]]) -> list[str]:
    """The order in which requests (tenant, share, cost), arriving in this order while one
    body is being read, get their turn; each holds its turn until the next is decided."""
    order: list[str] = []
    hold = asyncio.Event()

    async def first() -> None:
        async with reader.turn("first", 1.0, 1):
            await hold.wait()

    async def request(tenant: str, share: float, cost: int) -> None:
        async with reader.turn(tenant, share, cost):
            order.append(tenant)

    blocker = asyncio.create_task(first())
    await asyncio.sleep(0)
    tasks = []
    for tenant, share, cost in arrivals:
        tasks.append(asyncio.create_task(request(tenant, share, cost)))
        await asyncio.sleep(0)  # queued in arrival order
    hold.set()
    await asyncio.gather(blocker, *tasks)
    return order


def test_a_calm_tenants_body_is_read_before_a_flooders_backlog() -> None:
    arrivals = [("flood", 1.0, 1000)] * 20 + [("calm", 1.0, 1000)]
    order = asyncio.run(_grant_order(FairReader(slots=1), arrivals))
    assert order.index("calm") <= 1  # at most the flooder's first body before it


def test_backlogged_tenants_are_read_in_proportion_to_their_shares() -> None:
    arrivals = [("a", 2.0, 100)] * 30 + [("b", 1.0, 100)] * 30
    order = asyncio.run(_grant_order(FairReader(slots=1), arrivals))
    first_30 = order[:30]
    assert abs(first_30.count("a") - 20) <= 1 and abs(first_30.count("b") - 10) <= 1


def test_a_tenant_with_too_many_bodies_waiting_is_refused() -> None:
    async def run() -> None:
        reader = FairReader(slots=1, max_waiting=2)
        hold = asyncio.Event()

        async def waiting() -> None:
            async with reader.turn("flood", 1.0, 1):
                await hold.wait()

        tasks = [asyncio.create_task(waiting()) for _ in range(3)]
        await asyncio.sleep(0)
        assert reader.waiting("flood") == 2
        with pytest.raises(Overloaded, match="wait to be read"):
            async with reader.turn("flood", 1.0, 1):
                pass
        hold.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())


def test_a_request_whose_turn_comes_after_its_sla_is_refused_unread() -> None:
    """When the front falls behind, a body whose turn comes after its arrival plus SLA is not
    read: the request is refused (429) and its turn goes to the next request that still has
    time, so shedding falls on the requests that waited longest."""

    async def run() -> None:
        now = [0.0]
        reader = FairReader(slots=1, clock=lambda: now[0])
        hold = asyncio.Event()
        outcomes: dict[str, str] = {}

        async def first() -> None:
            async with reader.turn("first", 1.0, 1):
                await hold.wait()

        async def request(name: str, tenant: str, expires: float) -> None:
            try:
                async with reader.turn(tenant, 1.0, 100, expires):
                    outcomes[name] = f"read at {now[0]:g}"
            except Overloaded as exc:
                outcomes[name] = str(exc)

        blocker = asyncio.create_task(first())
        await asyncio.sleep(0)
        tasks = [
            asyncio.create_task(request("late flood", "flood", expires=0.05)),
            asyncio.create_task(request("calm", "calm", expires=0.15)),
            asyncio.create_task(request("flood in time", "flood", expires=0.15)),
        ]
        await asyncio.sleep(0)
        now[0] = 0.1  # the first body took 100 ms: one waiting request is past its SLA
        hold.set()
        await asyncio.gather(blocker, *tasks)
        assert outcomes["calm"] == outcomes["flood in time"] == "read at 0.1"
        assert "came after its SLA" in outcomes["late flood"]
        assert reader.waiting("flood") == reader.waiting("calm") == 0
        # The refusal took no slot: the next request is read at once.
        async with reader.turn("calm", 1.0, 100, expires=0.2):
            pass

    asyncio.run(run())


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


# -- the daemon as processes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildServer]:
    folder: Path = tmp_path_factory.mktemp("fronts")
    plan_path = folder / "plan.json"
    node_plan = plan([seat(0, "a", sla_ms=5000), seat(1, "b", sla_ms=5000)], pool=1)
    plan_path.write_text(json.dumps(node_plan.to_dict()))
    args = ["executor", "--plan", str(plan_path), "--backend", "fake", "--fronts", "2"]
    with ChildServer("gpufair executor", args, log_path=folder / "daemon.log") as child:
        child.wait_healthy(120)
        yield child


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _fronts(daemon: ChildServer) -> list[int]:
    """The front processes (children that map no torch library and run the front's main)."""
    fronts = []
    for pid in _children(daemon.process.pid):
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
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
