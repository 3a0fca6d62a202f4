"""``gpufair demo``: the whole service on this machine, its claims measured (README's first
command).

It starts the control plane on the embedded default (a fresh SQLite under ``var/demo/``) and
one executor daemon per node of the scenario (``examples/demo.toml``: simulated GPUs served by
the fake backend's service times, and this machine's real CPU served by torch), all as child
processes. Through the REST API, as their admins would, it registers the tenants, their models
and the nodes, solves, has each node report the throughput curves of the models its plan
seats (gpufair.demo.scenario) and solves again, and prints the allocation with its certificate
beside what an equal split of every device would have given (gpufair.demo.naive). The daemons
pull their plans; the demo then drives
the docs/architecture.md §5 workload at every tenant, each query sent to a node serving its
model in proportion to the capacity planned there, with a live table. Halfway through, one
tenant floods. The summary states each claim with the figure measured for it
(gpufair.demo.claims) and the exit status says whether all held. Ctrl-C stops everything; child
processes never outlive the command.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.text import Text

from allocator.certificate import (
    AgentCertificateDocument,
    CertificateDocument,
    parse_certificate,
)
from allocator.cluster.plan import NodePlan
from executor.models.schema import ModelSchema
from gpufair.commands.serve import dashboard_sign_in
from gpufair.demo.claims import Claim, TenantVerdict, fairness_claim, flood_claims, sla_claim
from gpufair.demo.naive import SplitRow, naive_rows
from gpufair.demo.nodes import DURATION_S as NODES_DURATION_S
from gpufair.demo.nodes import WORKDIR as NODES_WORKDIR
from gpufair.demo.nodes import NodesDemoError, run_nodes
from gpufair.demo.scenario import Scenario, ScenarioError, load_scenario
from gpufair.demo.view import (
    LEGEND,
    certificate_table,
    claims_view,
    comparison_table,
    live_view,
    phase_table,
)
from gpufair.inputs import positive_number
from gpufair.loadgen import StreamProcess, Target
from gpufair.localcluster import ClusterError
from gpufair.servers import ChildServer, ChildServerError
from gpufair.settings import SettingsError, load_settings

log = logging.getLogger(__name__)

DEFAULT_SCENARIO = Path("examples/demo.toml")
STARTUP_TIMEOUT_S = 120.0
PORT_TRIES = 3  # ports tried for a daemon whose port another process took first
WORKDIR = Path("var/demo")
CLAIM_FAILED = 3  # exit status when the run finished but a claim did not hold
BAD_INPUT = 2  # exit status for a bad scenario file, flag or setting, before anything starts
# The first seconds load models and warm caches on every path; they are shown, not counted.
WARMUP_S = 5.0
MAX_SOLVES = 4  # solves while nodes report new curves (a few suffice: see _register)
TICK_S = 0.5  # phases change and the live view refreshes this often
PLAIN_EVERY_S = 5.0  # --plain prints the table this often


class DemoError(RuntimeError):
    """The demo could not be set up; the message says which step failed."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufair demo",
        description=(
            "Run the API (SQLite) and one executor daemon per node of the scenario on this "
            "machine, register the scenario's tenants and models, solve a fair allocation and "
            "compare it with an equal split, then drive traffic with a flood halfway through "
            "and check the claims of the summary. Logs of the child processes go to var/demo/."
        ),
        epilog=(
            f"Exit status: 0 when every claim held, {CLAIM_FAILED} when one failed (the "
            f"summary says which and by how much), {BAD_INPUT} for a bad scenario file or "
            "flag, 1 when the demo could not run, 130 on Ctrl-C."
        ),
    )
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO,
                   help=f"scenario TOML (default {DEFAULT_SCENARIO}; fields: docs/formats.md)")
    p.add_argument(
        "--duration", type=positive_number, help="seconds of traffic, > 0 (default: the scenario's)"
    )
    p.add_argument("--nodes", type=_node_count, metavar="N",
                   help="instead of the scenario: run N ≥ 2 executor daemons on loopback ports "
                        "as N nodes (simulated GPUs) behind `gpufair gateway`, send three "
                        "tenants' queries through the gateway with their keys, kill (SIGKILL) "
                        "one of the two nodes serving the replicated model halfway, and check "
                        "that none of its queries was lost, that it was answered once the "
                        "gateway saw the death and that the others kept their SLA (default "
                        f"--duration {NODES_DURATION_S:g}; logs in {NODES_WORKDIR}/). The "
                        "replicated model fits only each node's one large seat, so its two "
                        "replicas are on two nodes; the demo stops, saying so, if they were not")
    p.add_argument("--plain", action="store_true",
                   help="print the table every few seconds instead of a live view")
    return p


