"""Keep a command's stdout for its result, whatever native libraries print.

``gpufair divide`` and ``gpufair allocate --json`` promise that stdout holds their JSON and
nothing else, so that ``gpufair divide x.json | jq`` works. Solver libraries do not always
cooperate: highspy 1.16's ``Highs()`` constructor writes a banner to file descriptor 1 from C++
before any option can silence it, and PuLP's backends may do the same. Redirecting
``sys.stdout`` cannot catch that, so the guard works one level down: for its duration, file
descriptor 1 points at stderr (where diagnostics belong), and the command writes its result to
a stream on a duplicate of the original stdout.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

STDOUT_FD = 1
STDERR_FD = 2


def _flush_c_stdio() -> None:
    """Flush every C stdio stream, so a library's buffered ``printf`` leaves while fd 1 still
    points at stderr instead of reaching stdout when the process exits."""
    ctypes.CDLL(None).fflush(None)


@contextmanager
def stdout_reserved_for_result() -> Iterator[TextIO]:
    """Point fd 1 at stderr inside the block; yield a text stream on the real stdout.

    Whatever the block or any library writes to fd 1 (or ``sys.stdout``) lands on stderr;
    only what is written to the yielded stream reaches stdout. On exit fd 1 is restored, so
    later output goes where it went before.
    """
    sys.stdout.flush()
    real_stdout_fd = os.dup(STDOUT_FD)
    os.dup2(STDERR_FD, STDOUT_FD)
    result = os.fdopen(os.dup(real_stdout_fd), "w", encoding="utf-8", closefd=True)
    try:
        yield result
    finally:
        sys.stdout.flush()
        _flush_c_stdio()
        try:
            result.close()
        finally:
            os.dup2(real_stdout_fd, STDOUT_FD)
            os.close(real_stdout_fd)
