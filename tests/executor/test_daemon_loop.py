"""End to end: ``gpufair executor`` in API mode as a real process against the real control plane.

The control plane is the API app (SQLite made by the real migrations) on uvicorn on 127.0.0.1;
the daemon is ``python -m gpufair.cli executor --api ...`` in a subprocess, serving tiny zoo
models with torch on the CPU. The tests kill and restart both sides and check what a node
operator relies on: a daemon restarted while the API is down serves its last plan at once, a
running daemon outlives the API, a new allocation reaches the daemon within 2 s, and the
daemon uploads the throughput curves of the models it serves, and SIGTERM stops it at once even
while its long-polls wait on the API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy

import migrations
from api.app import create_app
from executor import codec
from executor.models import ModelSchema
from gpufair.compose import api_config
from gpufair.servers import ChildServer, ChildServerError, free_port
from tests.api.conftest import Api, make_settings
from tests.servers import BackgroundServer

# Every test here starts real daemon processes (a torch import and model loads each).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NODE = "edge-1"
RMC1 = "zoo:rmc1?scale=0.0005&seed=1"
WND = "zoo:wnd?scale=0.0005&seed=2"
START_S = 90.0  # a daemon's start: torch import and model loads on a busy 2-core machine
LONG_POLL_S = 30.0  # the daemon's long-poll and the test API's cap
# The curves a `gpufair profile` run would write (executor/profiles.py), by architecture.
PROFILES = {
    "rmc1": {"qps": [120.0, 210.0, 260.5], "measured": True, "kind": "cpu",
             "device": "cpu (1 intra-op thread(s))", "sla_p99_ms": 25.0,
             "artifact": "zoo:rmc1?scale=0.002&seed=0&user_tables=7&candidate_dense=3"},
    "wnd": {"qps": [300.0, 480.0], "measured": True, "kind": "cpu",
            "device": "cpu (1 intra-op thread(s))", "sla_p99_ms": 20.0,
            "artifact": "zoo:wnd?scale=0.002&seed=0&user_tables=7&candidate_dense=3"},
    "din": {"qps": [50.0], "measured": True, "kind": "gpu",
            "device": "cuda:0 (NVIDIA H100)", "sla_p99_ms": 20.0,
            "artifact": "zoo:din?scale=0.002"},
}  # fmt: skip


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "gpufair.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


class ControlPlane:
    """The API on a fixed loopback port, which can be stopped and started again."""

    def __init__(self, db: Path) -> None:
        self.db_url = f"sqlite:///{db}"
        # The production long-poll (30 s): a plan must arrive by the wake-up, not a re-poll.
        self.settings = make_settings(self.db_url, max_long_poll_s=LONG_POLL_S)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: BackgroundServer | None = None

    def start(self) -> None:
        self._server = BackgroundServer(
            create_app(api_config(self.settings)), port=self.port, graceful_shutdown_s=1
        ).__enter__()

    def stop(self) -> None:
        if self._server is not None:
            self._server.__exit__(None, None, None)
            self._server = None

    def admin(self) -> Api:
        # Api is typed for the in-process TestClient (tests read its .app); against a live
        # server it gets the plain httpx.Client that TestClient extends, and uses only that.
        return Api(httpx.Client(base_url=self.url, timeout=60))  # type: ignore[arg-type]

    def footprints(self) -> dict[tuple[int, str], int]:
        """The stored footprints (MiB) by (model id, device), read from the database."""
        engine = sqlalchemy.create_engine(self.db_url)
        try:
            with engine.connect() as connection:
                rows = connection.exec_driver_sql(
                    "SELECT f.model_id, d.device, f.memory_mb FROM footprints f "
                    "JOIN devices d ON d.id = f.device_id"
                ).all()
        finally:
            engine.dispose()
        return {(int(m), str(d)): int(mb) for m, d, mb in rows}

    def profiles(self) -> dict[tuple[int, str], list[float]]:
        """The stored curves by (model id, device), read from the database."""
        engine = sqlalchemy.create_engine(self.db_url)
        try:
            with engine.connect() as connection:
                rows = connection.exec_driver_sql(
                    "SELECT p.model_id, d.device, p.qps FROM profiles p "
                    "JOIN devices d ON d.id = p.device_id"
                ).all()
        finally:
            engine.dispose()
        return {(int(m), str(d)): json.loads(q) if isinstance(q, str) else q for m, d, q in rows}


@pytest.fixture
def control(tmp_path: Path, migrated_db: Path) -> Iterator[ControlPlane]:
    db = tmp_path / "gpufair.db"
    shutil.copy(migrated_db, db)
    plane = ControlPlane(db)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


class Setup:
    """A tenant with one RMC1 model and a registered one-CPU node, through the REST API."""

    def __init__(self, control: ControlPlane) -> None:
        self.api = control.admin()
        _, self.key = self.api.tenant("ads", criterion="efm")
        self.model = self.api.model(
            self.key, "ranker", artifact=RMC1, memory_mb=50, replicas_wanted=1,
            sla_p99_ms=50.0, demand_qps=100.0,
        )  # fmt: skip
        devices = [{"device": "cpu:0", "kind": "cpu", "memory_mb": 4000, "streams": 4,
                    "seats": 2}]  # fmt: skip
        r = self.api.client.post(
            "/v1/nodes", json={"name": NODE, "devices": devices}, headers=self.api.admin
        )
        assert r.status_code == 201, r.text
        self.token = r.json()["token"]

    def node_plan(self) -> dict[str, Any]:
        r = self.api.client.get(f"/v1/nodes/{NODE}/plan", headers=self.api.bearer(self.token))
        assert r.status_code == 200, r.text
        return r.json()


class Daemon(ChildServer):
    """``gpufair executor`` in API mode as a child process, with its log in a file."""

    def __init__(
        self,
        tmp_path: Path,
        control: ControlPlane,
        token: str,
        env: dict[str, str] | None = None,
        backend: str = "torch",
        **flags: Path,
    ) -> None:
        args = [
            "executor", "--api", control.url, "--node", NODE, "--token", token, "--device", "cpu",
            "--backend", backend,
        ]  # fmt: skip
        for flag, path in flags.items():
            args += [f"--{flag.replace('_', '-')}", str(path)]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
        environment["GPUFAIR_EXECUTOR_HEARTBEAT_S"] = "0.5"
        environment["PYTHONPATH"] = str(ROOT)
        super().__init__(
            "gpufair executor",
            args,
            log_path=tmp_path / "executor.log",
            env={**environment, **(env or {})},
            cwd=tmp_path,
        )

    def wait_version(
        self, version: int, timeout_s: float = START_S, every_s: float = 0.05
    ) -> float:
        """Seconds until /healthz reports ``version``, polled every ``every_s``."""
        began = time.monotonic()
        try:
            self.wait_healthy(timeout_s, lambda health: health["plan_version"] == version, every_s)
        except ChildServerError as exc:
            pytest.fail(f"{exc}\n{self.tail()}")
        return time.monotonic() - began

    def infer(self, model_id: int, seed: int, key: str) -> list[float]:
        """Scores of a random query for the model, sent with the tenant's ``key``."""
        schema = ModelSchema.from_dict(
            httpx.get(f"{self.url}/v1/models/{model_id}/schema", timeout=10,
                      headers={"Authorization": f"Bearer {key}"}).json()
        )
        query = schema.random_query(np.random.default_rng(seed), 20)
        r = httpx.post(
            f"{self.url}/v1/models/{model_id}/infer",
            json=codec.query_to_json(query),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert r.status_code == 200, (r.text, self.tail())
        scores = r.json()["scores"]
        assert len(scores) == 20 and np.isfinite(scores).all()
        return scores


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Every daemon a test starts is stopped at its end, however it ends."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def test_a_daemon_killed_while_the_api_is_down_serves_its_last_plan_at_restart(
    control: ControlPlane, daemons: list[Daemon], tmp_path: Path
) -> None:
    setup = Setup(control)
    assert setup.api.solve()["version"] == 1
    daemon = Daemon(tmp_path, control, setup.token, state_dir=tmp_path / "state")
    daemons.append(daemon)
    daemon.start()
    daemon.wait_version(1)
    model = setup.model["id"]
    before = daemon.infer(model, seed=1, key=setup.key)
    assert (tmp_path / "state" / "plan.json").is_file()

    daemon.kill()
    control.stop()
    daemon.start()
    daemon.wait_version(1)  # no API to ask: the saved plan
    health = daemon.health()
    assert health is not None and health["models"] == [str(model)]
    assert daemon.infer(model, seed=1, key=setup.key) == pytest.approx(before, abs=1e-6)
    assert "plan pulls failing" in daemon.log_path.read_text()


