"""Stdout belongs to the command: what a native library prints never mixes with the JSON.

The noisy "library" here writes to file descriptor 1 the three ways a real one can: a raw
``write(2)`` (HiGHS's banner), a buffered C ``printf`` without a newline that only leaves at a
flush, and Python's ``print``. Each test runs in a subprocess so that file descriptor 1 is a
real pipe, as it is for a user who pipes the command into ``jq``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

NOISY_LIBRARY = """
import ctypes, os
libc = ctypes.CDLL(None)

def make_noise():
    os.write(1, b"NATIVE-BANNER\\n")
    libc.printf(b"BUFFERED-PRINTF")
    print("PYTHON-PRINT")
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", NOISY_LIBRARY + code], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def assert_noise_on_stderr_only(out: subprocess.CompletedProcess[str]) -> None:
    for noise in ("NATIVE-BANNER", "BUFFERED-PRINTF", "PYTHON-PRINT"):
        assert noise not in out.stdout
        assert noise in out.stderr


def test_the_guard_sends_every_kind_of_noise_to_stderr() -> None:
    out = run_python("""
import json, sys
from gpufair.stdout_guard import stdout_reserved_for_result
with stdout_reserved_for_result() as result:
    make_noise()
    json.dump({"answer": 42}, result)
    result.write("\\n")
print("after the guard, stdout is stdout again")
""")
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert json.loads(first) == {"answer": 42}
    assert second == "after the guard, stdout is stdout again"
    assert_noise_on_stderr_only(out)


def test_the_noise_is_not_guarded_without_the_guard() -> None:
    """The fake is loud: unguarded, its noise does reach stdout (so the test above can fail)."""
    out = run_python("make_noise()\nimport sys; sys.stdout.flush(); libc.fflush(None)")
    assert "NATIVE-BANNER" in out.stdout and "BUFFERED-PRINTF" in out.stdout


def test_divide_prints_only_json_while_its_solver_is_noisy(tmp_path: Path) -> None:
    instance = tmp_path / "instance.json"
    instance.write_text(json.dumps({
        "agents": [{"name": "a"}, {"name": "b"}], "indivisible": ["seat"],
        "divisible": ["pool"], "values": {"a": {"seat": 1, "pool": 2}, "b": {"seat": 2}}}))
    out = run_python(f"""
import allocator.division
real_divide = allocator.division.divide

def noisy_divide(*args, **kwargs):
    make_noise()
    return real_divide(*args, **kwargs)

allocator.division.divide = noisy_divide
from gpufair.cli import main
raise SystemExit(main(["divide", {str(instance)!r}]))
""")
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    assert document["indivisible"] == {"seat": "b"}
    assert_noise_on_stderr_only(out)


def test_allocate_json_prints_only_json_while_its_solver_is_noisy() -> None:
    out = run_python("""
import allocator.cluster.allocate
real_allocate = allocator.cluster.allocate.allocate_cluster

def noisy_allocate(*args, **kwargs):
    make_noise()
    return real_allocate(*args, **kwargs)

allocator.cluster.allocate.allocate_cluster = noisy_allocate
from gpufair.cli import main
raise SystemExit(main(["allocate", "--json", "examples/cluster.toml"]))
""")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["certificate"]["agents"]
    assert_noise_on_stderr_only(out)


@pytest.mark.parametrize("command", [["divide", "examples/divide_design.json", "--indent", "2"],
                                     ["allocate", "examples/cluster.toml"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(command: list[str]) -> None:
    """`gpufair divide x.json | head`: the pipe closes before the result is written."""
    process = subprocess.Popen([sys.executable, "-m", "gpufair.cli", *command], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    errors = process.stderr.read().decode()
    assert process.wait(timeout=120) == 128 + signal.SIGPIPE
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors
