"""The engine's request surface: admit before the body, queue a parsed query, count outcomes.

:class:`EngineCore` is what every front talks to, in the same process (the daemon's in-process
app, :func:`executor.daemon.create_app`) or from a front process over a link
(:mod:`executor.engine.server`). It owns the node's :class:`~executor.scheduling.NodeRuntime`
(devices, session groups, the fair scheduler) and the metrics, and turns a request into three
calls, in the order the daemon makes them (docs/executor.md, "Admission control"):

1. :meth:`admit` — on arrival, from the route and the credential alone: the query's key checked
   against the model's tenant (:mod:`executor.credentials`), then the replica that will serve
   the query (routed once), checked for a one-candidate query; an :class:`Admission` that tells
   the front the model's schema (to parse the body), its tenant and SLA (to bound the tenant's
   requests in flight at the front). Raises the scheduling errors (Overloaded: 429 before the
   body).
2. :meth:`submit` — the parsed query, on the same replica; a future of its scores.
3. :meth:`abandon` — a query that ends at the front (a malformed body: counted as invalid).

A front lets in a request of a tenant under its in-flight bound at the front on its own, on
the terms of the model's last admission there (:meth:`executor.front.engine.Engine.presume`):
then 1 and 2 are one call when the query comes, :meth:`admit` given the schema the front parsed
the body with (another one, after a plan swap, is refused as unavailable), and a query of such
a request that ends at the front is counted with :meth:`ended`.

A request a front refuses on its own, before asking (:mod:`executor.front.budget`), is told
with :meth:`refused` and counted as rejected.

Every outcome is counted here, once, wherever the front runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from executor.credentials import OPEN, Credentials
from executor.engine.answers import answer_of
from executor.features import Query
from executor.metrics import ExecutorMetrics
from executor.models.schema import ModelSchema
from executor.scheduling import (
    ModelUnavailable,
    NodeRuntime,
    Overloaded,
    SchedulingError,
    SessionGroup,
)


@dataclass(frozen=True)
class Admission:
    """A request let in before its body is read: the replica it goes to and what the front
    needs to read and parse its body."""

    group: SessionGroup  # the replica that will get the query
    arrival: float  # time.monotonic() on arrival (one clock for every process of the node)
    deadline: float  # by when the scheduler answers it at the latest (it drops it then)

    @property
    def schema(self) -> ModelSchema:
        schema: ModelSchema = self.group.model.schema
        return schema

    @property
    def tenant(self) -> str:
        return self.group.tenant

    @property
    def schema_key(self) -> str:
        """The model's id and artifact: what a front's cached schema of it is valid for."""
        replica = self.group.seat.replica
        return f"{self.group.model_id}:{replica.artifact if replica else ''}"


class EngineCore:
    """The runtime and its metrics behind one request surface (see the module docstring)."""

    def __init__(
        self,
        runtime: NodeRuntime,
        metrics: ExecutorMetrics | None = None,
        credentials: Credentials = OPEN,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics or ExecutorMetrics(runtime)
        self.credentials = credentials

    def admit(
        self,
        model: str,
        arrival: float,
        credential: str | None = None,
        schema_key: str | None = None,
    ) -> Admission:
        """Check the credential (sha256 of the key presented, or None), route on arrival and
        check a one-candidate query; raise Unauthenticated or NotPermitted (not counted),
        UnknownModel, ModelUnavailable or Overloaded (counted as rejected). ``schema_key``: the
        schema a front parsed the query with (a presumed request): ModelUnavailable (not
        counted) when the replica's is another."""
        group = self._keyed(self.runtime.route, model, credential)
        if schema_key is not None and Admission(group, arrival, arrival).schema_key != schema_key:
            raise ModelUnavailable(
                f"model {model!r} is served with another schema since this front last asked; "
                "send the query again"
            )
        try:
            self.runtime.check(group, arrival)
        except Overloaded:
            self._observe(group, "rejected", None)
            raise
        expiry = group.sla_s * self.runtime.config.expire_after_sla
        return Admission(group, arrival, arrival + expiry)

    def submit(self, admission: Admission, query: Query) -> Future[np.ndarray]:
        """Queue the query on its admitted replica (a plan swap may hand it on); the future's
        outcome is counted when it resolves. A cancelled one (the scheduler then discards the
        query unserved) is counted as expired when it was cancelled past its deadline, as a
        front does that gave up waiting for it (and answered 504); before it, its client went
        away, and nothing is counted. Raises Overloaded (counted) or GroupClosed."""
        try:
            pending = self.runtime.submit_to(admission.group, query, admission.arrival)
        except SchedulingError as exc:
            outcome = answer_of(exc)[1]
            if outcome is not None:
                self._observe(admission.group, outcome, None)
            raise
        group, arrival = pending.group, admission.arrival

        def count(future: Future[np.ndarray]) -> None:
            if future.cancelled():
                # Unanswered by its deadline, a query is a miss however it ends; before it,
                # its front went away: nobody was answered or refused.
                if time.monotonic() > admission.deadline:
                    self._observe(group, "expired", None)
                return
            error = future.exception()
            if error is None:
                self._observe(group, "ok", time.monotonic() - arrival)
            elif isinstance(error, SchedulingError):
                outcome = answer_of(error)[1]
                if outcome is not None:
                    self._observe(group, outcome, None)

        pending.future.add_done_callback(count)
        return pending.future

    def abandon(self, admission: Admission, outcome: str | None) -> None:
        """Count a query that ended at the front (``invalid``: its body was malformed; None:
        not counted, e.g. a body over the size limit)."""
        if outcome is not None:
            self._observe(admission.group, outcome, None)

    def ended(self, model: str, outcome: str) -> None:
        """Count a presumed request (one the engine never admitted) that ended at the front as
        ``outcome``, on the model's replica (none: not counted, as the model is gone)."""
        try:
            group = self.runtime.group(model)
        except SchedulingError:
            return
        self._observe(group, outcome, None)

    def refused(self, model: str, count: int = 1) -> None:
        """Count ``count`` requests for ``model`` that a front refused before asking the engine
        as rejected, on the model's replica (none: not counted, as the model is gone)."""
        try:
            group = self.runtime.group(model)
        except SchedulingError:
            return
        self.runtime.count_rejected(group, count)
        for _ in range(count):
            self._observe(group, "rejected", None)

    def health(self) -> dict[str, Any] | None:
        """The ``/healthz`` document, or None before the first plan, and in API mode before the
        first credentials too (the node could answer no query: it is not ready)."""
        deployment = self.runtime.deployment
        if deployment is None or (self.credentials.enforce and self.credentials.document is None):
            return None
        return {
            "status": "serving",
            "node": deployment.plan.node,
            "plan_version": deployment.plan.version,
            "models": sorted(deployment.routes),
            "broken": deployment.broken,
        }

    def _keyed(
        self, lookup: Callable[[str], SessionGroup], model: str, credential: str | None
    ) -> SessionGroup:
        """``lookup(model)`` for a key of the model's tenant: 401 without a key before the
        model is even looked up (so a caller without one learns nothing of it), 403 for a key
        of anyone else."""
        if credential is None:
            self.credentials.check("", None)
        group = lookup(model)
        self.credentials.check(group.tenant, credential)
        return group

    def model(self, model: str, credential: str | None = None) -> tuple[ModelSchema, str, int]:
        """A served model's schema, its id and the plan version, for a key of its tenant only
        (as a query: a model's features are its tenant's business); raise Unauthenticated,
        NotPermitted, UnknownModel, ..."""
        group = self._keyed(self.runtime.group, model, credential)
        version = self.runtime.plan_version
        if version is None:
            raise ModelUnavailable("no plan is loaded on this node yet")
        return group.model.schema, group.model_id, version

    def _observe(self, group: SessionGroup, outcome: str, latency_s: float | None) -> None:
        self.metrics.observe(group.tenant, group.model_id, outcome, latency_s, group.sla_s)
