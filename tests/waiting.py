"""Waiting on a condition instead of sleeping on a guess: a wrapper that says when the function
it wraps was first called (and what it returned), and a poll of an observable state with a
deadline. The deadlines are failure guards only, generous so that a loaded machine does not
fail a test that would pass; a test never depends on one running out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

GUARD_S = 30.0


class Signalling(Generic[P, R]):
    """``function`` as is, but each value it returns is kept in ``returned`` (in the order the
    calls returned), and :meth:`wait` returns once enough calls have. Thread-safe."""

    def __init__(self, function: Callable[P, R]) -> None:
        self._function = function
        self._changed = threading.Condition()
        self.returned: list[R] = []

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        value = self._function(*args, **kwargs)
        with self._changed:
            self.returned.append(value)
            self._changed.notify_all()
        return value

    def wait(self, calls: int = 1, timeout_s: float = GUARD_S) -> list[R]:
        """The values returned so far, once at least ``calls`` calls have returned;
        AssertionError after ``timeout_s``."""
        with self._changed:
            done = self._changed.wait_for(lambda: len(self.returned) >= calls, timeout_s)
            assert done, f"{len(self.returned)} of {calls} calls within {timeout_s:g} s"
            return list(self.returned)


def wait_until(
    condition: Callable[[], bool], what: str, *, timeout_s: float = GUARD_S, every_s: float = 0.01
) -> None:
    """Return as soon as ``condition()`` holds, checked every ``every_s``; AssertionError naming
    ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(every_s)
