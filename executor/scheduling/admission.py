"""Admission control: refuse a query that cannot meet its SLA instead of queueing it.

Each session group measures its service rate (seconds per candidate row of one session, an
exponentially weighted mean over completed batches, which folds the per-batch overhead into
the per-row figure at the batch sizes actually served). A new query is admitted when the
rows ahead of it plus its own, served at that rate by the sessions the group can count on
(its own sessions and its weighted share of the device's shared pool), finish before its SLA.
Otherwise the client is told how long the excess backlog needs to clear (``Retry-After``).
This is the load-shedding rule of Clipper and DeepRecSched's SLA-aware queueing, reduced to
the one figure a scheduler can measure cheaply on every query.

Two guards keep the estimate from refusing work the group could do (a single batch slowed by
preemption or GIL waits used to inflate the mean and refuse queries at light loads; see
docs/benchmarks.md, "Measurements behind design choices"): a sample
moves the mean by at most :data:`MAX_SAMPLE_RATIO` times it, and a query that finds an idle
session and nothing queued ahead of it is always admitted, since it starts at once and
delays no one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_SAMPLE_RATIO = 2.0  # a batch counts as at most this many times the current mean
# A group is sent more than it is served when at least this fraction of its recent queries were
# refused, and at least REFUSED_AT_LEAST of them (a lone refusal of a tenant within its share,
# one Poisson burst, is not a flood)...
OVER_SHARE_REFUSED = 0.1
REFUSED_AT_LEAST = 3.0
# ...where a query counts with a weight halving every this many seconds since it came.
REFUSALS_HALF_LIFE_S = 1.0


class ServiceRate:
    """Exponentially weighted seconds per candidate row of one session."""

    def __init__(self, smoothing: float = 0.2) -> None:
        self._smoothing = smoothing
        self.seconds_per_row: float | None = None  # None until the first batch completes

    def observe(self, rows: int, seconds: float) -> None:
        if rows <= 0:
            return
        sample = seconds / rows
        if self.seconds_per_row is None:
            self.seconds_per_row = sample
        else:
            sample = min(sample, MAX_SAMPLE_RATIO * self.seconds_per_row)
            self.seconds_per_row += self._smoothing * (sample - self.seconds_per_row)


class Refusals:
    """Whether a group is sent more than it is served: its recent queries, refused and in all,
    counted with weights that halve every :data:`REFUSALS_HALF_LIFE_S`.

    A group's queue behind a batch says so only while the queue lasts, and admission control
    keeps it short: under a 5x flood more than half of the flooder's batches were taken with
    nothing behind them (docs/benchmarks.md, "Over-share by refusals, not only by the queue"). Its
    refusals last: whatever admission turned away, at a front or in the engine, was more than
    its sessions serve in time.
    """

    def __init__(self, half_life_s: float = REFUSALS_HALF_LIFE_S) -> None:
        self._decay_per_s = math.log(2) / half_life_s
        self._refused = 0.0
        self._total = 0.0
        self._at = -math.inf  # when the counts were last aged

    def count(self, now: float, refused: int = 0, admitted: int = 0) -> None:
        self._age(now)
        self._refused += refused
        self._total += refused + admitted

    def over_share(self, now: float) -> bool:
        self._age(now)
        return (
            self._refused >= REFUSED_AT_LEAST and self._refused >= OVER_SHARE_REFUSED * self._total
        )

    def _age(self, now: float) -> None:
        if now > self._at:
            kept = math.exp(-self._decay_per_s * (now - self._at))
            self._refused *= kept
            self._total *= kept
            self._at = now


@dataclass(frozen=True)
class Backlog:
    """What a group has to do before a new query's rows are finished."""

    queued_rows: int  # rows waiting in the group's queue
    in_service_rows: int  # rows of batches being run now (half of them remain, on average)
    sessions: float  # sessions the group can count on: its own plus its share of the pool


def predicted_delay(backlog: Backlog, rows: int, rate: ServiceRate) -> float | None:
    """Seconds until a new query of ``rows`` candidates would be finished; None when unknown."""
    if rate.seconds_per_row is None or backlog.sessions <= 0:
        return None
    ahead = backlog.queued_rows + backlog.in_service_rows / 2 + rows
    return ahead * rate.seconds_per_row / backlog.sessions


def retry_after(delay: float, budget: float) -> float:
    """Seconds after which the backlog above the budget should have cleared (at least 1)."""
    return float(max(1, math.ceil(delay - budget)))
