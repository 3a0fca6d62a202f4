"""``gpufair demo``: the whole service on this machine, with a live view (README's first command).

It starts the control plane on the embedded default (a fresh SQLite under ``var/demo/``) and one
executor daemon that serves this machine's CPU as a node, both as child processes; registers
the tenants and models of ``examples/demo.toml`` through the REST API, as their admins would;
solves an allocation; lets the daemon pull its plan; then drives the docs/architecture.md §5
workload at every tenant. Halfway through, one tenant floods at several times its rate: the view
shows the others keep their SLA while the flooder is throttled to its share (429s count as its
misses). Ctrl-C stops everything; child processes never outlive the command.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from executor.models.schema import ModelSchema
from executor.wire.attainment import attainment, is_within_sla
from gpufair.loadgen import TenantStream
from gpufair.servers import LOOPBACK, ChildServer, ChildServerError, free_port

log = logging.getLogger(__name__)

DEFAULT_SCENARIO = Path("examples/demo.toml")
STARTUP_TIMEOUT_S = 120.0
REQUIRED_ATTAINMENT = 0.99


class DemoError(RuntimeError):
    """The demo could not be set up; the message says which step failed."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufair demo",
        description=(
            "Run the API (SQLite) and an executor daemon on this machine, register the "
            "scenario's tenants and models, solve a fair allocation, and drive traffic with a "
            "flood halfway through. Logs of the child processes go to var/demo/."
        ),
    )
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO,
                   help=f"scenario TOML (default {DEFAULT_SCENARIO})")
    p.add_argument("--duration", type=float, help="seconds of traffic (default: the scenario's)")
    p.add_argument("--plain", action="store_true",
                   help="print a summary every few seconds instead of a live view")
    return p


def _load_scenario(path: Path) -> dict[str, Any]:
    try:
        scenario = tomllib.loads(path.read_text())
    except OSError as exc:
        raise DemoError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DemoError(f"{path}: invalid TOML: {exc}") from exc
    for key in ("node", "tenants", "flood_tenant"):
        if key not in scenario:
            raise DemoError(f"{path}: missing {key!r}")
    names = {t["name"] for t in scenario["tenants"]}
    if scenario["flood_tenant"] not in names:
        raise DemoError(f"{path}: flood_tenant {scenario['flood_tenant']!r} is not a tenant")
    return scenario


def _checked(reply: httpx.Response, what: str) -> Any:
    if reply.status_code >= 400:
        raise DemoError(f"{what}: HTTP {reply.status_code}: {reply.text[:300]}")
    return reply.json()


@dataclass
class Registered:
    node_token: str
    tenant_keys: dict[str, str]  # tenant name -> API key
    model_ids: dict[str, str]  # model name -> model id as served by the daemon
    allocation: dict[str, Any]


def _register(api_url: str, admin_token: str, scenario: dict[str, Any]) -> Registered:
    """Set the scenario up through the REST API, exactly as tenants' admins would."""
    admin = httpx.Client(base_url=f"{api_url}/v1", timeout=60,
                         headers={"authorization": f"Bearer {admin_token}"})
    keys: dict[str, str] = {}
    models: dict[str, str] = {}
    with admin:
        for tenant in scenario["tenants"]:
            created = _checked(admin.post("/tenants", json={
                "name": tenant["name"], "weight": tenant.get("weight", 1.0),
                "criterion": tenant.get("criterion", "prop_alpha")}),
                f"register tenant {tenant['name']}")
            key = _checked(admin.post(f"/tenants/{created['id']}/keys"),
                           f"key for {tenant['name']}")["key"]
            keys[tenant["name"]] = key
            for model in tenant["models"]:
                body = {k: model[k] for k in ("name", "artifact", "memory_mb", "replicas_wanted",
                                              "sla_p99_ms", "demand_qps") if k in model}
                reply = httpx.post(f"{api_url}/v1/models", json=body, timeout=60,
                                   headers={"authorization": f"Bearer {key}"})
                models[model["name"]] = str(_checked(reply, f"model {model['name']}")["id"])
        node = _checked(admin.post("/nodes", json={
            "name": scenario["node"]["name"], "devices": scenario["node"]["devices"]}),
            "register node")
        allocation = _checked(admin.post("/allocations", json={}), "solve allocation")
    return Registered(node["token"], keys, models, allocation)


