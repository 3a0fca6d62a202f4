"""The machine a benchmark ran on, as every results file under ``bench/results/`` records it.

An absolute time holds only for the machine it was measured on (docs/benchmarks.md), so each
benchmark writes the same description into its JSON and one sentence of it into its Markdown:
CPU model, cores, memory, OS, Python and the versions of the packages it measures, and the load
average (the machine is shared; the load says how quiet it was).
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first ``key:`` line of a /proc file, or None off Linux."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (zeros where the OS has none)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return [round(x, 2) for x in load]


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) the process ``pid`` has used so far, or None off Linux."""
    try:
        # The fields after the command name, which is in parentheses and may hold spaces.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds the process ``pid`` and its live descendants have used so far (a server
    that serves from worker processes), or None off Linux."""
    own = process_cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(process_tree_cpu_seconds(child) or 0.0 for child in _children(pid))


def _children(pid: int) -> list[int]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    children: list[int] = []
    for task in tasks:
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def this_machine(packages: Sequence[str] = ()) -> dict[str, Any]:
    """This machine, with the installed versions of ``packages`` (a missing one is left out)
    and the load average now as ``load_average_start``."""
    memory_kb = _proc_field("/proc/meminfo", "MemTotal:")
    versions: dict[str, str] = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name")
        or platform.processor()
        or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(int(memory_kb.split()[0]) / 1024**2, 1) if memory_kb else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "load_average_start": load_average(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    """One Markdown sentence of a :func:`this_machine` record (with ``load_average_end`` where the
    benchmark added it at its end)."""
    memory = f", {info['memory_gb']} GB" if info["memory_gb"] is not None else ""
    parts = [
        f"{info['cpu']}, {info['cores']} cores{memory}",
        info["platform"],
        f"Python {info['python']}",
        *(f"{name} {v}" for name, v in info["packages"].items()),
    ]
    load = "load average at start " + ", ".join(f"{x:.2f}" for x in info["load_average_start"])
    if "load_average_end" in info:
        load += ", at end " + ", ".join(f"{x:.2f}" for x in info["load_average_end"])
    return f"Machine: {'; '.join(parts)}; {load}."


@contextmanager
def session_niceness(autogroup: Path = AUTOGROUP) -> Iterator[int | None]:
    """For the block's duration, give this process's session the process's own niceness; yields
    the session's niceness in effect (None where the kernel has no autogroups or refused).

    With the kernel's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, on by
    default), the CPU is shared between *sessions* first, and a nice value weighs a process only
    against the others of its own session: under ``nice -n -10`` a benchmark's servers and load
    clients still had only half of the shared 2-core VM while another session's test suite ran
    (a ``pytest`` there took 0.95 cores beside the daemon). A session's own nice value (its
    autogroup's) is what weighs it against the others, so a benchmark run at a niceness below
    its session's lends the session that niceness while it runs, and gives back the old one.
    """
    own = os.nice(0)
    try:
        before = int(autogroup.read_text().split("nice")[1])
    except (OSError, IndexError, ValueError):
        yield None
        return
    if own >= before:
        yield before
        return
    try:
        autogroup.write_text(f"{own}\n")
    except OSError as exc:  # lowering it needs CAP_SYS_NICE
        log.warning(
            "this session's niceness stays %d (%s): other sessions share the CPU", before, exc
        )
        yield before
        return
    try:
        yield own
    finally:
        try:
            autogroup.write_text(f"{before}\n")
        except OSError as exc:
            log.warning("could not give this session its niceness %d back: %s", before, exc)