def test_a_corrupt_state_file_is_ignored_and_the_plan_is_pulled(
    control: ControlPlane, daemons: list[Daemon], tmp_path: Path
) -> None:
    setup = Setup(control)
    setup.api.solve()
    state = tmp_path / "state"
    state.mkdir()
    (state / "plan.json").write_text('{"format": 1, "plan": {"node": ')
    daemon = Daemon(tmp_path, control, setup.token, state_dir=state)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_version(1)
    daemon.infer(setup.model["id"], seed=2, key=setup.key)
    assert "saved plan" in daemon.log_path.read_text() and "ignored" in daemon.log_path.read_text()
    assert json.loads((state / "plan.json").read_text())["plan"]["version"] == 1


def test_a_running_daemon_outlives_the_api_and_follows_it_when_it_returns(
    control: ControlPlane, daemons: list[Daemon], tmp_path: Path
) -> None:
    setup = Setup(control)
    setup.api.solve()
    daemon = Daemon(tmp_path, control, setup.token, state_dir=tmp_path / "state")
    daemons.append(daemon)
    daemon.start()
    daemon.wait_version(1)
    model = setup.model["id"]
    control.stop()
    until = time.monotonic() + 3.0  # several failed pulls and heartbeats
    served = 0
    while time.monotonic() < until:
        daemon.infer(model, seed=served, key=setup.key)
        served += 1
        time.sleep(0.2)
    health = daemon.health()
    assert health is not None and health["plan_version"] == 1 and served >= 5

    control.start()
    setup.api = control.admin()
    assert setup.api.solve()["version"] == 2
    daemon.wait_version(2, timeout_s=40.0)  # within the pull's backoff (capped at 30 s)
    daemon.infer(model, seed=99, key=setup.key)


