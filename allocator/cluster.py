"""The cluster layer: from a ClusterSnapshot to the core instance, and back to node plans.

Goods (docs/architecture.md §2): every seat of every GPU is an indivisible good; the streams a GPU
has beyond its seats form one divisible *pool* good. The core's fairness notions measure every
tenant against its total value ``T_i`` (the sum of its values over all goods), so the valuation must
not give a tenant value for capacity it could never use: a tenant that wants 3 replicas has no
use for the other 250 seats of the cluster, and counting them would make its proportional
share unreachable. Hence **candidate seats**: every model ``m`` of a tenant is given exactly
``replicas_wanted`` candidate seats (fewer only if fewer seats fit it), each earmarked for one
replica of ``m``; the tenant values only its candidate seats and the pools of the GPUs they
are on. Its ``T_i`` is then the value of the whole candidate bundle — a bundle it could hold —
so ``(w_i/W)·T_i`` is always reachable, and PROP-type criteria mean proportionality with
respect to what the tenant can use.

Candidates are chosen deterministically (docs/fairness.md, "From GPUs to values"): seats the
tenant held in the previous plans first (so a churn bound can be met), then round robin over
(tenant, model), each taking the fitting seat claimed by the fewest others, then the most
valuable, then on the least claimed GPU. While the cluster has room, candidate sets do not
overlap and every tenant can get everything it can use; once it is oversubscribed, overlaps
are spread evenly and the core decides fairly who gets the contended seats.

Values are fractions of demand served, with a model's demand ``D`` split evenly over the
replicas it wants (``d = D / replicas_wanted``): a candidate seat is worth ``min(q(1), d)/D``
and a pool the extra demand its streams let the tenant's candidate replicas on that GPU serve.
A tenant's values therefore never add up to more than the demand of its models. Side
constraints the plain core lacks: ``forbidden`` — every non-candidate seat (memory fit and the
demand caps follow from the candidate sets); ``requires`` — a pool share needs a seat on its
GPU; every good is ``optional``. Curves not yet profiled are estimates; the certificate's
notes list them.

Pools are ``optional`` in the core, so the division may leave part of a pool to nobody: when
the seated tenants' single streams already serve their demand (values are capped at demand, so
nobody values more streams), or when giving more would make another tenant envy. Idle streams
help nobody, so :func:`share_idle_pools` then splits each seated GPU's unassigned pool among the
tenants seated there in proportion to their weights — as far as every tenant's criterion
allows, which the one checker decides; the certificate is computed on this completed
allocation, the one the plans are cut from. A GPU where nobody is seated keeps its pool idle.

The core allocation is cut into one NodePlan per node: each held seat gets the model it was
earmarked for, and the tenant's pool share ``x·P`` becomes ``⌊x·P⌋`` whole streams dedicated
to its seats there and a weight in the shared pool for the rest.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from allocator.certificate import (
    EF_TYPE,
    Bundles,
    Certificate,
    bundles,
    certify,
    constraint_terms,
    objective_ratio,
    validate_allocation,
)
from allocator.errors import AllocationError, InstanceError
from allocator.instance import Agent, Allocation, Instance
from allocator.options import Churn, SolveOptions
from allocator.plan import DevicePlan, ModelReplica, NodePlan, SeatPlan
from allocator.snapshot import ClusterSnapshot, Gpu, Model, ThroughputCurve
from allocator.solve import divide

log = logging.getLogger(__name__)

# Less than this fraction of a pool is not worth handing out (and not worth a note).
IDLE_SHARE = 1e-6


@dataclass(frozen=True)
class ClusterInstance:
    """The core instance of a snapshot and what is needed to map its allocation back."""

    instance: Instance
    earmark: dict[tuple[str, str], str]  # (tenant, seat good) -> model the seat would hold
    notes: tuple[str, ...]  # estimated curves, models short of seats (for the certificate)


@dataclass(frozen=True)
class ClusterAllocation:
    plans: dict[str, NodePlan]  # node -> its plan, for every node of the snapshot
    certificate: Certificate  # the checker's certificate of `allocation` (see its `holds`)
    instance: Instance  # the core instance built from the snapshot
    # The allocation the plans were cut from and the certificate was computed on: the core
    # division with its idle pools shared (``idle_shares``).
    allocation: Allocation
    # pool -> tenant -> the part of its share that share_idle_pools added to the core's
    idle_shares: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "plans": {node: plan.to_dict() for node, plan in self.plans.items()},
            "certificate": self.certificate.to_dict(),
            "indivisible": dict(self.allocation.indivisible),
            "divisible": {d: dict(s) for d, s in self.allocation.divisible.items()},
            "idle_shares": {d: dict(s) for d, s in self.idle_shares.items()},
        }


def seat_name(gpu: Gpu, k: int) -> str:
    return f"{gpu.gpu_id}#seat{k}"


def pool_name(gpu: Gpu) -> str:
    return f"{gpu.gpu_id}#pool"


def _qps(curve: tuple[float, ...], streams: int) -> float:
    """q(s); beyond the measured range the curve stays flat (no extrapolated gains)."""
    return curve[min(streams, len(curve)) - 1] if curve else 0.0


def _fits(model: Model, gpu: Gpu) -> bool:
    return model.memory_mb <= gpu.memory_mb / gpu.seats


def _check(snapshot: ClusterSnapshot) -> None:
    tenants = [t.name for t in snapshot.tenants]
    if len(set(tenants)) != len(tenants):
        raise InstanceError("snapshot: duplicate tenant names")
    if len({m.model_id for m in snapshot.models}) != len(snapshot.models):
        raise InstanceError("snapshot: duplicate model ids")
    if len({g.gpu_id for g in snapshot.gpus}) != len(snapshot.gpus):
        raise InstanceError("snapshot: duplicate GPU ids")
    for m in snapshot.models:
        if m.tenant not in tenants:
            raise InstanceError(f"model {m.model_id!r}: unknown tenant {m.tenant!r}")
        if m.demand_qps <= 0 or m.replicas_wanted < 0:
            raise InstanceError(
                f"model {m.model_id!r}: demand must be positive and replicas_wanted ≥ 0")
    for g in snapshot.gpus:
        if g.seats < 1 or g.streams < g.seats:
            raise InstanceError(f"gpu {g.gpu_id!r}: needs seats ≥ 1 and streams ≥ seats")


def _replica_demand(model: Model) -> float:
    """d = D / replicas_wanted: the share of the model's demand one replica is meant to serve."""
    return model.demand_qps / model.replicas_wanted


