"""What a front needs of the engine: the :class:`Engine` protocol and the :class:`Ticket` of an
admitted request.

Both implementations, :class:`~executor.front.local.LocalEngine` (same process) and
:class:`~executor.front.remote.RemoteEngine` (another process, over a link), call the same
:class:`~executor.engine.core.EngineCore`, so a request is admitted, queued and counted the
same way wherever its front runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from executor.features import Query
from executor.models.schema import ModelSchema


@dataclass(frozen=True)
class Presumed:
    """What the engine needs to admit a request the front let in on its own (:class:`Terms`):
    the engine admits it when its query comes, in the same message."""

    model: str  # as the request named it
    arrival: float  # time.monotonic() on arrival
    credential: str | None  # the sha256 of the key presented
    schema_key: str  # the schema its body was parsed with: the engine refuses another (503)


@dataclass(frozen=True)
class Ticket:
    """A request let in before its body is read, as the front sees it."""

    key: int  # the engine's handle on the admission (a presumed one: the front's own id)
    model_id: str
    tenant: str
    schema: ModelSchema  # what the body must carry
    deadline: float  # time.monotonic() by which the engine answers it at the latest
    sla_s: float  # its replica's p99 target: a body read after arrival + sla_s is read too late
    # Not None: let in by the front on the terms of the model's last admission there
    # (Engine.presume), not yet by the engine, which admits it with its query (Engine.infer).
    presumed: Presumed | None = None


@dataclass(frozen=True)
class Terms:
    """What the engine's last admission of a model at a front said of it: enough for the front
    to let in the model's next requests on its own (:meth:`Engine.presume`)."""

    model_id: str
    tenant: str
    schema: ModelSchema
    schema_key: str  # the model's id and artifact: a plan swap that changes its schema changes it
    sla_s: float
    expiry_s: float  # a query's deadline, from its arrival

    def ticket(self, key: int, model: str, arrival: float, credential: str | None) -> Ticket:
        """A presumed ticket on these terms for a request that arrived at ``arrival``."""
        return Ticket(
            key,
            self.model_id,
            self.tenant,
            self.schema,
            arrival + self.expiry_s,
            self.sla_s,
            Presumed(model, arrival, credential, self.schema_key),
        )


@dataclass(frozen=True)
class ModelInfo:
    """A served model, for its Open Inference Protocol metadata."""

    model_id: str
    schema: ModelSchema
    version: int  # the plan version serving it


class Engine(Protocol):
    """The engine as a front calls it. Every method raises the scheduling errors
    (:mod:`executor.scheduling.errors`) that :mod:`executor.engine.answers` answers."""

    async def start(self) -> None:
        """Connect (called once, in the front's event loop, before any request)."""

    async def stop(self) -> None: ...

    async def admit(self, model: str, arrival: float, credential: str | None = None) -> Ticket:
        """Check the credential (the sha256 of the key presented, or None: see
        :mod:`executor.credentials`), route on arrival and check admission for a
        one-candidate query."""

    def presume(self, model: str, arrival: float, credential: str | None) -> Ticket | None:
        """A ticket for a request for ``model`` on the terms of the model's last admission at
        this front, without asking the engine (its admission waits for the query, in one
        message: :meth:`infer`); None when the engine has not admitted the model here (or a
        presumed query of it met a refusal that the terms may explain: a plan swap)."""

    async def infer(self, ticket: Ticket, query: Query) -> np.ndarray:
        """Queue the parsed query on its admitted replica (a presumed ticket: admit it first,
        as :meth:`admit` would have, with the query's real size); its (N,) float32 scores."""

    def abandon(self, ticket: Ticket, outcome: str | None) -> None:
        """End a request let in at the front; ``outcome`` is counted (None: not)."""

    def refused(self, model: str) -> None:
        """Count a request for ``model`` the front refused before asking the engine
        (:mod:`executor.front.budget`) as rejected."""

    async def health(self) -> dict[str, Any] | None:
        """The ``/healthz`` document, None before the first plan."""

    async def model(self, model: str, credential: str | None) -> ModelInfo:
        """The model's schema and version, for ``credential`` (the sha256 of the key presented)
        of its tenant: the engine checks it as it checks a query's."""

    async def metrics(self) -> bytes:
        """The Prometheus text of the engine's metrics."""
