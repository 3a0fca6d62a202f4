"""``gpufair bench allocator``: solve time, welfare and fairness of gpufair's allocator at scale.

What it measures (docs/architecture.md §5), on the seeded cluster-like instances of
:mod:`bench.instances` (tenants × GPUs, 4 seats and one stream pool per GPU, mixed criteria):

* the wall time of :func:`allocator.divide` (the MILP path, certificate included) over a grid of
  tenants × GPUs, median over seeds, with the solver's status — where the MILP hits its time
  limit the allocator falls back to its constructive result, and that status is reported as is;
* the welfare ratio to the unconstrained optimum, read from the certificate;
* the fairness violations of the baselines of :mod:`bench.baselines` on the same instances —
  the number of agents whose own criterion fails and the worst slack, both per the one checker
  :func:`allocator.certify` — next to gpufair's own;
* the wall time of ``gpufair divide`` on a 64 × 64 instance file, process start included.

Each seed runs in a forked child process that reports its measurements as they come, so a size
that outgrows the machine is cut at a hard limit instead of stalling the run; larger sizes are
then skipped and say why. The whole run is bounded by ``--budget``. Results go to
``bench/results/allocator-<name>.{json,md,png}``: every measurement, a Markdown summary with the
exact command and the machine, and a plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import allocator
from bench.baselines import BASELINES
from bench.instances import (
    POOL_STREAMS,
    SEATS_PER_GPU,
    STREAMS_PER_GPU,
    cluster_instance,
)
from bench.machine import describe_machine, load_average, this_machine
from gpufair.compose import solve_options
from gpufair.inputs import positive_number, results_folder, whole_number
from gpufair.settings import SettingsError, load_settings

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FULL_GRID = (8, 16, 32, 64, 128, 256, 512)
QUICK_GRID = (8, 16, 32)
CLI_SIZE = (64, 64)  # the headline size: 64 tenants × 64 GPUs through `gpufair divide`


@dataclass(frozen=True)
class BenchConfig:
    name: str  # results are written to allocator-<name>.*
    tenants: tuple[int, ...]
    gpus: tuple[int, ...]
    seeds: int  # seeds 0 … seeds-1 per cell
    solver: Literal["highs", "cbc"]  # MILP backend passed to the allocator
    time_limit_s: float  # the allocator's own MILP time limit
    gap: float  # relative MIP gap
    hard_limit_s: float  # per seed (solve and baselines); the child is killed beyond it
    budget_s: float  # the whole run; cells not started within it are skipped
    cli_runs: int  # timed runs of `gpufair divide` on one instance file each
    cli_size: tuple[int, int]  # (tenants, GPUs) of those instances
    equal_weights: bool  # every tenant weight 1 instead of mixed weights
    out_dir: Path
    command: str  # the exact command line, recorded with the results


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be at least 1, got {text!r}")
    return values


def _size(text: str) -> tuple[int, int]:
    tenants, _, gpus = text.partition("x")
    try:
        size = (int(tenants), int(gpus))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TENANTSxGPUS, got {text!r}") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be at least 1, got {text!r}")
    return size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpufair bench allocator",
        description="Solve time vs tenants × GPUs, welfare ratio, and fairness violations of "
        "the baselines (equal split, round robin, water-filling) per gpufair's checker.",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help=f"small grid {QUICK_GRID} × {QUICK_GRID}, 2-minute budget (default: full grid "
        f"{FULL_GRID} × {FULL_GRID}, 20-minute budget)",
    )
    parser.add_argument("--tenants", type=_int_list, help="comma-separated tenant counts")
    parser.add_argument("--gpus", type=_int_list, help="comma-separated GPU counts")
    parser.add_argument("--seeds", type=whole_number(1), help="seeds per cell (default 3)")
    parser.add_argument("--solver", choices=("highs", "cbc"), help="MILP backend (settings)")
    parser.add_argument(
        "--time-limit", type=positive_number, help="MILP time limit in s (settings)"
    )
    parser.add_argument(
        "--hard-limit", type=positive_number, help="kill one seed's run after this many s"
    )
    parser.add_argument("--budget", type=positive_number, help="bound on the whole run in s")
    parser.add_argument(
        "--cli-runs", type=whole_number(0), help="timed `gpufair divide` runs (3, quick 1)"
    )
    parser.add_argument(
        "--cli-size", type=_size, default=CLI_SIZE,
        help="TENANTSxGPUS of the `gpufair divide` instances (default 64x64)",
    )
    parser.add_argument(
        "--equal-weights", action="store_true",
        help="give every tenant weight 1 (default: mixed weights 1, 2, 4)",
    )
    parser.add_argument("--name", help="results file stem allocator-NAME (default quick/full)")
    parser.add_argument(
        "--out", type=results_folder, default=RESULTS_DIR, help="results directory"
    )
    return parser


def _config(argv: list[str]) -> BenchConfig:
    parser = _parser()
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    seeds = args.seeds if args.seeds is not None else 3
    cli_runs = args.cli_runs if args.cli_runs is not None else (1 if quick else 3)
    try:
        options = solve_options(
            load_settings().allocator, solver=args.solver, time_limit_s=args.time_limit
        )
    except SettingsError as exc:
        parser.error(str(exc))
    time_limit = options.time_limit_s
    return BenchConfig(
        name=args.name or ("quick" if quick else "full"),
        tenants=args.tenants or (QUICK_GRID if quick else FULL_GRID),
        gpus=args.gpus or (QUICK_GRID if quick else FULL_GRID),
        seeds=seeds,
        solver=options.solver,
        time_limit_s=time_limit,
        gap=options.gap,
        hard_limit_s=args.hard_limit or max(3.0 * time_limit, time_limit + 20.0),
        budget_s=args.budget or (110.0 if quick else 1140.0),
        cli_runs=cli_runs,
        cli_size=args.cli_size,
        equal_weights=bool(args.equal_weights),
        out_dir=args.out,
        command=shlex.join(["gpufair", "bench", "allocator", *argv]),
    )


# --- reading the certificate -------------------------------------------------------------------


def _fairness(certificate: allocator.Certificate) -> dict[str, Any]:
    """Violations (agents whose criterion does not hold exactly), those failing even at
    λ = 1, the guaranteed agents (allocator.guarantee) and how many of them fail, the worst
    exact slack, and the relaxations λ."""
    rows = list(certificate.agents.values())
    lambdas = [row.lam for row in rows if row.lam is not None]
    slacks = [float(row.slack) for row in rows if row.slack is not None]
    slacks = [s for s in slacks if math.isfinite(s)]
    guaranteed = [row for row in rows if row.guaranteed]
    return {
        "agents": len(rows),
        "violations": sum(1 for row in rows if not row.holds),
        "failing_at_one": certificate.violations,
        "guaranteed": len(guaranteed),
        "guaranteed_failing": sum(1 for row in guaranteed if not row.holds),
        "worst_slack": min(slacks) if slacks else None,
        "relaxed_agents": sum(1 for lam in lambdas if lam > 0),
        "max_lambda": max(lambdas, default=0.0),
    }


def _welfare(certificate: allocator.Certificate) -> dict[str, Any]:
    ratio = certificate.ratio
    value = certificate.objective_value
    return {
        "objective_value": value if math.isfinite(value) else None,
        "welfare_ratio": None if ratio is None else float(ratio),
    }


# --- one seed, in forked children -------------------------------------------------------------


def _solve(instance: allocator.Instance, config: BenchConfig, conn: Connection) -> None:
    """Child process: gpufair's ``divide`` (MILP path, certified) on the instance."""
    options = allocator.SolveOptions(
        solver=config.solver, time_limit_s=config.time_limit_s, gap=config.gap
    )
    start = time.perf_counter()
    division = allocator.divide(instance, options)
    wall = time.perf_counter() - start
    certificate = division.certificate
    conn.send((
        "gpufair",
        {
            "solve_s": wall,
            "status": str(certificate.status),
            "solver": str(certificate.solver),
            "gap": certificate.gap,
            "certificate_time_s": certificate.time_s,
            "unconstrained_value": certificate.unconstrained_value,
            **_welfare(certificate),
            **_fairness(certificate),
        },
    ))


