"""The scheduling rules as pure functions: when a queue is ready, how a query is cut, which
pieces make a batch, and the start-time fair queueing tags of the shared pool.

:class:`executor.scheduling.device.DeviceScheduler` holds the queues, the lock and the worker
threads; every choice it makes is one of these functions of plain values (row counts, clock
readings, tags), so each rule can be read and tested on its own, to the row, with no thread and
no clock. The rules follow DeepRecSched (Gupta et al., ISCA 2020) for batching and splitting and
start-time fair queueing (Goyal, Vin and Cheng, SIGCOMM 1996) for the pool; admission control
is in :mod:`executor.scheduling.admission`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from executor.scheduling.config import SchedulerConfig


def ready_at(
    oldest_enqueued: float | None, queued_rows: int, closing: bool, config: SchedulerConfig
) -> float | None:
    """Clock time from which a group's queue may be served; None for an empty queue.

    At once (0.0) when it holds a full batch, when the group is draining, or without batching;
    otherwise once its oldest piece has waited ``batch_max_delay_s`` for company.
    """
    if oldest_enqueued is None:
        return None
    if closing or not config.batching or queued_rows >= config.max_batch_candidates:
        return 0.0
    return oldest_enqueued + config.batch_max_delay_s


def piece_count(rows: int, idle_sessions: int, config: SchedulerConfig) -> int:
    """Pieces a query of ``rows`` candidates is cut into on arrival.

    Pieces hold at most ``max_batch_candidates`` rows; with splitting, a query is also cut
    across the sessions idle right now, in pieces of at least ``min_split_rows``, so that its
    latency shrinks by the parallelism that is free and nothing is cut when all are busy.
    """
    if rows <= 0:
        return 1
    count = max(1, math.ceil(rows / config.max_batch_candidates))
    if config.splitting:
        count = max(count, min(idle_sessions, rows // config.min_split_rows))
    return max(1, min(count, rows))


def piece_bounds(rows: int, pieces: int) -> list[tuple[int, int]]:
    """Candidate ranges [start, stop) of ``pieces`` near-equal pieces of ``rows`` candidates."""
    edges = [round(rows * k / pieces) for k in range(pieces + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


@dataclass(frozen=True)
class QueuedPiece:
    """What batch formation needs to know of one queued piece."""

    rows: int
    query: Hashable  # pieces of one query share it
    deadline: float  # the piece's query fails if it is still queued after this
    settled: bool  # its query already ended (cancelled, or failed by another piece)


@dataclass(frozen=True)
class BatchChoice:
    """Positions in the queue (0 = head): what to run now, what to drop, in queue order."""

    taken: tuple[int, ...]  # run together, in this order
    dropped: tuple[int, ...]  # past their deadline: their queries fail
    discarded: tuple[int, ...]  # of settled queries: removed without a word
    scanned: int  # the head positions decided; pieces from here on stay queued as they are


def form_batch(queue: Iterable[QueuedPiece], limit: int, now: float) -> BatchChoice:
    """The batch a free session takes from the head of a queue, FIFO.

    Up to ``limit`` rows (0: one piece), never two pieces of one query (so that a split query's
    pieces run side by side on different sessions); a piece of an already taken query is
    skipped and stays queued ahead of the rest. Pieces past their deadline are dropped and
    pieces of settled queries discarded on the way. The queue is read only as far as the
    decision needs (a flooded queue is not walked whole for every batch).
    """
    taken: list[int] = []
    dropped: list[int] = []
    discarded: list[int] = []
    queries: set[Hashable] = set()
    rows = 0
    scanned = 0
    for position, piece in enumerate(queue):
        scanned = position + 1
        if piece.settled:
            discarded.append(position)
            continue
        if piece.deadline < now:
            dropped.append(position)
            continue
        if taken and rows + piece.rows > limit:
            return BatchChoice(tuple(taken), tuple(dropped), tuple(discarded), position)
        if piece.query in queries:
            continue
        queries.add(piece.query)
        taken.append(position)
        rows += piece.rows
    return BatchChoice(tuple(taken), tuple(dropped), tuple(discarded), scanned)


def pool_priority(index: int, weight: float, virtual_time: float, finish_tag: float) -> tuple[
    int, float, int
]:
    """Order in which the shared pool serves ready groups: smallest first.

    Groups with a positive weight go by their start-time fair queueing start tag
    ``max(V, F_g)``, ties by position; weight-0 groups only take what none of them wants.
    """
    if weight > 0:
        return (0, max(virtual_time, finish_tag), index)
    return (1, 0.0, index)


def charge_pool(
    virtual_time: float, finish_tag: float, rows: int, weight: float
) -> tuple[float, float]:
    """The pool's virtual time and the group's finish tag after it serves ``rows`` of it.

    Start tag ``S = max(V, F_g)``, finish tag ``F_g = S + rows / w_g``, and ``V = S``: a group
    that floods raises only its own tags, and an idle one accrues no credit.
    """
    start = max(virtual_time, finish_tag)
    return start, start + rows / weight
