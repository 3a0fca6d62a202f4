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

Memory (docs/executor.md, "Memory"). Before anything loads, the replicas a plan would load
are summed per backend device from the backend's prediction of each one's bytes (exact for
zoo models) and checked against what the device has: its free memory less the backend's
reserve, plus what the old plan's weights would give back, and at most
``SchedulerConfig.memory_limit_mb``. A plan that does not fit is refused whole with
:class:`PlanRefused` — the message names the device, what it needs, what it has and each
artifact's share — and the old plan serves on; the refusal stays in :attr:`NodeRuntime.refused`
for the heartbeat until a plan is applied. While loading, each replica's measured footprint is
checked against the same room (a TorchScript file may hold more than its archive says), and a
plan that outgrows it is refused too. A plan that fits only once the old plan's weights are
gone is swapped cold: the old version drains and is released before the new one loads (the
node answers 503 meanwhile), rather than holding both and growing until the OS kills it.
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
from executor.scheduling.errors import GroupClosed, ModelUnavailable, PlanRefused, UnknownModel

log = logging.getLogger(__name__)

MIB = 2**20


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
    cold: bool = False  # the old version was released before this one loaded (memory)


@dataclass(frozen=True)
class MemoryPlan:
    """What a plan's replicas need of one backend device, and what the device has."""

    device: str  # the backend device
    plan_devices: tuple[str, ...]  # the plan's devices placed on it
    load: dict[str, int]  # artifact -> predicted bytes, for each replica to be loaded
    kept_bytes: int  # weights of the old plan the new one reuses here
    held_bytes: int  # weights of the old plan here, all of them
    free_bytes: int | None  # the backend's free memory (less its reserve); None: unknown
    limit_bytes: int | None  # SchedulerConfig.memory_limit_mb; None: no limit

    @property
    def need_bytes(self) -> int:
        return sum(self.load.values())

    @property
    def room_bytes(self) -> int | None:
        """Room for the new loads once the old plan's weights not reused are released."""
        rooms = []
        if self.free_bytes is not None:
            rooms.append(self.free_bytes + self.held_bytes - self.kept_bytes)
        if self.limit_bytes is not None:
            rooms.append(self.limit_bytes - self.kept_bytes)
        return min(rooms) if rooms else None

    @property
    def warm_room_bytes(self) -> int | None:
        """Room for the new loads while the old plan's weights are all still held."""
        rooms = []
        if self.free_bytes is not None:
            rooms.append(self.free_bytes)
        if self.limit_bytes is not None:
            rooms.append(self.limit_bytes - self.held_bytes)
        return min(rooms) if rooms else None

    def shortfall(self, need_bytes: int, what: str) -> str:
        """Why ``need_bytes`` do not fit, in one line."""
        parts = ", ".join(f"{a} {b / MIB:,.0f} MiB" for a, b in sorted(self.load.items()))
        room = self.room_bytes or 0
        limits = []
        if self.free_bytes is not None:
            limits.append(f"{self.free_bytes / MIB:,.0f} MiB free after the reserve")
        if self.limit_bytes is not None:
            limits.append(f"memory_limit_mb {self.limit_bytes / MIB:,.0f}")
        if self.held_bytes - self.kept_bytes:
            limits.append(f"{(self.held_bytes - self.kept_bytes) / MIB:,.0f} MiB released by "
                          "the old plan")
        if self.kept_bytes:
            limits.append(f"{self.kept_bytes / MIB:,.0f} MiB kept by reused replicas")
        return (
            f"device {'+'.join(self.plan_devices)} (on {self.device}) {what} "
            f"{need_bytes / MIB:,.0f} MiB of weights ({parts}) but has room for "
            f"{room / MIB:,.0f} MiB ({'; '.join(limits)})"
        )


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
        self.refused: PlanRefused | None = None  # the newest plan refused since one applied
        # The plan being loaded, if any: its models are coming (503), not unknown here (404).
        self._incoming: NodePlan | None = None

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
        """Serve a new plan version; None when it is not newer than the current one.

        Raises PlanRefused (and keeps it in :attr:`refused`) when its replicas do not fit
        their devices' memory; the current plan then serves on, unless the swap was cold.
        """
        with self._swap_lock:
            old = self._deployment
            if old is not None and plan.version <= old.plan.version:
                log.info("plan version %d ignored: serving %d", plan.version, old.plan.version)
                return None
            self._incoming = plan
            try:
                memory = self._memory_plans(plan, old)
                cold = old is not None and any(
                    m.warm_room_bytes is not None and m.need_bytes > m.warm_room_bytes
                    for m in memory.values()
                )
                previous = old.models if old is not None else {}
                if cold and old is not None:
                    log.warning(
                        "plan version %d fits only without version %d's weights: swapping "
                        "cold (the node answers 503 until it has loaded)",
                        plan.version, old.plan.version,
                    )  # fmt: skip
                    kept = {(r.artifact, self._place(d.device)) for d, s in plan.replicas()
                            if (r := s.replica) is not None}  # fmt: skip
                    previous = {k: m for k, m in previous.items() if k in kept}
                    self._deployment = None
                    self._drain(old)
                    old = None
                new, loaded, reused = self._build(plan, previous, memory)
            except PlanRefused as refusal:
                log.error("%s", refusal)
                self.refused = refusal
                raise
            finally:
                self._incoming = None
            self.refused = None
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
            clean = self._drain(old) if old is not None else True
            return SwapReport(plan.version, loaded, reused, dict(new.broken), clean, cold)

    def footprints(self) -> dict[tuple[str, str], int]:
        """Bytes each served replica's weights took when they loaded, by (model id, plan
        device)."""
        deployment = self._deployment
        if deployment is None:
            return {}
        return {
            (g.model_id, d.plan.device): g.model.footprint_bytes
            for d in deployment.devices
            for g in d.groups
        }

    def predicted_footprints(self, plan: NodePlan) -> dict[tuple[str, str], int]:
        """Bytes the backend predicts for each replica of ``plan``, by (model id, plan device);
        artifacts it cannot predict are left out."""
        predicted: dict[tuple[str, str], int] = {}
        for device_plan, seat in plan.replicas():
            assert seat.replica is not None
            try:
                size = self._backend.predict_bytes(seat.replica.artifact)
            except ValueError:
                continue
            predicted[(seat.replica.model_id, device_plan.device)] = size
        return predicted

    def _drain(self, old: Deployment) -> bool:
        """Drain and stop a replaced deployment; True when nothing was cut short."""
        clean = True
        began = time.monotonic()
        for device in old.devices:
            left = self._config.drain_timeout_s - (time.monotonic() - began)
            clean &= device.drain(max(left, 0.0))
        if not clean:
            log.warning("plan version %d: drain timed out", old.plan.version)
        return clean

    def _memory_plans(self, plan: NodePlan, old: Deployment | None) -> dict[str, MemoryPlan]:
        """Per backend device, what the plan loads there and what the device has; raise
        PlanRefused when the loads cannot fit even once the old plan's weights are gone."""
        previous = old.models if old is not None else {}
        load: dict[str, dict[str, int]] = {}
        kept: dict[str, set[str]] = {}
        names: dict[str, list[str]] = {}
        for device_plan, seat in plan.replicas():
            assert seat.replica is not None
            artifact, where = seat.replica.artifact, self._place(device_plan.device)
            if device_plan.device not in names.setdefault(where, []):
                names[where].append(device_plan.device)
            if (artifact, where) in previous:
                kept.setdefault(where, set()).add(artifact)
                continue
            try:
                predicted = self._backend.predict_bytes(artifact)
            except ValueError:
                predicted = 0  # it will not load, and its load error says why
            load.setdefault(where, {})[artifact] = predicted
        limit = int(self._config.memory_limit_mb * MIB) or None
        plans: dict[str, MemoryPlan] = {}
        for where, loads in load.items():
            memory = MemoryPlan(
                device=where,
                plan_devices=tuple(names[where]),
                load=loads,
                kept_bytes=sum(previous[(a, where)].footprint_bytes for a in kept.get(where, ())),
                held_bytes=sum(m.footprint_bytes for (_, w), m in previous.items() if w == where),
                free_bytes=self._backend.free_bytes(where),
                limit_bytes=limit,
            )
            room = memory.room_bytes
            if room is not None and memory.need_bytes > room:
                raise PlanRefused(plan.version, memory.shortfall(memory.need_bytes, "needs"))
            plans[where] = memory
        return plans

    def _build(
        self,
        plan: NodePlan,
        previous: dict[tuple[str, str], Model],
        memory: dict[str, MemoryPlan],
    ) -> tuple[Deployment, int, int]:
        models: dict[tuple[str, str], Model] = {}
        measured: dict[str, int] = {}  # backend device -> bytes its new replicas took
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
                    measured[where] = measured.get(where, 0) + model.footprint_bytes
                    room = memory[where].room_bytes
                    if room is not None and measured[where] > room:
                        # Predicted to fit, measured not to: what loaded is dropped with
                        # this frame, and the old plan (if any) serves on.
                        raise PlanRefused(
                            plan.version, memory[where].shortfall(measured[where], "measured")
                        )
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

    def count_rejected(self, group: SessionGroup, count: int) -> None:
        """Count ``count`` queries of the replica refused before they reached it."""
        device = group.device
        if device is not None:
            device.count_rejected(group, count)

    def submit_to(
        self, group: SessionGroup, query: Query, arrival: float | None = None
    ) -> Pending:
        """Queue a query on the replica :meth:`route` gave; raise Overloaded, GroupClosed, ...

        A replica drained (or stopped) for a plan swap since hands the query to the new plan,
        routed as :meth:`submit` does; without a newer plan the node is shutting down. The
        query was admitted for ``group``'s tenant and parsed with its schema: a new replica
        of the model with another tenant or another schema does not take it
        (ModelUnavailable, 503: the client sends it again and is judged anew), since the
        query would be scored by another tenant's model, or would not stack into a batch of
        that model's queries.
        """
        device = group.device
        if device is not None:
            try:
                return device.submit(group, query, arrival)
            except GroupClosed:
                pass
        return self.submit(group.model_id, query, arrival, admitted_by=group)

    def submit(
        self,
        model_id: str,
        query: Query,
        arrival: float | None = None,
        admitted_by: SessionGroup | None = None,
    ) -> Pending:
        """Queue a query on the least loaded replica; raise UnknownModel, Overloaded, ...

        ``admitted_by``: the replica whose tenant and schema the query was admitted and parsed
        for (see :meth:`submit_to`); ModelUnavailable when the replica routed to differs.
        """
        while True:
            deployment = self._current()
            group = self._least_loaded(self._groups(deployment, model_id))
            if admitted_by is not None and (
                group.tenant != admitted_by.tenant
                or group.model.schema != admitted_by.model.schema
            ):
                raise ModelUnavailable(
                    f"model {model_id!r} is served for another tenant or with another schema "
                    "since the query was admitted; send it again"
                )
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
            incoming = self._incoming
            if incoming is not None:  # a cold swap, or the first plan
                raise ModelUnavailable(f"plan version {incoming.version} is loading")
            raise ModelUnavailable("no plan is loaded on this node yet")
        return deployment

    def _groups(self, deployment: Deployment, model_id: str) -> list[SessionGroup]:
        """The replicas of ``model_id``; UnknownModel only for a model that no plan the node
        serves or is loading holds: a model the plan being loaded brings is coming, and a
        router that sent its query by the newest allocation is told to retry (503)."""
        groups = deployment.routes.get(model_id)
        if groups:
            return groups
        if model_id in deployment.broken:
            why = deployment.broken[model_id]
            raise ModelUnavailable(f"model {model_id!r} failed to load: {why}")
        incoming = self._incoming
        if incoming is not None and any(
            seat.replica is not None and seat.replica.model_id == model_id
            for _, seat in incoming.replicas()
        ):
            raise ModelUnavailable(
                f"model {model_id!r} is loading on this node (plan version {incoming.version})"
            )
        raise UnknownModel(f"model {model_id!r} is not served on this node")

    def close(self) -> None:
        """Drain and stop everything (the daemon's shutdown)."""
        with self._swap_lock:
            if self._deployment is None:
                return
            for device in self._deployment.devices:
                device.drain(self._config.drain_timeout_s)