def _seat_value(model: Model, curve: ThroughputCurve) -> float:
    """v(seat) = min(q(1), d) / D: the demand one replica with its base stream serves."""
    return min(_qps(curve.qps, 1), _replica_demand(model)) / model.demand_qps


def _pool_value(models: list[Model], gpu: Gpu) -> float:
    """u(pool) = the most extra demand the pool's P streams let these replicas serve.

    ``models`` holds one entry per candidate replica of the tenant on ``gpu``; the P streams
    are split between them in whole streams, optimally (a small knapsack: curves need not be
    concave), each replica's gain capped by its share ``d`` of its model's demand.
    """
    extra = gpu.streams - gpu.seats
    best = [0.0] * (extra + 1)  # best[p]: the most gain from p streams over replicas so far
    for m in models:
        curve, cap = m.curve(gpu).qps, _replica_demand(m)
        base = min(_qps(curve, 1), cap)
        gain = [(min(_qps(curve, 1 + p), cap) - base) / m.demand_qps for p in range(extra + 1)]
        best = [max(best[p - k] + gain[k] for k in range(p + 1)) for p in range(extra + 1)]
    return best[extra]


def _candidates(
    snapshot: ClusterSnapshot, held_before: dict[str, tuple[str, str]]
) -> tuple[dict[tuple[str, str], str], list[str]]:
    """Earmark ``replicas_wanted`` candidate seats for every model: (tenant, seat) -> model.

    Seats the model (else another model of the tenant) held before come first; then, round
    robin over (tenant, model), the fitting seat fewest others claim, then the most valuable,
    then on the GPU with the fewest claims, then by name — so candidate sets overlap only once
    every fitting seat is claimed, and evenly then. Returns the earmarks and notes on models
    left short of seats.
    """
    gpus = sorted(snapshot.gpus, key=lambda g: g.gpu_id)
    gpu_of = {seat_name(g, k): g for g in gpus for k in range(g.seats)}
    models = sorted((m for m in snapshot.models if m.replicas_wanted > 0),
                    key=lambda m: (m.tenant, m.model_id))
    need = {m.model_id: m.replicas_wanted for m in models}
    earmark: dict[tuple[str, str], str] = {}
    claims: dict[str, int] = defaultdict(int)  # seat -> tenants claiming it
    gpu_claims: dict[str, int] = defaultdict(int)  # gpu id -> claims on its seats

    def claim(model: Model, seat: str) -> None:
        earmark[model.tenant, seat] = model.model_id
        need[model.model_id] -= 1
        claims[seat] += 1
        gpu_claims[gpu_of[seat].gpu_id] += 1

    by_id = {m.model_id: m for m in models}
    for seat, (tenant, model_id) in sorted(held_before.items()):
        gpu = gpu_of.get(seat)
        if gpu is None or (tenant, seat) in earmark:
            continue
        fitting = [m for m in models if m.tenant == tenant and need[m.model_id] > 0
                   and _fits(m, gpu)]
        same = by_id.get(model_id)
        if same is not None and same in fitting:
            claim(same, seat)
        elif fitting:
            claim(max(fitting, key=lambda m: (need[m.model_id], _neg(m.model_id))), seat)
    seats_of = {g.gpu_id: [seat_name(g, k) for k in range(g.seats)] for g in gpus}
    # (GPU id, its seats, the seat value to m) for every GPU m fits, most valuable first.
    options = {}
    for m in models:
        estimate = _seat_value(m, m.estimate)  # computed once: most GPUs are not profiled
        options[m.model_id] = sorted(
            ((g.gpu_id, seats_of[g.gpu_id],
              _seat_value(m, m.profiles[g.gpu_id]) if g.gpu_id in m.profiles else estimate)
             for g in gpus if _fits(m, g)), key=lambda o: -o[2])
    active = [m for m in models if need[m.model_id] > 0]
    while active:
        for m in active:
            best: tuple[int, float, int, str, int] | None = None
            best_seat = ""
            for gpu_id, seats, value in options[m.model_id]:
                for k, seat in enumerate(seats):
                    # Cheap pre-test on the first key before building the full one.
                    if (best is not None and claims[seat] > best[0]) or (
                            (m.tenant, seat) in earmark):
                        continue
                    key = (claims[seat], -value, gpu_claims[gpu_id], gpu_id, k)
                    if best is None or key < best:
                        best, best_seat = key, seat
            if best is None:
                need[m.model_id] = -need[m.model_id]  # no seat left to it: stop asking
            else:
                claim(m, best_seat)
        active = [m for m in active if need[m.model_id] > 0]
    notes = [f"model {m.model_id}: {m.replicas_wanted + need[m.model_id]} of "
             f"{m.replicas_wanted} wanted replicas fit a seat"
             for m in models if need[m.model_id] < 0]
    return earmark, notes


