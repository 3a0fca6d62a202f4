"""SLA attainment over time: heartbeats' cumulative counts become per-tenant deltas, old samples
are pruned, and the series divide per bucket with gaps where there was no traffic.

Route tests run on each database; the app's clock is replaced (``install_clock``) so that
heartbeats land at chosen times. The samples are read back from the database itself where the
test is about what is stored.
"""

from __future__ import annotations

import bisect
import io
import random
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.orm import Session

from api.app import create_app
from api.models import NodeRow, SlaSampleRow, TenantRow
from api.services.sla import PruneSchedule, sla_deltas, sla_history
from executor.fake import FakeBackend
from executor.metrics import ExecutorMetrics
from executor.scheduling import NodeRuntime, SchedulerConfig
from executor.wire.attainment import attainment
from executor.wire.heartbeat import MAX_COUNT, Heartbeat, SlaCount
from gpufair.compose import api_config
from gpufair.demo.claims import sla_claim
from gpufair.demo.view import live_table, phase_table
from gpufair.loadgen import Outcome, StreamStats
from gpufair.settings import Settings
from tests.api.conftest import Api, install_clock, make_settings, seat_on_node

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def _count(tenant: str, model: str, received: int, within: int) -> dict[str, Any]:
    return {"tenant": tenant, "model": model, "received": received, "within_sla": within}


def _beat(api: Api, node: str, token: str, sla: list[dict[str, Any]]) -> None:
    r = api.client.post(f"/v1/nodes/{node}/heartbeat", json={"sla": sla}, headers=api.bearer(token))
    assert r.status_code == 200, r.text


def _samples(settings: Settings) -> list[tuple[str, str, int, int, int]]:
    """(node, tenant, seconds after T0, received, within_sla) of every stored sample."""
    engine = sqlalchemy.create_engine(settings.database.url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.text(
                    "SELECT n.name, s.tenant, s.at, s.received, s.within_sla "
                    "FROM sla_samples s JOIN nodes n ON n.id = s.node_id"
                )
            ).all()
    finally:
        engine.dispose()
    result = []
    for node, tenant, at, received, within in rows:
        at = at if isinstance(at, datetime) else datetime.fromisoformat(at)
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        result.append((node, tenant, round((at - T0).total_seconds()), received, within))
    return sorted(result, key=lambda row: (row[2], row[0], row[1]))


# --- deltas ------------------------------------------------------------------------------------


def test_deltas_sum_to_the_queries_counted_across_restarts() -> None:
    """A daemon counts per (tenant, model) from its start, lists a key once it has seen it, and
    restarts now and then; the deltas add up to every query it counted, provided a restart
    shows as a lower count (the contract: nothing else tells the API of a restart)."""
    keys = [("ads", "1"), ("ads", "2"), ("feed", "3")]
    for seed in range(40):
        rng = random.Random(seed)
        cumulative: dict[tuple[str, str], tuple[int, int]] = {}
        truth = {"ads": [0, 0], "feed": [0, 0]}
        seen = {"ads": [0, 0], "feed": [0, 0]}
        previous: list[SlaCount] = []
        for _ in range(40):
            before = dict(cumulative)
            if rng.random() < 0.15:
                cumulative = {}  # a restart: the new process starts from nothing
            for key in keys:
                if key not in cumulative and rng.random() < 0.3:
                    continue  # not seen yet by this process: not listed
                old = cumulative.get(key, (0, 0))
                limit = 51
                if key not in cumulative and key in before:
                    # Keep the restart detectable: below the last count, or zero.
                    limit = min(limit, max(1, before[key][0]))
                received = rng.randrange(0, limit)
                within = rng.randrange(0, received + 1)
                cumulative[key] = (old[0] + received, old[1] + within)
                truth[key[0]][0] += received
                truth[key[0]][1] += within
            current = [SlaCount(**_count(t, m, *cumulative[(t, m)])) for t, m in sorted(cumulative)]
            for (tenant, _), (received, within) in sla_deltas(previous, current).items():
                assert 0 <= within <= received, f"seed {seed}"
                seen[tenant][0] += received
                seen[tenant][1] += within
            previous = current
        assert seen == truth, f"seed {seed}"


