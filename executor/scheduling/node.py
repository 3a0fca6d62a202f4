"""A node's serving state: the session groups of its current plan, routing, and plan swaps.

A :class:`Deployment` is what one plan version becomes: one :class:`DeviceScheduler` per
device with a session group per occupied seat, and a routing table from model id to the
groups (replicas) serving it. :class:`NodeRuntime` holds the current deployment and swaps it
for a new plan version without losing a query: it builds the new groups (reusing weights that
are already loaded for the same artifact on the same device), switches routing in one
assignment, then drains the old groups (they finish what they admitted, for at most
``drain_timeout_s``) and releases them. A query that races the switch and finds its group
draining is routed again to the new deployment.

A replica whose artifact cannot be loaded is left out with its error kept, so the other
models serve on and requests for the broken one get a clear 503.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from allocator.cluster.plan import NodePlan
from executor.features import Query
from executor.scheduling.backend import Backend, Model
from executor.scheduling.config import SchedulerConfig
from executor.scheduling.device import DeviceScheduler, Pending, SessionGroup
from executor.scheduling.errors import GroupClosed, ModelUnavailable, UnknownModel

log = logging.getLogger(__name__)


@dataclass
class Deployment:
    """One plan version, running."""

    plan: NodePlan
    devices: list[DeviceScheduler]
    routes: dict[str, list[SessionGroup]]  # model id -> its replicas on this node
    models: dict[tuple[str, str], Model]  # (artifact, device) -> loaded weights
    broken: dict[str, str] = field(default_factory=dict)  # model id -> why it is not served

    def groups(self) -> list[SessionGroup]:
        return [g for d in self.devices for g in d.groups]


@dataclass(frozen=True)
class SwapReport:
    version: int
    loaded: int  # replicas whose weights were loaded for this version
    reused: int  # replicas that kept the weights of the previous version
    broken: dict[str, str]  # model id -> load error
    drained_clean: bool  # every query admitted by the old version finished


class NodeRuntime:
    """Routes queries to the current plan's session groups; applies new plans."""

    def __init__(
        self,
        backend: Backend,
        config: SchedulerConfig,
        place: Callable[[str], str] | None = None,
    ) -> None:
        self._backend = backend
        self._config = config
        self._place = place or (lambda device: device)  # plan device -> where the backend runs it
        self._deployment: Deployment | None = None
        self._swap_lock = threading.Lock()
        self._gc_frozen = False

    @property
    def config(self) -> SchedulerConfig:
        return self._config

    @property
    def deployment(self) -> Deployment | None:
        return self._deployment

    @property
    def plan_version(self) -> int | None:
        return self._deployment.plan.version if self._deployment else None

    def apply(self, plan: NodePlan) -> SwapReport | None:
        """Serve a new plan version; None when it is not newer than the current one."""
        with self._swap_lock:
            old = self._deployment
            if old is not None and plan.version <= old.plan.version:
                log.info("plan version %d ignored: serving %d", plan.version, old.plan.version)
                return None
            new, loaded, reused = self._build(plan, old)
            if not self._gc_frozen and new.models:
                # What the first plan loads (modules, weights, imports) lives about as long as
                # the daemon; a full cyclic-GC pass over it stops every session for tens of ms
                # (docs/benchmarks.md), more than a p99 SLA can absorb. Freezing moves it out of the
                # collector's generations. Once only: each freeze would also pin the garbage
                # of every plan replaced since, for good.
                gc.freeze()
                self._gc_frozen = True
            for device in new.devices:
                device.start()
            self._deployment = new
            log.info(
                "plan version %d serving %d replicas (%d loaded, %d reused)",
                plan.version,
                len(new.groups()),
                loaded,
                reused,
            )
            clean = True
            if old is not None:
                began = time.monotonic()
                for device in old.devices:
                    left = self._config.drain_timeout_s - (time.monotonic() - began)
                    clean &= device.drain(max(left, 0.0))
                if not clean:
                    log.warning("plan version %d: drain timed out", old.plan.version)
            return SwapReport(plan.version, loaded, reused, dict(new.broken), clean)

    def _build(self, plan: NodePlan, old: Deployment | None) -> tuple[Deployment, int, int]:
        previous = old.models if old else {}
        models: dict[tuple[str, str], Model] = {}
        broken: dict[str, str] = {}
        devices: list[DeviceScheduler] = []
        routes: dict[str, list[SessionGroup]] = {}
        loaded = reused = 0
        for device_plan in plan.devices:
            where = self._place(device_plan.device)
            groups: list[SessionGroup] = []
            for seat in device_plan.seats:
                replica = seat.replica
                if replica is None:
                    continue
                key = (replica.artifact, where)
                model = models.get(key)
                if model is None and key in previous:
                    model = previous[key]
                    reused += 1
                elif model is None:
                    try:
                        model = self._backend.load(replica.artifact, where)
                    except Exception as exc:  # a bad artifact must not stop the other models
                        broken[replica.model_id] = f"{replica.artifact}: {exc}"
                        log.error("model %s not served: %s", replica.model_id, exc)
                        continue
                    loaded += 1
                models[key] = model
                group = SessionGroup(seat=seat, model=model)
                groups.append(group)
                routes.setdefault(replica.model_id, []).append(group)
            devices.append(DeviceScheduler(device_plan, groups, self._backend, self._config, where))
        for model_id in routes:
            broken.pop(model_id, None)  # another replica of it loaded
        return Deployment(plan, devices, routes, models, broken), loaded, reused

    def group(self, model_id: str) -> SessionGroup:
        """A replica of ``model_id`` (its schema, tenant and SLA); raise UnknownModel, ..."""
        return self._groups(self._current(), model_id)[0]

    def route(self, model_id: str) -> SessionGroup:
        """The replica a query of ``model_id`` goes to now: the least loaded one (queued work
        per session it can count on); raise UnknownModel or ModelUnavailable.

        A caller that checks admission before it has the query (the daemon, before it reads a
        body) routes once and passes the replica to :meth:`check` and :meth:`submit_to`, so
        that the replica judged is the replica that gets the query.
        """
        return self._least_loaded(self._groups(self._current(), model_id))

    def check(self, group: SessionGroup, arrival: float | None = None) -> None:
        """Raise Overloaded when the replica would refuse even a one-candidate query now;
        nothing is queued. A replica whose plan was replaced passes: submit_to hands on."""
        device = group.device
        if device is not None:
            device.check(group, 1, arrival)

    def submit_to(
        self, group: SessionGroup, query: Query, arrival: float | None = None
    ) -> Pending:
        """Queue a query on the replica :meth:`route` gave; raise Overloaded, GroupClosed, ...

        A replica drained (or stopped) for a plan swap since hands the query to the new plan,
        routed as :meth:`submit` does; without a newer plan the node is shutting down.
        """
        device = group.device
        if device is not None:
            try:
                return device.submit(group, query, arrival)
            except GroupClosed:
                pass
        return self.submit(group.model_id, query, arrival)

    def submit(self, model_id: str, query: Query, arrival: float | None = None) -> Pending:
        """Queue a query on the least loaded replica; raise UnknownModel, Overloaded, ..."""
        while True:
            deployment = self._current()
            group = self._least_loaded(self._groups(deployment, model_id))
            try:
                device = group.device
                if device is None:
                    raise GroupClosed(f"model {model_id!r}: replica stopped")
                return device.submit(group, query, arrival)
            except GroupClosed:
                if self._deployment is deployment:
                    raise  # closing without a newer deployment: the node is shutting down

    @staticmethod
    def _least_loaded(groups: list[SessionGroup]) -> SessionGroup:
        return groups[0] if len(groups) == 1 else min(groups, key=SessionGroup.load)

    def _current(self) -> Deployment:
        deployment = self._deployment
        if deployment is None:
            raise ModelUnavailable("no plan is loaded on this node yet")
        return deployment

    @staticmethod
    def _groups(deployment: Deployment, model_id: str) -> list[SessionGroup]:
        groups = deployment.routes.get(model_id)
        if groups:
            return groups
        if model_id in deployment.broken:
            why = deployment.broken[model_id]
            raise ModelUnavailable(f"model {model_id!r} failed to load: {why}")
        raise UnknownModel(f"model {model_id!r} is not served on this node")

    def close(self) -> None:
        """Drain and stop everything (the daemon's shutdown)."""
        with self._swap_lock:
            if self._deployment is None:
                return
            for device in self._deployment.devices:
                device.drain(self._config.drain_timeout_s)