def build_instance(
    snapshot: ClusterSnapshot, held_before: dict[str, tuple[str, str]] | None = None
) -> ClusterInstance:
    """The core instance of a snapshot (``held_before``: seat -> (tenant, model) previously)."""
    _check(snapshot)
    earmark, notes = _candidates(snapshot, held_before or {})
    models = {m.model_id: m for m in snapshot.models}
    gpus = sorted(snapshot.gpus, key=lambda g: g.gpu_id)
    gpu_of = {seat_name(g, k): g for g in gpus for k in range(g.seats)}
    values: dict[str, dict[str, float]] = {t.name: {} for t in snapshot.tenants}
    replicas_on: dict[tuple[str, str], list[Model]] = defaultdict(list)  # (tenant, gpu id)
    estimated: set[str] = set()
    for (tenant, seat), model_id in earmark.items():
        model, gpu = models[model_id], gpu_of[seat]
        values[tenant][seat] = _seat_value(model, model.curve(gpu))
        replicas_on[tenant, gpu.gpu_id].append(model)
        if not model.curve(gpu).measured:
            estimated.add(f"estimated throughput: model {model_id} on {gpu.gpu_id}")
    gpu_by_id = {g.gpu_id: g for g in gpus}
    for (tenant, gpu_id), replicas in replicas_on.items():
        gpu = gpu_by_id[gpu_id]
        if gpu.streams > gpu.seats:
            gain = _pool_value(sorted(replicas, key=lambda m: m.model_id), gpu)
            if gain > 0:
                values[tenant][pool_name(gpu)] = gain
    indivisible = tuple(gpu_of)
    divisible = tuple(pool_name(g) for g in gpus if g.streams > g.seats)
    instance = Instance(
        agents=tuple(Agent(t.name, t.weight, t.criterion) for t in snapshot.tenants),
        indivisible=indivisible,
        divisible=divisible,
        values=values,
        objective=snapshot.objective,
        # Every seat outside a tenant's candidates: this carries memory fit and demand caps.
        forbidden=frozenset((t.name, s) for t in snapshot.tenants for s in indivisible
                            if (t.name, s) not in earmark),
        requires={pool_name(g): tuple(seat_name(g, k) for k in range(g.seats))
                  for g in gpus if g.streams > g.seats},
        optional=frozenset((*indivisible, *divisible)),
    )
    return ClusterInstance(instance, earmark, tuple(sorted(estimated)) + tuple(notes))


