"""The dashboard at ``GET /``: what the admin sees, what everyone else does not, and the page
as a real browser renders it (headless Chromium against a real uvicorn server).

Route tests run on each database (the ``api`` fixture); the Chromium test runs on SQLite and
skips when Debian's ``/usr/bin/chromium`` is absent. With ``GPUFAIR_UPDATE_SCREENSHOT=1`` it
copies its screenshot to ``docs/dashboard.png``. SLA history is laid down by heartbeats whose
receipt times come from a fake clock installed in the app (15 minutes of them in a second).
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient

from api.app import create_app
from api.schemas import AllocationDiff, ReplicaRef, SeatMove, SlaBucket, SlaHistory, SlaSeries
from api.services.dashboard import (
    DashboardData,
    DeviceView,
    HistoryEntry,
    NodeStatus,
    SeatView,
    TenantCounters,
)
from api.templates.dashboard import REFRESH_S, render_dashboard
from executor.wire.attainment import attainment
from gpufair.compose import api_config
from gpufair.settings import (
    DEVELOPMENT_ADMIN_TOKEN,
    AllocatorSettings,
    ApiSettings,
    DatabaseSettings,
    Settings,
)
from tests.api.conftest import Api, FakeClock, install_clock, seat_on_node

TENANTS = [
    ("ads-ranking", "prop_alpha", 2.0),
    ("feed-recs", "ef1", 1.0),
    ("search-ltr", "efm", 1.0),
]
# The id of each tenant's model in _world (made in TENANTS order in an empty database).
MODEL_OF = {name: str(k + 1) for k, (name, _, _) in enumerate(TENANTS)}
SEAT_CELL = re.compile(r'<div class="seat(?: empty)?"')
DEV_MODE_TOKEN = "dashboard-test-admin-token"
CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOT_HEIGHT = 1500  # the cluster, the SLA chart, the certificate and the envy matrix


def _world(api: Api) -> dict[str, Any]:
    """Three tenants with a model each, one node of two GPUs, one allocation and a heartbeat."""
    keys = {}
    for name, criterion, weight in TENANTS:
        _, keys[name] = api.tenant(name, criterion=criterion, weight=weight)
        model = api.model(keys[name], f"{name.split('-')[0]}-model", replicas_wanted=2)
        assert str(model["id"]) == MODEL_OF[name]
    _, node_token = api.node("n1", gpus=2, seats=2, streams=6)
    allocation = api.solve()
    return {"keys": keys, "node": node_token, "allocation": allocation}


def _heartbeat(
    api: Api,
    token: str,
    replicas: list[dict[str, Any]],
    broken: Any = None,
    sla: list[dict[str, Any]] | None = None,
    node: str = "n1",
    served: list[dict[str, Any]] | None = None,
) -> None:
    body = {"plan_version": 1, "replicas": replicas, "broken": broken or {}, "sla": sla or [],
            "served": served or []}
    r = api.client.post(f"/v1/nodes/{node}/heartbeat", json=body, headers=api.bearer(token))
    assert r.status_code == 200, r.text


def _tally(tenant: str, model: str, received: int, within: int) -> dict[str, Any]:
    """One (tenant, model)'s cumulative SLA counts, as a daemon's heartbeat carries them."""
    return {"tenant": tenant, "model": model, "received": received, "within_sla": within}


def _served(
    tenant: str, received: int, within: int, p99_ms: float | None, window_s: float = 58.0
) -> dict[str, Any]:
    """One (tenant, model)'s served window, as a daemon's heartbeat carries it."""
    return {"tenant": tenant, "model": MODEL_OF[tenant], "window_s": window_s,
            "received": received, "within_sla": within,
            "answered": within if p99_ms is not None else 0, "p99_ms": p99_ms}


# What the last heartbeat of _post_sla_history says n1 served over its last minute: ads within
# its SLA (20 ms, _world's models), feed past it, search refused everything.
SERVED = [_served("ads-ranking", 1200, 1196, 14.2), _served("feed-recs", 600, 450, 37.9),
          _served("search-ltr", 40, 0, None)]


def _replica(tenant: str, seat: int, completed: int, rejected: int, expired: int) -> dict[str, Any]:
    return {
        "device": "cuda:0",
        "seat": seat,
        "model_id": "1",
        "tenant": tenant,
        "completed": completed,
        "rejected": rejected,
        "expired": expired,
    }


def _post_sla_history(
    api: Api,
    token: str,
    clock: FakeClock,
    end: datetime,
    seed: int = 7,
    replicas: list[dict[str, Any]] | None = None,
) -> dict[str, tuple[int, int]]:
    """Heartbeats of node n1 every 10 s over the 15 minutes before ``end``, with cumulative SLA
    counts: ads-ranking and search-ltr near 100 %; feed-recs floods from minute 5 to 10 and
    its own attainment falls (admission control refuses its excess); search-ltr has no traffic
    for two minutes (a gap); the daemon restarts at minute 9 (its counts start again from
    zero). Every heartbeat also carries ``replicas``, as a daemon's does, and the last one
    :data:`SERVED`. Returns the totals (received, within SLA) per tenant."""
    rng = random.Random(seed)
    counts: dict[str, list[int]] = {}
    totals = {name: [0, 0] for name, _, _ in TENANTS}
    for step in range(90):
        clock.now = end - timedelta(seconds=900 - 10 * step - 5)
        if step == 54:
            counts = {}  # the daemon restarted
        flood = 30 <= step < 60
        for tenant, received, share in [
            ("ads-ranking", rng.randint(180, 220), 0.997),
            ("feed-recs", rng.randint(560, 640) if flood else rng.randint(150, 190), 0.985),
            ("search-ltr", 0 if 42 <= step < 54 else rng.randint(90, 110), 0.995),
        ]:
            if tenant == "feed-recs" and flood:
                share = 0.72 + 0.06 * rng.random()
            if received == 0 and tenant not in counts:
                continue
            within = sum(rng.random() < share for _ in range(received))
            count = counts.setdefault(tenant, [0, 0])
            count[0] += received
            count[1] += within
            totals[tenant][0] += received
            totals[tenant][1] += within
        sla = [
            {"tenant": t, "model": MODEL_OF[t], "received": r, "within_sla": w}
            for t, (r, w) in sorted(counts.items())
        ]
        _heartbeat(api, token, replicas or [], sla=sla, served=SERVED if step == 89 else None)
    clock.now = end
    return {name: (r, w) for name, (r, w) in totals.items()}


SERIES = re.compile(r'<g class="series" data-tenant="([^"]*)">(.*?)</g>', re.S)
LEGEND_KEY = re.compile(
    r'<span class="key"><i style="background:(#[0-9a-f]{6})"></i>([^<]+)</span>'
)


def _check_sla_panel(page: str, totals: dict[str, tuple[int, int]]) -> None:
    """The attainment chart: a line per tenant in its colour elsewhere on the page, a break
    where a tenant had no traffic, the 99 % reference and the window's figures."""
    panel = page[page.index('id="sla-history"') : page.index('id="certificate"')]
    assert 'aria-label="SLA attainment over time"' in panel
    assert 'class="target"' in panel and "99% target" in panel
    assert "0%" in panel and "100%" in panel and "now" in panel and "attainment" in panel
    cluster_colours = {name: colour for colour, name in LEGEND_KEY.findall(page)}
    series = dict((name, body) for name, body in SERIES.findall(panel))
    assert sorted(series) == sorted(totals)
    for name, body in series.items():
        strokes = set(re.findall(r'<polyline [^>]*stroke="(#[0-9a-f]{6})"', body))
        assert strokes == {cluster_colours[name]}, name
    # 30 buckets of 30 s; search-ltr's two idle minutes are a gap, not 100 %.
    assert series["ads-ranking"].count("<polyline") == 1
    assert series["ads-ranking"].count("<circle") == 30
    assert series["search-ltr"].count("<polyline") == 2
    assert series["search-ltr"].count("<circle") == 26
    figures = {}
    for name, (received, within) in totals.items():
        figure = f"{within / received:.2%}"
        assert f"{name} <b>{figure}</b>" in panel, (name, figure)
        figures[name] = within / received
    assert figures["feed-recs"] < 0.9 < 0.99 < min(figures["ads-ranking"], figures["search-ltr"])


