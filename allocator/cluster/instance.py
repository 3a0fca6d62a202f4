"""The cluster's core instance: from a ClusterSnapshot to the goods, values and side
constraints of an :class:`~allocator.instance.Instance`.

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
tenant held in the previous plans first (so a churn bound can be met), then rounds in which
every tenant takes one turn per model still asking, each taking the fitting seat claimed by the
fewest others, then the most valuable, then on a GPU fewest models fit (best fit), then on the
least claimed node and GPU. A tenant's turns, and its
seats held before, go to its models by D'Hondt on their weights (docs/fairness.md, "Per-model
weights"). While the cluster has room, candidate sets do not overlap and every tenant can get
everything it can use; once it is oversubscribed, overlaps are spread evenly and the core
decides fairly who gets the contended seats.

Values are fractions of demand served within the model's SLA (curves translated by
``within_sla``), scaled by the model's weight ``ω̂`` (its weight over the mean of its tenant's,
1 when they are equal), with a model's demand ``D`` split evenly over the replicas it wants
(``d = D / replicas_wanted``): a candidate seat is worth ``ω̂·min(q(1), d)/D`` and a pool the
weighted extra demand its streams let the tenant's candidate replicas on that GPU serve. A
tenant's values therefore never add up to more than its number of models. Side
constraints the plain core lacks: ``forbidden`` — every non-candidate seat (memory fit and the
demand caps follow from the candidate sets); ``requires`` — a pool share needs a seat on its
GPU; every good is ``optional``. Curves not yet profiled are estimates; the certificate's
notes list them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import get_args

from allocator.cluster.snapshot import (
    ClusterSnapshot,
    DeviceKind,
    Gpu,
    Model,
    ThroughputCurve,
    within_sla,
)
from allocator.errors import InstanceError
from allocator.instance import Agent, Instance

DEVICE_KINDS: tuple[str, ...] = get_args(DeviceKind)


@dataclass(frozen=True)
class ClusterInstance:
    """The core instance of a snapshot and what is needed to map its allocation back."""

    instance: Instance
    earmark: dict[tuple[str, str], str]  # (tenant, seat good) -> model the seat would hold
    notes: tuple[str, ...]  # estimated curves, models short of seats (for the certificate)
    weights: dict[str, float]  # model -> ω̂_m, the factor its values are scaled by
    # (tenant, pool good) -> model -> its part of the tenant's value of the pool (the gains of
    # the pool's optimal split), so a pool share's value can be attributed to models
    pool_gains: dict[tuple[str, str], dict[str, float]]


def seat_name(gpu_id: str, k: int) -> str:
    """The indivisible good of seat ``k`` of GPU ``gpu_id``: the one rule that names seats, in
    the cluster layer and in every generated instance (bench/instances.py)."""
    return f"{gpu_id}#seat{k}"


def pool_name(gpu_id: str) -> str:
    """The divisible good of the streams GPU ``gpu_id`` has beyond its seats."""
    return f"{gpu_id}#pool"


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
        if not (m.weight > 0 and math.isfinite(m.weight)):
            raise InstanceError(f"model {m.model_id!r}: weight must be positive, got {m.weight}")
        if m.memory_mb <= 0 or not m.sla_p99_ms > 0:
            raise InstanceError(
                f"model {m.model_id!r}: memory_mb and sla_p99_ms must be positive, got "
                f"{m.memory_mb} and {m.sla_p99_ms}")
    for g in snapshot.gpus:
        # Only the kinds a node plan has (allocator.cluster.plan): the plan of any other would
        # be solved and then refused by every daemon.
        if g.kind not in DEVICE_KINDS:
            raise InstanceError(
                f"gpu {g.gpu_id!r}: kind must be {' or '.join(map(repr, DEVICE_KINDS))}, "
                f"got {g.kind!r}"
            )
        if g.seats < 1 or g.streams < g.seats:
            raise InstanceError(f"gpu {g.gpu_id!r}: needs seats ≥ 1 and streams ≥ seats")
        if g.memory_mb <= 0:
            raise InstanceError(f"gpu {g.gpu_id!r}: memory_mb must be positive, got {g.memory_mb}")


def _replica_demand(model: Model) -> float:
    """d = D / replicas_wanted: the share of the model's demand one replica is meant to serve."""
    return model.demand_qps / model.replicas_wanted


