"""Route tests of /v1/nodes: registration, tokens, heartbeats, profiles and the plan protocol."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

import api.services.plans as plans_service
from allocator import DevicePlan, ModelReplica, NodePlan, SeatPlan, parse_certificate
from api.app import create_app
from api.models import AllocationRow, NodePlanRow, NodeRow
from api.services.plans import RECENT_PLANS, RenderedPlans, plan_version_named
from executor.wire.heartbeat import MAX_COUNT
from executor.wire.names import InvalidNameError, validate_node_name
from gpufair.compose import api_config
from tests.api.conftest import EMPTY_CERTIFICATE, Api, make_settings
from tests.name_cases import NODE_NAMES
from tests.waiting import Signalling


def test_register_list_and_rotate_token(api: Api) -> None:
    node, token = api.node("n1", gpus=2)
    assert token.startswith("gfn_") and [d["device"] for d in node["devices"]] == [
        "cuda:0",
        "cuda:1",
    ]
    listed = api.client.get("/v1/nodes", headers=api.admin).json()
    assert [n["name"] for n in listed] == ["n1"] and "token" not in listed[0]
    r = api.client.post("/v1/nodes/n1/token", headers=api.admin)
    assert r.status_code == 200
    new = r.json()["token"]
    assert api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token)).status_code == 401
    assert api.client.get("/v1/nodes/n1/plan", headers=api.bearer(new)).status_code == 200


def test_bad_devices_are_422(api: Api) -> None:
    for devices, field in [
        ([], "devices"),
        (
            [{"device": "cuda:0", "kind": "tpu", "memory_mb": 1, "streams": 2, "seats": 1}],
            "devices[0].kind",
        ),
        (
            [{"device": "cuda:0", "kind": "gpu", "memory_mb": 1, "streams": 2, "seats": 3}],
            "devices[0]",
        ),
    ]:
        r = api.client.post("/v1/nodes", json={"name": "n", "devices": devices}, headers=api.admin)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.json()


def test_plan_before_any_allocation_is_empty_and_parses(api: Api) -> None:
    _, token = api.node("n1", gpus=1, seats=3, streams=5)
    r = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token))
    assert r.status_code == 200 and r.headers["ETag"] == '"plan-0"'
    plan = NodePlan.from_dict(r.json())
    assert plan.version == 0 and len(plan.devices[0].seats) == 3 and not plan.replicas()
    again = api.client.get(
        "/v1/nodes/n1/plan", headers={**api.bearer(token), "If-None-Match": '"plan-0"'}
    )
    assert again.status_code == 304 and again.content == b""


def test_long_poll_waits_then_304(api: Api) -> None:
    _, token = api.node("n1")
    started = time.monotonic()
    r = api.client.get(
        "/v1/nodes/n1/plan?wait=0.6", headers={**api.bearer(token), "If-None-Match": '"plan-0"'}
    )
    assert r.status_code == 304 and 0.5 <= time.monotonic() - started < 30


def test_long_poll_is_bounded_by_settings(api: Api) -> None:
    _, token = api.node("n1")
    started = time.monotonic()
    r = api.client.get(  # the test settings cap long-polls at 2 s
        "/v1/nodes/n1/plan?wait=600", headers={**api.bearer(token), "If-None-Match": '"plan-0"'}
    )
    assert r.status_code == 304 and time.monotonic() - started < 60  # the cap, not wait=600


def _solved_node(api: Api) -> str:
    """A node ``n1`` seated by a solve; its token."""
    _, key = api.tenant("ads")
    api.model(key, "ranker", replicas_wanted=1)
    _, token = api.node("n1", gpus=1)
    assert api.solve()["version"] == 1
    return token


def _no_plan_read(**_: Any) -> Any:
    raise AssertionError("the plan was read from the database")


def test_a_solved_plan_is_sent_from_its_rendering_without_reading_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a solve, a node's plan (what a woken long-poll sends) comes from the rendering the
    solve kept — no plan read, parse or encoding — and is the document a read of the stored
    row gives."""
    token = _solved_node(api)
    with monkeypatch.context() as patched:
        patched.setattr(plans_service, "current_plan", _no_plan_read)
        kept = api.client.get(
            "/v1/nodes/n1/plan", headers={**api.bearer(token), "If-None-Match": '"plan-0"'}
        )
    assert kept.status_code == 200 and kept.headers["ETag"] == '"plan-1"'
    assert kept.headers["content-type"] == "application/json"
    stored = NodePlan.from_dict(kept.json())
    assert stored.version == 1 and stored.replicas()
    # The same bytes as a plan read from the database and rendered afresh.
    fresh = api.client.app.state.gpufair  # type: ignore[attr-defined]
    fresh.rendered_plans = RenderedPlans()
    read = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token))
    assert read.status_code == 200 and read.content == kept.content