def previous_replicas(
    snapshot: ClusterSnapshot, previous: dict[str, NodePlan]
) -> dict[str, tuple[str, str]]:
    """Seat good -> (tenant, model) it held in the previous plans."""
    gpus = {(g.node, g.device): g for g in snapshot.gpus}
    held = {}
    for node, plan in previous.items():
        for device, seat in plan.replicas():
            gpu = gpus.get((node, device.device))
            if gpu is not None and seat.replica is not None and seat.seat < gpu.seats:
                held[seat_name(gpu, seat.seat)] = (seat.replica.tenant, seat.replica.model_id)
    return held


def allocate_cluster(
    snapshot: ClusterSnapshot,
    options: SolveOptions | None = None,
    previous: dict[str, NodePlan] | None = None,
    *,
    version: int = 1,
    allocation_id: int = 0,
) -> ClusterAllocation:
    """Fairly allocate the snapshot's GPUs and cut one plan per node (certified)."""
    options = options or SolveOptions()
    if options.objective is None:
        options = SolveOptions(
            solver=options.solver, time_limit_s=options.time_limit_s, gap=options.gap,
            objective=snapshot.objective, churn_limit=options.churn_limit,
        )
    held = previous_replicas(snapshot, previous or {})
    built = build_instance(snapshot, held)
    churn = None
    if options.churn_limit is not None and previous:
        churn = Churn(previous={seat: tenant for seat, (tenant, _) in held.items()},
                      limit=options.churn_limit)
    division = divide(built.instance, options, churn=churn, notes=built.notes)
    allocation, certificate, idle = share_idle_pools(
        built.instance, division.allocation, division.certificate)
    plans = _plans(snapshot, built, allocation, version, allocation_id)
    return ClusterAllocation(plans, certificate, built.instance, allocation, idle)


def share_idle_pools(
    instance: Instance, allocation: Allocation, certificate: Certificate
) -> tuple[Allocation, Certificate, dict[str, dict[str, float]]]:
    """Make the division work-conserving: split every optional divisible good's unassigned
    part among the holders of its required goods (a pool among the tenants seated on its
    GPU), in proportion to their weights, as far as fairness allows.

    Why by weight: the part left over is one the core had no reason to give (nobody seated
    values it) or a reason not to (envy), so where it can be given at all it goes by
    entitlement to those who can use it. And giving seated
    ``j`` the fraction ``t·L·w_j/W_S`` of a leftover ``L`` raises ``V_i(A_j)/w_j`` by the same
    ``t·L·u_i/W_S`` for every ``j`` seated there, and ``V_i(A_i)/w_i`` of a seated ``i`` by as
    much: weighted envy between seated tenants, and every PROP-type margin, cannot get worse.
    What can is the envy of a tenant that values the pool but holds no seat there (its
    candidate seat went to another), unweighted EFM, and EFM towards a tenant that held no
    divisible good before. So pool by pool (in the instance's order) ``t ∈ [0, 1]`` is the
    largest step that keeps every criterion margin of the one checker at least
    ``min(its margin before, 0)`` at the certificate's λ — the margins are affine in ``t`` —
    and the part ``(1 − t)·L`` stays unassigned, with a note naming the tenant whose criterion
    stops it. No agent whose criterion held stops holding, and the returned certificate is the
    checker's, computed on the returned allocation. Returns (allocation, certificate, the
    shares added: good -> agent -> fraction).
    """
    weight = {a.name: a.weight for a in instance.agents}
    lam = {a.name: certificate.lambda_ef if a.criterion in EF_TYPE else certificate.lambda_prop
           for a in instance.agents}
    efm = [a.name for a in instance.agents if a.criterion == "efm"]
    shares = {d: dict(s) for d, s in allocation.divisible.items()}
    b = bundles(instance, allocation)
    added: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for d in instance.divisible:
        if d not in instance.requires or d not in instance.optional:
            continue
        seated = sorted({h for g in instance.requires[d]
                         if (h := allocation.indivisible.get(g)) is not None})
        left = 1.0 - sum(shares[d].values())
        if not seated or left < IDLE_SHARE:
            continue
        total = sum(weight[j] for j in seated)
        step = {j: left * weight[j] / total for j in seated}
        t, binding, after = _largest_step(instance, b, d, step, lam, efm)
        if t * left >= IDLE_SHARE:
            for j, x in step.items():
                shares[d][j] = shares[d].get(j, 0.0) + t * x
            added[d] = {j: t * x for j, x in step.items()}
            b = after
        if (1.0 - t) * left >= IDLE_SHARE:
            notes.append(f"{d}: {(1.0 - t) * left:.1%} of the pool left unassigned: sharing it "
                         f"with the tenants seated there would break {binding}'s criterion")
    if not added and not notes:
        return allocation, certificate, {}
    shared = Allocation(dict(allocation.indivisible), shares)
    again = certify(instance, shared, lambda_ef=certificate.lambda_ef,
                    lambda_prop=certificate.lambda_prop, objective=certificate.objective,
                    solver=certificate.solver, status=certificate.status, gap=certificate.gap,
                    time_s=certificate.time_s, notes=(*certificate.notes, *notes))
    best = certificate.unconstrained_value
    if best is not None:
        if math.isfinite(again.objective_value):
            # The shared allocation is feasible for the unconstrained problem too.
            best = max(best, again.objective_value)
        counted = sum(1 for row in again.agents.values() if row.total > 0)
        again = replace(again, unconstrained_value=best, ratio=objective_ratio(
            again.objective, again.objective_value, best, counted))
    broken = [a for a, row in certificate.agents.items()
              if row.holds and not again.agents[a].holds]
    if broken:
        log.warning("sharing idle pools would break %s's criterion; pools left as divided",
                    broken[0])
        return allocation, certificate, {}
    return shared, again, added


