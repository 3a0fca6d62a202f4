"""``gpufair allocate CLUSTER.toml|json``: allocate a cluster and print the node plans.

Reads a cluster description (tenants, GPUs, models with throughput curves; see
examples/cluster.toml and docs/formats.md), runs ``allocator.allocate_cluster`` and prints, for
people, first whether each tenant gets what it needs (demand against the QPS its plan serves,
SLA, weight, share of the cluster against its entitlement, its criterion's verdict), then each
model's part of its tenant's bundle, then the seats of every device and the fairness
certificate, each with a legend; or the whole allocation as JSON with ``--json``.
Settings come from ``[allocator]``, overridden by the flags; bad input ends as one line on
stderr and a non-zero exit. Whatever a solver library prints during the solve goes to stderr
(gpufair.stdout_guard), so stdout holds the table or the JSON alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import tomllib
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from gpufair.compose import add_solve_flags, flagged_solve_options
from gpufair.inputs import InputError, read_text, whole_number
from gpufair.stdout_guard import stdout_reserved_for_result

if TYPE_CHECKING:
    from allocator.cluster.allocate import ClusterAllocation
    from allocator.cluster.plan import NodePlan
    from allocator.cluster.snapshot import ClusterSnapshot

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpufair allocate",
        description="Fairly allocate a cluster's GPU seats and streams among tenants and print "
        "the plan of every node.",
    )
    parser.add_argument("cluster", help="cluster file, TOML or JSON (see examples/cluster.toml)")
    parser.add_argument("--json", action="store_true", help="print the allocation as JSON")
    add_solve_flags(parser)
    parser.add_argument("--churn-limit", type=whole_number(0), metavar="K",
                        help="(with --previous) at most K seat moves from the previous plans")
    parser.add_argument("--previous", metavar="PLANS.json",
                        help="JSON object node -> plan of the previous allocation")
    return parser


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"gpufair allocate: {message}\n")
    return code


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _legend(text: str) -> None:
    """A legend under a table, wrapped to an 80-column terminal."""
    _say(textwrap.fill(text, width=79))


def _load(path: str) -> Any:
    """The document in the file at ``path``, TOML or JSON by its name; InputError naming the
    file if it cannot be read or parsed."""
    text = read_text(path)
    try:
        if path.endswith(".toml"):
            return tomllib.loads(text)
        return json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno})") from None


def _previous(path: str) -> dict[str, NodePlan]:
    """The previous allocation's plans in the file at ``path``, by node; InputError or
    PlanError naming the file (and the node) if it is not an object of node -> plan."""
    from allocator.cluster.plan import NodePlan, PlanError

    doc = _load(path)
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected an object of node -> plan, got {type(doc).__name__}")
    plans: dict[str, NodePlan] = {}
    for node, plan in doc.items():
        try:
            plans[node] = NodePlan.from_dict(plan)
        except PlanError as exc:
            raise PlanError(f"{path}: node {node!r}: {exc}") from None
    return plans


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.churn_limit is not None and args.previous is None:
        # Without the plans it bounds moves from, the limit would be ignored without a word.
        parser.error("argument --churn-limit: give --previous, the plans it counts moves from")
    from allocator.cluster.documents import snapshot_from_dict
    from allocator.cluster.plan import PlanError
    from allocator.errors import AllocatorError, InstanceError
    from gpufair.settings import SettingsError, load_settings

    try:
        doc = _load(args.cluster)
        previous = _previous(args.previous) if args.previous else None
    except (InputError, PlanError) as exc:
        return _fail(str(exc), 2)
    try:
        settings = load_settings().allocator
        options = flagged_solve_options(settings, args, churn_limit=args.churn_limit)
    except (SettingsError, InstanceError) as exc:
        return _fail(str(exc), 2)
    try:
        snapshot = snapshot_from_dict(doc)
    except InstanceError as exc:
        return _fail(f"{args.cluster}: {exc}", 2)
    from allocator.cluster.allocate import allocate_cluster

    with stdout_reserved_for_result() as result_stream:
        try:
            result = allocate_cluster(snapshot, options, previous)
        except InstanceError as exc:
            return _fail(str(exc), 2)
        except AllocatorError as exc:
            return _fail(str(exc), 1)
        if args.json:
            json.dump(result.to_dict(), result_stream, indent=2)
            result_stream.write("\n")
            return 0
    _print_tenants(snapshot, result)
    _print_models(result)
    _print_seats(result)
    _print_certificate(result)
    return 0


def _verdict(holds: bool, lam: float | None) -> str:
    """A criterion's verdict in one word: yes (exactly), relax (only relaxed by its λ), NO."""
    return "yes" if holds else "relax" if lam is not None else "NO"


def _interpolated(qps: tuple[float, ...], streams: float) -> float:
    """q(s) at a fractional number of streams: linear between whole streams, q(0) = 0, flat
    beyond the curve (as the allocator reads curves)."""
    points = (0.0, *qps)
    if streams >= len(qps):
        return qps[-1]
    low = int(streams)
    return points[low] + (streams - low) * (points[low + 1] - points[low])


