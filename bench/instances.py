"""Seeded random cluster-like fair-division instances for the allocator benchmark.

The benchmark needs core instances (docs/architecture.md §2) shaped like the clusters gpufair
divides, at sizes from 8 to 512 tenants and GPUs, reproducible from ``(tenants, gpus, seed)``
alone. Each GPU contributes 4 **seats** (indivisible goods) and one **stream pool** (a divisible
good) of the streams left over after every seat's base stream, as in the cluster layer
(docs/architecture.md §3.2).

How the values are drawn (all from one ``random.Random(seed)``, so an instance is a pure
function of its three integers):

* **GPUs** come in three classes — ``fast`` (speed 1.0, 80 GB), ``mid`` (speed 0.6, 40 GB) and
  ``small`` (speed 0.25, 16 GB) — drawn with probabilities 0.3 / 0.4 / 0.3; GPU 0 is always
  ``fast`` so every tenant's model fits somewhere. Each GPU has ``SEATS_PER_GPU`` = 4 seats and
  ``STREAMS_PER_GPU`` = 8 streams, so its pool holds ``POOL_STREAMS`` = 4 streams.
* **Tenants** have a weight from {1, 1, 1, 2, 4} (all 1 with ``equal_weights``; the draw is
  made either way, so both variants share every other number), a criterion drawn from
  ``CRITERION_MIX``
  (mixed PROP- and EF-type notions), one model of memory 1–12 GB (it fits a seat only when it
  is at most the GPU's memory / 4; elsewhere the tenant values that GPU's seats and pool at 0),
  and a saturating latency-bounded throughput curve
  ``q(s) = q_sat · (1 − exp(−s/τ))`` for ``s`` streams, with ``q_sat`` log-uniform in
  [200, 5000] QPS and ``τ`` log-uniform in [0.5, 6]. A small ``τ`` saturates at one stream (the
  tenant's value lies in seats: high indivisibility ratio α_i); a large ``τ`` keeps gaining from
  extra streams (value lies in pools: α_i near 0). Each tenant also has a per-class affinity
  (log-normal, σ = 0.15), since models differ in how much a faster GPU helps them.
* **Values** are throughput as a fraction of the tenant's demand ``D_i`` (``q_sat`` times 2–8
  replicas): a seat on GPU ``g`` is worth ``speed_g · affinity · q(1) / D_i`` (one more replica
  with its base stream) and the pool ``speed_g · affinity · (q(1 + P) − q(1)) / D_i`` (the extra
  throughput the pool's ``P`` streams add to a replica). Values are additive — the core model's
  assumption — so demand saturation across many replicas is not modelled here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from allocator.criteria import Criterion
from allocator.instance import Agent, Instance

SEATS_PER_GPU = 4
STREAMS_PER_GPU = 8
POOL_STREAMS = STREAMS_PER_GPU - SEATS_PER_GPU


@dataclass(frozen=True)
class GpuClass:
    name: str
    speed: float  # throughput relative to the fastest class
    memory_gb: float  # split evenly between the seats
    probability: float  # share of the cluster's GPUs of this class


GPU_CLASSES: tuple[GpuClass, ...] = (
    GpuClass("fast", 1.0, 80.0, 0.3),
    GpuClass("mid", 0.6, 40.0, 0.4),
    GpuClass("small", 0.25, 16.0, 0.3),
)

# Criterion of each tenant, drawn with these probabilities: mostly the default PROP^α, with a
# large share of EF-type notions since those drive the MILP's size (O(n²·m) constraints).
CRITERION_MIX: tuple[tuple[Criterion, float], ...] = (
    ("prop_alpha", 0.4),
    ("ef_alpha", 0.2),
    ("efm", 0.2),
    ("ef1", 0.1),
    ("prop1", 0.1),
)
WEIGHTS: tuple[float, ...] = (1.0, 1.0, 1.0, 2.0, 4.0)


def seat_name(gpu: int, seat: int, width: int) -> str:
    return f"g{gpu:0{width}d}/s{seat}"


def pool_name(gpu: int, width: int) -> str:
    return f"g{gpu:0{width}d}/pool"


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _rounded(value: float) -> float:
    # Six significant digits keep the instance's JSON short and the MILP's coefficients tame.
    return float(f"{value:.6g}")


def cluster_instance(
    tenants: int, gpus: int, seed: int, *, equal_weights: bool = False
) -> Instance:
    """A cluster-like core instance of ``tenants`` agents over ``gpus`` GPUs (4 seats, 1 pool each).

    Deterministic in its arguments; see the module docstring for the distributions.
    """
    if tenants < 1 or gpus < 1:
        raise ValueError(f"need at least one tenant and one GPU, got {tenants} × {gpus}")
    rng = random.Random(f"gpufair-bench/{tenants}/{gpus}/{seed}")
    gpu_width = len(str(gpus - 1))
    tenant_width = len(str(tenants - 1))

    classes = [GPU_CLASSES[0]] + rng.choices(
        GPU_CLASSES, weights=[c.probability for c in GPU_CLASSES], k=gpus - 1
    )
    criteria = [name for name, _ in CRITERION_MIX]
    criterion_weights = [p for _, p in CRITERION_MIX]

    agents: list[Agent] = []
    values: dict[str, dict[str, float]] = {}
    for t in range(tenants):
        name = f"t{t:0{tenant_width}d}"
        weight = rng.choice(WEIGHTS)
        agents.append(
            Agent(
                name=name,
                weight=1.0 if equal_weights else weight,
                criterion=rng.choices(criteria, weights=criterion_weights)[0],
            )
        )
        memory_gb = rng.uniform(1.0, 12.0)
        q_sat = _log_uniform(rng, 200.0, 5000.0)
        tau = _log_uniform(rng, 0.5, 6.0)
        demand = q_sat * rng.randint(2, 8)
        affinity = {c.name: math.exp(rng.gauss(0.0, 0.15)) for c in GPU_CLASSES}

        def throughput(streams: int, q_sat: float = q_sat, tau: float = tau) -> float:
            return q_sat * (1.0 - math.exp(-streams / tau))

        seat_share = throughput(1) / demand
        pool_share = (throughput(1 + POOL_STREAMS) - throughput(1)) / demand
        row: dict[str, float] = {}
        for g, gpu_class in enumerate(classes):
            if memory_gb > gpu_class.memory_gb / SEATS_PER_GPU:
                continue  # the model does not fit this GPU's seats: seats and pool are worth 0
            scale = gpu_class.speed * affinity[gpu_class.name]
            seat_value = _rounded(scale * seat_share)
            for s in range(SEATS_PER_GPU):
                row[seat_name(g, s, gpu_width)] = seat_value
            row[pool_name(g, gpu_width)] = _rounded(scale * pool_share)
        values[name] = row

    return Instance(
        agents=tuple(agents),
        indivisible=tuple(
            seat_name(g, s, gpu_width) for g in range(gpus) for s in range(SEATS_PER_GPU)
        ),
        divisible=tuple(pool_name(g, gpu_width) for g in range(gpus)),
        values=values,
    )