def test_a_replaced_token_is_refused_though_its_plan_is_kept_rendered(api: Api) -> None:
    """The rendering is a cache of the plan, not of who may read it: every request still
    identifies its token in the database, so a rotated token gets 401 at once."""
    old = _solved_node(api)
    before = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(old))
    assert before.status_code == 200
    new = api.client.post("/v1/nodes/n1/token", headers=api.admin).json()["token"]
    for wait in ("", "?wait=1"):
        r = api.client.get(
            f"/v1/nodes/n1/plan{wait}", headers={**api.bearer(old), "If-None-Match": '"plan-0"'}
        )
        assert r.status_code == 401 and "plan" not in r.text, r.text
    after = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(new))
    assert after.status_code == 200 and after.content == before.content


@contextmanager
def _own_app(db_url: str, *, max_long_poll_s: float) -> Iterator[tuple[TestClient, Api]]:
    """An app of the test's own, whose long-polls may be held ``max_long_poll_s``, and its Api."""
    settings = make_settings(db_url, max_long_poll_s=max_long_poll_s)
    with TestClient(create_app(api_config(settings)), raise_server_exceptions=False) as client:
        yield client, Api(client)


def _store_newer_plan_elsewhere(url: str, node: str, version: int) -> NodePlan:
    """What another API process sharing the database does when it stores an allocation: a
    plan of ``version`` for ``node`` (one model seated), written on a connection of its own."""
    engine = sqlalchemy.create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            certificate = parse_certificate(EMPTY_CERTIFICATE).model_dump()
            session.add(AllocationRow(id=version, version=version, objective="utilitarian",
                                      solve_seconds=0.0, certificate=certificate,
                                      tenant_ids={}))  # fmt: skip
            session.flush()
            node_id = session.scalar(sqlalchemy.select(NodeRow.id).where(NodeRow.name == node))
            replica = ModelReplica("77", "elsewhere", "zoo:rmc1?scale=0.05&seed=7", 20.0)
            plan = NodePlan(
                node,
                version,
                version,
                (DevicePlan("cuda:0", "gpu", 8, 2, (SeatPlan(0, replica, 2, 1.0),)),),
            )
            session.add(NodePlanRow(allocation_id=version, node_id=node_id, version=version,
                                    plan=plan.to_dict()))  # fmt: skip
    finally:
        engine.dispose()
    return plan


