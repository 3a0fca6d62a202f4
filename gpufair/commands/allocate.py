"""``gpufair allocate CLUSTER.toml|json``: allocate a cluster and print the node plans.

Reads a cluster description (tenants, GPUs, models with throughput curves; see
examples/cluster.toml), runs ``allocator.allocate_cluster`` and prints a readable table per
GPU and the fairness certificate per tenant, or the whole allocation as JSON with ``--json``.
Settings come from ``[allocator]``, overridden by the flags; bad input ends as one line on
stderr and a non-zero exit. Whatever a solver library prints during the solve goes to stderr
(gpufair.stdout_guard), so stdout holds the table or the JSON alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from gpufair.compose import add_solve_flags, flagged_solve_options
from gpufair.stdout_guard import stdout_reserved_for_result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpufair allocate",
        description="Fairly allocate a cluster's GPU seats and streams among tenants and print "
        "the plan of every node.",
    )
    parser.add_argument("cluster", help="cluster file, TOML or JSON (see examples/cluster.toml)")
    parser.add_argument("--json", action="store_true", help="print the allocation as JSON")
    add_solve_flags(parser)
    parser.add_argument("--churn-limit", type=int, metavar="K",
                        help="(with --previous) at most K seat moves from the previous plans")
    parser.add_argument("--previous", metavar="PLANS.json",
                        help="JSON object node -> plan of the previous allocation")
    return parser


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"gpufair allocate: {message}\n")
    return code


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _load(path: str) -> Any:
    text = Path(path).read_text()
    if path.endswith(".toml"):
        return tomllib.loads(text)
    return json.loads(text)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from allocator.cluster.documents import snapshot_from_dict
    from allocator.cluster.plan import NodePlan, PlanError
    from allocator.errors import AllocatorError, InstanceError
    from gpufair.settings import SettingsError, load_settings

    try:
        doc = _load(args.cluster)
        previous = None
        if args.previous:
            previous = {n: NodePlan.from_dict(p) for n, p in _load(args.previous).items()}
    except OSError as exc:
        return _fail(f"cannot read {exc.filename}: {exc.strerror}", 2)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        return _fail(f"invalid file: {exc}", 2)
    except PlanError as exc:
        return _fail(f"{args.previous}: {exc}", 2)
    try:
        settings = load_settings().allocator
        snapshot = snapshot_from_dict(doc)
        options = flagged_solve_options(settings, args, churn_limit=args.churn_limit)
    except (SettingsError, InstanceError) as exc:
        return _fail(str(exc), 2)
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
    _say(f"{'node':<10} {'device':<8} {'seat':>4}  {'tenant':<12} {'model':<14} "
          f"{'dedicated':>9} {'pool w':>7}")
    for node, plan in result.plans.items():
        for device in plan.devices:
            for seat in device.seats:
                replica = seat.replica
                _say(f"{node:<10} {device.device:<8} {seat.seat:>4}  "
                      f"{replica.tenant if replica else '-':<12} "
                      f"{replica.model_id if replica else '-':<14} "
                      f"{seat.dedicated_streams:>9} {seat.pool_weight:>7.3f}")
            _say(f"{'':<10} {device.device:<8} streams {device.streams}, "
                  f"shared pool {device.shared_pool_streams}")
    cert = result.certificate
    _say()
    _say(f"{'tenant':<12} {'criterion':<11} {'alpha':>6} {'lambda':>6} {'holds':>5} "
          f"{'slack':>7} {'value':>7}")
    for name, a in cert.agents.items():
        slack = f"{a.slack:7.3f}" if a.slack is not None else "      -"
        lam = f"{a.lam:6.3f}" if a.lam is not None else "     -"
        _say(f"{name:<12} {a.criterion:<11} {a.alpha:6.3f} {lam} {str(a.holds):>5} "
              f"{slack} {a.normalised_value:7.3f}")
    ratio = f"{cert.ratio:.4f}" if cert.ratio is not None else "-"
    _say(f"\nobjective {cert.objective} = {cert.objective_value:.4f} "
          f"(ratio to unconstrained {ratio}), {cert.solver} {cert.status}, {cert.time_s:.2f} s")
    for note in cert.notes:
        _say(f"note: {note}")
    return 0