def _section(page: str, section: str) -> str:
    start = page.index(f'id="{section}"')
    return page[start : page.index("</section>", start)]


def _entities(page: str) -> str:
    """The page with one spelling for each escaped quote: the templates write ``&#34;`` and
    ``&#39;``, ``html.escape`` and the tests ``&quot;`` and ``&#x27;`` — the same characters."""
    return page.replace("&#34;", "&quot;").replace("&#39;", "&#x27;")


TAG = re.compile(r"<[^>]+>")


def _tenant_rows(page: str) -> dict[str, list[str]]:
    """Tenant -> the text of each cell of its row in the tenants panel."""
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", _section(page, "tenants"), re.S):
        cells = [html.unescape(TAG.sub("", cell)).strip()
                 for cell in re.findall(r"<td>(.*?)</td>", row, re.S)]
        if cells:
            rows[cells[0]] = cells
    return rows


def _tenant_figures(page: str) -> dict[str, str]:
    """Tenant -> the attainment figure of its row in the tenants panel."""
    return {name: cells[6] for name, cells in _tenant_rows(page).items()}


def _legend_figures(page: str) -> dict[str, str]:
    """Tenant -> the attainment figure of its key under the attainment-over-time chart."""
    keys = re.findall(r"</i>([^<]+) <b>([^<]+)</b>", _section(page, "sla-history"))
    return dict(keys)