def test_a_plan_another_process_stored_is_sent_not_the_one_kept(
    api: Api, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept rendering is looked up by the version the database says is newest: a plan a
    second API process stored is sent as soon as this one sees its version — to a held
    long-poll once the app's watcher of stored plans wakes it, and to any new request — never
    the older rendering."""
    token = _solved_node(api)
    assert api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token)).status_code == 200
    first_read = Signalling(plans_service.current_version)
    monkeypatch.setattr(plans_service, "current_version", first_read)
    held: dict[str, Any] = {}

    def long_poll() -> None:
        held["reply"] = api.client.get(
            "/v1/nodes/n1/plan?wait=2", headers={**api.bearer(token), "If-None-Match": '"plan-1"'}
        )

    poller = threading.Thread(target=long_poll)
    poller.start()
    # The long-poll is held: its first read found plan 1, the one it names, still the newest.
    assert first_read.wait()[0] == 1
    newer = _store_newer_plan_elsewhere(db_url, "n1", version=2)
    poller.join(timeout=30)
    woken = held["reply"]
    assert woken.status_code == 200 and woken.headers["ETag"] == '"plan-2"'
    assert NodePlan.from_dict(woken.json()) == newer
    again = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token))
    assert again.headers["ETag"] == '"plan-2"' and NodePlan.from_dict(again.json()) == newer


def test_a_held_long_poll_woken_by_a_solve_here_sends_its_plan_without_a_read(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-poll held with plan 1 and woken by this process's solve of plan 2 sends plan 2 as
    the solve rendered it, without asking the database: the 100 long-polls a solve wakes add
    no query. (The watcher of stored plans looks only every 1000 s here, so the only look after
    the first read is the solve's wake-up's.)"""
    monkeypatch.setattr(plans_service, "RECHECK_S", 1000.0)
    monkeypatch.setattr(plans_service, "WAKE_SPREAD_S", 0.0)
    with _own_app(db_url, max_long_poll_s=20.0) as (client, api):
        token = _solved_node(api)
        first_read = Signalling(plans_service.current_version)
        monkeypatch.setattr(plans_service, "current_version", first_read)
        held: dict[str, Any] = {}

        def long_poll() -> None:
            held["reply"] = client.get(
                "/v1/nodes/n1/plan?wait=20",
                headers={**api.bearer(token), "If-None-Match": '"plan-1"'},
            )

        poller = threading.Thread(target=long_poll)
        poller.start()
        # Its first read done (plan 1, the one it names: nothing to send), it waits for the
        # notifier; a wake-up from here on is not lost (the notifier's generation was noted
        # before that read).
        assert first_read.wait()[0] == 1
        with monkeypatch.context() as patched:
            patched.setattr(plans_service, "current_version", _no_plan_read)
            patched.setattr(plans_service, "current_plan", _no_plan_read)
            assert api.solve()["version"] == 2
            poller.join(timeout=30)
    woken = held["reply"]
    assert woken.status_code == 200 and woken.headers["ETag"] == '"plan-2"', woken.text
    assert NodePlan.from_dict(woken.json()).version == 2


class _Statements:
    """Counts the statements an app's engine sends to the database, from any thread."""

    def __init__(self, client: TestClient) -> None:
        self._lock = threading.Lock()
        self.count = 0
        engine = client.app.state.gpufair.db.engine  # type: ignore[attr-defined]
        sqlalchemy.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_: Any) -> None:
        with self._lock:
            self.count += 1

    def during(self, seconds: float) -> int:
        before = self.count
        time.sleep(seconds)
        return self.count - before


def _hold_plan_long_polls(
    client: TestClient, tokens: dict[str, str], *, wait: float, etag: str
) -> tuple[list[threading.Thread], list[Any]]:
    """One plan long-poll per node (name -> token), each in a thread of its own; the threads
    and the list their replies land in."""
    replies: list[Any] = []

    def long_poll(node: str, token: str) -> None:
        replies.append(
            client.get(
                f"/v1/nodes/{node}/plan?wait={wait}",
                headers={"Authorization": f"Bearer {token}", "If-None-Match": etag},
            )
        )

    pollers = [threading.Thread(target=long_poll, args=item) for item in tokens.items()]
    for poller in pollers:
        poller.start()
    return pollers, replies