def _node_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of nodes, at least 2")
    return count


def start_executor(
    children: contextlib.ExitStack,
    node: str,
    args: list[str],
    *,
    env: Mapping[str, str] | None = None,
    command: list[str] | None = None,
) -> ChildServer:
    """Start node ``node``'s daemon (``gpufair`` ``args``, or ``command`` ``args``) on a port
    picked now, and return it once its ``/healthz`` names the node; ``children`` stops it.

    A port is free when picked, but on a shared machine another process may bind it before the
    daemon does (one demo run out of five once read another program's 404 for its schema): so
    only a health document that names this node counts, and a daemon that exits meanwhile (it
    could not bind) is started again on another port, up to PORT_TRIES times."""
    for attempt in range(1, PORT_TRIES + 1):
        executor = ChildServer(f"executor {node}", args, env=env, command=command,
                               log_path=WORKDIR / f"executor-{node}.log")
        with contextlib.ExitStack() as this_try:
            this_try.enter_context(executor)
            try:
                executor.wait_healthy(
                    STARTUP_TIMEOUT_S,
                    ready=lambda health: isinstance(health, dict) and health.get("node") == node)
            except ChildServerError as exc:
                if attempt == PORT_TRIES or executor.process.poll() is None:
                    raise
                log.warning("executor of node %s did not start on port %d, trying another: %s",
                            node, executor.port, exc)
                continue
            children.enter_context(this_try.pop_all())
            return executor
    raise AssertionError("unreachable: the last try returns or raises")


def _checked(reply: httpx.Response, what: str) -> Any:
    if reply.status_code >= 400:
        raise DemoError(f"{what}: HTTP {reply.status_code}: {reply.text[:300]}")
    return reply.json()


@dataclass
class Registered:
    node_tokens: dict[str, str]  # node name -> its token
    tenant_keys: dict[str, str]  # tenant name -> API key
    model_ids: dict[str, str]  # tenant name -> its model's id as the daemons serve it
    certificate: CertificateDocument
    version: int
    solve_seconds: float
    measured: set[tuple[str, str]]  # (tenant, node) whose model's curves the node uploaded


def _register(api_url: str, admin_token: str, scenario: Scenario) -> Registered:
    """Set the scenario up through the REST API, exactly as tenants' admins would."""
    keys: dict[str, str] = {}
    models: dict[str, str] = {}
    tokens: dict[str, str] = {}
    with httpx.Client(base_url=f"{api_url}/v1", timeout=60,
                      headers={"authorization": f"Bearer {admin_token}"}) as admin:
        for tenant in scenario.tenants:
            created = _checked(admin.post("/tenants", json={
                "name": tenant.name, "weight": tenant.weight, "criterion": tenant.criterion}),
                f"register tenant {tenant.name}")
            keys[tenant.name] = _checked(admin.post(f"/tenants/{created['id']}/keys"),
                                         f"key for {tenant.name}")["key"]
            body = tenant.model.model_dump(exclude={"rate_qps"})
            reply = httpx.post(f"{api_url}/v1/models", json=body, timeout=60,
                               headers={"authorization": f"Bearer {keys[tenant.name]}"})
            models[tenant.name] = str(_checked(reply, f"model {tenant.model.name}")["id"])
        for node in scenario.nodes:
            devices = [d.model_dump(exclude={"stream_qps"}) for d in node.devices]
            tokens[node.name] = _checked(
                admin.post("/nodes", json={"name": node.name, "devices": devices}),
                f"register node {node.name}")["token"]
        # As daemons do: a node reports the curves of the models its plan seats, and the next
        # solve values them by those curves instead of the API's estimate (a node may report
        # only on models it was given). Solve again until no node has a new curve to report.
        measured: set[tuple[str, str]] = set()
        for _ in range(MAX_SOLVES):
            allocation = _checked(
                admin.post("/allocations", json={"objective": scenario.objective}),
                "solve allocation")
            new = _upload_curves(api_url, tokens, scenario, models, measured)
            if not new:
                break
            measured |= new
    return Registered(tokens, keys, models, parse_certificate(allocation["certificate"]),
                      allocation["version"], allocation["solve_seconds"], measured)