def test_a_new_plan_wakes_the_daemons_long_poll_and_profiles_follow_every_plan(
    control: ControlPlane, daemons: list[Daemon], tmp_path: Path
) -> None:
    setup = Setup(control)
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps(PROFILES))
    setup.api.solve()
    daemon = Daemon(
        tmp_path, control, setup.token, state_dir=tmp_path / "state", profiles=profiles
    )
    daemons.append(daemon)
    daemon.start()
    daemon.wait_version(1)
    ranker = setup.model["id"]
    deadline = time.monotonic() + 10
    while not control.profiles():
        assert time.monotonic() < deadline, daemon.tail()
        time.sleep(0.1)
    assert control.profiles() == {(ranker, "cpu:0"): PROFILES["rmc1"]["qps"]}

    # v2 gives the ranker a second replica; the daemon long-polls with v1's ETag.
    r = setup.api.client.patch(
        f"/v1/models/{ranker}",
        json={"replicas_wanted": 2},
        headers={**setup.api.bearer(setup.key), "If-Match": '"r1"'},
    )
    assert r.status_code == 200, r.text
    time.sleep(0.5)  # the daemon is back in its long-poll after v1's profile upload
    assert setup.api.solve()["version"] == 2
    took = daemon.wait_version(2, timeout_s=LONG_POLL_S, every_s=0.05)
    seats = [s for s in setup.node_plan()["devices"][0]["seats"] if s["replica"]]
    assert len(seats) == 2  # the plan really changed
    # The long-poll was woken by the new plan, not ended by its 30 s timeout; how fast a plan
    # propagates is a matter of the machine, not of this test.
    assert took < LONG_POLL_S / 2, f"plan v2 reached the daemon {took:.2f} s after the solve"
    daemon.infer(ranker, seed=3, key=setup.key)

    # v3 adds another tenant's WnD model: its curve is uploaded once the plan is applied.
    _, key = setup.api.tenant("feed")
    wnd = setup.api.model(
        key, "wide", artifact=WND, memory_mb=50, replicas_wanted=1, sla_p99_ms=30.0,
        demand_qps=100.0,
    )["id"]  # fmt: skip
    assert setup.api.solve()["version"] == 3
    daemon.wait_version(3, timeout_s=30.0)
    deadline = time.monotonic() + 10
    while len(control.profiles()) < 2:
        assert time.monotonic() < deadline, daemon.tail()
        time.sleep(0.1)
    assert control.profiles() == {
        (ranker, "cpu:0"): PROFILES["rmc1"]["qps"],
        (wnd, "cpu:0"): PROFILES["wnd"]["qps"],
    }
    daemon.infer(wnd, seed=4, key=key)

    # Heartbeats carry the daemon's cumulative SLA tallies; the API keeps the last one.
    tenants = {str(ranker): "ads", str(wnd): "feed"}
    deadline = time.monotonic() + 10
    while True:
        r = setup.api.client.get(f"/v1/nodes/{NODE}", headers=setup.api.admin)
        sla = (r.json().get("report") or {}).get("sla", [])
        if {e["model"] for e in sla} == set(tenants):
            break
        assert time.monotonic() < deadline, (r.text, daemon.tail())
        time.sleep(0.1)
    for entry in sla:
        assert entry["tenant"] == tenants[entry["model"]]
        assert entry["received"] == 1 and 0 <= entry["within_sla"] <= 1