def test_one_attainment_figure_the_sla_api_s_for_the_same_queries(
    api: Api, settings: Settings
) -> None:
    """One page once showed 92.99 % in the chart's legend and 96.6 % in the counters for the
    same queries (the counters divided completed by completed + rejected + expired, since each
    daemon started). Now the tenants panel and the chart show the one figure, over one window,
    and the counters show outcome counts only."""
    world = _world(api)
    _, n2 = api.node("n2", gpus=1)
    seat_on_node(settings.database.url, "n2", [("ads-ranking", "2"), ("feed-recs", "3")])
    # ads-ranking on n1: 1,028 queries received, 965 answered within the SLA, 35 answered
    # late (a query is dropped only after two SLAs), 20 refused, 5 dropped, 3 failed; so its
    # replica counts 1,000 completed. On n2 it has another model, and feed-recs is served.
    _heartbeat(
        api,
        world["node"],
        [_replica("ads-ranking", 0, 1000, 20, 5)],
        sla=[_tally("ads-ranking", "1", 1028, 965)],
    )
    _heartbeat(
        api,
        n2,
        [_replica("ads-ranking", 0, 490, 10, 0), _replica("feed-recs", 1, 400, 0, 0)],
        sla=[_tally("ads-ranking", "2", 500, 480), _tally("feed-recs", "3", 400, 372)],
        node="n2",
    )
    series = api.client.get("/v1/sla", headers=api.admin).json()["tenants"]
    figures = {s["tenant"]: s["attainment"] for s in series}
    assert figures == {
        "ads-ranking": attainment(within_sla=965 + 480, received=1028 + 500),
        "feed-recs": attainment(within_sla=372, received=400),
    }
    page = api.client.get("/", headers=api.admin).text
    shown = {name: f"{value:.2%}" for name, value in figures.items()}
    assert _legend_figures(page) == shown
    tenants = _tenant_figures(page)
    assert {name: tenants[name] for name in shown} == shown, tenants
    assert tenants["search-ltr"] == "no queries"
    counters = _section(page, "sla")
    assert "1,528 <tspan" in counters  # queries received, with no second attainment figure
    assert "%" not in TAG.sub("", counters.split("<svg", 1)[1].split("</svg>", 1)[0])


def test_answers_after_the_sla_are_not_attained_on_the_dashboard(api: Api) -> None:
    world = _world(api)
    # Every one of search-ltr's 40 queries was answered, each after its SLA.
    _heartbeat(
        api,
        world["node"],
        [_replica("search-ltr", 0, 40, 0, 0)],
        sla=[_tally("search-ltr", MODEL_OF["search-ltr"], 40, 0)],
    )
    page = api.client.get("/", headers=api.admin).text
    assert _tenant_figures(page)["search-ltr"] == "0.00%"
    assert _legend_figures(page)["search-ltr"] == "0.00%"
    (series,) = api.client.get("/v1/sla", headers=api.admin).json()["tenants"]
    assert series["attainment"] == 0.0


