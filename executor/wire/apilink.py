"""How a process that calls the API again and again says in its log that the calls fail.

The daemon's plan client (plans, credentials, heartbeats), ``gpufair gateway`` and
:mod:`gpufair.client` (the routing table) each retry a failing call with a backoff for as long
as they run. One line per retry would make an API down for an hour thousands of lines a node;
none would hide the outage. So each logs one line when its calls start to fail or fail
differently, one when they succeed again, and every retry in between at DEBUG.
"""

from __future__ import annotations

import logging
import time


class ApiLink:
    """One thread's (or task's) calls to the API as its log tells them, under ``logger``."""

    def __init__(self, calls: str, logger: logging.Logger) -> None:
        self.calls = calls
        self.failures = 0
        self._log = logger
        self._failing_since = 0.0
        self._reason: str | None = None

    def failed(
        self,
        reason: str,
        meanwhile: str,
        *,
        error: BaseException | None = None,
        announced: bool = False,
    ) -> None:
        """Count a failure; log it (with the traceback of an unexpected ``error``) unless it
        fails as the last one did or the caller ``announced`` it already."""
        if self.failures == 0:
            self._failing_since = time.monotonic()
        self.failures += 1
        if announced or reason == self._reason:
            self._log.debug("%s failed again (try %d: %s); %s", self.calls, self.failures,
                            reason, meanwhile)  # fmt: skip
        else:
            self._log.warning("%s failing (%s); %s; logged again when that changes", self.calls,
                              reason, meanwhile, exc_info=error)  # fmt: skip
        self._reason = reason

    def succeeded(self) -> None:
        """Reset after a success; say so if it ends a run of failures."""
        if self.failures:
            self._log.info("%s succeed again after %d failed tries over %.3gs", self.calls,
                           self.failures, time.monotonic() - self._failing_since)  # fmt: skip
        self.failures = 0
        self._reason = None
