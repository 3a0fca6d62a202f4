"""``gpufair demo --nodes N``: N daemons on loopback ports act as N nodes, and one dies.

The cluster is :class:`gpufair.localcluster.LocalCluster`: the API, N ``gpufair executor
--backend fake`` daemons (simulated GPUs: one large seat and two small ones a node) and
``gpufair gateway``, each a process. Three tenants register one model each; ``ha`` wants two
replicas of a model that fits only a large seat, so the allocation seats them on two nodes
(checked: the demo stops with a clear error if it did not). Every tenant sends its queries to
the gateway with its own key. Halfway through, the daemon of one node seating ``ha`` (one that
seats no other model's only replica, if there is one) is killed with SIGKILL; the demo polls the
gateway's ``/healthz`` until it holds that daemon dead. The claims (failover_claims and
sla_claim of gpufair.demo.claims) are measured from every query's fate: answered, refused with
an HTTP error, or lost (no HTTP answer). A tenant whose only replica was on the killed node is
shown but not judged: nothing could answer it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from executor.fake import FAKE_SCHEMA
from gpufair.demo.claims import Claim, failover_claims, sla_claim
from gpufair.loadgen import PhaseCounts, StreamProcess, Target
from gpufair.localcluster import LocalCluster, ModelWanted
from gpufair.servers import ChildServer

log = logging.getLogger(__name__)

WORKDIR = Path("var/demo-nodes")  # apart from var/demo: both demos may run at once
DURATION_S = 30.0  # default seconds of counted traffic; the kill comes halfway
WARMUP_S = 3.0  # shown, not counted: the first queries load models
SEEN_WAIT_S = 10.0  # how long the demo waits for the gateway to hold the daemon dead
REQUIRED = 0.99  # answered share after the death was seen; the others' SLA attainment
HA = "ha"
# Each node: one large seat (cuda:0) and two small ones (cuda:1, 2000 MB a seat). ha's model
# fits only a large seat, one a node, so two replicas of it are always on two nodes; the
# others' models fit anywhere, and the allocator's best fit leaves the large seats to ha (on 2
# nodes too). Whether ha gets its two is still the allocation's choice: the demo checks it.
NODE_DEVICES = ({"device": "cuda:0", "kind": "gpu", "memory_mb": 16000, "streams": 2, "seats": 1},
                {"device": "cuda:1", "kind": "gpu", "memory_mb": 4000, "streams": 3, "seats": 2})
# The fake backend serves a query of the mean 270 candidates in 6 ms, so these rates load
# each stream far below its capacity.
TENANTS = {HA: ModelWanted(replicas=2, sla_ms=500.0, memory_mb=8000),
           "calm": ModelWanted(replicas=1, sla_ms=500.0),
           "steady": ModelWanted(replicas=1, sla_ms=500.0)}  # fmt: skip
RATES_QPS = {HA: 20.0, "calm": 8.0, "steady": 8.0}
STARTUP_TIMEOUT_S = 120.0


class NodesDemoError(RuntimeError):
    """The cluster could not be set up as the demo needs; the message says why."""


def _victim(cluster: LocalCluster) -> ChildServer:
    """A daemon seating ``ha``: one that seats no other model's only replica when there is."""
    model = cluster.models[HA]
    nodes = cluster.serving.get(model, [])
    if len(set(nodes)) < 2:
        raise NodesDemoError(
            f"the allocation seats {HA}'s model on {len(set(nodes))} node(s), not two: "
            f"nothing to fail over to (placement: {cluster.serving})")
    sole = {ns[0] for m, ns in cluster.serving.items() if m != model and len(ns) == 1}
    spared = [n for n in nodes if n not in sole]
    return cluster.daemons[(spared or nodes)[0]]


def _merged(counts: list[PhaseCounts]) -> PhaseCounts:
    """The counters of several phases as one (latencies and times are not needed here)."""
    whole = PhaseCounts()
    for c in counts:
        for name in ("received", "within_sla", "answered", "refused", "lost"):
            setattr(whole, name, getattr(whole, name) + getattr(c, name))
    return whole


def _placement_table(cluster: LocalCluster, victim: ChildServer) -> Table:
    table = Table(title="allocation: where each model is seated", title_justify="left")
    table.add_column("tenant")
    table.add_column("nodes")
    for tenant, model in cluster.models.items():
        nodes = cluster.serving.get(model, [])
        table.add_row(tenant, ", ".join(n + (" (killed mid-run)" if cluster.daemons[n] is victim
                                             else "") for n in nodes) or "none")
    return table