def _baselines(
    instance: allocator.Instance, unconstrained_value: float | None, conn: Connection
) -> None:
    """Child process: every baseline, validated and certified by gpufair's one checker.

    ``unconstrained_value`` is the optimum without fairness from gpufair's own certificate of
    the same instance, so that the baselines' welfare ratios share its denominator.
    """
    for name, baseline in BASELINES.items():
        start = time.perf_counter()
        allocation = baseline(instance)
        build_s = time.perf_counter() - start
        allocator.validate_allocation(instance, allocation)
        start = time.perf_counter()
        certificate = allocator.certify(
            instance, allocation, unconstrained_value=unconstrained_value, solver=name
        )
        conn.send((
            name,
            {
                "build_s": build_s,
                "certify_s": time.perf_counter() - start,
                **_welfare(certificate),
                **_fairness(certificate),
            },
        ))


def _child(task: Callable[[Connection], None], conn: Connection) -> None:
    try:
        task(conn)
        conn.send(("done",))
    except Exception as exc:  # noqa: BLE001 - any failure is a measurement to report
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _in_child(
    task: Callable[[Connection], None], config: BenchConfig, deadline: float
) -> tuple[str, dict[str, Any], str | None]:
    """Run ``task`` in a forked child for at most the hard limit (and the run's deadline).

    Returns how it ended (``complete``, ``hard_limit``, ``run_budget`` or ``error``), the
    measurements it sent before that, and the error text. The fork hands the task (and the
    instance it holds) to the child without pickling, and a child past its limit is killed,
    never waited for.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(task, sender))
    hard_end = time.monotonic() + config.hard_limit_s
    end = min(hard_end, deadline)
    process.start()
    sender.close()
    measurements: dict[str, Any] = {}
    try:
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0 or not receiver.poll(remaining):
                return ("hard_limit" if end == hard_end else "run_budget"), measurements, None
            try:
                message = receiver.recv()
            except EOFError:
                return "error", measurements, f"child exited with code {process.exitcode}"
            if message[0] == "done":
                return "complete", measurements, None
            if message[0] == "error":
                return "error", measurements, message[1]
            measurements[message[0]] = message[1]
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receiver.close()


def _run_seed(
    tenants: int,
    gpus: int,
    seed: int,
    config: BenchConfig,
    deadline: float,
    skip: dict[str, str | None],
) -> dict:
    """One instance: gpufair's solve, then the baselines, each in its own child.

    ``skip`` maps ``"solve"`` and ``"baselines"`` to a reason for not running that part.
    """
    start = time.perf_counter()
    instance = cluster_instance(tenants, gpus, seed, equal_weights=config.equal_weights)
    record: dict[str, Any] = {
        "tenants": tenants,
        "gpus": gpus,
        "seed": seed,
        "generate_s": time.perf_counter() - start,
        "gpufair": None,
        "outcome": "skipped",
        "error": skip["solve"],
        "baselines": {},
        "baselines_outcome": "skipped",
        "baselines_error": skip["baselines"],
    }
    if skip["solve"] is None:
        outcome, measured, error = _in_child(
            lambda conn: _solve(instance, config, conn), config, deadline
        )
        record.update(gpufair=measured.get("gpufair"), outcome=outcome, error=error)
    if skip["baselines"] is None:
        unconstrained = (record["gpufair"] or {}).get("unconstrained_value")
        outcome, measured, error = _in_child(
            lambda conn: _baselines(instance, unconstrained, conn), config, deadline
        )
        record.update(baselines=measured, baselines_outcome=outcome, baselines_error=error)
    record["wall_s"] = time.perf_counter() - start
    return record


# --- `gpufair divide` as a user runs it --------------------------------------------------------


def _gpufair_executable() -> list[str]:
    script = Path(sys.executable).with_name("gpufair")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gpufair.cli"]


def _run_cli(config: BenchConfig, deadline: float) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    tenants, gpus = config.cli_size
    env = dict(os.environ, GPUFAIR_ALLOCATOR_SOLVER=config.solver,
               GPUFAIR_ALLOCATOR_TIME_LIMIT_S=str(config.time_limit_s))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(config.cli_runs):
            remaining = deadline - time.monotonic()
            if remaining < config.hard_limit_s / 2:
                log.info("gpufair divide %d×%d: skipped, run budget spent", tenants, gpus)
                break
            path = Path(tmp) / f"instance-{tenants}x{gpus}-{seed}.json"
            instance = cluster_instance(tenants, gpus, seed, equal_weights=config.equal_weights)
            path.write_text(json.dumps(allocator.instance_to_dict(instance)))
            command = [*_gpufair_executable(), "divide", str(path)]
            start = time.perf_counter()
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True,
                    timeout=min(config.hard_limit_s, remaining), check=False, env=env,
                )
            except subprocess.TimeoutExpired:
                runs.append({"seed": seed, "wall_s": None, "rc": None, "outcome": "hard_limit"})
                break
            wall = time.perf_counter() - start
            run: dict[str, Any] = {"seed": seed, "wall_s": wall, "rc": done.returncode}
            if done.returncode == 0:
                output = json.loads(done.stdout)
                certificate = output.get("certificate", {})
                rows = certificate.get("agents", {}).values()
                run["status"] = certificate.get("status")
                run["violations"] = sum(1 for row in rows if not row.get("holds"))
                run["guaranteed_failing"] = sum(
                    1 for row in rows if row.get("guaranteed") and not row.get("holds"))
                run["outcome"] = "complete"
            else:
                run["outcome"] = "error"
                run["error"] = done.stderr.strip().splitlines()[-1:] or [""]
            log.info("gpufair divide %d×%d seed %d: %.2f s, rc %d",
                     tenants, gpus, seed, wall, done.returncode)
            runs.append(run)
    return runs


# --- the grid ----------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _summarise_cell(tenants: int, gpus: int, records: list[dict], skipped: str | None) -> dict:
    solved = [r["gpufair"] for r in records if r["gpufair"] is not None]
    statuses: dict[str, int] = {}
    for r in records:
        if r["gpufair"] is not None:
            key = r["gpufair"]["status"]
        elif r["outcome"] == "error":
            key = f"error ({str(r['error']).split(':', 1)[0]})"
        else:
            key = r["outcome"]
        statuses[key] = statuses.get(key, 0) + 1
    cell: dict[str, Any] = {
        "tenants": tenants,
        "gpus": gpus,
        "seats": gpus * SEATS_PER_GPU,
        "pools": gpus,
        "seeds_run": len(records),
        "skipped": skipped,
        "gpufair": {
            "solved": len(solved),
            "solve_s_median": _median([s["solve_s"] for s in solved]),
            "solve_s_max": max((s["solve_s"] for s in solved), default=None),
            "statuses": statuses,
            "welfare_ratio_median": _median(
                [s["welfare_ratio"] for s in solved if s["welfare_ratio"] is not None]
            ),
            "violations_max": max((s["violations"] for s in solved), default=None),
            "failing_at_one_max": max((s["failing_at_one"] for s in solved), default=None),
            "guaranteed_max": max((s["guaranteed"] for s in solved), default=None),
            "guaranteed_failing_max": max((s["guaranteed_failing"] for s in solved),
                                          default=None),
            "relaxed_agents_max": max((s["relaxed_agents"] for s in solved), default=None),
            "max_lambda": max((s["max_lambda"] for s in solved), default=None),
        },
        "baselines": {},
    }
    for name in BASELINES:
        runs = [r["baselines"][name] for r in records if name in r["baselines"]]
        slacks = [b["worst_slack"] for b in runs if b["worst_slack"] is not None]
        cell["baselines"][name] = {
            "measured": len(runs),
            "violations_median": _median([b["violations"] for b in runs]),
            "violations_max": max((b["violations"] for b in runs), default=None),
            "worst_slack": min(slacks, default=None),
            "welfare_ratio_median": _median(
                [b["welfare_ratio"] for b in runs if b["welfare_ratio"] is not None]
            ),
        }
    return cell


def _run_grid(config: BenchConfig, deadline: float) -> tuple[list[dict], list[dict]]:
    """Every cell once (seed 0, smallest first), then the other seeds while the budget lasts.

    Seed 0 across the whole grid first means a tight budget still covers every size, and the
    further seeds give the medians where time allows; each cell reports how many seeds ran.
    """
    sizes = sorted(
        ((t, g) for t in config.tenants for g in config.gpus), key=lambda c: (c[0] * c[1], c)
    )
    records: dict[tuple[int, int], list[dict]] = {size: [] for size in sizes}
    skipped: dict[tuple[int, int], str] = {}
    # Sizes at which a part (the solve or the baselines) hit the hard limit: that part is not
    # run again at this size or any larger one.
    exceeded: dict[str, list[tuple[int, int]]] = {"solve": [], "baselines": []}
    for seed in range(config.seeds):
        for tenants, gpus in sizes:
            if (tenants, gpus) in skipped:
                continue
            skip: dict[str, str | None] = {}
            for part, sizes_over in exceeded.items():
                smaller = [(t, g) for t, g in sizes_over if t <= tenants and g <= gpus]
                skip[part] = (
                    f"{smaller[0][0]}×{smaller[0][1]} already exceeded the hard limit"
                    if smaller else None
                )
            if time.monotonic() >= deadline:
                skip = dict.fromkeys(skip, f"run budget of {config.budget_s:.0f} s spent")
            if all(reason is not None for reason in skip.values()):
                if not records[(tenants, gpus)]:
                    skipped[(tenants, gpus)] = "; ".join(sorted({str(r) for r in skip.values()}))
                    log.info("%d tenants × %d GPUs: skipped", tenants, gpus)
                continue
            record = _run_seed(tenants, gpus, seed, config, deadline, skip)
            records[(tenants, gpus)].append(record)
            solve = record["gpufair"]
            log.info(
                "%d tenants × %d GPUs seed %d: divide %s, baselines %s, %.1f s in all",
                tenants, gpus, seed,
                f"{solve['solve_s']:.2f} s ({solve['status']})" if solve else record["outcome"],
                record["baselines_outcome"], record["wall_s"],
            )
            for error in (record["error"], record["baselines_error"]):
                if error:
                    log.warning("%d × %d seed %d: %s", tenants, gpus, seed, error)
            if record["outcome"] == "hard_limit":
                exceeded["solve"].append((tenants, gpus))
            if record["baselines_outcome"] == "hard_limit":
                exceeded["baselines"].append((tenants, gpus))
    cells = [_summarise_cell(t, g, records[(t, g)], skipped.get((t, g))) for t, g in sizes]
    return [r for size in sizes for r in records[size]], cells


# --- the report --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def _markdown(result: dict[str, Any]) -> str:
    config, machine = result["config"], result["machine"]
    lines = [
        f"# Allocator benchmark ({config['name']})",
        "",
        f"Command: `{config['command']}`  ",
        f"{describe_machine(machine)}  ",
        f"Run: {result['started']}, {result['duration_s']:.0f} s in all; solver "
        f"{config['solver']}, MILP time limit {config['time_limit_s']:g} s, gap "
        f"{config['gap']:g}, hard limit {config['hard_limit_s']:g} s per seed, "
        f"{config['seeds']} seeds per cell; tenant weights "
        f"{'all 1' if config['equal_weights'] else 'mixed (1, 2, 4)'}.",
        "",
        "Absolute times are for this machine only, and the machine is shared with other work "
        "while the benchmark runs (see the load averages): compare sizes within this run, not "
        "with numbers from elsewhere.",
        "",
        f"Instances: `bench/instances.py` — each GPU gives {SEATS_PER_GPU} seats (indivisible) "
        f"and one pool of {POOL_STREAMS} of its {STREAMS_PER_GPU} streams (divisible); mixed "
        "criteria; values from saturating throughput curves.",
        "",
        "## gpufair: `divide` (guarantee layer, search, certificate included)",
        "",
        "Solve time is the wall time of `allocator.divide`, median (max) over seeds. Status "
        "counts seeds by the certificate's status (or by how the run ended). Guaranteed "
        "failing: agents whose criterion the guarantees table promises (docs/fairness.md) but "
        "does not hold exactly, of the guaranteed agents (max over seeds; must be 0). Not "
        "exact: agents whose criterion does not hold exactly (max over seeds), of which fail "
        "even at λ = 1; relaxed agents are those that hold only with λ > 0. Previous: the "
        "same cell of the run this one replaced (its median solve time and welfare ratio; its "
        "violations counted agents failing at the reported λ).",
        "",
        "| tenants | GPUs | seats + pools | solve s median (max) | status | welfare ratio "
        "| guaranteed failing (of) | not exact (at λ=1) | relaxed (max λ) "
        "| previous solve s | previous welfare | previous violations |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    previous = {(c["tenants"], c["gpus"]): c["gpufair"] for c in result.get("previous", [])}
    for cell in result["cells"]:
        g = cell["gpufair"]
        if cell["skipped"]:
            status = f"skipped: {cell['skipped']}"
        else:
            status = ", ".join(f"{k} ×{v}" for k, v in sorted(g["statuses"].items()))
        relaxed = (
            "–" if g["relaxed_agents_max"] is None
            else f"{g['relaxed_agents_max']} ({g['max_lambda']:.3f})"
        )
        before = previous.get((cell["tenants"], cell["gpus"]), {})
        lines.append(
            f"| {cell['tenants']} | {cell['gpus']} | {cell['seats']} + {cell['pools']} "
            f"| {_fmt(g['solve_s_median'])} ({_fmt(g['solve_s_max'])}) | {status} "
            f"| {_fmt(g['welfare_ratio_median'], 4)} "
            f"| {_count(g.get('guaranteed_failing_max'))} ({_count(g.get('guaranteed_max'))}) "
            f"| {_count(g['violations_max'])} ({_count(g.get('failing_at_one_max'))}) "
            f"| {relaxed} | {_fmt(before.get('solve_s_median'))} "
            f"| {_fmt(before.get('welfare_ratio_median'), 4)} "
            f"| {_count(before.get('violations_max'))} |"
        )
    names = list(BASELINES)
    lines += [
        "",
        "## Fairness violations of the baselines (per `allocator.certify`)",
        "",
        "Each entry: agents whose own criterion fails, median over seeds (of n tenants) / the "
        "worst slack over seeds (negative = violated) / median welfare ratio. gpufair's column "
        "is the max over seeds.",
        "",
        "| tenants | GPUs | gpufair | " + " | ".join(names) + " |",
        "|---:|---:|---:|" + "---|" * len(names),
    ]
    for cell in result["cells"]:
        if cell["skipped"] or not cell["seeds_run"]:
            continue
        entries = []
        for name in names:
            b = cell["baselines"][name]
            if not b["measured"]:
                entries.append("–")
                continue
            entries.append(
                f"{b['violations_median']:g} / {_fmt(b['worst_slack'], 3)} "
                f"/ {_fmt(b['welfare_ratio_median'], 3)}"
            )
        gv = cell["gpufair"]["violations_max"]
        lines.append(
            f"| {cell['tenants']} | {cell['gpus']} | {'–' if gv is None else gv} | "
            + " | ".join(entries) + " |"
        )
    cli = result["cli"]
    cli_tenants, cli_gpus = config["cli_size"]
    lines += ["", f"## `gpufair divide` on {cli_tenants} tenants × {cli_gpus} GPUs", ""]
    if cli:
        lines += [
            "Wall time of the whole command (process start, JSON in, solve, certificate, JSON "
            "out), one instance file per seed.",
            "",
            "| seed | wall s | exit | status | not exact | guaranteed failing |",
            "|---:|---:|---:|---|---:|---:|",
        ]
        for run in cli:
            lines.append(
                f"| {run['seed']} | {_fmt(run.get('wall_s'))} | {run.get('rc', '–')} "
                f"| {run.get('status') or run['outcome']} {' '.join(run.get('error', []))} "
                f"| {run.get('violations', '–')} | {run.get('guaranteed_failing', '–')} |"
            )
    else:
        lines.append("Not run (`--cli-runs 0` or the run budget was spent).")
    lines += ["", f"Plot: `allocator-{config['name']}.png`; every measurement: "
              f"`allocator-{config['name']}.json`.", ""]
    return "\n".join(lines)


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    config = result["config"]
    tenants, gpus = config["tenants"], config["gpus"]
    times = np.full((len(tenants), len(gpus)), np.nan)
    labels = np.full(times.shape, "skip", dtype=object)
    for cell in result["cells"]:
        i, j = tenants.index(cell["tenants"]), gpus.index(cell["gpus"])
        median = cell["gpufair"]["solve_s_median"]
        statuses = cell["gpufair"]["statuses"]
        if median is not None:
            times[i, j] = median
            labels[i, j] = f"{median:.2g}" + ("*" if any(k != "optimal" for k in statuses) else "")
        elif statuses:
            labels[i, j] = "cut"

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    norm = None
    if np.isfinite(times).any():
        low, high = max(float(np.nanmin(times)), 1e-3), max(float(np.nanmax(times)), 1e-3)
        norm = matplotlib.colors.LogNorm(vmin=low, vmax=max(high, low * 1.01))
    image = left.imshow(np.ma.masked_invalid(times), origin="lower", cmap="viridis", norm=norm)
    left.set_xticks(range(len(gpus)), [str(g) for g in gpus])
    left.set_yticks(range(len(tenants)), [str(t) for t in tenants])
    left.set_xlabel("GPUs (4 seats + 1 stream pool each)")
    left.set_ylabel("tenants")
    left.set_title("gpufair divide: median solve time (s)\n* = some seed not optimal "
                   "(time limit, fallback); cut = killed at hard limit", fontsize=10)
    for i in range(len(tenants)):
        for j in range(len(gpus)):
            # Dark text on the bright end of viridis and on empty cells, light text elsewhere.
            bright = np.isnan(times[i, j]) or (norm is not None and norm(times[i, j]) > 0.6)
            left.text(j, i, labels[i, j], ha="center", va="center", fontsize=8,
                      color="black" if bright else "white")
    figure.colorbar(image, ax=left, label="seconds")

    def violations(cell: dict[str, Any], label: str) -> float | None:
        if label == "gpufair":
            return cell["gpufair"]["violations_max"]
        return cell["baselines"][label]["violations_median"]

    for label in ("gpufair", *BASELINES):
        fractions = []
        for t in tenants:
            counts = [violations(c, label) for c in result["cells"] if c["tenants"] == t]
            values = [count / t for count in counts if count is not None]
            fractions.append(statistics.median(values) if values else np.nan)
        right.plot(tenants, fractions, marker="o", label=label)
    right.set_xscale("log", base=2)
    right.set_xticks(tenants, [str(t) for t in tenants])
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("tenants")
    right.set_ylabel("fraction of tenants whose criterion fails")
    right.set_title("fairness violations per certify\n(median over GPU counts and seeds)",
                    fontsize=10)
    right.legend()
    right.grid(alpha=0.3)
    figure.suptitle(
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores (shared); "
        f"{config['command']}", fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _previous_cells(path: Path) -> list[dict[str, Any]]:
    """The cells of the run this one replaces (its JSON), to print beside the new figures;
    none when there is no such file or it cannot be read."""
    try:
        return list(json.loads(path.read_text())["cells"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def run(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark, write allocator-<name>.{json,md,png} and return the result."""
    started = time.monotonic()
    deadline = started + config.budget_s
    result: dict[str, Any] = {
        "benchmark": "allocator",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": {**asdict(config), "out_dir": str(config.out_dir)},
        "machine": this_machine(("pulp", "highspy", "numpy")),
    }
    # The `gpufair divide` runs come first: they measure the headline size and must not
    # be squeezed out by a grid that spends the budget.
    result["cli"] = _run_cli(config, deadline) if config.cli_runs else []
    records, cells = _run_grid(config, deadline)
    result["runs"] = records
    result["cells"] = cells
    result["duration_s"] = time.monotonic() - started
    result["machine"]["load_average_end"] = load_average()

    config.out_dir.mkdir(parents=True, exist_ok=True)
    stem = config.out_dir / f"allocator-{config.name}"
    result["previous"] = _previous_cells(stem.with_suffix(".json"))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(_markdown(result))
    _plot(result, stem.with_suffix(".png"))
    log.info("wrote %s.{json,md,png} in %.0f s", stem, result["duration_s"])
    return result


def main(argv: list[str]) -> int:
    try:
        config = _config(argv)
    except SystemExit as exc:  # argparse has printed its one-line error or the help
        return int(exc.code or 0)
    result = run(config)
    print(f"allocator benchmark: {len(result['runs'])} runs in {result['duration_s']:.0f} s; "
          f"results in {config.out_dir / ('allocator-' + config.name)}.{{json,md,png}}")
    return 0