def _tenant_rows(api_url: str, keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    rows = {}
    for tenant, key in keys.items():
        rows[tenant] = _checked(
            httpx.get(f"{api_url}/v1/allocations/current/me", timeout=30,
                      headers={"authorization": f"Bearer {key}"}),
            f"allocation of {tenant}")
    return rows


def _share(row: dict[str, Any]) -> float:
    return sum(float(s["fraction"]) for s in row.get("shares", []))


def _view(streams: list[TenantStream], rows: dict[str, dict[str, Any]],
          entitlement: dict[str, float], elapsed: float, duration: float,
          flood_at: float) -> Group:
    now = time.monotonic()
    table = Table(title="gpufair demo: tenants on node 'local' (last 5 s)", expand=False)
    for column in ("tenant", "phase", "rate", "answered/s", "429/s", "p99 ms", "SLA ms",
                   "attainment", "share", "entitled", "criterion", "holds"):
        table.add_column(column, justify="right" if column not in ("tenant", "phase",
                                                                    "criterion") else "left")
    for stream in streams:
        window = stream.stats.window(now)
        span = min(stream.stats.window_s, max(elapsed, 1e-3))
        ok = [o for o in window if o.status == 200]
        refused = sum(1 for o in window if o.status == 429)
        latencies = np.array([o.latency_s for o in window]) if window else np.array([np.inf])
        p99 = float(np.percentile(latencies, 99)) if window else float("nan")
        within = sum(is_within_sla(answered=o.status == 200, latency_s=o.latency_s,
                                   sla_s=stream.sla_s) for o in window)
        attain = attainment(within_sla=within, received=len(window))
        cert = rows[stream.tenant].get("certificate", {})
        p99_cell = "-" if not window else f"{p99 * 1000:.0f}" if np.isfinite(p99) else "∞"
        attain_cell = Text("-") if attain is None else Text(
            f"{attain:.1%}", style="green" if attain >= REQUIRED_ATTAINMENT else "red")
        table.add_row(
            stream.tenant, stream.phase, f"{stream.rate_qps:.0f}", f"{len(ok) / span:.1f}",
            f"{refused / span:.1f}", p99_cell, f"{stream.sla_s * 1000:.0f}", attain_cell,
            f"{_share(rows[stream.tenant]):.2f}", f"{entitlement[stream.tenant]:.2f}",
            str(cert.get("criterion", "?")), "yes" if cert.get("holds") else "no",
        )
    flood = "flooding" if elapsed >= flood_at else f"flood starts at {flood_at:.0f} s"
    progress = Text(f"{elapsed:5.0f} / {duration:.0f} s   {flood}   Ctrl-C stops")
    return Group(table, progress)


def _summary(streams: list[TenantStream], flood_tenant: str) -> tuple[Table, bool]:
    table = Table(title="SLA attainment over the whole run")
    for column in ("tenant", "steady", "during flood", "verdict"):
        table.add_column(column)
    passed = True
    for stream in streams:
        cells = []
        for phase in ("steady", "flood"):
            within, total = stream.stats.by_phase.get(phase, [0, 0])
            attain = attainment(within_sla=within, received=total)
            cells.append("-" if attain is None else f"{attain:.2%} of {total}")
        if stream.tenant == flood_tenant:
            verdict = "flooder: throttled to its share"
        else:
            within, total = stream.stats.by_phase.get("flood", [0, 0])
            attain = attainment(within_sla=within, received=total)
            ok = attain is not None and attain >= REQUIRED_ATTAINMENT
            passed &= ok
            verdict = f"{'kept' if ok else 'MISSED'} ≥ {REQUIRED_ATTAINMENT:.0%}"
        table.add_row(stream.tenant, *cells, verdict)
    return table, passed


def run(args: argparse.Namespace, console: Console) -> int:
    scenario = _load_scenario(args.scenario)
    duration = float(args.duration or scenario.get("duration_s", 60))
    workdir = Path("var/demo")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    executor_port = free_port()  # the executor starts later; its URL is shown from the start
    admin_token = secrets.token_urlsafe(24)
    env = {**os.environ,
           "GPUFAIR_DATABASE_URL": f"sqlite:///{(workdir / 'gpufair.db').resolve()}",
           "GPUFAIR_API_ADMIN_TOKEN": admin_token, "GPUFAIR_API_DEV_MODE": "true"}
    with contextlib.ExitStack() as children:
        api = ChildServer("api", ["serve"], log_path=workdir / "api.log", env=env)
        api_url, executor_url = api.url, f"http://{LOOPBACK}:{executor_port}"
        console.print(f"[bold]gpufair demo[/] — API {api_url}, executor {executor_url}, "
                      f"logs in {workdir}/")
        children.enter_context(api).wait_healthy(STARTUP_TIMEOUT_S)
        registered = _register(api_url, admin_token, scenario)
        status = registered.allocation["certificate"].get("status", "?")
        console.print(f"allocation v{registered.allocation['version']} solved "
                      f"({status}) in {registered.allocation['solve_seconds']:.2f} s")
        executor = ChildServer("executor", [
            "executor", "--api", api_url, "--node", scenario["node"]["name"],
            "--token", registered.node_token, "--device", "cpu",
            "--state-dir", str(workdir / "executor"),
        ], log_path=workdir / "executor.log", port=executor_port, env=env)
        children.enter_context(executor).wait_healthy(STARTUP_TIMEOUT_S)
        rows = _tenant_rows(api_url, registered.tenant_keys)
        total_weight = sum(t.get("weight", 1.0) for t in scenario["tenants"])
        entitlement = {t["name"]: t.get("weight", 1.0) / total_weight
                       for t in scenario["tenants"]}
        streams = []
        for index, tenant in enumerate(scenario["tenants"]):
            for model in tenant["models"]:
                model_id = registered.model_ids[model["name"]]
                schema = ModelSchema.from_dict(_checked(
                    httpx.get(f"{executor_url}/v1/models/{model_id}/schema", timeout=30),
                    f"schema of {model['name']}"))
                streams.append(TenantStream(
                    tenant=tenant["name"], model=model_id, url=executor_url, schema=schema,
                    sla_ms=model["sla_p99_ms"], rate_qps=model["rate_qps"],
                    seed=int(scenario.get("seed", 0)) * 100 + index))
        flood_at = duration / 2
        began = time.monotonic()
        for stream in streams:
            stream.start()
        try:
            live_view = contextlib.nullcontext(None) if args.plain else Live(
                console=console, refresh_per_second=2)
            with live_view as live:
                flooded = False
                while (elapsed := time.monotonic() - began) < duration:
                    if not flooded and elapsed >= flood_at:
                        flooded = True
                        for stream in streams:
                            stream.phase = "flood"
                            if stream.tenant == scenario["flood_tenant"]:
                                stream.rate_qps *= float(scenario.get("flood_factor", 5.0))
                    view = _view(streams, rows, entitlement, elapsed, duration, flood_at)
                    if live is None:
                        console.print(view)
                        time.sleep(5)
                    else:
                        live.update(view)
                        time.sleep(0.5)
        finally:
            # Every stream stops sending at once; then their in-flight queries are awaited,
            # so stopping takes one request timeout, not one per tenant.
            for stream in streams:
                stream.signal_stop()
            for stream in streams:
                stream.stop()
        table, passed = _summary(streams, scenario["flood_tenant"])
        console.print(table)
        console.print(
            "[green]the well-behaved tenants kept their SLA while one flooded[/]" if passed
            else "[red]a well-behaved tenant missed its SLA during the flood[/] "
                 "(the machine may be busy; see var/demo/*.log)")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    # One line per request would bury the view; the children's logs are in var/demo/.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 130)
    try:
        return run(args, console)
    except (DemoError, ChildServerError) as exc:
        print(f"gpufair demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        console.print("stopped")
        return 130
