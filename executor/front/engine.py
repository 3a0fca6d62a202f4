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
class Ticket:
    """A request admitted before its body is read, as the front sees it."""

    key: int  # the engine's handle on the admission
    model_id: str
    tenant: str
    schema: ModelSchema  # what the body must carry
    deadline: float  # time.monotonic() by which the engine answers it at the latest
    sla_s: float  # its replica's p99 target: a body read after arrival + sla_s is read too late


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

    async def infer(self, ticket: Ticket, query: Query) -> np.ndarray:
        """Queue the parsed query on its admitted replica; its (N,) float32 scores."""

    def abandon(self, ticket: Ticket, outcome: str | None) -> None:
        """End an admitted request at the front; ``outcome`` is counted (None: not)."""

    def refused(self, model: str) -> None:
        """Count a request for ``model`` the front refused before asking the engine
        (:mod:`executor.front.budget`) as rejected."""

    async def health(self) -> dict[str, Any] | None:
        """The ``/healthz`` document, None before the first plan."""

    async def model(self, model: str) -> ModelInfo: ...

    async def metrics(self) -> bytes:
        """The Prometheus text of the engine's metrics."""