def test_measured_footprints_reach_the_api_and_the_next_solve_plans_with_them(
    control: ControlPlane, daemons: list[Daemon], tmp_path: Path
) -> None:
    """A model declared at 1 MB holds 9.8 MiB of weights. A 5 MiB memory limit makes the
    daemon refuse the plan that seats it, say so in its heartbeat and upload the footprint; the
    next solve, on a device whose seats hold 8 MB each, no longer seats it there."""
    api = control.admin()
    _, key = api.tenant("ads")
    model = api.model(
        key, "ranker", artifact="zoo:rmc1?scale=0.01&seed=1", memory_mb=1, replicas_wanted=1,
        sla_p99_ms=50.0, demand_qps=100.0,
    )["id"]  # fmt: skip
    devices = [{"device": "cpu:0", "kind": "cpu", "memory_mb": 16, "streams": 4, "seats": 2}]
    r = api.client.post("/v1/nodes", json={"name": NODE, "devices": devices}, headers=api.admin)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert api.solve()["version"] == 1
    daemon = Daemon(
        tmp_path, control, token, env={"GPUFAIR_EXECUTOR_MEMORY_LIMIT_MB": "5"},
        state_dir=tmp_path / "state",
    )  # fmt: skip
    daemons.append(daemon)
    daemon.start()
    deadline = time.monotonic() + START_S
    while True:
        report = api.client.get(f"/v1/nodes/{NODE}", headers=api.admin).json().get("report")
        if report and report.get("refused") and control.footprints():
            break
        assert time.monotonic() < deadline, daemon.tail()
        time.sleep(0.2)
    assert report["plan_version"] is None and report["refused"]["version"] == 1
    assert report["refused"]["reason"].startswith("device cpu:0 (on cpu:0) needs 10 MiB")
    assert "memory_limit_mb 5" in report["refused"]["reason"]
    assert control.footprints() == {(model, "cpu:0"): 10}  # 9.8 MiB, rounded up

    assert api.solve()["version"] == 2
    plan = api.client.get(f"/v1/nodes/{NODE}/plan", headers=api.bearer(token)).json()
    assert [s["replica"] for s in plan["devices"][0]["seats"]] == [None, None]
    daemon.wait_version(2)  # an empty plan fits: served, and the refusal is cleared
    deadline = time.monotonic() + 10
    while (api.client.get(f"/v1/nodes/{NODE}", headers=api.admin).json()["report"] or {}).get(
        "refused"
    ):
        assert time.monotonic() < deadline, daemon.tail()
        time.sleep(0.2)