def model_weights(snapshot: ClusterSnapshot) -> dict[str, float]:
    """ω̂_m = ω_m / (mean ω over its tenant's models that want replicas): the factor each
    value of model ``m`` is scaled by. Equal weights give 1 — the values of a snapshot without
    model weights — and a tenant's ω̂ add up to its number of models, so ``T_i`` stays at most
    that number (docs/fairness.md, "Per-model weights")."""
    wanting: dict[str, list[Model]] = defaultdict(list)
    for m in snapshot.models:
        if m.replicas_wanted > 0:
            wanting[m.tenant].append(m)
    return {m.model_id: m.weight * len(own) / sum(o.weight for o in own)
            for own in wanting.values() for m in own}


def _seat_value(model: Model, curve: ThroughputCurve, scale: float) -> float:
    """v(seat) = ω̂·min(q(1), d) / D: the demand one replica with its base stream serves,
    scaled by the model's weight ω̂."""
    return scale * min(_qps(curve.qps, 1), _replica_demand(model)) / model.demand_qps


def _pool_split(models: list[Model], gpu: Gpu, scale: dict[str, float]) -> list[float]:
    """Each replica's gain in u(pool), the most weighted extra demand the pool's P streams let
    these replicas serve; u(pool) is their sum.

    ``models`` holds one entry per candidate replica of the tenant on ``gpu``; the P streams
    are split between them in whole streams, optimally (a small knapsack: curves need not be
    concave), each replica's gain capped by its share ``d`` of its model's demand and scaled by
    its model's ω̂. The gains of the optimal split attribute the pool's value to models.
    """
    extra = gpu.streams - gpu.seats
    best = [0.0] * (extra + 1)  # best[p]: the most gain from p streams over replicas so far
    gains: list[list[float]] = []
    taken: list[list[int]] = []  # taken[r][p]: streams replica r gets in best[p] so far
    for m in models:
        curve, cap = m.curve(gpu).qps, _replica_demand(m)
        base = min(_qps(curve, 1), cap)
        gain = [scale[m.model_id] * (min(_qps(curve, 1 + p), cap) - base) / m.demand_qps
                for p in range(extra + 1)]
        # choice[p]: the streams of p this replica takes (the fewest among the best splits)
        choice = []
        for p in range(extra + 1):
            sums = [best[p - k] + gain[k] for k in range(p + 1)]
            choice.append(sums.index(max(sums)))
        best = [best[p - k] + gain[k] for p, k in enumerate(choice)]
        gains.append(gain)
        taken.append(choice)
    split = [0.0] * len(models)
    left = extra
    for r in reversed(range(len(models))):
        k = taken[r][left]
        split[r] = gains[r][k]
        left -= k
    return split


