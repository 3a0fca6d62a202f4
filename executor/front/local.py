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
from executor.front.engine import ModelInfo, Terms, Ticket
from executor.scheduling import DeadlineExceeded, SchedulingError
from executor.scheduling.errors import ModelFailed

# A reply to a query whose future is lost would never come: wait at most this beyond its deadline.
ANSWER_GRACE_S = 1.0


class LocalEngine:
    """:class:`~executor.front.engine.Engine` over an :class:`EngineCore` in this process."""

    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._keys = itertools.count()
        self._admitted: dict[int, Admission] = {}
        self._terms: dict[str, Terms] = {}  # model, as requests name it -> its last admission's

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def admit(self, model: str, arrival: float, credential: str | None = None) -> Ticket:
        admission = self._core.admit(model, arrival, credential)
        key = next(self._keys)
        self._admitted[key] = admission
        terms = Terms(
            admission.group.model_id,
            admission.tenant,
            admission.schema,
            admission.schema_key,
            admission.group.sla_s,
            admission.deadline - arrival,
        )
        self._terms[model] = terms
        return Ticket(
            key, terms.model_id, terms.tenant, terms.schema, admission.deadline, terms.sla_s
        )

    def presume(self, model: str, arrival: float, credential: str | None) -> Ticket | None:
        terms = self._terms.get(model)
        return None if terms is None else terms.ticket(next(self._keys), model, arrival, credential)

    async def infer(self, ticket: Ticket, query: Query) -> np.ndarray:
        presumed = ticket.presumed
        if presumed is None:
            future = self._core.submit(self._admitted.pop(ticket.key), query)
            return await wait_for_scores(future, ticket)
        try:
            admission = self._core.admit(
                presumed.model, presumed.arrival, presumed.credential, presumed.schema_key
            )
            return await wait_for_scores(self._core.submit(admission, query), ticket)
        except SchedulingError as exc:
            if forget_terms_after(exc):
                self._terms.pop(presumed.model, None)
            raise

    def abandon(self, ticket: Ticket, outcome: str | None) -> None:
        if ticket.presumed is not None:
            if outcome is not None:
                self._core.ended(ticket.presumed.model, outcome)
            return
        admission = self._admitted.pop(ticket.key, None)
        if admission is not None:
            self._core.abandon(admission, outcome)

    def refused(self, model: str) -> None:
        self._core.refused(model)

    async def health(self) -> dict[str, Any] | None:
        return self._core.health()

    async def model(self, model: str, credential: str | None) -> ModelInfo:
        schema, model_id, version = self._core.model(model, credential)
        return ModelInfo(model_id, schema, version)

    async def metrics(self) -> bytes:
        return self._core.metrics.render()


def forget_terms_after(error: Exception) -> bool:
    """Whether a presumed request's refusal makes its model's next request at the front be
    asked of the engine before its body is read: every refusal but a failed forward. Overload
    (429, 504): the engine's check before the body turns the next ones away unread, and the
    model is presumed again once a request is admitted; a plan swap (the model gone, moved to
    another tenant, served with another schema, its replica closed) or a refused key: the terms
    may no longer hold."""
    return isinstance(error, SchedulingError) and not isinstance(error, ModelFailed)


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
