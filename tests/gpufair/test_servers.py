"""``gpufair.servers.ChildServer``, which every benchmark, the demo and many tests start their
servers with: however its stop is cut short, no child outlives it."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType

import pytest

from gpufair.servers import ChildServer

# A child that ignores SIGTERM, so that stop() waits for it (up to its timeout).
DEAF = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', flush=True); time.sleep(120)"
)


def test_an_interrupted_stop_kills_the_child_and_goes_on(tmp_path: Path) -> None:
    """A second Ctrl-C or SIGTERM during stop()'s wait ended the wait and left the child
    running, re-parented to init: it is killed, and the interruption goes on."""
    child = ChildServer("deaf", [], log_path=tmp_path / "log",
                        command=[sys.executable, "-c", DEAF])  # fmt: skip
    child.start()
    try:
        deadline = time.monotonic() + 30
        while "up" not in child.tail():
            assert time.monotonic() < deadline, child.tail()
            time.sleep(0.02)

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            with pytest.raises(KeyboardInterrupt):
                child.stop(timeout_s=60)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert child.process.poll() == -signal.SIGKILL
    finally:
        if child.process.poll() is None:
            child.kill()