def test_held_plan_long_polls_share_one_look_at_the_database(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty plan long-polls held on one app while nothing is stored cost the database one
    look per ``RECHECK_S`` in all (the app's watcher of stored plans), not one each: they used
    to recheck their plan's version every second each, twenty queries a second."""
    monkeypatch.setattr(plans_service, "WAKE_SPREAD_S", 0.0)
    with _own_app(db_url, max_long_poll_s=6.0) as (client, api):
        tokens = {f"n{k}": api.node(f"n{k}", gpus=1)[1] for k in range(20)}
        statements = _Statements(client)
        pollers, replies = _hold_plan_long_polls(client, tokens, wait=6.0, etag='"plan-0"')
        # Their first reads done, and the watcher's first look, which wakes them all once (it
        # has no earlier look to compare with).
        time.sleep(2.5)
        held = statements.during(2.5)
        for poller in pollers:
            poller.join(timeout=30)
    assert [r.status_code for r in replies] == [304] * 20
    # About three looks, of one statement each (two on SQLite: its BEGIN is one).
    assert held <= 10, f"{held} statements in 2.5 s while 20 long-polls were held"


def test_a_plan_stored_by_another_process_wakes_a_held_long_poll_within_a_period(
    db_url: str,
) -> None:
    """A plan stored on another connection (another replica or worker: this app's
    notifier is not called) reaches a long-poll held here within about ``RECHECK_S`` and the
    wake spread, with the new plan — long before the long-poll's deadline."""
    with _own_app(db_url, max_long_poll_s=20.0) as (client, api):
        token = _solved_node(api)
        pollers, replies = _hold_plan_long_polls(client, {"n1": token}, wait=20.0, etag='"plan-1"')
        time.sleep(1.5)  # held, and the watcher has looked once
        stored_at = time.monotonic()
        newer = _store_newer_plan_elsewhere(db_url, "n1", version=2)
        pollers[0].join(timeout=30)
        took = time.monotonic() - stored_at
    woken = replies[0]
    assert woken.status_code == 200 and woken.headers["ETag"] == '"plan-2"', woken.text
    assert NodePlan.from_dict(woken.json()) == newer
    assert took < plans_service.RECHECK_S + plans_service.WAKE_SPREAD_S + 1.0, took


def test_the_watcher_takes_in_another_process_plans_so_the_woken_long_polls_read_none(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the watcher finds an allocation another process stored, it reads and renders its
    plans once before waking the long-polls, which then send them as kept: the hundred
    long-polls of a solve elsewhere add no plan read each, and the tenants' allocation views
    find the plans parsed."""
    monkeypatch.setattr(plans_service, "WAKE_SPREAD_S", 0.0)
    with _own_app(db_url, max_long_poll_s=20.0) as (client, api):
        token = _solved_node(api)
        pollers, replies = _hold_plan_long_polls(client, {"n1": token}, wait=20.0, etag='"plan-1"')
        time.sleep(1.5)  # held, and the watcher has looked once
        with monkeypatch.context() as patched:
            patched.setattr(plans_service, "current_plan", _no_plan_read)
            newer = _store_newer_plan_elsewhere(db_url, "n1", version=2)
            pollers[0].join(timeout=30)
        state = client.app.state.gpufair  # type: ignore[attr-defined]
        with state.db.connection() as connection:
            node_id = connection.scalar(sqlalchemy.select(NodeRow.id).where(NodeRow.name == "n1"))
        assert (2, node_id) in state.parsed_plans._plans
    woken = replies[0]
    assert woken.status_code == 200 and woken.headers["ETag"] == '"plan-2"', woken.text
    assert NodePlan.from_dict(woken.json()) == newer


def test_a_failed_look_for_stored_plans_is_logged_and_tried_again(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher outlives a failed look (the database briefly unreachable): it logs it and
    looks again a period later, and a plan stored elsewhere still wakes the held long-poll."""
    monkeypatch.setattr(plans_service, "WAKE_SPREAD_S", 0.0)
    newest = plans_service.newest_allocation_id
    looks: list[float] = []

    def failing_first(connection: Any) -> int:
        looks.append(time.monotonic())
        if len(looks) == 1:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))
        return newest(connection)

    monkeypatch.setattr(plans_service, "newest_allocation_id", failing_first)
    with _own_app(db_url, max_long_poll_s=20.0) as (client, api):
        token = _solved_node(api)
        pollers, replies = _hold_plan_long_polls(client, {"n1": token}, wait=20.0, etag='"plan-1"')
        time.sleep(0.3)
        newer = _store_newer_plan_elsewhere(db_url, "n1", version=2)
        pollers[0].join(timeout=30)
    woken = replies[0]
    assert woken.status_code == 200 and NodePlan.from_dict(woken.json()) == newer
    assert len(looks) == 2 and looks[1] - looks[0] < 2 * plans_service.RECHECK_S
    assert "could not look for stored plans" in caplog.text


def test_the_watcher_does_not_wake_the_long_polls_again_for_a_solve_here(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher's look that finds this process's own new allocation wakes nobody: its solve
    woke the held long-polls already, and a second wake-up would have each of the re-held ones
    read its version again a second after every solve."""
    monkeypatch.setattr(plans_service, "WAKE_SPREAD_S", 0.0)
    versions_read: list[int] = []
    current_version = plans_service.current_version

    def counted(**arguments: Any) -> int:
        versions_read.append(arguments["node_id"])
        return current_version(**arguments)

    monkeypatch.setattr(plans_service, "current_version", counted)
    with _own_app(db_url, max_long_poll_s=20.0) as (client, api):
        token = _solved_node(api)
        pollers, replies = _hold_plan_long_polls(client, {"n1": token}, wait=20.0, etag='"plan-1"')
        time.sleep(1.5)  # held, and the watcher has looked once
        assert api.solve()["version"] == 2
        pollers[0].join(timeout=30)
        assert replies[0].headers["ETag"] == '"plan-2"'
        held_since = len(versions_read)
        pollers, replies = _hold_plan_long_polls(client, {"n1": token}, wait=4.0, etag='"plan-2"')
        time.sleep(3.0)  # the watcher looks and sees allocation 2; the deadline is not yet
        read_while_held = len(versions_read) - held_since
        pollers[0].join(timeout=30)
    assert replies[0].status_code == 304
    assert read_while_held == 1, f"{read_while_held} reads: the first, and wake-ups' after it"


def test_the_watcher_ends_with_the_last_held_plan_long_poll(db_url: str) -> None:
    """Once no plan long-poll waits, the app sends the database nothing: the watcher of stored
    plans runs only while one does."""
    with _own_app(db_url, max_long_poll_s=1.5) as (client, api):
        tokens = {f"n{k}": api.node(f"n{k}", gpus=1)[1] for k in range(3)}
        statements = _Statements(client)
        pollers, replies = _hold_plan_long_polls(client, tokens, wait=1.5, etag='"plan-0"')
        for poller in pollers:
            poller.join(timeout=30)
        during_long_polls = statements.count
        after = statements.during(2.5)
    assert [r.status_code for r in replies] == [304] * 3
    assert during_long_polls > 0 and after == 0, after


def test_a_wake_up_during_a_read_ends_the_wait_that_follows_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long-poll notes the notifier's generation before it reads: a wake-up that came while
    its read was under way (which the read may have missed) ends its next wait at once, where
    it would otherwise wait until the next wake-up or its deadline — a plan long-poll has no
    recheck of its own to catch it."""
    monkeypatch.setattr(plans_service, "WAKE_SPREAD_S", 0.0)

    async def waited(wake: Callable[[plans_service.PlanNotifier], Awaitable[None]]) -> float:
        notifier = plans_service.PlanNotifier()
        loop = asyncio.get_running_loop()
        since = notifier.generation
        await wake(notifier)  # while "reading"
        started = loop.time()
        await notifier.wait(10.0, since=since)
        return loop.time() - started

    async def on_the_loop(notifier: plans_service.PlanNotifier) -> None:
        notifier.wake()

    async def from_a_solve_before_anything_waited(notifier: plans_service.PlanNotifier) -> None:
        await asyncio.to_thread(notifier.notify, allocation_id=1)

    assert asyncio.run(waited(on_the_loop)) < 1.0
    assert asyncio.run(waited(from_a_solve_before_anything_waited)) < 1.0


def test_if_none_match_names_a_plan_version_only_when_it_is_one_plan_etag() -> None:
    assert plan_version_named('"plan-7"') == 7 and plan_version_named('W/"plan-7"') == 7
    for header in (None, "", "*", '"plan-7", "plan-8"', '"credentials-ab"', '"plan-x"'):
        assert plan_version_named(header) is None


def test_rendered_plans_answer_only_the_version_asked_and_never_go_back() -> None:
    rendered = RenderedPlans(capacity=2)
    rendered.keep(node_id=1, version=3, body=b"three")
    assert rendered.get(node_id=1, version=3) == b"three"
    assert rendered.get(node_id=1, version=4) is None  # a newer version is a miss
    rendered.keep(node_id=1, version=2, body=b"two")  # a slower reader's older plan
    assert rendered.get(node_id=1, version=3) == b"three"
    assert rendered.get(node_id=1, version=2) is None
    rendered.keep(node_id=9, version=0, body=b"empty")  # version 0 is built, not stored
    assert rendered.get(node_id=9, version=0) is None
    rendered.keep(node_id=2, version=3, body=b"n2")
    rendered.get(node_id=1, version=3)
    rendered.keep(node_id=3, version=3, body=b"n3")  # over capacity: node 2, least recent, goes
    assert rendered.get(node_id=2, version=3) is None
    assert rendered.get(node_id=1, version=3) == b"three"
    assert rendered.get(node_id=3, version=3) == b"n3"


def test_heartbeat_records_the_report(api: Api) -> None:
    _, token = api.node("n1")
    body = {
        "plan_version": 0,
        "replicas": [
            {"device": "cuda:0", "seat": 0, "model_id": "1", "tenant": "ads", "completed": 5}
        ],
        "broken": {},
    }
    r = api.client.post("/v1/nodes/n1/heartbeat", json=body, headers=api.bearer(token))
    assert r.status_code == 200 and r.json() == {"current_version": 0, "etag": '"plan-0"'}
    node = api.client.get("/v1/nodes/n1", headers=api.admin).json()
    assert node["running_version"] == 0 and node["last_heartbeat_at"] is not None
    assert node["report"]["replicas"][0]["completed"] == 5


def test_a_heartbeat_replica_takes_only_named_bounded_fields(api: Api) -> None:
    """Every replica field is bounded and no other key is taken: a report is stored and
    served back whole by GET /v1/nodes, so a node could otherwise park megabytes there."""
    _, token = api.node("n1")
    replica = {"device": "cuda:0", "seat": 0, "model_id": "1", "tenant": "ads"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"junk": "a" * 100_000}, "replicas[0].junk"),
        ({"nested": {"k": list(range(1000))}}, "replicas[0].nested"),
        ({"completed": 10**400}, "replicas[0].completed"),
        ({"rejected": MAX_COUNT + 1}, "replicas[0].rejected"),
        ({"expired": MAX_COUNT + 1}, "replicas[0].expired"),
        ({"busy_s": 1e300}, "replicas[0].busy_s"),
        ({"memory_mb": 1e300}, "replicas[0].memory_mb"),
    ]
    for extra, field in cases:
        body = {"replicas": [{**replica, **extra}]}
        r = api.client.post("/v1/nodes/n1/heartbeat", json=body, headers=api.bearer(token))
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (field, r.text)
    node = api.client.get("/v1/nodes/n1", headers=api.admin).json()
    assert node["report"] is None and len(json.dumps(node)) < 1000
    most = {"completed": MAX_COUNT, "rejected": MAX_COUNT, "expired": MAX_COUNT}
    r = api.client.post("/v1/nodes/n1/heartbeat", json={"replicas": [{**replica, **most}]},
                        headers=api.bearer(token))  # fmt: skip
    assert r.status_code == 200, r.text