def _upload_curves(api_url: str, tokens: dict[str, str], scenario: Scenario,
                   model_ids: dict[str, str], done: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Each node uploads the scenario's curves, on every device, of the models its current plan
    seats and it has not reported yet; returns the (tenant, node) pairs uploaded."""
    tenant_of = {model_id: tenant for tenant, model_id in model_ids.items()}
    uploaded = set()
    for node, token in tokens.items():
        plan = NodePlan.from_dict(_checked(
            httpx.get(f"{api_url}/v1/nodes/{node}/plan", timeout=30,
                      headers={"authorization": f"Bearer {token}"}), f"plan of node {node}"))
        seated = {tenant_of[seat.replica.model_id] for _, seat in plan.replicas()
                  if seat.replica is not None} - {t for t, n in done if n == node}
        entries = [{"model_id": int(model_ids[tenant]), "device": device.device,
                    "qps": scenario.curve(node, device.device)}
                   for device in scenario.node(node).devices for tenant in sorted(seated)]
        if entries:
            _checked(httpx.put(f"{api_url}/v1/nodes/{node}/profiles",
                               json={"profiles": entries}, timeout=60,
                               headers={"authorization": f"Bearer {token}"}),
                     f"curves of node {node}")
            uploaded |= {(tenant, node) for tenant in seated}
    return uploaded


@dataclass(frozen=True)
class Placement:
    """Where one tenant's model is served, read from its allocation."""

    streams: dict[str, float]  # node -> streams serving the tenant there
    capacity_rows_s: dict[str, float]  # node -> candidate rows per second they score at most
    # What the rest of the shared pools of its devices score: the most idle pool time that
    # fair queueing, being work conserving, may lend it.
    borrowable_rows_s: float

    @property
    def total_rows_s(self) -> float:
        return sum(self.capacity_rows_s.values())


def _shared_pools(api_url: str, node_tokens: dict[str, str]) -> dict[tuple[str, str], int]:
    """(node, device) -> the streams of its shared pool, from the nodes' plans."""
    pools = {}
    for node, token in node_tokens.items():
        plan = NodePlan.from_dict(_checked(
            httpx.get(f"{api_url}/v1/nodes/{node}/plan", timeout=30,
                      headers={"authorization": f"Bearer {token}"}), f"plan of node {node}"))
        pools.update({(node, d.device): d.shared_pool_streams for d in plan.devices})
    return pools


def _placements(api_url: str, scenario: Scenario, keys: dict[str, str],
                node_tokens: dict[str, str]) -> tuple[dict[str, Placement], dict[str, SplitRow]]:
    """Each tenant's placement, and its row of the fair allocation for the comparison."""
    total_streams = sum(d.streams for n in scenario.nodes for d in n.devices)
    pools = _shared_pools(api_url, node_tokens)
    placements: dict[str, Placement] = {}
    fair: dict[str, SplitRow] = {}
    for tenant in scenario.tenants:
        mine = _checked(httpx.get(f"{api_url}/v1/allocations/current/me", timeout=30,
                                  headers={"authorization": f"Bearer {keys[tenant.name]}"}),
                        f"allocation of {tenant.name}")
        streams: dict[str, float] = defaultdict(float)
        capacity: dict[str, float] = defaultdict(float)
        for share in mine["shares"]:
            per_stream = scenario.stream_rows_s(share["node"], share["device"])
            streams[share["node"]] += float(share["streams"])
            capacity[share["node"]] += float(share["streams"]) * per_stream
        own_pool: dict[tuple[str, str], float] = defaultdict(float)
        for seat in mine["seats"]:
            own_pool[seat["node"], seat["device"]] += float(seat["pool_streams"])
        borrowable = sum((pools.get(where, 0) - mine_there) * scenario.stream_rows_s(*where)
                         for where, mine_there in own_pool.items())
        placements[tenant.name] = Placement(dict(streams), dict(capacity), max(0.0, borrowable))
        row = AgentCertificateDocument.model_validate(mine["certificate"])
        fair[tenant.name] = SplitRow(share=sum(streams.values()) / total_streams,
                                     expected_qps=row.value * tenant.model.demand_qps,
                                     holds=row.holds)
    return placements, fair


def _verdicts(certificate: CertificateDocument) -> dict[str, TenantVerdict]:
    return {name: TenantVerdict(holds=row.holds, slack=row.slack)
            for name, row in certificate.agents.items()}


def _streams(scenario: Scenario, registered: Registered, placements: dict[str, Placement],
             executor_urls: dict[str, str]) -> list[StreamProcess]:
    streams = []
    for index, tenant in enumerate(scenario.tenants):
        model_id = registered.model_ids[tenant.name]
        targets = []
        for node, capacity in sorted(placements[tenant.name].capacity_rows_s.items()):
            if capacity <= 0:
                continue
            url = executor_urls[node]
            schema = ModelSchema.from_dict(_checked(
                httpx.get(f"{url}/v1/models/{model_id}/schema", timeout=30, headers={
                    "authorization": f"Bearer {registered.tenant_keys[tenant.name]}"}),
                f"schema of {tenant.model.name} on node {node}"))
            targets.append(Target(url=url, schema=schema, weight=capacity))
        if not targets:
            raise DemoError(f"tenant {tenant.name} holds no seat: nothing to send its "
                            "queries to (the scenario has too few seats)")
        streams.append(StreamProcess(
            tenant=tenant.name, model=model_id, targets=targets,
            sla_ms=tenant.model.sla_p99_ms, rate_qps=tenant.model.rate_qps,
            seed=scenario.seed * 100 + index, key=registered.tenant_keys[tenant.name]))
    return streams


def _drive(streams: list[StreamProcess], scenario: Scenario, duration: float,
           share: dict[str, float], plain: bool,
           console: Console) -> dict[str, float]:
    """Send traffic for ``duration`` seconds after a short warm-up, flooding halfway; returns
    each counted phase's seconds."""
    flood_at = WARMUP_S + duration / 2
    duration += WARMUP_S
    entitled = scenario.entitlement()
    required = scenario.claims.required_attainment
    printed_at = 0.0  # --plain: when the table is printed next
    began = ended = time.monotonic()
    steady_began: float | None = None
    flood_began: float | None = None
    try:
        for stream in streams:
            stream.start()
        for stream in streams:
            if not stream.wait_ready(STARTUP_TIMEOUT_S):
                raise DemoError(f"the load process of {stream.tenant} did not start")
        began = time.monotonic()  # the clock starts once every tenant's client sends
        live_context = contextlib.nullcontext(None) if plain else Live(
            console=console, refresh_per_second=2)
        with live_context as live:
            while (elapsed := time.monotonic() - began) < duration:
                if steady_began is None and elapsed >= WARMUP_S:
                    steady_began = time.monotonic()
                    for stream in streams:
                        stream.set_phase("steady", steady_began)
                if flood_began is None and elapsed >= flood_at:
                    flood_began = time.monotonic()
                    for stream in streams:
                        # Every stream counts the flood period apart, not only the flooder.
                        stream.set_phase("flood", flood_began)
                        if stream.tenant == scenario.flood_tenant:
                            stream.rate_qps *= scenario.flood_factor
                view = live_view(streams, share, entitled, elapsed, duration, flood_at,
                                 required, scenario.flood_tenant)
                if live is not None:
                    live.update(view)
                elif elapsed >= printed_at:
                    console.print(view)
                    printed_at += PLAIN_EVERY_S
                time.sleep(TICK_S)
    finally:
        # Every stream stops sending at once; then their in-flight queries are awaited,
        # so stopping takes one request timeout, not one per tenant.
        ended = time.monotonic()
        for stream in streams:
            stream.signal_stop()
        for stream in streams:
            stream.stop()
    steady_began = steady_began or ended
    return {"steady": (flood_began or ended) - steady_began,
            "flood": ended - flood_began if flood_began is not None else 0.0}


def _claims(scenario: Scenario, streams: list[StreamProcess], phases: dict[str, float],
            certificate: CertificateDocument, placements: dict[str, Placement]) -> list[Claim]:
    claims = [fairness_claim(_verdicts(certificate))]
    for stream in streams:
        tenant = scenario.tenant(stream.tenant)
        if tenant.name == scenario.flood_tenant:
            continue
        claims.append(sla_claim(tenant.name, stream.stats.phase("flood"),
                                tenant.model.sla_p99_ms, scenario.claims.required_attainment))
    flooder = next(s for s in streams if s.tenant == scenario.flood_tenant)
    claims += flood_claims(scenario.flood_tenant, flooder.stats.phase("flood"), phases["flood"],
                           placements[scenario.flood_tenant].total_rows_s,
                           scenario.claims.throttle_tolerance,
                           placements[scenario.flood_tenant].borrowable_rows_s)
    return claims


def _verdict(claims: list[Claim], console: Console, workdir: Path) -> int:
    """The summary's last line and the exit status: 0 when every claim held."""
    console.print(claims_view(claims))
    if all(c.holds for c in claims):
        console.print("[green]every claim held[/]")
        return 0
    console.print(f"[red]{sum(not c.holds for c in claims)} claim(s) failed[/] "
                  f"(a busy machine can cause it; the daemons' logs are in {workdir}/)")
    return CLAIM_FAILED


def run(args: argparse.Namespace, console: Console) -> int:
    if args.nodes is not None:
        return _verdict(run_nodes(args.nodes, args.duration, console), console, NODES_WORKDIR)
    scenario = load_scenario(args.scenario)
    duration = args.duration if args.duration is not None else scenario.duration_s
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    admin_token = secrets.token_urlsafe(24)
    env = {**os.environ,
           "GPUFAIR_DATABASE_URL": f"sqlite:///{(WORKDIR / 'gpufair.db').resolve()}",
           "GPUFAIR_API_ADMIN_TOKEN": admin_token, "GPUFAIR_API_DEV_MODE": "true"}
    with contextlib.ExitStack() as children:
        api = ChildServer("api", ["serve"], log_path=WORKDIR / "api.log", env=env)
        # One address a line, never wrapped, so each can be copied (or read by a test).
        console.print(f"[bold]gpufair demo[/]: logs in {WORKDIR}/")
        console.print(f"API {api.url}", soft_wrap=True)
        console.print(f"dashboard {dashboard_sign_in(api.url, admin_token)}",
                      soft_wrap=True)
        children.enter_context(api).wait_healthy(STARTUP_TIMEOUT_S)
        registered = _register(api.url, admin_token, scenario)
        cert = registered.certificate
        console.print(f"allocation v{registered.version} solved ({cert.status}) in "
                      f"{registered.solve_seconds:.2f} s")
        console.print(certificate_table(cert))
        executor_urls = {}
        for node in scenario.nodes:
            command = ["executor", "--api", api.url, "--node", node.name,
                       "--token", registered.node_tokens[node.name],
                       "--state-dir", str(WORKDIR / "executor" / node.name)]
            command += node.executor_flags()
            executor = start_executor(children, node.name, command, env=env)
            executor_urls[node.name] = executor.url
            console.print(f"executor of node {node.name} {executor.url}", soft_wrap=True)
        placements, fair = _placements(api.url, scenario, registered.tenant_keys,
                                       registered.node_tokens)
        console.print(comparison_table(scenario, fair,
                                       naive_rows(scenario, registered.measured)))
        console.print(Text(LEGEND, style="dim"))
        streams = _streams(scenario, registered, placements, executor_urls)
        share = {t: row.share for t, row in fair.items()}
        phases = _drive(streams, scenario, duration, share, args.plain, console)
        console.print(phase_table(streams, phases))
        return _verdict(_claims(scenario, streams, phases, cert, placements), console, WORKDIR)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (kill, a supervisor, a CI timeout) stops the demo as Ctrl-C does: children
    stopped, nothing left behind."""
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.nodes is not None and args.scenario != DEFAULT_SCENARIO:
        print("gpufair demo: --scenario does not apply with --nodes (its cluster is built in)",
              file=sys.stderr)  # fmt: skip
        return BAD_INPUT
    try:
        # The demo's servers read the same settings: a bad config file or variable is said
        # once, here, before an address or a token is printed for a server that cannot start.
        load_settings()
    except SettingsError as exc:
        print(f"gpufair demo: {exc}", file=sys.stderr)
        return BAD_INPUT
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # One line per request would bury the view; the children's logs are in var/demo/.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 80)
    try:
        return run(args, console)
    except ScenarioError as exc:  # a bad scenario file: bad input, as for every command
        print(f"gpufair demo: {exc}", file=sys.stderr)
        return BAD_INPUT
    except (DemoError, NodesDemoError, ClusterError, ChildServerError) as exc:
        print(f"gpufair demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        console.print("stopped")
        return 130