def test_a_reset_takes_the_new_count_and_quiet_tenants_are_left_out() -> None:
    previous = [SlaCount(**_count("ads", "1", 1000, 990)), SlaCount(**_count("feed", "2", 50, 50))]
    current = [
        SlaCount(**_count("ads", "1", 30, 29)),  # restarted: 30 < 1000
        SlaCount(**_count("feed", "2", 50, 50)),  # no traffic since
        SlaCount(**_count("new", "3", 7, 7)),  # first seen
    ]
    assert sla_deltas(previous, current) == {("ads", "1"): (30, 29), ("new", "3"): (7, 7)}
    # within_sla alone going down is a restart too (received may have caught up meanwhile).
    restarted = [SlaCount(**_count("ads", "1", 12, 2))]
    assert sla_deltas([SlaCount(**_count("ads", "1", 10, 9))], restarted) == {
        ("ads", "1"): (12, 2)
    }


def test_heartbeats_store_deltas_per_node_and_tenant(api: Api, settings: Settings) -> None:
    _, n1 = api.node("n1")
    _, n2 = api.node("n2")
    seat_on_node(settings.database.url, "n1", [("ads", "1"), ("ads", "2")])
    seat_on_node(settings.database.url, "n2", [("ads", "1"), ("feed", "4")])
    clock = install_clock(api.client.app, T0)
    _beat(api, "n1", n1, [_count("ads", "1", 100, 99), _count("ads", "2", 10, 10)])
    _beat(api, "n2", n2, [_count("ads", "1", 40, 40)])  # n2's counts are n2's alone
    clock.advance(5)
    _beat(api, "n1", n1, [_count("ads", "1", 150, 147), _count("ads", "2", 10, 10)])
    clock.advance(5)
    _beat(api, "n1", n1, [_count("ads", "1", 20, 20)])  # the daemon restarted
    clock.advance(5)
    _beat(api, "n1", n1, [_count("ads", "1", 20, 20)])  # nothing new: no sample
    _beat(api, "n2", n2, [_count("ads", "1", 45, 41), _count("feed", "4", 8, 6)])
    assert _samples(settings) == [
        ("n1", "ads", 0, 110, 109),
        ("n2", "ads", 0, 40, 40),
        ("n1", "ads", 5, 50, 48),
        ("n1", "ads", 10, 20, 20),
        ("n2", "ads", 15, 5, 1),
        ("n2", "feed", 15, 8, 6),
    ]
    # The node's report keeps the last cumulative counts, the base of the next deltas.
    report = api.client.get("/v1/nodes/n2", headers=api.admin).json()["report"]
    assert report["sla"][1] == _count("feed", "4", 8, 6)


def test_bad_sla_counts_are_422_naming_the_field(api: Api) -> None:
    _, token = api.node("n1")
    for sla, field in [
        ([_count("ads", "1", 5, 6)], "sla[0].within_sla"),
        ([_count("ads", "1", 5, 5), _count("ads", "1", 6, 6)], "sla"),
        ([_count("ads", "1", -1, 0)], "sla[0].received"),
        ([_count("ads", "1", MAX_COUNT + 1, 0)], "sla[0].received"),
        ([_count("", "1", 1, 1)], "sla[0].tenant"),
        ([{**_count("ads", "1", 1, 1), "extra": 1}], "sla[0].extra"),
    ]:
        r = api.client.post("/v1/nodes/n1/heartbeat", json={"sla": sla}, headers=api.bearer(token))
        assert r.status_code == 422, (sla, r.text)
        assert r.json()["error"]["field"] == field, r.json()
    with pytest.raises(ValidationError) as caught:
        Heartbeat.model_validate({"sla": [_count("t", str(k), 1, 1) for k in range(4097)]})
    assert caught.value.errors()[0]["loc"] == ("sla",)


# --- retention ---------------------------------------------------------------------------------


