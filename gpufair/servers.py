"""gpufair servers run as child processes: a free loopback port for one, the child itself with
its output in a log file, and the wait until its ``/healthz`` answers.

``gpufair demo`` starts the API and an executor daemon this way, ``gpufair bench api`` the API,
and the end-to-end tests an executor daemon. Each of them must learn that a child died or hung
at start-up from one error that quotes its log, and none may leave a child running; this module
is the one place that does both.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port of the loopback interface that is free now, for a server that must be told
    its port before it starts (another process may take it meanwhile: start the server soon)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class ChildServerError(RuntimeError):
    """A child server exited, or did not become healthy in time; the message names the child
    and quotes the end of its log."""


class ChildServer:
    """``python -m gpufair.cli ARGS --port PORT`` (or ``COMMAND ARGS --port PORT``) as a child
    process, its output appended to ``log_path``; ``url`` is where it serves on the loopback
    interface.

    ``with ChildServer(...) as child:`` starts it and stops it however the block ends. A child
    can be killed and started again (a restart keeps its port and appends to its log).
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        log_path: Path,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.port = free_port() if port is None else port
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = log_path
        program = [sys.executable, "-m", "gpufair.cli"] if command is None else list(command)
        self._argv = [*program, *args, "--port", str(self.port)]
        self._env = None if env is None else dict(env)
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The child process of the last start."""
        if self._process is None:
            raise ChildServerError(f"{self.name} was never started")
        return self._process

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self._process = subprocess.Popen(
                self._argv, cwd=self._cwd, env=self._env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def health(self) -> Any | None:
        """The body of ``/healthz`` when it answers 200 now, else None."""
        try:
            reply = httpx.get(f"{self.url}/healthz", timeout=2)
            return reply.json() if reply.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def wait_healthy(
        self,
        timeout_s: float,
        ready: Callable[[Any], bool] | None = None,
        every_s: float = 0.1,
    ) -> Any:
        """The body of ``/healthz`` once it answers 200 (and ``ready`` holds of it), polled every
        ``every_s`` seconds; ChildServerError as soon as the child exits, or after ``timeout_s``."""
        began = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise ChildServerError(
                    f"{self.name} exited with {self.process.returncode}: "
                    + " | ".join(self.tail(3).splitlines())
                )
            health = self.health()
            if health is not None and (ready is None or ready(health)):
                return health
            if time.monotonic() - began > timeout_s:
                said = "" if health is None else f" (/healthz said {health})"
                raise ChildServerError(
                    f"{self.name} did not become {'healthy' if ready is None else 'ready'} in "
                    f"{timeout_s:.0f} s{said}; see {self.log_path}"
                )
            time.sleep(every_s)

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the child's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        """Kill the child at once (SIGKILL), as a crash or an operator would."""
        self.process.kill()
        self.process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the child to stop (SIGTERM); kill it if it has not within ``timeout_s``, or if
        the wait is interrupted (a second Ctrl-C or SIGTERM), which then goes on: an
        interrupted wait left the child running, re-parented to init, for good."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        except BaseException:
            self.kill()
            raise

    def __enter__(self) -> ChildServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
