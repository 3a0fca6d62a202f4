"""The engine in the front's own process: the daemon's in-process app (tests, tools)."""

from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from executor.engine.core import Admission, EngineCore
from executor.features import Query
from executor.front.engine import ModelInfo, Ticket
from executor.scheduling import DeadlineExceeded

# A reply to a query whose future is lost would never come: wait at most this beyond its deadline.
ANSWER_GRACE_S = 1.0


class LocalEngine:
    """:class:`~executor.front.engine.Engine` over an :class:`EngineCore` in this process."""

    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._keys = itertools.count()
        self._admitted: dict[int, Admission] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def admit(self, model: str, arrival: float, credential: str | None = None) -> Ticket:
        admission = self._core.admit(model, arrival, credential)
        key = next(self._keys)
        self._admitted[key] = admission
        return Ticket(
            key,
            admission.group.model_id,
            admission.tenant,
            admission.schema,
            admission.deadline,
            admission.group.sla_s,
        )

    async def infer(self, ticket: Ticket, query: Query) -> np.ndarray:
        future = self._core.submit(self._admitted.pop(ticket.key), query)
        return await wait_for_scores(future, ticket)

    def abandon(self, ticket: Ticket, outcome: str | None) -> None:
        admission = self._admitted.pop(ticket.key, None)
        if admission is not None:
            self._core.abandon(admission, outcome)

    def refused(self, model: str) -> None:
        self._core.refused(model)

    async def health(self) -> dict[str, Any] | None:
        return self._core.health()

    async def model(self, model: str) -> ModelInfo:
        schema, model_id, version = self._core.model(model)
        return ModelInfo(model_id, schema, version)

    async def metrics(self) -> bytes:
        return self._core.metrics.render()


async def wait_for_scores(future: Future[np.ndarray] | asyncio.Future[Any], ticket: Ticket) -> Any:
    """The scores ``future`` resolves to, or its error; one that does not answer within
    :data:`ANSWER_GRACE_S` past the query's deadline counts as DeadlineExceeded."""
    timeout = ticket.deadline - time.monotonic() + ANSWER_GRACE_S
    waited = asyncio.wrap_future(future) if isinstance(future, Future) else future
    try:
        return await asyncio.wait_for(waited, max(timeout, 0.0))
    except DeadlineExceeded:  # the scheduler's answer (a TimeoutError too): as it is
        raise
    except TimeoutError as exc:  # wait_for's own: the future was lost
        raise DeadlineExceeded(f"model {ticket.model_id!r}: no answer by its deadline") from exc