def _largest_step(
    instance: Instance, b: Bundles, d: str, step: dict[str, float], lam: dict[str, float],
    efm: list[str],
) -> tuple[float, str, Bundles]:
    """The largest ``t ∈ [0, 1]`` by which ``step`` (agent -> more of ``d``) may be given
    without any criterion margin going below ``min(its margin now, 0)``; the agent whose
    margin bounds it ("" if none does) and the bundles after giving ``t·step``.

    Views are linear in the shares, so every margin is affine in ``t`` once the agents given
    ``d`` count as holding a divisible good (EFM's switch, taken at ``t > 0``).
    """
    valuers = [i for i in b.agents if instance.value(i, d) > 0]
    switch = any(not b.holds_divisible[j] for j in step)
    start = replace(b, holds_divisible={**b.holds_divisible, **dict.fromkeys(step, True)})
    end = _moved(start, instance, d, valuers, step, 1.0)
    t, binding = 1.0, ""
    for i in sorted(set(valuers) | (set(efm) if switch else set())):
        for (_, a_now, b_now), (_, a0, b0), (_, a1, _) in zip(
                constraint_terms(instance, b, i), constraint_terms(instance, start, i),
                constraint_terms(instance, end, i), strict=True):
            floor = min(a_now + b_now * lam[i], 0.0)
            m0, m1 = a0 + b0 * lam[i], a1 + b0 * lam[i]
            if m1 >= floor:
                continue
            limit = 0.0 if m0 < floor else (m0 - floor) / (m0 - m1)
            if limit < t:
                t, binding = limit, i
    if t >= 1.0:
        return 1.0, "", end
    # Shave the step a little below the bound so that rounding cannot cross it.
    t *= 1.0 - 1e-9
    return t, binding, _moved(start, instance, d, valuers, step, t)


def _moved(b: Bundles, instance: Instance, d: str, valuers: list[str],
           step: dict[str, float], t: float) -> Bundles:
    """``b`` after every seated ``j`` gains ``t·step[j]`` of ``d`` (only valuers' views move)."""
    view = dict(b.view)
    for i in valuers:
        u = instance.value(i, d)
        row = dict(view[i])
        for j, x in step.items():
            row[j] += t * x * u
        view[i] = row
    return replace(b, view=view)