def _print_tenants(snapshot: ClusterSnapshot, result: ClusterAllocation) -> None:
    """Per tenant: does it get what it needs? Expected QPS is what its replicas' streams serve
    at its models' curves, at most each model's demand."""
    gpus = {(g.node, g.device): g for g in snapshot.gpus}
    models = {m.model_id: m for m in snapshot.models}
    served: dict[str, float] = defaultdict(float)  # model -> QPS its replicas serve
    streams: dict[str, float] = defaultdict(float)  # tenant -> streams serving it
    for node, plan in result.plans.items():
        for device in plan.devices:
            for seat in device.seats:
                if seat.replica is None:
                    continue
                mine = 1 + seat.dedicated_streams + device.pool_streams(seat)
                streams[seat.replica.tenant] += mine
                model = models[seat.replica.model_id]
                served[model.model_id] += _interpolated(
                    model.curve(gpus[node, device.device]).qps, mine)
    all_streams = sum(g.streams for g in snapshot.gpus)
    all_weight = sum(t.weight for t in snapshot.tenants)
    cert = result.certificate
    _say(f"{'tenant':<10} {'criterion':<10} {'weight':>6} {'demand':>7} {'expect':>7} "
         f"{'SLA ms':>6} {'share':>5} {'entitl':>6}  verdict")
    for tenant in snapshot.tenants:
        own = [m for m in snapshot.models if m.tenant == tenant.name]
        demand = sum(m.demand_qps for m in own)
        expected = sum(min(served[m.model_id], m.demand_qps) for m in own)
        slas = sorted({m.sla_p99_ms for m in own})
        sla = "-" if not slas else "/".join(f"{v:g}" for v in slas)
        row = cert.agents[tenant.name]
        verdict = {"yes": "holds", "relax": "relaxed", "NO": "FAILS"}[_verdict(row.holds, row.lam)]
        if row.slack is not None:
            verdict += f" {row.slack:+.2f}"
        # A cluster without devices has no streams to share: every tenant's share is 0.
        share = streams[tenant.name] / all_streams if all_streams else 0.0
        _say(f"{tenant.name:<10} {tenant.criterion:<10} {tenant.weight:>6g} {demand:>7.0f} "
             f"{expected:>7.0f} {sla:>6} {share:>5.2f} "
             f"{tenant.weight / all_weight:>6.2f}  {verdict}")
    _legend("demand: QPS the tenant declared; expect: QPS its plan serves at its models' "
            "curves (at most the demand); share: its streams over all streams; entitl: its "
            "weight over all weights; verdict: its own criterion, with its slack, which "
            "compares values (served fractions of demand), not streams.")


def _print_models(result: ClusterAllocation) -> None:
    """Per model: its part of its tenant's bundle, as the certificate states it."""
    _say()
    _say(f"{'tenant':<10} {'model':<14} {'weight':>6} {'entitl':>6} {'seats':>5} "
         f"{'served':>6} {'share':>5}")
    for tenant, models in result.certificate.models.items():
        for model_id, part in models.items():
            _say(f"{tenant:<10} {model_id:<14} {part.weight:>6g} {part.entitlement:>6.2f} "
                 f"{part.seats:>5} {part.served:>6.2f} {part.share:>5.2f}")
    _legend("weight: the model's weight within its tenant; entitl: that weight over its "
            "tenant's model weights; seats: replicas the tenant holds for it; served: the "
            "fraction of its demand its seats and streams serve within its SLA, as valued; "
            "share: its part of the tenant's value (the tenant is the agent of the division).")


def _print_seats(result: ClusterAllocation) -> None:
    _say()
    _say(f"{'node':<10} {'device':<8} {'seat':>4}  {'tenant':<10} {'model':<14} "
         f"{'own':>4} {'pool':>5}")
    for node, plan in result.plans.items():
        for device in plan.devices:
            for seat in device.seats:
                replica = seat.replica
                _say(f"{node:<10} {device.device:<8} {seat.seat:>4}  "
                     f"{replica.tenant if replica else '-':<10} "
                     f"{replica.model_id if replica else '-':<14} "
                     f"{1 + seat.dedicated_streams if replica else 0:>4} "
                     f"{device.pool_streams(seat):>5.2f}")
            _say(f"{'':<10} {device.device:<8} {device.streams} streams, "
                 f"{device.shared_pool_streams} in the shared pool")
    _legend("own: streams serving that replica alone (its base stream and dedicated ones); "
            "pool: its part of the device's shared pool, in streams (weighted fair queueing "
            "on its pool weight).")


def _print_certificate(result: ClusterAllocation) -> None:
    cert = result.certificate
    _say()
    _say(f"{'tenant':<10} {'criterion':<11} {'alpha':>6} {'lambda':>6} {'holds':>5} "
         f"{'slack':>7} {'value':>7}")
    for name, a in cert.agents.items():
        slack = f"{a.slack:7.3f}" if a.slack is not None else "      -"
        lam = f"{a.lam:6.3f}" if a.lam is not None else "     -"
        _say(f"{name:<10} {a.criterion:<11} {a.alpha:6.3f} {lam} {_verdict(a.holds, a.lam):>5} "
             f"{slack} {a.normalised_value:7.3f}")
    _legend("alpha: the part of its value in whole seats (its criterion is relaxed by up to "
            "alpha of a seat); lambda: the least relaxation under which its criterion holds "
            "(0: exactly; -: not even at 1); holds: yes (exactly), relax (only relaxed) or NO; "
            "slack: the criterion's exact margin as a fraction of its total value (>= 0: "
            "holds); value: the fraction of its demand its bundle serves (normalised value).")
    ratio = f"{cert.ratio:.4f}" if cert.ratio is not None else "-"
    _say(f"\nobjective {cert.objective} = {cert.objective_value:.4f} "
         f"(ratio to unconstrained {ratio})")
    _say(f"solved by {cert.solver}: {cert.status} in {cert.time_s:.2f} s")
    for note in cert.notes:
        _say(f"note: {note}")
