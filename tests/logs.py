"""Log records a test waits on: a handler that keeps them and says when one arrives.

pytest's ``caplog`` keeps records too, but a test of a background thread or server has to wait
for the record it expects (a failed pull, a refusal) without sleeping on a guess.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class LogRecords(logging.Handler):
    """The records of the loggers it is attached to (only those whose message holds
    ``containing``, when given), and an event set at each."""

    def __init__(self, containing: str | None = None) -> None:
        super().__init__(logging.DEBUG)
        self._containing = containing
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self._containing is None or self._containing in record.getMessage():
            self.records.append(record)
            self.arrived.set()

    def wait_for(self, count: int, within_s: float) -> None:
        """Return once ``count`` records have come; fail after ``within_s``."""
        deadline = time.monotonic() + within_s
        while len(self.records) < count:
            assert self.arrived.wait(max(0.0, deadline - time.monotonic())), self.records
            self.arrived.clear()


@contextmanager
def captured(
    *names: str, debug: tuple[str, ...] | None = None, containing: str | None = None
) -> Iterator[LogRecords]:
    """A :class:`LogRecords` on the loggers ``names``, those of ``debug`` (default: all of
    them) set to DEBUG meanwhile; every logger as it was after."""
    handler = LogRecords(containing)
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    for name in names if debug is None else debug:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