def _plans(
    snapshot: ClusterSnapshot, built: ClusterInstance, allocation: Allocation, version: int,
    allocation_id: int,
) -> dict[str, NodePlan]:
    models = {m.model_id: m for m in snapshot.models}
    devices: dict[str, list[DevicePlan]] = {g.node: [] for g in snapshot.gpus}
    for gpu in sorted(snapshot.gpus, key=lambda g: g.gpu_id):
        extra = gpu.streams - gpu.seats
        shares = allocation.divisible.get(pool_name(gpu), {}) if extra > 0 else {}
        holders: dict[str, list[int]] = defaultdict(list)
        replicas: dict[int, ModelReplica] = {}
        for k in range(gpu.seats):
            tenant = allocation.indivisible.get(seat_name(gpu, k))
            if tenant is None:
                continue
            model = models[built.earmark[tenant, seat_name(gpu, k)]]
            holders[tenant].append(k)
            replicas[k] = ModelReplica(model.model_id, tenant, model.artifact, model.sla_p99_ms)
        dedicated: dict[int, int] = defaultdict(int)
        weight: dict[int, float] = defaultdict(float)
        for tenant, seats in holders.items():
            streams = shares.get(tenant, 0.0) * extra
            whole = math.floor(streams + 1e-9)
            for n in range(whole):
                dedicated[seats[n % len(seats)]] += 1
            for k in seats:
                weight[k] += max(0.0, streams - whole) / len(seats)
        pool = extra - sum(dedicated.values())
        seats_plan = tuple(
            SeatPlan(k, replicas.get(k), dedicated.get(k, 0), weight.get(k, 0.0) if pool else 0.0)
            for k in range(gpu.seats)
        )
        devices[gpu.node].append(DevicePlan(gpu.device, gpu.kind, gpu.streams, pool, seats_plan))
    return {
        node: NodePlan(node, version, allocation_id, tuple(devs))
        for node, devs in sorted(devices.items())
    }


def _neg(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text)


def validate_cluster_allocation(snapshot: ClusterSnapshot, result: ClusterAllocation) -> None:
    """Raise AllocationError unless the result's allocation, certificate and plans are sound:
    the allocation is valid and the certificate is the checker's for it at the λ it reports
    (every agent's value and whether its criterion holds), there is one plan per node, every
    device's seats, dedicated and pool streams fit its streams, and the plans are cut from
    that allocation — each seat holds a replica of the tenant the allocation gives it to, and
    each tenant's dedicated streams plus pool weights on a GPU are its share ``x·P`` of the
    pool."""
    validate_allocation(result.instance, result.allocation)
    cert = result.certificate
    again = certify(result.instance, result.allocation, lambda_ef=cert.lambda_ef,
                    lambda_prop=cert.lambda_prop)
    for name, row in again.agents.items():
        stated = cert.agents.get(name)
        if stated is None or stated.holds != row.holds or not math.isclose(
                stated.value, row.value, rel_tol=1e-9, abs_tol=1e-12):
            raise AllocationError(f"the certificate's row for {name!r} is not the checker's "
                                  f"for the allocation the plans are cut from")
    if set(result.plans) != {g.node for g in snapshot.gpus}:
        raise AllocationError("plans: not exactly one plan per node of the snapshot")
    gpus = {(g.node, g.device): g for g in snapshot.gpus}
    for node, plan in result.plans.items():
        for device in plan.devices:
            gpu = gpus.get((node, device.device))
            if gpu is None:
                raise AllocationError(f"plan {node}/{device.device}: unknown device")
            used = len(device.seats) + device.shared_pool_streams + sum(
                s.dedicated_streams for s in device.seats)
            if used > device.streams or device.streams != gpu.streams:
                raise AllocationError(f"plan {node}/{device.device}: streams over-allocated")
            _check_cut(gpu, device, result.allocation)


def _check_cut(gpu: Gpu, device: DevicePlan, allocation: Allocation) -> None:
    """Raise AllocationError unless the device's plan is the allocation's seats and shares."""
    streams: dict[str, float] = defaultdict(float)
    for seat in device.seats:
        holder = allocation.indivisible.get(seat_name(gpu, seat.seat))
        tenant = seat.replica.tenant if seat.replica is not None else None
        if tenant != holder:
            raise AllocationError(f"plan {gpu.gpu_id} seat {seat.seat}: holds {tenant!r}, "
                                  f"the allocation gives the seat to {holder!r}")
        if tenant is not None:
            streams[tenant] += seat.dedicated_streams + seat.pool_weight
    extra = gpu.streams - gpu.seats
    shares = allocation.divisible.get(pool_name(gpu), {}) if extra > 0 else {}
    for tenant in sorted(set(streams) | set(shares)):
        share = shares.get(tenant, 0.0) * extra
        if abs(streams.get(tenant, 0.0) - share) > 1e-6 * max(1, extra):
            raise AllocationError(
                f"plan {gpu.gpu_id}: {tenant!r} gets {streams.get(tenant, 0.0):.6g} pool "
                f"streams, its share of the pool is {share:.6g}")
