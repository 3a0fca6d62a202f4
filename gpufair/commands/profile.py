"""``gpufair profile``: measure the zoo's latency-bounded QPS against streams on this node.

Writes a profile file (:mod:`executor.profiles`), ``{arch: {"qps": [...], "measured": true,
"kind": "gpu"|"cpu", "device": ..., "sla_p99_ms": ..., "artifact": ...}}`` — one curve per zoo
architecture, ``qps[s-1]`` for s sessions — to ``--out`` or stdout; ``gpufair executor
--profiles FILE`` uploads it to the API with every plan. ``--compare-naive`` instead times the
structured forward against the naive one (user features copied onto every candidate row) on
four 270-candidate queries per model, taken in turn. ``--quick`` profiles tiny replicas with
short windows (under a minute for the whole zoo on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from allocator.cluster.snapshot import MAX_CURVE_POINTS
from executor.models import ARCHITECTURES, ZooError, ZooSpec
from executor.profiler import ProfileSettings, compare_forwards, profile_model
from executor.runtime import ModelLoadError, configure_cpu_threads, load_model, select_device
from gpufair.inputs import positive_number, whole_number

# p99 bounds for the scaled zoo on a CPU node; a GPU node or bigger scales want --sla-ms.
DEFAULT_SLA_MS = {"rmc1": 25.0, "rmc2": 50.0, "rmc3": 100.0, "wnd": 50.0, "din": 50.0}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufair profile",
        description="Measure the zoo's latency-bounded QPS against streams on this node.",
    )
    p.add_argument(
        "--models",
        default=",".join(ARCHITECTURES),
        help="comma-separated zoo architectures (default: all)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="table-row scale of every model (default 0.01; 0.002 with --quick)",
    )
    p.add_argument(
        "--user-tables",
        type=int,
        default=None,
        help="user-side tables (default: 7/8 of each model's tables)",
    )
    p.add_argument(
        "--sessions",
        # One curve point per session, and a curve holds at most MAX_CURVE_POINTS: a longer one
        # would be measured for minutes and then refused by every reader of the file.
        type=whole_number(1, MAX_CURVE_POINTS),
        default=None,
        help=f"profile s = 1..N sessions, 1 <= N <= {MAX_CURVE_POINTS} (default: CPU cores, "
        "or 4 on a GPU)",
    )
    p.add_argument(
        "--sla-ms",
        type=positive_number,
        default=None,
        help="p99 bound for every model, ms > 0 (default: each model's own)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--quick", action="store_true", help="tiny replicas, short windows")
    p.add_argument(
        "--compare-naive",
        action="store_true",
        help="time structured vs naive forward instead of profiling",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="write JSON to this file (default stdout)"
    )
    return p


def _fail(message: str) -> int:
    sys.stderr.write(f"gpufair profile: {message}\n")
    return 2


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if not models:
        # An empty list (an unset shell variable) would write a profile of no curves.
        return _fail(f"--models {args.models!r}: name at least one of {', '.join(ARCHITECTURES)}")
    unknown = [m for m in models if m not in ARCHITECTURES]
    if unknown:
        return _fail(f"unknown model {unknown[0]!r}; known: {', '.join(ARCHITECTURES)}")
    if args.out is not None:
        # Refused before anything is measured, not after a run of minutes.
        if args.out.is_dir():
            return _fail(f"--out {args.out}: is a directory; name a file")
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return _fail(f"--out {args.out}: cannot create {exc.filename}: {exc.strerror}")
    try:
        device = select_device(args.device)
    except (ModelLoadError, RuntimeError) as exc:
        return _fail(str(exc))
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        # Multi-session CPU serving: one intra-op thread per session (see executor.runtime).
        configure_cpu_threads(1)
    scale = args.scale if args.scale is not None else (0.002 if args.quick else 0.01)
    if args.sessions is not None:
        sessions = args.sessions
    else:
        sessions = cores if device.type == "cpu" else 4
    results: dict[str, object] = {}
    for arch in models:
        try:
            spec = ZooSpec(arch=arch, scale=scale, user_tables=args.user_tables)
            model = load_model(spec.artifact, device)
        except (ZooError, ModelLoadError) as exc:
            return _fail(str(exc))
        if args.compare_naive:
            results[arch] = compare_forwards(model, reps=5 if args.quick else 20)
            continue
        settings = ProfileSettings(
            sla_p99_ms=args.sla_ms if args.sla_ms is not None else DEFAULT_SLA_MS[arch],
            max_sessions=sessions,
            closed_s=0.3 if args.quick else 1.0,
            window_s=0.5 if args.quick else 2.0,
            refine=not args.quick,
        )
        results[arch] = profile_model(model, settings)
    text = json.dumps(results, indent=2)
    if args.out is None:
        sys.stdout.write(text + "\n")
        return 0
    try:
        args.out.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        return _fail(f"--out {args.out}: cannot write: {exc.strerror or exc}")
    return 0