def test_profiles_upsert_and_name_bad_fields(api: Api) -> None:
    _, key = api.tenant("ads")
    model = api.model(key, "ranker")
    _, token = api.node("n1")
    api.solve()  # seats the model on n1: only then may n1 profile it
    auth = api.bearer(token)
    entry = {"model_id": model["id"], "device": "cuda:0", "qps": [100, 180, 240]}
    r = api.client.put("/v1/nodes/n1/profiles", json={"profiles": [entry]}, headers=auth)
    assert r.status_code == 200 and r.json() == {"stored": 1}
    r = api.client.put(
        "/v1/nodes/n1/profiles", json={"profiles": [{**entry, "qps": [100, 300]}]}, headers=auth
    )
    assert r.status_code == 200
    for bad, field in [
        ({**entry, "device": "cuda:7"}, "profiles[0].device"),
        ({**entry, "qps": [5, 3]}, "profiles[0].qps"),
        ({**entry, "qps": []}, "profiles[0].qps"),
    ]:
        r = api.client.put("/v1/nodes/n1/profiles", json={"profiles": [bad]}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.json()


def _sla(tenant: str, model: str, received: int = 10) -> dict[str, object]:
    return {"tenant": tenant, "model": model, "received": received, "within_sla": received}


def _two_tenants_on_two_nodes(api: Api) -> dict[str, tuple[str, str, str, str]]:
    """Tenants a and b with one single-replica model each, nodes n1 and n2 with one seat each;
    return node -> (its token, the tenant seated on it, that tenant's key, the model id)."""
    keys = {}
    for tenant in ("a", "b"):
        _, keys[tenant] = api.tenant(tenant)
        api.model(keys[tenant], "m", replicas_wanted=1)
    tokens = {name: api.node(name, gpus=1, seats=1, streams=2)[1] for name in ("n1", "n2")}
    api.solve()
    seated = {}
    for name, token in tokens.items():
        plan = NodePlan.from_dict(
            api.client.get(f"/v1/nodes/{name}/plan", headers=api.bearer(token)).json()
        )
        [(_, seat)] = plan.replicas()
        assert seat.replica is not None
        tenant = seat.replica.tenant
        seated[name] = (token, tenant, keys[tenant], seat.replica.model_id)
    assert {tenant for _, tenant, _, _ in seated.values()} == {"a", "b"}
    return seated


def test_a_node_token_reports_only_what_its_plans_seat_on_it(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """Node-token scope (issue 13): a heartbeat's SLA counts for a tenant seated on another
    node, and a profile of another node's model or of an id that does not exist, are 403 —
    the same answer for both ids — logged, and store nothing."""
    seated = _two_tenants_on_two_nodes(api)
    token, tenant, _, model = seated["n1"]
    _, other_tenant, _, other_model = seated["n2"]
    auth = api.bearer(token)
    heartbeat = {"plan_version": 1, "replicas": [], "broken": {}}
    ok = api.client.post(
        "/v1/nodes/n1/heartbeat", json={**heartbeat, "sla": [_sla(tenant, model)]}, headers=auth
    )
    assert ok.status_code == 200, ok.text
    for counts in (
        [_sla(other_tenant, other_model)],
        [_sla(tenant, other_model)],
        [_sla(tenant, model, 20), _sla(other_tenant, other_model)],
    ):
        r = api.client.post(
            "/v1/nodes/n1/heartbeat", json={**heartbeat, "sla": counts}, headers=auth
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert "node 'n1' refused" in caplog.text
    series = api.client.get("/v1/sla", headers=api.admin).json()["tenants"]
    assert {s["tenant"]: s["received"] for s in series} == {tenant: 10}  # nothing else stored
    refusals = []
    for model_id in (int(other_model), 999_999):
        entry = {"model_id": model_id, "device": "cuda:0", "qps": [100, 180]}
        r = api.client.put("/v1/nodes/n1/profiles", json={"profiles": [entry]}, headers=auth)
        assert r.status_code == 403, r.text
        refusals.append(r.json()["error"]["message"].replace(str(model_id), "ID"))
    assert refusals[0] == refusals[1]  # nothing tells which ids exist


def test_counts_of_a_recent_plan_are_accepted_and_of_an_old_one_refused(api: Api) -> None:
    """The scope covers the node's RECENT_PLANS newest plans: a daemon still counting a pair
    its previous plans seated is accepted; once they are older, the pair is refused."""
    token, tenant, key, model = _two_tenants_on_two_nodes(api)["n1"]
    r = api.client.delete(f"/v1/models/{model}", headers={**api.bearer(key), "If-Match": "*"})
    assert r.status_code == 204, r.text  # the next plans seat nothing of it on n1
    for version in range(2, RECENT_PLANS + 3):
        assert api.solve()["version"] == version
        body = {
            "plan_version": version,
            "replicas": [],
            "broken": {},
            "sla": [_sla(tenant, model, 10 * version)],
        }
        r = api.client.post("/v1/nodes/n1/heartbeat", json=body, headers=api.bearer(token))
        # Plan 1 seated the pair: among the node's newest RECENT_PLANS up to version 8.
        assert r.status_code == (200 if version <= RECENT_PLANS else 403), (version, r.text)


def _executor_takes(name: str) -> bool:
    """Whether ``gpufair executor --node NAME`` starts (gpufair/commands/executor.py)."""
    try:
        validate_node_name(name)
    except InvalidNameError:
        return False
    return True


@pytest.mark.parametrize(("name", "accepted"), NODE_NAMES)
def test_the_api_registers_exactly_the_node_names_gpufair_executor_takes(
    api: Api, name: str, accepted: bool
) -> None:
    assert _executor_takes(name) == accepted
    devices = [{"device": "cpu:0", "kind": "cpu", "memory_mb": 1000, "streams": 2, "seats": 1}]
    r = api.client.post("/v1/nodes", json={"name": name, "devices": devices}, headers=api.admin)
    if accepted:
        assert r.status_code == 201, r.text
        assert api.client.get(f"/v1/nodes/{name}", headers=api.admin).status_code == 200
    else:
        assert r.status_code == 422 and r.json()["error"]["field"] == "name", r.text