def test_old_samples_are_pruned_at_most_once_a_minute(db_url: str) -> None:
    settings = make_settings(db_url, sla_history_s=120)  # two minutes of history
    with TestClient(create_app(api_config(settings))) as client:
        _pruning(Api(client), settings)


def _pruning(api: Api, settings: Settings) -> None:
    _, token = api.node("n1")
    seat_on_node(settings.database.url, "n1", [("ads", "1")])
    clock = install_clock(api.client.app, T0)
    received = 0

    def beat_at(seconds: int) -> list[int]:
        nonlocal received
        clock.now = T0 + timedelta(seconds=seconds)
        received += 10
        _beat(api, "n1", token, [_count("ads", "1", received, received)])
        return [at for _, _, at, _, _ in _samples(settings)]

    assert beat_at(0) == [0]  # the process's first heartbeat prunes (nothing to prune yet)
    assert beat_at(30) == [0, 30]
    # Due again (150 s after the last prune): samples before 150 - 120 = 30 s go.
    assert beat_at(150) == [30, 150]
    # 170 s: the 30 s sample is past retention, but the last prune was 20 s ago.
    assert beat_at(170) == [30, 150, 170]
    assert beat_at(211) == [150, 170, 211]


def test_prune_schedule_is_once_per_interval_and_survives_a_clock_going_back() -> None:
    schedule = PruneSchedule(interval_s=60)
    assert schedule.due(T0)
    assert not schedule.due(T0 + timedelta(seconds=59))
    assert schedule.due(T0 + timedelta(seconds=60))
    assert schedule.due(T0)  # the clock went back a minute: prune rather than wait it out


# --- the series --------------------------------------------------------------------------------


