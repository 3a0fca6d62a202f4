"""``gpufair bench NAME [ARGS...]``: run one of gpufair's benchmarks (docs/architecture.md §5).

Each benchmark lives in ``bench/<name>.py`` with ``main(argv) -> int`` and writes its results
under ``bench/results/``. Modules are imported only when asked for, so the allocator benchmark
does not load torch and the serving benchmark does not load the solver.

SIGTERM (``kill``, a CI timeout, a supervisor) ends a benchmark as Ctrl-C does: by unwinding it,
so the servers, daemons and load clients it started are stopped by the blocks that started
them, instead of outliving it on a shared machine.
"""

from __future__ import annotations

import importlib
import signal
import sys
from types import FrameType

# name -> (module, one-line description shown by --help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "allocator": (
        "bench.allocator",
        "solve time vs tenants × GPUs, welfare, fairness violations of baselines",
    ),
    "serve": (
        "bench.serve",
        "latency-bounded throughput of the executor against baselines (--http: over the wire, "
        "against Ray Serve and a naive FastAPI server)",
    ),
    "api": ("bench.api", "control-plane API latency and throughput"),
    "gateway": (
        "bench.gateway",
        "gpufair gateway against direct calls (added latency, throughput), isolation through "
        "it with credentials, failover when a daemon dies",
    ),
}

# The shell's status for a command ended by SIGTERM (128 + 15).
TERMINATED = 128 + signal.SIGTERM

USAGE = "usage: gpufair bench {" + ",".join(BENCHMARKS) + "} [ARGS...]"


def _help() -> str:
    width = max(len(name) for name in BENCHMARKS)
    lines = [USAGE, "", "benchmarks:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in BENCHMARKS.items()]
    lines += ["", "Run 'gpufair bench NAME --help' for a benchmark's own options."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(_help() + "\n")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        sys.stderr.write(
            f"gpufair bench: unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}\n"
        )
        return 2
    module_name = BENCHMARKS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        sys.stderr.write(f"gpufair bench: benchmark {name!r} is not available ({module_name})\n")
        return 2
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return int(module.main(rest))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Unwind the benchmark (its ``with`` and ``finally`` blocks stop its children), then exit
    with the status a shell gives a command ended by SIGTERM."""
    raise SystemExit(TERMINATED)