def _candidates(
    snapshot: ClusterSnapshot, held_before: dict[str, tuple[str, str]]
) -> tuple[dict[tuple[str, str], str], list[str]]:
    """Earmark ``replicas_wanted`` candidate seats for every model: (tenant, seat) -> model.

    Seats the model (else another model of the tenant) held before come first, those fewest of
    the tenant's models fit first; then, round
    robin over (tenant, model), the fitting seat fewest others claim, then the most valuable,
    then the one on a GPU fewest models fit, then on the node and then the GPU with the fewest
    claims (spreading replicas over failure domains), then by name — so candidate sets overlap
    only once every fitting seat is claimed, and evenly then. Returns the earmarks and notes on
    models left short of seats.
    """
    gpus = sorted(snapshot.gpus, key=lambda g: g.gpu_id)
    gpu_of = {seat_name(g.gpu_id, k): g for g in gpus for k in range(g.seats)}
    models = sorted((m for m in snapshot.models if m.replicas_wanted > 0),
                    key=lambda m: (m.tenant, m.model_id))
    need = {m.model_id: m.replicas_wanted for m in models}
    earmark: dict[tuple[str, str], str] = {}
    claims: dict[str, int] = defaultdict(int)  # seat -> tenants claiming it
    gpu_claims: dict[str, int] = defaultdict(int)  # gpu id -> claims on its seats
    node_claims: dict[str, int] = defaultdict(int)  # node -> claims on its GPUs' seats

    def claim(model: Model, seat: str) -> None:
        earmark[model.tenant, seat] = model.model_id
        need[model.model_id] -= 1
        claims[seat] += 1
        gpu_claims[gpu_of[seat].gpu_id] += 1
        node_claims[gpu_of[seat].node] += 1

    weights = model_weights(snapshot)
    turns: dict[str, int] = defaultdict(int)  # model -> seats its tenant's turns gave it

    def dhondt(model: Model) -> tuple[float, tuple[int, ...]]:
        # D'Hondt (Jefferson): the most weight per turn already taken, ties to the first id.
        return weights[model.model_id] / (turns[model.model_id] + 1), _neg(model.model_id)

    def dhondt_held(model: Model, held_by: str) -> tuple[float, bool, int, tuple[int, ...]]:
        # As dhondt, ties to the model that held the seat, then to the most replicas still to
        # place (as before weights), then to the first id.
        quotient, name = dhondt(model)
        return quotient, model.model_id == held_by, need[model.model_id], name

    def held_order(item: tuple[str, tuple[str, str]]) -> tuple[int, str]:
        # The seats fewest of the tenant's models fit first: a seat only one of its models can
        # use goes to that model before a seat any of them could use spends its need, which
        # would leave the first unclaimed and its move forced (the churn bound then unmeetable).
        seat, (tenant, _) = item
        gpu = gpu_of.get(seat)
        fit = 0 if gpu is None else sum(m.tenant == tenant and _fits(m, gpu) for m in models)
        return fit, seat

    for seat, (tenant, model_id) in sorted(held_before.items(), key=held_order):
        gpu = gpu_of.get(seat)
        if gpu is None or (tenant, seat) in earmark:
            continue
        fitting = [m for m in models if m.tenant == tenant and need[m.model_id] > 0
                   and _fits(m, gpu)]
        if fitting:
            chosen = max(fitting, key=lambda m: dhondt_held(m, model_id))
            turns[chosen.model_id] += 1
            claim(chosen, seat)
    seats_of = {g.gpu_id: [seat_name(g.gpu_id, k) for k in range(g.seats)] for g in gpus}
    # How many models a GPU's seats fit: among equally valuable seats a model takes the one
    # fewest others could use, so a small model does not take the large seat a model that fits
    # only large seats needs (best fit).
    fits_count = {g.gpu_id: sum(_fits(m, g) for m in models) for g in gpus}
    # (GPU id, its seats, the seat value to m) for every GPU m fits, most valuable first.
    options = {}
    node_of = {g.gpu_id: g.node for g in gpus}
    for m in models:
        # computed once: most GPUs are not profiled
        estimate = _seat_value(m, within_sla(m.estimate, m.sla_p99_ms), weights[m.model_id])
        options[m.model_id] = sorted(
            ((g.gpu_id, seats_of[g.gpu_id],
              _seat_value(m, m.curve(g), weights[m.model_id]) if g.gpu_id in m.profiles
              else estimate)
             for g in gpus if _fits(m, g)), key=lambda o: -o[2])

    def claim_best(m: Model) -> None:
        """Claim the fitting seat m's key ranks first, or stop m asking when none is left."""
        best: tuple[int, float, int, int, int, str, int] | None = None
        best_seat = ""
        for gpu_id, seats, value in options[m.model_id]:
            for k, seat in enumerate(seats):
                # Cheap pre-test on the first key before building the full one.
                if (best is not None and claims[seat] > best[0]) or (
                        (m.tenant, seat) in earmark):
                    continue
                key = (claims[seat], -value, fits_count[gpu_id], node_claims[node_of[gpu_id]],
                       gpu_claims[gpu_id], gpu_id, k)
                if best is None or key < best:
                    best, best_seat = key, seat
        if best is None:
            need[m.model_id] = -need[m.model_id]  # no seat left to it: stop asking
        else:
            claim(m, best_seat)

    active = [m for m in models if need[m.model_id] > 0]
    while active:
        # A round: every tenant takes one turn per model of it still asking, and its models
        # share those turns by D'Hondt on their weights, counting the seats held before — so
        # with equal weights and nothing held each model takes one turn, in id order.
        for tenant in dict.fromkeys(m.tenant for m in active):
            mine = [m for m in active if m.tenant == tenant]
            for _ in range(len(mine)):
                live = [m for m in mine if need[m.model_id] > 0]
                if not live:
                    break
                chosen = max(live, key=dhondt)
                turns[chosen.model_id] += 1
                claim_best(chosen)
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
    gpu_of = {seat_name(g.gpu_id, k): g for g in gpus for k in range(g.seats)}
    values: dict[str, dict[str, float]] = {t.name: {} for t in snapshot.tenants}
    replicas_on: dict[tuple[str, str], list[Model]] = defaultdict(list)  # (tenant, gpu id)
    estimated: set[str] = set()
    weights = model_weights(snapshot)
    for (tenant, seat), model_id in earmark.items():
        model, gpu = models[model_id], gpu_of[seat]
        values[tenant][seat] = _seat_value(model, model.curve(gpu), weights[model_id])
        replicas_on[tenant, gpu.gpu_id].append(model)
        if not model.curve(gpu).measured:
            estimated.add(f"estimated throughput: model {model_id} on {gpu.gpu_id}")
    gpu_by_id = {g.gpu_id: g for g in gpus}
    pool_gains: dict[tuple[str, str], dict[str, float]] = {}
    for (tenant, gpu_id), replicas in replicas_on.items():
        gpu = gpu_by_id[gpu_id]
        if gpu.streams > gpu.seats:
            replicas.sort(key=lambda m: m.model_id)
            split = _pool_split(replicas, gpu, weights)
            if sum(split) > 0:
                values[tenant][pool_name(gpu.gpu_id)] = sum(split)
                by_model: dict[str, float] = defaultdict(float)
                for m, gain in zip(replicas, split, strict=True):
                    by_model[m.model_id] += gain
                pool_gains[tenant, pool_name(gpu.gpu_id)] = dict(by_model)
    indivisible = tuple(gpu_of)
    divisible = tuple(pool_name(g.gpu_id) for g in gpus if g.streams > g.seats)
    instance = Instance(
        agents=tuple(Agent(t.name, t.weight, t.criterion) for t in snapshot.tenants),
        indivisible=indivisible,
        divisible=divisible,
        values=values,
        objective=snapshot.objective,
        # Every seat outside a tenant's candidates: this carries memory fit and demand caps.
        forbidden=frozenset((t.name, s) for t in snapshot.tenants for s in indivisible
                            if (t.name, s) not in earmark),
        requires={pool_name(g.gpu_id): tuple(seat_name(g.gpu_id, k) for k in range(g.seats))
                  for g in gpus if g.streams > g.seats},
        optional=frozenset((*indivisible, *divisible)),
    )
    return ClusterInstance(instance, earmark, tuple(sorted(estimated)) + tuple(notes), weights,
                           pool_gains)


def _neg(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text)