def test_sla_history_panel(api: Api) -> None:
    world = _world(api)
    end = datetime.now(UTC).replace(microsecond=0)
    clock = install_clock(api.client.app, end)
    page = api.client.get("/", headers=api.admin).text
    assert "No SLA samples in the last 15 min" in page
    totals = _post_sla_history(api, world["node"], clock, end)
    page = api.client.get("/", headers=api.admin).text
    assert "No SLA samples" not in page
    _check_sla_panel(page, totals)
    # A quarter of an hour later the window holds nothing: the empty state again.
    clock.advance(901)
    assert "No SLA samples in the last 15 min" in api.client.get("/", headers=api.admin).text


def _served_rows(page: str) -> dict[str, list[str]]:
    """Model name -> the text of each cell of its row in the served panel."""
    rows = {}
    for row in re.findall(r"<tr data-tenant[^>]*>(.*?)</tr>", _section(page, "served"), re.S):
        cells = [html.unescape(TAG.sub("", cell)).strip()
                 for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        rows[cells[2]] = cells
    return rows


def check_served_panel(page: str) -> None:
    """The served panel shows, per tenant and model, SERVED's rate, p99 against the SLA and
    attainment over the daemon's window, green within the SLA and red past it."""
    rows = _served_rows(page)
    assert list(rows) == ["ads-model", "feed-model", "search-model"]
    tenant, tenant_qps, _, qps, p99, sla, attained, window = rows["ads-model"]
    assert (tenant, tenant_qps, qps) == ("ads-ranking", f"{1196 / 58:.1f}", f"{1196 / 58:.1f}")
    assert (p99, sla, attained, window) == ("14 ms", "20 ms", f"{1196 / 1200:.2%}", "58 s")
    assert rows["feed-model"][4:7] == ["38 ms", "20 ms", f"{450 / 600:.2%}"]
    assert rows["search-model"][3:7] == ["0.0", "no answers", "20 ms", "0.00%"]
    panel = _section(page, "served")
    assert '<span class="ok">14 ms</span>' in panel and '<span class="bad">38 ms</span>' in panel
    assert "last minute" in panel and "stale nodes are left out" in panel


def test_served_panel_shows_p99_against_sla_and_leaves_stale_nodes_out(api: Api) -> None:
    world = _world(api)
    end = datetime.now(UTC).replace(microsecond=0)
    clock = install_clock(api.client.app, end)
    _post_sla_history(api, world["node"], clock, end)
    check_served_panel(api.client.get("/", headers=api.admin).text)
    # n1 silent for 20 s: its seats greyed, and its last minute no longer says anything of now.
    clock.advance(15)
    page = api.client.get("/", headers=api.admin).text
    assert 'class="node stale"' in page
    assert _served_rows(page) == {}
    assert _section(page, "served").count("no queries on a live node in the last minute") == 3


def test_admin_sees_cluster_certificate_and_history(api: Api) -> None:
    world = _world(api)
    _heartbeat(
        api,
        world["node"],
        [_replica("ads-ranking", 0, 990, 6, 4)],
        sla=[_tally("ads-ranking", "1", 1000, 990)],
    )
    r = api.client.get("/", headers=api.admin)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src" not in r.headers["content-security-policy"]  # no scripts at all
    page = r.text
    agents = world["allocation"]["certificate"]["agents"]
    for name, criterion, _ in TENANTS:
        assert name in page and criterion in page
    # Every seat of the plan is a cell, and every seated replica's model name is on the page.
    seats = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(world["node"])).json()
    cells = sum(len(d["seats"]) for d in seats["devices"])
    assert len(SEAT_CELL.findall(page)) == cells == 4
    assert page.count("✓ holds") == sum(1 for a in agents.values() if a["holds"]) == 3
    assert "fair: every criterion holds exactly" in page and 'aria-label="envy matrix"' in page
    assert "99.00%" in page  # 990 of 1000 queries answered within the SLA for ads-ranking
    assert "v1" in page and "first allocation" in page
    assert len(SEAT_CELL.findall(api.client.get("/dashboard", headers=api.admin).text)) == 4