def _outcome_table(streams: list[StreamProcess], phases: list[str]) -> Table:
    table = Table(title="every query's fate, from the end of the warm-up", title_justify="left")
    for column in ("tenant", "sent", "answered", "HTTP error", "lost", "within SLA"):
        table.add_column(column, justify="left" if column == "tenant" else "right")
    for stream in streams:
        c = _merged([stream.stats.phase(p) for p in phases])
        table.add_row(stream.tenant, str(c.received), str(c.answered),
                      str(c.received - c.answered - c.lost), str(c.lost), str(c.within_sla))
    return table


def run_nodes(nodes: int, duration: float | None, console: Console) -> list[Claim]:
    """Run the demo on ``nodes`` nodes; the claims, each with its measured figure."""
    duration = DURATION_S if duration is None else duration
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    console.print(f"[bold]gpufair demo --nodes {nodes}[/]: logs in {WORKDIR}/")
    with contextlib.ExitStack() as stack:
        cluster = LocalCluster(WORKDIR, stack)
        console.print(f"API {cluster.api.url}", soft_wrap=True)
        cluster.start(TENANTS, nodes, NODE_DEVICES)
        for name, daemon in cluster.daemons.items():
            console.print(f"executor of node {name} {daemon.url}", soft_wrap=True)
        gateway = cluster.gateway_url()
        console.print(f"gateway {gateway}", soft_wrap=True)
        victim = _victim(cluster)
        console.print(_placement_table(cluster, victim))
        streams = [StreamProcess(tenant=tenant, model=cluster.models[tenant],
                                 targets=[Target(url=gateway, schema=FAKE_SCHEMA, weight=1.0)],
                                 sla_ms=wanted.sla_ms, rate_qps=RATES_QPS[tenant], seed=index,
                                 key=cluster.keys[tenant])
                   for index, (tenant, wanted) in enumerate(TENANTS.items())]
        killed_after_s, seen_after_kill_s = _drive(streams, victim, cluster, duration, console)
        counted = ["steady", "killed", "after"]
        console.print(_outcome_table(streams, counted))
        console.print(f"{victim.name} killed (SIGKILL) {killed_after_s:.1f} s into the traffic; "
                      + ("the gateway never held it dead" if seen_after_kill_s is None else
                         f"the gateway held it dead {seen_after_kill_s * 1000:.0f} ms later"))
        ha = next(s for s in streams if s.tenant == HA)
        claims = failover_claims(f"{HA}-m", _merged([ha.stats.phase(p) for p in counted]),
                                 ha.stats.phase("after"), seen_after_kill_s, REQUIRED)
        victim_node = next(n for n, d in cluster.daemons.items() if d is victim)
        orphaned = {t for t, m in cluster.models.items()
                    if t != HA and set(cluster.serving.get(m, [])) <= {victim_node}}
        if orphaned:
            console.print(f"not judged: {', '.join(sorted(orphaned))} (its only replica was on "
                          f"{victim_node})")
        for stream in streams:
            if stream.tenant != HA and stream.tenant not in orphaned:
                claims.append(sla_claim(
                    stream.tenant, _merged([stream.stats.phase(p) for p in counted]),
                    TENANTS[stream.tenant].sla_ms, REQUIRED, during="through the failure"))
        return claims


def _drive(streams: list[StreamProcess], victim: ChildServer, cluster: LocalCluster,
           duration: float, console: Console) -> tuple[float, float | None]:
    """Traffic for the warm-up and ``duration`` seconds, the victim killed halfway; returns
    when it was killed (seconds after the warm-up) and when the gateway held it dead (seconds
    after the kill, None if not within SEEN_WAIT_S). Phases: steady, killed (from the kill),
    after (from when the death was seen)."""
    killed_after_s, seen_after_kill_s = 0.0, None
    try:
        for stream in streams:
            stream.start()
        for stream in streams:
            if not stream.wait_ready(STARTUP_TIMEOUT_S):
                raise NodesDemoError(f"the load process of {stream.tenant} did not start")
        time.sleep(WARMUP_S)
        steady = time.monotonic()
        for stream in streams:
            stream.set_phase("steady", steady)
        time.sleep(duration / 2)
        console.print(f"killing {victim.name} ({victim.url}) with SIGKILL")
        killed = time.monotonic()
        victim.kill()
        killed_after_s = killed - steady
        for stream in streams:
            stream.set_phase("killed", killed)
        while time.monotonic() < killed + SEEN_WAIT_S:
            if cluster.dead_seen(victim):
                seen = time.monotonic()
                seen_after_kill_s = seen - killed
                for stream in streams:
                    stream.set_phase("after", seen)
                break
            time.sleep(0.005)
        time.sleep(max(0.0, steady + duration - time.monotonic()))
    finally:
        for stream in streams:
            stream.signal_stop()
        for stream in streams:
            stream.stop()
    return killed_after_s, seen_after_kill_s

