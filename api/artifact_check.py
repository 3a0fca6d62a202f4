"""An uploaded artifact is accepted only after it loaded and served a probe, in a sandbox.

A tenant's TorchScript file reaches every node whose plan seats it, so the API loads it first
— not in its own process, which must never run a tenant's code or spend its memory, but in a
child process (``python -I -m api.artifact_check PATH MEMORY_MB CPU_S``) that:

- sets its own limits before importing torch: address space ``memory_mb`` (RLIMIT_AS), CPU
  time (RLIMIT_CPU), no file it may write (RLIMIT_FSIZE 0), and sees no GPU
  (``CUDA_VISIBLE_DEVICES=""``), one intra-op thread, a minimal environment and ``-I``
  (no user site, no ``PYTHON*`` variables);
- loads the archive with the executor's own loader, ``executor.runtime.load_model("file:…",
  "cpu")``: ``torch.jit.load`` (TorchScript's restricted unpickler, which rebuilds TorchScript
  types and tensors only — the ``weights_only``-style safety: no arbitrary Python object is
  unpickled, no Python code of the archive runs), the schema member, the forward's arity, and
  a probe batch whose scores must be (N,) finite floats;
- prints one JSON line, ``{"ok": true, "memory_mb": …}`` or ``{"error": "…"}``.

The parent waits at most ``timeout_s`` of wall time and kills it after; a kill by a limit
(SIGKILL, SIGXCPU) or a crash is a refusal too. So an upload is accepted only when the very
loader the daemon uses would load it, within the limits; anything else is a 422 quoting the
reason in one line. Zip-shaped junk (10 MiB of ``PK\\x03\\x04`` and zeros), a module whose
forward allocates without bound, loops forever or crashes are all refused this way.

At most :data:`CONCURRENT_CHECKS` checks run at once per API process (each is a torch
process of a few hundred MB); an upload that waits longer than the timeout for its turn gets
503 with ``Retry-After``. The check holds no database slot or transaction while it runs.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from api.errors import InvalidInput, Unavailable

CONCURRENT_CHECKS = 2
# The child's environment: nothing of the API's (its secrets included) but what Python needs.
_ENV_KEPT = ("PATH", "LANG", "LC_ALL", "TMPDIR")
_REASON_CHARS = 500


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int  # address space of the checking process
    timeout_s: float  # wall time of the whole check; CPU time is bounded by it too


def _env() -> dict[str, str]:
    kept = {k: os.environ[k] for k in _ENV_KEPT if k in os.environ}
    return {**kept, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def check_artifact(data: bytes, limits: SandboxLimits) -> float:
    """Load ``data`` in the sandbox; return the loaded model's memory in MB, or raise
    InvalidInput (field ``body``) with the reason (blocking: run it in a worker thread)."""
    with tempfile.TemporaryDirectory(prefix="gpufair-artifact-") as folder:
        path = Path(folder) / "artifact.pt"
        path.write_bytes(data)
        command = [
            sys.executable, "-I", "-B", "-m", "api.artifact_check",
            str(path), str(limits.memory_mb), str(math.ceil(limits.timeout_s)),
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=limits.timeout_s,
                env=_env(),
                cwd=folder,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _refused(
                f"it did not load and serve a probe within {limits.timeout_s:g} s"
            ) from None
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        verdict = {}
    if done.returncode == 0 and verdict.get("ok") is True:
        return float(verdict.get("memory_mb", 0.0))
    if "error" in verdict:
        raise _refused(str(verdict["error"]))
    if done.returncode < 0:
        raise _refused(
            f"the check was killed by signal {-done.returncode} (over its limits of "
            f"{limits.memory_mb} MB and {limits.timeout_s:g} s?)"
        )
    tail = done.stderr.decode(errors="replace").strip().splitlines()
    raise _refused(f"the check failed: {tail[-1] if tail else f'exit {done.returncode}'}")


def _refused(reason: str) -> InvalidInput:
    return InvalidInput(
        f"the artifact was not accepted: {reason[:_REASON_CHARS]}", field="body"
    )


class ArtifactSandbox:
    """The API process's checks: bounded in number, run off the event loop."""

    def __init__(self, limits: SandboxLimits, concurrency: int = CONCURRENT_CHECKS) -> None:
        self.limits = limits
        self._concurrency = concurrency
        self._turns: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def check(self, data: bytes) -> float:
        loop = asyncio.get_running_loop()
        if self._turns is None or self._loop is not loop:
            self._turns, self._loop = asyncio.Semaphore(self._concurrency), loop
        try:
            await asyncio.wait_for(self._turns.acquire(), self.limits.timeout_s)
        except TimeoutError:
            raise Unavailable(
                "other uploads are being checked; retry shortly",
                retry_after_s=math.ceil(self.limits.timeout_s),
            ) from None
        try:
            return await run_in_threadpool(check_artifact, data, self.limits)
        finally:
            self._turns.release()


def _main(argv: list[str]) -> int:
    """The child: limit itself, then load and probe the archive with the executor's loader."""
    path, memory_mb, cpu_s = argv[0], int(argv[1]), int(argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    try:
        from executor.runtime import ModelLoadError, configure_cpu_threads, load_model

        configure_cpu_threads(1)
        loaded = load_model(f"file:{path}", "cpu")
    except ModelLoadError as exc:
        return _answer({"error": str(exc).replace(f"file:{path}", "upload")})
    except MemoryError:
        return _answer({"error": f"loading it needs more than {memory_mb} MB"})
    return _answer({"ok": True, "memory_mb": loaded.footprint_bytes / 2**20})


def _answer(verdict: dict[str, object]) -> int:
    """The child's one line to the parent (its protocol, on stdout); the exit status."""
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
    return 0 if verdict.get("ok") is True else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