def test_history_shows_seat_moves_from_the_diff_service(api: Api) -> None:
    world = _world(api)
    api.node("n2", gpus=1, seats=3, streams=8)  # new seats: the next allocation fills them
    second = api.solve()
    diff = api.client.get(
        f"/v1/allocations/{world['allocation']['id']}/diff/{second['id']}", headers=api.admin
    ).json()
    moves = diff["seat_moves"]
    assert moves, "the world needs seat moves between v1 and v2"
    page = api.client.get("/", headers=api.admin).text
    assert f"{len(moves)} seat move{'' if len(moves) == 1 else 's'}" in page
    for move in moves:
        assert f"{move['node']}/{move['device']} seat {move['seat']}:" in page
    assert "first allocation" in page  # v1 has no predecessor


def test_empty_database_gets_a_page_not_an_error(api: Api) -> None:
    r = api.client.get("/", headers=api.admin)
    assert r.status_code == 200
    assert "No allocation yet" in r.text


def test_no_data_for_anyone_but_the_admin(api: Api) -> None:
    world = _world(api)
    callers = {
        "anonymous": ({}, 401),
        "unknown token": (api.bearer("gft_not-a-key"), 401),
        "tenant": (api.bearer(world["keys"]["feed-recs"]), 403),
        "node": (api.bearer(world["node"]), 403),
    }
    for who, (headers, status) in callers.items():
        for path in ("/", "/dashboard", "/?token=gft_not-a-key"):
            r = api.client.get(path, headers=headers)
            assert r.status_code == status, f"{who} {path}: {r.status_code}"
            assert r.headers["content-type"].startswith("text/html")
            for name, _, _ in TENANTS:
                assert name not in r.text, f"{who} {path} sees {name}"
    # A token in the URL is never taken, even the right one: URLs land in access logs.
    r = api.client.get("/", params={"token": api.admin["Authorization"].removeprefix("Bearer ")})
    assert r.status_code == 401 and "ads-ranking" not in r.text
    assert '<form method="post" action="/sign-in">' in r.text  # the sign-in sends it in a body


def test_sign_in_by_post_gives_a_session_and_never_puts_the_token_in_a_url(
    tmp_path: Path, sqlite_template: Path
) -> None:
    shutil.copy(sqlite_template, tmp_path / "db.sqlite")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    for dev_mode, admin_token in [(True, DEVELOPMENT_ADMIN_TOKEN), (False, DEV_MODE_TOKEN)]:
        settings = Settings(database=DatabaseSettings(url=url),
                            api=ApiSettings(dev_mode=dev_mode, admin_token=admin_token))
        with TestClient(create_app(api_config(settings))) as client:
            clock = install_clock(client.app, datetime.now(UTC))
            assert client.get("/").status_code == 401
            assert client.get("/", params={"token": admin_token}).status_code == 401
            r = client.post("/sign-in", data={"token": "wrong"})
            assert r.status_code == 401 and "gpufair_dashboard" not in r.headers.get(
                "set-cookie", "")
            r = client.post("/sign-in", data={"token": admin_token}, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/"
            cookie = r.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=lax" in cookie and admin_token not in cookie
            page = client.get("/")  # the client keeps the cookie, as a browser does
            assert page.status_code == 200 and "Sign in" not in page.text
            assert admin_token not in page.text
            client.cookies.set("gpufair_dashboard", "9999999999.forged")
            assert client.get("/").status_code == 401
            client.post("/sign-in", data={"token": admin_token})
            clock.advance(12 * 3600 + 1)
            expired = client.get("/")
            assert expired.status_code == 401 and "expired" in expired.text
        # The development token is refused outside development mode, by header and sign-in.
        if not dev_mode:
            dev = Settings(database=DatabaseSettings(url=url), api=ApiSettings(dev_mode=False))
            with TestClient(create_app(api_config(dev))) as client:
                r = client.post("/sign-in", data={"token": DEVELOPMENT_ADMIN_TOKEN})
                assert r.status_code == 403 and "gpufair_dashboard" not in r.headers.get(
                    "set-cookie", "")


def test_strings_from_daemons_are_escaped(api: Api) -> None:
    # Tenant and model names are validated ([a-z0-9_.-]); a daemon's heartbeat is free text.
    world = _world(api)
    evil = '<script>alert("x")</script>'
    body = {
        "replicas": [_replica('<img src=x onerror="y">', 0, 5, 0, 0)],
        "broken": {"1": evil},
    }
    # SLA counts may name only the tenants its plans seat (the chart's lines are escaped all
    # the same: test_a_hostile_tenant_name_is_escaped_everywhere_it_appears).
    hostile = [{"tenant": '"><svg onload=z>', "model": "1", "received": 9, "within_sla": 8}]
    r = api.client.post("/v1/nodes/n1/heartbeat", json={**body, "sla": hostile},
                        headers=api.bearer(world["node"]))
    assert r.status_code == 403, r.text
    r = api.client.post("/v1/nodes/n1/heartbeat", json=body, headers=api.bearer(world["node"]))
    assert r.status_code == 200, r.text
    page = _entities(api.client.get("/", headers=api.admin).text)
    assert "<script" not in page and "<img" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;y&quot;&gt;" in page


# The policy the page and the refusals are sent under: no script of any origin, nothing fetched,
# inline styles only (the page's style sheet and its colours), the sign-in form to this origin.
POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'"
)


