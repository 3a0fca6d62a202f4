"""A limit on failed credentials per client address: guessing tokens gets 429, not answers.

Every request that presents a bearer token nobody issued (or one revoked or expired) counts one
failure against the address it came from. An address with ``limit`` failures within the last
``window_s`` seconds gets **429** ``rate_limited`` with ``Retry-After`` for every request that
presents a token — a right one included, so the answer tells a guesser nothing — until its
oldest counted failure is older than the window. Requests without a token are not counted:
they guess nothing.

Memory is bounded: at most ``max_addresses`` addresses are tracked, each with at most
``limit`` timestamps; when a new address arrives at a full table, the address whose latest
failure is oldest is forgotten. A flood from more addresses than that can make the limiter
forget some of them, never grow. The address is the TCP peer as the API sees it: behind a
reverse proxy or a Kubernetes Service that does not preserve it, every client shares the
proxy's address, and the limit is then per proxy (docs/operations.md).

Thread-safe: credential checks run in worker threads (api.deps).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from api.errors import TooManyRequests

WINDOW_S = 60.0
MAX_ADDRESSES = 10_000


class FailedCredentials:
    def __init__(
        self,
        limit: int,
        *,
        window_s: float = WINDOW_S,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._lock = threading.Lock()
        # address -> times of its recent failures (oldest first); least recently failed first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def check(self, address: str) -> None:
        """Raise TooManyRequests when ``address`` has used up its failures."""
        now = self._clock()
        with self._lock:
            times = self._recent(address, now)
            if times is None or len(times) < self.limit:
                return
            retry_after = times[0] + self.window_s - now
        raise TooManyRequests(
            "too many failed credentials from this address; try again later",
            retry_after_s=max(1, math.ceil(retry_after)),
        )

    def failed(self, address: str) -> None:
        """Count one failed credential of ``address``."""
        now = self._clock()
        with self._lock:
            times = self._recent(address, now)
            if times is None:
                if len(self._failures) >= self.max_addresses:
                    self._failures.popitem(last=False)
                times = self._failures[address] = deque(maxlen=self.limit)
            times.append(now)
            self._failures.move_to_end(address)

    def tracked(self) -> int:
        """How many addresses are remembered (for tests of the bound)."""
        with self._lock:
            return len(self._failures)