def test_a_bad_profiles_file_stops_the_daemon_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "profiles.json"
    bad.write_text(json.dumps({"rmc1": {"qps": [200.0, 100.0], "kind": "cpu",
                                        "sla_p99_ms": 25.0}}))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
    done = subprocess.run(
        [sys.executable, "-m", "gpufair.cli", "executor", "--api", "http://127.0.0.1:9",
         "--node", NODE, "--token", "t", "--profiles", str(bad)],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"gpufair executor: bad profiles: {bad}: rmc1.qps: must not decrease as streams are "
        "added: 100.0 with 2 < 200.0 with 1"
    ], done.stderr


def test_a_rejected_token_is_said_plainly_and_a_daemon_with_nothing_to_serve_exits(
    tmp_path: Path, control: ControlPlane
) -> None:
    # A node token the API does not know: every plan pull is a 401. With no saved plan the
    # daemon has nothing to serve, so after a few tries it ends with one line and status 2;
    # each try's log line says "token rejected", not a generic failure.
    Setup(control)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
    done = subprocess.run(
        [sys.executable, "-m", "gpufair.cli", "executor", "--api", control.url, "--node", NODE,
         "--token", "not-the-node-token", "--backend", "fake", "--port", str(free_port()),
         "--state-dir", str(tmp_path / "state")],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"gpufair executor: token rejected by the API for node {NODE!r} 3 times and no plan "
        "to serve; check --token"
    )
    rejected = [line for line in done.stderr.splitlines()
                if "token rejected by the API (HTTP 401)" in line]
    assert len(rejected) == 3
    assert all("no plan to serve" in line for line in rejected)
    assert "plan pulls failing" not in done.stderr


def test_sigterm_stops_the_daemon_at_once_while_its_long_polls_wait_and_its_log_stays_quiet(
    control: ControlPlane, daemons: list[Daemon], tmp_path: Path
) -> None:
    """The plan and credential long-polls wait up to 30 s on the API: SIGTERM must not wait for
    them (it took 4-6 s, each thread joined for 2 s in turn). Nor does the log get a line per
    request (httpx logs each at INFO: a heartbeat every 0.5 s here)."""
    setup = Setup(control)
    setup.api.solve()
    daemon = Daemon(tmp_path, control, setup.token, backend="fake", state_dir=tmp_path / "state")
    daemons.append(daemon)
    daemon.start()
    daemon.wait_version(1)
    deadline = time.monotonic() + 10
    while True:  # heartbeats flow: the daemon's pulls are past the plan, in their long-polls
        r = setup.api.client.get(f"/v1/nodes/{NODE}", headers=setup.api.admin)
        if (r.json().get("report") or {}).get("plan_version") == 1:
            break
        assert time.monotonic() < deadline, daemon.tail()
        time.sleep(0.1)
    began = time.monotonic()
    daemon.process.terminate()
    assert daemon.process.wait(timeout=30) == 0, daemon.tail()
    took = time.monotonic() - began
    assert took < 3.5, f"SIGTERM took {took:.1f} s\n{daemon.tail()}"
    log = daemon.log_path.read_text()
    assert "Traceback" not in log and "HTTP Request:" not in log, daemon.tail()