def test_every_reply_is_sent_under_the_strict_policy(api: Api) -> None:
    world = _world(api)
    for headers, status in [(api.admin, 200), ({}, 401), (api.bearer(world["node"]), 403)]:
        r = api.client.get("/", headers=headers)
        assert r.status_code == status
        assert r.headers["content-security-policy"] == POLICY
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "<script" not in r.text


# Closes a double- or a single-quoted attribute, then opens a script. Tenant names are validated
# ([a-z0-9_.-]) when a tenant is made, but a daemon's heartbeat names tenants in free text, and
# the page must not depend on either: the templates escape whatever they print.
HOSTILE = "\"'><script>alert(1)</script>"


def _dashboard_naming(tenant: str) -> DashboardData:
    """Hand-made data with ``tenant`` on every panel that names tenants: the colour legend, a
    seat with a part of the pool, the SLA chart's line and legend, a certificate row, the envy
    matrix both ways, the SLA counters and a seat move in the history."""
    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    other = "feed-recs"
    names = tuple(sorted((tenant, other)))
    buckets = [
        SlaBucket(
            start=start + timedelta(seconds=30 * k), received=10, within_sla=9, attainment=0.9
        )
        for k in range(30)
    ]
    row = {"criterion": "ef1", "weight": 1.0, "alpha": 1.0, "holds": True, "slack": 0.0}
    seats = (
        SeatView(seat=0, tenant=tenant, model="m", dedicated_streams=0, pool_streams=1.0),
        SeatView(seat=1, tenant=other, model="m", dedicated_streams=0, pool_streams=1.0),
    )
    move = SeatMove(
        node="n1",
        device="cuda:0",
        seat=0,
        before=None,
        after=ReplicaRef(model_id="1", tenant=tenant),
    )
    return DashboardData(
        tenants=names,
        version=2,
        certificate={
            "fair": True,
            "agents": {
                tenant: {**row, "envy": {other: 0.1}},
                other: {**row, "envy": {tenant: -0.1}},
            },
        },
        devices=(
            DeviceView(
                node="n1", device="cuda:0", kind="H100", streams=4, pool_streams=2, seats=seats
            ),
        ),
        counters={name: TenantCounters(90, 5, 5, received=100) for name in names},
        nodes=(NodeStatus(name="n1", last_heartbeat_at=start, running_version=2, broken={}),),
        history=(
            HistoryEntry(
                version=2,
                objective="nash",
                created_at=start,
                solve_seconds=0.1,
                status="optimal",
                holds=True,
                diff=AllocationDiff(from_id=1, to_id=2, seat_moves=[move], share_changes=[]),
            ),
        ),
        sla_history=SlaHistory(
            start=start,
            end=start + timedelta(minutes=15),
            bucket_s=30.0,
            tenants=[
                SlaSeries(
                    tenant=name, received=300, within_sla=270, attainment=0.9, buckets=buckets
                )
                for name in names
            ],
        ),
        model_names={"1": "m"},
    )