def _series(api: Api, headers: dict[str, str], path: str = "/v1/sla", **params: int) -> Any:
    r = api.client.get(path, params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_series_divide_per_bucket_and_a_gap_is_a_gap(api: Api, settings: Settings) -> None:
    _, token = api.node("n1")
    seat_on_node(settings.database.url, "n1", [("ads", "1"), ("feed", "2")])
    clock = install_clock(api.client.app, T0)
    start = T0 - timedelta(seconds=600)  # the window: 10 buckets of 60 s up to T0
    ads = feed = (0, 0)

    def beat(seconds: float, d_ads: tuple[int, int], d_feed: tuple[int, int]) -> None:
        nonlocal ads, feed
        ads = (ads[0] + d_ads[0], ads[1] + d_ads[1])
        feed = (feed[0] + d_feed[0], feed[1] + d_feed[1])
        clock.now = start + timedelta(seconds=seconds)
        _beat(api, "n1", token, [_count("ads", "1", *ads), _count("feed", "2", *feed)])

    beat(-30, (1000, 0), (0, 0))  # before the window: not counted
    beat(10, (100, 99), (0, 0))  # bucket 0
    beat(50, (100, 97), (0, 0))  # bucket 0: 196 / 200
    beat(130, (50, 50), (0, 0))  # bucket 2 (bucket 1 has no traffic)
    beat(599, (0, 0), (10, 5))  # bucket 9
    clock.now = T0
    body = _series(api, api.admin, window_s=600, buckets=10)
    assert body["bucket_s"] == 60
    assert datetime.fromisoformat(body["start"]) == start
    assert datetime.fromisoformat(body["end"]) == T0
    by_name = {s["tenant"]: s for s in body["tenants"]}
    assert list(by_name) == ["ads", "feed"]
    ads_points = [b["attainment"] for b in by_name["ads"]["buckets"]]
    assert ads_points[:3] == [pytest.approx(0.98), None, 1.0]
    assert ads_points[3:] == [None] * 7  # no traffic: gaps, not 100 %
    assert [b["received"] for b in by_name["ads"]["buckets"]][:3] == [200, 0, 50]
    assert by_name["ads"]["received"] == 250 and by_name["ads"]["within_sla"] == 246
    assert by_name["ads"]["attainment"] == pytest.approx(246 / 250)
    feed_points = [b["attainment"] for b in by_name["feed"]["buckets"]]
    assert feed_points == [None] * 9 + [0.5]
    starts = [datetime.fromisoformat(b["start"]) for b in by_name["feed"]["buckets"]]
    assert starts == [start + timedelta(seconds=60 * k) for k in range(10)]
    # A window that holds only the gap: ads is absent, not a line of 100 %.
    clock.now = start + timedelta(seconds=129)
    assert _series(api, api.admin, window_s=60, buckets=3)["tenants"] == []


def test_samples_fall_in_the_bucket_that_holds_them(session: Session) -> None:
    """The SQL's bucket of a sample is the last bucket starting at or before it, edges
    included, for any number of buckets (the CASE tree halves the range)."""
    node = NodeRow(name="n1", token_hash="h")
    session.add(node)
    session.flush()
    window = 900
    start = T0 - timedelta(seconds=window)
    rng = random.Random(3)
    for buckets in (1, 2, 3, 7, 30, 240):
        width = timedelta(seconds=window / buckets)
        starts = [start + width * k for k in range(buckets)]
        times = [start + timedelta(microseconds=rng.randrange(window * 10**6)) for _ in range(60)]
        times += [*starts, T0, start - timedelta(microseconds=1)]  # edges; inside; outside
        tenant = TenantRow(name=f"t{buckets}", weight=1.0, criterion="prop_alpha",
                           created_at=start - timedelta(days=1))
        session.add(tenant)
        session.flush()
        session.add_all(
            SlaSampleRow(node_id=node.id, tenant=tenant.name, tenant_id=tenant.id, at=at,
                         received=1, within_sla=1)
            for at in times
        )
        session.flush()
        expected = [0] * buckets
        for at in times:
            if start <= at <= T0:
                expected[bisect.bisect_right(starts, at) - 1] += 1
        history = sla_history(
            session=session, now=T0, window_s=window, buckets=buckets, tenant=tenant
        )
        got = [b.received for b in history.tenants[0].buckets]
        assert got == expected, f"{buckets} buckets"
        assert [b.start for b in history.tenants[0].buckets] == starts


def test_a_tenant_sees_only_its_own_series_from_its_creation(
    api: Api, settings: Settings
) -> None:
    _, ads_key = api.tenant("ads")
    _, feed_key = api.tenant("feed")
    _, token = api.node("n1")
    seat_on_node(settings.database.url, "n1", [("ads", "1"), ("other", "9")])
    now = datetime.now(UTC).replace(microsecond=0)
    clock = install_clock(api.client.app, now - timedelta(seconds=300))
    # Samples stamped before the tenants were created: a predecessor of the same name.
    _beat(api, "n1", token, [_count("ads", "1", 100, 50)])
    clock.now = now + timedelta(seconds=60)
    _beat(api, "n1", token, [_count("ads", "1", 110, 60), _count("other", "9", 5, 5)])
    clock.now = now + timedelta(seconds=90)
    mine = _series(api, api.bearer(ads_key), "/v1/sla/me", window_s=900, buckets=15)
    assert [s["tenant"] for s in mine["tenants"]] == ["ads"]
    assert mine["tenants"][0]["received"] == 10 and mine["tenants"][0]["within_sla"] == 10
    everyone = _series(api, api.admin, window_s=900, buckets=15)
    assert {s["tenant"]: s["received"] for s in everyone["tenants"]} == {"ads": 110, "other": 5}
    quiet = _series(api, api.bearer(feed_key), "/v1/sla/me")
    assert [s["tenant"] for s in quiet["tenants"]] == ["feed"]
    assert quiet["tenants"][0]["attainment"] is None
    assert all(b["attainment"] is None for b in quiet["tenants"][0]["buckets"])


def test_a_recreated_tenant_never_sees_what_a_daemon_counted_for_its_predecessor(
    api: Api,
) -> None:
    """A daemon still serving the plan that seated the deleted ``ads`` reports that tenant's
    queries under the name ``ads`` after a new ``ads`` was created: the samples go to the id
    the plan's allocation seated them for, so the new tenant sees none of them, also beside
    its own queries once a solve seats it; the admin's series, by name, counts them all."""
    _, old_key = api.tenant("ads")
    old_model = api.model(old_key, "m", replicas_wanted=1)
    _, token = api.node("n1", gpus=1)
    assert api.solve()["version"] == 1

    def beat(version: int, *counts: dict[str, Any]) -> None:
        r = api.client.post("/v1/nodes/n1/heartbeat", json={"plan_version": version,
                            "sla": list(counts)}, headers=api.bearer(token))  # fmt: skip
        assert r.status_code == 200, r.text

    old = str(old_model["id"])
    beat(1, _count("ads", old, 100, 90))
    api.client.delete(f"/v1/tenants/{old_model['tenant_id']}",
                      headers={**api.admin, "If-Match": "*"})  # fmt: skip
    _, new_key = api.tenant("ads")
    beat(1, _count("ads", old, 1100, 990))  # the old plan, still served: the old tenant's
    mine = _series(api, api.bearer(new_key), "/v1/sla/me")["tenants"][0]
    assert (mine["tenant"], mine["received"], mine["within_sla"]) == ("ads", 0, 0)
    new_model = api.model(new_key, "m", replicas_wanted=1)
    assert api.solve()["version"] == 2
    # The daemon drains plan 1 while it serves plan 2: its counts name both models as "ads".
    new = str(new_model["id"])
    beat(2, _count("ads", old, 1500, 1400), _count("ads", new, 40, 38))
    mine = _series(api, api.bearer(new_key), "/v1/sla/me")["tenants"][0]
    assert (mine["received"], mine["within_sla"]) == (40, 38)
    (everyone,) = _series(api, api.admin)["tenants"]
    assert (everyone["tenant"], everyone["received"]) == ("ads", 1540)


def test_window_and_buckets_are_bounded(api: Api) -> None:
    for params, field in [
        ({"window_s": 10}, "query.window_s"),
        ({"buckets": 0}, "query.buckets"),
        ({"buckets": 10_000}, "query.buckets"),
    ]:
        r = api.client.get("/v1/sla", params=params, headers=api.admin)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


def test_fake_clock_is_the_one_heartbeats_use(api: Api) -> None:
    """Guards the other tests: a heartbeat is stamped with the app's clock, not the wall's."""
    _, token = api.node("n1")
    install_clock(api.client.app, T0)
    _beat(api, "n1", token, [])
    seen = api.client.get("/v1/nodes/n1", headers=api.admin).json()["last_heartbeat_at"]
    assert datetime.fromisoformat(seen).replace(tzinfo=UTC) == T0


# --- one definition, every consumer ------------------------------------------------------------


@pytest.mark.parametrize(
    ("within", "late", "rejected", "expired", "failed"),
    [
        (965, 35, 20, 5, 3),  # late answers, refusals, drops and failures: all misses
        (0, 12, 0, 0, 0),  # every query answered, each after its SLA: 0 %, not 100 %
        (40, 0, 0, 0, 0),
        (0, 0, 7, 0, 0),
    ],
)
def test_every_consumer_gives_the_same_attainment_for_the_same_counters(
    api: Api, settings: Settings, within: int, late: int, rejected: int, expired: int,
    failed: int,
) -> None:
    """The executor's metrics, ``/v1/sla``, both dashboard panels and the demo's views: the
    same queries, one figure, the one definition's (within SLA / received)."""
    sla_s = 0.02
    received = within + late + rejected + expired + failed
    expected = attainment(within_sla=within, received=received)
    assert expected is not None
    outcomes: list[tuple[str, float | None, int]] = [
        *[("ok", sla_s / 2, 200)] * within,
        *[("ok", 1.5 * sla_s, 200)] * late,  # answered before the 2-SLA drop, but late
        *[("rejected", None, 429)] * rejected,
        *[("expired", None, 504)] * expired,
        *[("failed", None, 500)] * failed,
    ]
    # The daemon counts them (and exports the figure to Prometheus)...
    metrics = ExecutorMetrics(NodeRuntime(FakeBackend(), SchedulerConfig()))
    for outcome, latency, _ in outcomes:
        metrics.observe("ads", "1", outcome, latency, sla_s)
    assert metrics.attainment() == {("ads", "1"): expected}
    # ...its heartbeat carries them to the API, which serves them at /v1/sla...
    api.tenant("ads")
    _, token = api.node("n1")
    seat_on_node(settings.database.url, "n1", [("ads", "1")])
    report = {
        "replicas": [
            {"device": "cuda:0", "seat": 0, "model_id": "1", "tenant": "ads",
             "completed": within + late, "rejected": rejected, "expired": expired}
        ],
        "sla": [t.model_dump() for t in metrics.sla_tallies()],
    }  # fmt: skip
    r = api.client.post("/v1/nodes/n1/heartbeat", json=report, headers=api.bearer(token))
    assert r.status_code == 200, r.text
    (series,) = _series(api, api.admin)["tenants"]
    assert (series["received"], series["attainment"]) == (received, expected)
    # ...and the dashboard shows that figure in the chart's legend and in the counters.
    page = api.client.get("/", headers=api.admin).text
    figure = f"{expected:.2%}"
    history = page[page.index('id="sla-history"') : page.index('id="certificate"')]
    tenants = page[page.index('id="tenants"') : page.index('id="cluster"')]
    assert f"ads <b>{figure}</b>" in history
    assert f">{figure}</span></td>" in tenants, tenants
    # The demo's client sees the same queries and summarises them alike, live and at the end.
    stats = StreamStats(window_s=60.0)
    for _, latency, status in outcomes:
        stats.record(Outcome(time.monotonic(), latency or 3 * sla_s, status), "steady", sla_s)
    stream = SimpleNamespace(tenant="ads", phase="steady", rate_qps=100.0, sla_s=sla_s, stats=stats)
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(phase_table([cast(Any, stream)], {"steady": 10.0}))
    console.print(live_table([cast(Any, stream)], {"ads": 1.0}, {"ads": 1.0}, 10.0, 0.99, "ads"))
    text = console.export_text()
    assert f" {figure} " in text.split("last 5 s", 1)[0]  # the phase table
    assert f" {expected:.1%} " in text.split("last 5 s", 1)[1]  # the live table
    # ...and the claim the demo's summary makes of them.
    claim = sla_claim("ads", stats.phase("steady"), sla_s * 1000, 0.99)
    assert claim.figure.startswith(f"{figure} ({within} of {received} within")


# --- served rate and p99 per model, from the heartbeats' served windows ------------------------


def _served(
    tenant: str, model: str, received: int, within: int, answered: int, p99_ms: float | None,
    window_s: float = 60.0,
) -> dict[str, Any]:
    return {"tenant": tenant, "model": model, "window_s": window_s, "received": received,
            "within_sla": within, "answered": answered, "p99_ms": p99_ms}


def _beat_served(
    api: Api, node: str, token: str, served: list[dict[str, Any]],
    sla: list[dict[str, Any]] | None = None,
) -> None:
    r = api.client.post(f"/v1/nodes/{node}/heartbeat", json={"served": served, "sla": sla or []},
                        headers=api.bearer(token))
    assert r.status_code == 200, r.text


def test_sla_me_reports_per_model_from_live_nodes_only(api: Api, settings: Settings) -> None:
    _, ads_key = api.tenant("ads")
    fast = api.model(ads_key, "ads-fast", sla_p99_ms=100.0)
    slow = api.model(ads_key, "ads-slow", sla_p99_ms=400.0)
    quiet = api.model(ads_key, "ads-quiet", sla_p99_ms=50.0)
    fast_id, slow_id = str(fast["id"]), str(slow["id"])
    _, t1 = api.node("n1")
    _, t2 = api.node("n2")
    seat_on_node(settings.database.url, "n1", [("ads", fast_id), ("ads", slow_id)])
    seat_on_node(settings.database.url, "n2", [("ads", slow_id)])
    clock = install_clock(api.client.app, T0)
    _beat_served(api, "n1", t1, [_served("ads", fast_id, 600, 594, 600, 80.0),
                                 _served("ads", slow_id, 300, 270, 290, 450.0)],
                 sla=[_count("ads", fast_id, 600, 594)])
    clock.now = T0 + timedelta(seconds=2)
    _beat_served(api, "n2", t2, [_served("ads", slow_id, 100, 100, 100, 120.0, window_s=50.0)])
    mine = _series(api, api.bearer(ads_key), "/v1/sla/me")
    rows = {row["model"]: row for row in mine["tenants"][0]["models"]}
    assert list(rows) == ["ads-fast", "ads-slow", "ads-quiet"]  # by model id
    assert rows["ads-fast"] == {
        "model_id": fast["id"], "model": "ads-fast", "sla_ms": 100.0, "window_s": 60.0,
        "received": 600, "within_sla": 594, "attainment": pytest.approx(0.99),
        "served_qps": pytest.approx(594 / 60), "p99_ms": 80.0, "nodes": 1,
    }
    # Two nodes: counts and rates add up (each over its own window), the p99 is the higher.
    both = rows["ads-slow"]
    assert (both["received"], both["within_sla"], both["nodes"]) == (400, 370, 2)
    assert both["attainment"] == pytest.approx(370 / 400)
    assert both["served_qps"] == pytest.approx(270 / 60 + 100 / 50)
    assert both["p99_ms"] == 450.0 and both["window_s"] == 60.0 and both["sla_ms"] == 400.0
    # A model without traffic is listed, with no figure rather than a perfect one.
    assert rows["ads-quiet"]["model_id"] == quiet["id"]
    assert (rows["ads-quiet"]["attainment"], rows["ads-quiet"]["p99_ms"]) == (None, None)
    assert rows["ads-quiet"]["window_s"] is None and rows["ads-quiet"]["served_qps"] == 0
    # The admin's /v1/sla: the same rows in the tenant's series, the models with traffic.
    (series,) = _series(api, api.admin)["tenants"]
    assert series["models"] == [r for r in mine["tenants"][0]["models"] if r["received"]]
    # n1 silent for 16 s (stale after 15): only n2's report counts.
    clock.now = T0 + timedelta(seconds=16)
    rows = {r["model"]: r for r in _series(api, api.bearer(ads_key), "/v1/sla/me")["tenants"][0]
            ["models"]}
    assert rows["ads-fast"]["received"] == 0 and rows["ads-fast"]["p99_ms"] is None
    assert (rows["ads-slow"]["received"], rows["ads-slow"]["p99_ms"]) == (100, 120.0)
    assert rows["ads-slow"]["window_s"] == 50.0


def test_a_node_may_report_served_windows_only_for_what_it_seats(
    api: Api, settings: Settings
) -> None:
    _, token = api.node("n1")
    seat_on_node(settings.database.url, "n1", [("ads", "1")])
    r = api.client.post("/v1/nodes/n1/heartbeat", headers=api.bearer(token),
                        json={"served": [_served("feed", "2", 10, 10, 10, 5.0)]})
    assert r.status_code == 403 and "feed/2" in r.json()["error"]["message"], r.text
    for bad, field in [
        (_served("ads", "1", 10, 11, 10, 5.0), "within_sla"),  # more within than received
        (_served("ads", "1", 10, 10, 11, 5.0), "answered"),
        (_served("ads", "1", 10, 10, 10, None), "p99_ms"),  # answers without a p99
        (_served("ads", "1", 10, 0, 0, 5.0), "p99_ms"),  # a p99 without answers
        (_served("ads", "1", 10, 10, 10, 5.0, window_s=0), "window_s"),
    ]:
        r = api.client.post("/v1/nodes/n1/heartbeat", headers=api.bearer(token),
                            json={"served": [bad]})
        assert r.status_code == 422 and field in r.json()["error"]["field"], (bad, r.text)
    twice = [_served("ads", "1", 10, 10, 10, 5.0)] * 2
    r = api.client.post("/v1/nodes/n1/heartbeat", headers=api.bearer(token), json={"served": twice})
    assert r.status_code == 422 and "listed twice" in r.text