class _Parsed(HTMLParser):
    """A page's elements, and its text and attribute values as a browser reads them (decoded)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.values: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.values.extend(value for _, value in attrs if value is not None)

    def handle_data(self, data: str) -> None:
        self.values.append(data)


def test_a_hostile_tenant_name_is_escaped_everywhere_it_appears() -> None:
    page = render_dashboard(_dashboard_naming(HOSTILE))
    # Never markup: not in the source as written, no script element, no attribute broken out of.
    assert HOSTILE not in page and "<script" not in page
    parsed = _Parsed(page)
    assert "script" not in parsed.tags
    # Escaped on every panel that names tenants...
    escaped = html.escape(HOSTILE)
    for section in ("cluster", "sla-history", "certificate", "envy", "sla", "history"):
        assert escaped in _entities(_section(page, section)), section
    # ...and escaped once in each place it is printed: every escaped copy reads back as the
    # name itself, and there is one per place.
    places = (
        1  # the cluster's colour legend
        + 1 + 2  # its seat; the pool bar's tooltip and caption
        + 1 + 30 + 1  # its SLA line, each bucket's point's tooltip, the chart's legend
        + 1  # its certificate row
        + 2 + 2  # the envy matrix's row and column labels; a cell tooltip in either direction
        + 3 + 1  # the SLA counters' completed, rejected and expired tooltips; its bar's label
        + 1  # the seat move in the history
    )  # fmt: skip
    copies = _entities(page).count(escaped)
    assert copies == places
    assert sum(value.count(HOSTILE) for value in parsed.values) == copies


# --- the page in a real browser ----------------------------------------------------------------


def _chromium(
    tmp_path: Path, *args: str, height: int = 1000, width: int = 1400
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--window-size={width},{height}",
            *args,
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


# Written into the page by a copy of it that may run a script (the served page may not): how
# far the page is wider than the window, and which sections scroll sideways inside.
MEASURE = """<script>
const sections = [...document.querySelectorAll("section")]
  .filter(s => s.scrollWidth > s.clientWidth + 1).map(s => s.id);
document.body.dataset.overflow = JSON.stringify({
  page: Math.max(0, document.documentElement.scrollWidth - window.innerWidth),
  sections: sections});
</script>"""


def _overflow(tmp_path: Path, page: str, width: int) -> dict[str, Any]:
    """The page laid out by Chromium in a window ``width`` px wide: its overflow."""
    copy = tmp_path / f"measure-{width}.html"
    copy.write_text(page.replace("</body>", MEASURE + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", copy.as_uri(), width=width)
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    found = re.search(r'data-overflow="([^"]*)"', dom.stdout.decode())
    assert found, "the measuring script did not run"
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
class TestInChromium:
    """On SQLite only; the browser signs in as a person does, by POSTing the sign-in form
    (its session cookie stays in the profile for the next runs); the server is conftest's
    ``live_url`` (a real uvicorn on 127.0.0.1) over these settings."""

    @pytest.fixture
    def db_url(self, tmp_path: Path, sqlite_template: Path) -> str:
        shutil.copy(sqlite_template, tmp_path / "db.sqlite")
        return f"sqlite:///{tmp_path / 'db.sqlite'}"

    @pytest.fixture
    def settings(self, db_url: str) -> Settings:
        return Settings(
            database=DatabaseSettings(url=db_url),
            api=ApiSettings(admin_token=DEV_MODE_TOKEN, dev_mode=True),
            allocator=AllocatorSettings(time_limit_s=5.0),
        )

    def test_dashboard_in_headless_chromium(
        self, live_app: FastAPI, live_url: str, tmp_path: Path
    ) -> None:
        url, token = live_url, DEV_MODE_TOKEN
        end = datetime.now(UTC).replace(microsecond=0)
        with httpx.Client(base_url=url, timeout=30) as http:
            api = Api(http)  # type: ignore[arg-type]  # the same calls over real HTTP
            api.admin = api.bearer(token)
            world = _world(api)
            replicas = [
                _replica("ads-ranking", 1, 9_940, 40, 20),
                _replica("feed-recs", 0, 7_200, 310, 90),
                _replica("search-ltr", 1, 5_050, 0, 12),
            ]
            clock = install_clock(live_app, end)
            totals = _post_sla_history(api, world["node"], clock, end, replicas=replicas)
            api.node("n2", gpus=1, seats=3, streams=8)
            api.solve()
        page = f"{url}/"
        # A page of the same site that submits the sign-in form at once (the dashboard runs no
        # scripts); one of another site, a file:// page included, would be refused as forged.
        form = (f'<form method="post" action="/sign-in"><input name="token" value="{token}">'
                "</form><script>document.forms[0].submit()</script>")
        live_app.add_api_route("/test-sign-in", lambda: HTMLResponse(form), methods=["GET"])
        # Less virtual time than the page's meta refresh: a reload in flight dumps nothing.
        signed = _chromium(tmp_path, f"--virtual-time-budget={REFRESH_S * 1000 // 2}",
                           "--dump-dom", f"{url}/test-sign-in")
        assert signed.returncode == 0 and "ads-ranking" in signed.stdout.decode(), (
            signed.stderr.decode()[-2000:])

        dom = _chromium(tmp_path, "--dump-dom", page)
        assert dom.returncode == 0, dom.stderr.decode()[-2000:]
        text = dom.stdout.decode()
        for name, _, _ in TENANTS:
            assert name in text
        assert "holds" in text and 'aria-label="envy matrix"' in text
        _check_sla_panel(text, totals)
        anonymous = _chromium(tmp_path / "anonymous", "--dump-dom", f"{url}/")
        assert (
            "Sign in" in anonymous.stdout.decode()
            and "ads-ranking" not in anonymous.stdout.decode()
        )

        # The new panels, in the browser's DOM: shares against entitlements, rates and the one
        # attainment per tenant, a stale node (n2 never reported) greyed, the legend.
        assert 'id="tenants"' in text and "share / entitled" in text
        assert 'class="node stale"' in text and "no heartbeat yet" in text
        assert "<dt>α</dt>" in text and "<dt>slack</dt>" in text
        assert '<meta http-equiv="refresh"' in text
        check_served_panel(text)
        # The signed-in page laid out at both widths: no section scrolls sideways, the served
        # panel included.
        admin_page = httpx.get(page, headers=api.admin, timeout=30).text
        assert 'id="served"' in admin_page and 'id="tenants"' in admin_page
        for width in (800, 1400):
            overflow = _overflow(tmp_path, admin_page, width)
            assert overflow == {"page": 0, "sections": []}, (width, overflow)

        shot = tmp_path / "dashboard.png"
        result = _chromium(tmp_path, f"--screenshot={shot}", page, height=SCREENSHOT_HEIGHT)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
        if os.environ.get("GPUFAIR_UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, DOCS / "dashboard.png")


def test_the_window_fits_the_data_and_a_silent_node_goes_stale(api: Api) -> None:
    world = _world(api)
    end = datetime.now(UTC).replace(microsecond=0)
    clock = install_clock(api.client.app, end - timedelta(seconds=120))
    # Two minutes of traffic: one heartbeat at its start, one at its end.
    _heartbeat(api, world["node"], [], sla=[_tally("ads-ranking", "1", 100, 100)])
    clock.now = end
    _heartbeat(api, world["node"], [], sla=[_tally("ads-ranking", "1", 1300, 1290)])
    page = api.client.get("/", headers=api.admin).text
    # The window starts with the data (2 min, not 15), in buckets of one heartbeat.
    tenants = _section(page, "tenants")
    assert "over the last 2 min (5 s buckets)" in tenants
    assert "5 s buckets, up to" in _section(page, "sla-history")
    # 1,300 queries in the window of 125 s: its rates, and the one attainment.
    row = _tenant_rows(page)["ads-ranking"]
    assert row[3] == f"{1300 / 125:.1f}" and row[4] == f"{1290 / 125:.1f}"
    assert row[6] == f"{1290 / 1300:.2%}"
    assert row[2].endswith(" / 0.50")  # entitled: weight 2 of 4
    assert "live" in _section(page, "nodes") and "node stale" not in page
    # Twenty seconds without a heartbeat (three missed at 5 s): stale, seats greyed.
    clock.advance(20)
    page = api.client.get("/", headers=api.admin).text
    assert 'class="node stale"' in page and "silent for 20 s" in page
    assert "stale" in _section(page, "nodes")
