"""The one generator of fair-division instances: the benchmark's, the examples' and the tests'.

Every instance is a pure function of its arguments (a seed, or a :class:`Source` of choices),
so a number measured on one holds on it forever, and the goods of a GPU are named by the
cluster layer's one rule (:func:`~allocator.cluster.instance.seat_name`, ``pool_name``):

* :func:`cluster_instance` — the allocator benchmark's (below);
* :func:`headline_instance` — ``examples/make_large_instance.py``'s, the 64 × 64 instances of
  the headline figures (docs/benchmarks.md);
* :func:`crowded_instance` — ten tenants on four GPUs for whom no allocation is fair;
* :func:`random_instance` — small plain instances drawn from any :class:`Source`: a seeded
  :class:`RandomSource` or :class:`NumpySource`, or Hypothesis's ``draw``
  (tests/allocator/strategies.py), so that property tests draw the same family of instances
  that seeded tests pin down.

**The benchmark's instances.** The benchmark needs core instances (docs/architecture.md §2)
shaped like the clusters gpufair divides, at sizes from 8 to 512 tenants and GPUs, reproducible
from ``(tenants, gpus, seed)`` alone. Each GPU contributes 4 **seats** (indivisible goods) and
one **stream pool** (a divisible good) of the streams left over after every seat's base stream,
as in the cluster layer (docs/architecture.md §3.2).

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from allocator.cluster.instance import pool_name, seat_name
from allocator.criteria import CRITERIA, Criterion
from allocator.instance import Agent, Instance
from allocator.objectives import Objective

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

T = TypeVar("T")


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
    gpu_ids = _names("g", gpus)
    tenant_names = _names("t", tenants)

    classes = [GPU_CLASSES[0]] + rng.choices(
        GPU_CLASSES, weights=[c.probability for c in GPU_CLASSES], k=gpus - 1
    )
    criteria = [name for name, _ in CRITERION_MIX]
    criterion_weights = [p for _, p in CRITERION_MIX]

    agents: list[Agent] = []
    values: dict[str, dict[str, float]] = {}
    for name in tenant_names:
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
        for gpu, gpu_class in zip(gpu_ids, classes, strict=True):
            if memory_gb > gpu_class.memory_gb / SEATS_PER_GPU:
                continue  # the model does not fit this GPU's seats: seats and pool are worth 0
            scale = gpu_class.speed * affinity[gpu_class.name]
            _value_gpu(row, gpu, SEATS_PER_GPU, _rounded(scale * seat_share),
                       _rounded(scale * pool_share))
        values[name] = row
    return _on_gpus(tuple(agents), gpu_ids, SEATS_PER_GPU, values)


def headline_instance(tenants: int, gpus: int, seed: int, *, seats: int = 4) -> Instance:
    """``tenants`` agents over ``gpus`` GPUs of ``seats`` identical seats and one stream pool
    each: the generator of the headline 64 × 64 instances (``examples/make_large_instance.py``).

    A tenant's value of a seat is the throughput one replica adds on that GPU (tenant scale ×
    GPU speed, with noise); its value of a pool is the throughput of the pool's extra streams;
    about a quarter of the tenants' models fit only the larger GPUs (value 0 elsewhere).
    Criteria cycle through all seven notions; every fifth tenant has weight 2, the others 1.
    """
    rng = random.Random(seed)
    speed = [rng.choice((1.0, 1.0, 2.0, 3.0)) for _ in range(gpus)]
    gpu_ids = [f"gpu-{g:03d}" for g in range(gpus)]
    agents, values = [], {}
    for t in range(tenants):
        name = f"tenant-{t:03d}"
        agents.append(Agent(name, 2.0 if t % 5 == 0 else 1.0, CRITERIA[t % len(CRITERIA)]))
        scale = rng.uniform(0.5, 2.0)
        stream_share = rng.uniform(0.2, 0.8)  # how much of its value lies in extra streams
        needs_big = rng.random() < 0.25
        row: dict[str, float] = {}
        for gpu, gpu_speed in zip(gpu_ids, speed, strict=True):
            if needs_big and gpu_speed < 2.0:
                continue
            base = scale * gpu_speed * rng.uniform(0.8, 1.2)
            _value_gpu(row, gpu, seats, round(base * (1 - stream_share), 3),
                       round(base * stream_share * seats, 3))
        values[name] = row
    return _on_gpus(tuple(agents), gpu_ids, seats, values)


def crowded_instance(seed: int) -> Instance:
    """Ten tenants who value everything alike (up to noise) on four GPUs of two seats: two heavy
    PROP^α tenants of weight 8 and eight unweighted EFM tenants. Each heavy tenant is owed 8/24
    of the total, and an EFM tenant must value its own bundle at least as a heavy one's less one
    seat, so the light tenants' 8 × (1/3 − a seat) and the heavy 2/3 exceed the whole: no
    allocation is fair, whatever λ."""
    rng = np.random.default_rng(seed)
    agents = tuple(Agent(f"h{k}", weight=8.0) for k in range(2)) + tuple(
        Agent(f"e{k}", criterion="efm") for k in range(8))
    gpu_ids = [f"g{g}" for g in range(4)]
    seats = [seat_name(gpu, k) for gpu in gpu_ids for k in range(2)]
    values = {a.name: {**{s: float(rng.uniform(0.9, 1.1)) for s in seats},
                       **{pool_name(gpu): float(rng.uniform(9.0, 11.0)) for gpu in gpu_ids}}
              for a in agents}
    return _on_gpus(agents, gpu_ids, 2, values)


class Source(Protocol):
    """Where :func:`random_instance` takes its choices from."""

    def integer(self, low: int, high: int) -> int:
        """A whole number in [low, high]."""
        ...

    def choice(self, options: Sequence[T]) -> T:
        """One of ``options``."""
        ...

    def uniform(self, low: float, high: float) -> float:
        """A real number in [low, high]."""
        ...


class RandomSource:
    """Choices from a :class:`random.Random`."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return self._rng.choice(options)

    def uniform(self, low: float, high: float) -> float:
        return self._rng.uniform(low, high)


class NumpySource:
    """Choices from a numpy :class:`~numpy.random.Generator`."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def integer(self, low: int, high: int) -> int:
        return int(self._rng.integers(low, high + 1))

    def choice(self, options: Sequence[T]) -> T:
        return options[int(self._rng.integers(len(options)))]

    def uniform(self, low: float, high: float) -> float:
        return float(self._rng.uniform(low, high))


def random_instance(
    source: Source,
    *,
    agents: tuple[int, int],
    indivisible: tuple[int, int],
    divisible: tuple[int, int],
    weights: tuple[float, ...] = (1.0, 2.0),
    criteria: tuple[Criterion, ...] = CRITERIA,
    objectives: tuple[Objective, ...] = ("utilitarian",),
    real_values: bool = False,
) -> Instance:
    """A plain instance of agents ``a0, a1, …``, indivisible goods ``g0, …`` and divisible goods
    ``d0, …`` (numbered with as many digits as the largest needs), in the given ranges of counts
    (at least one good in all); each agent's weight and criterion are drawn from ``weights`` and
    ``criteria``, then every value: a whole number 0–9, or with ``real_values`` a real one in
    [0, 10]; last the objective. A choice among one option is no draw, so fixing a count or a
    field leaves every other draw as it was."""
    n = _pick(source, *agents)
    m = _pick(source, *indivisible)
    d = _pick(source, max(divisible[0], 0 if m else 1), divisible[1])
    drawn = tuple(
        Agent(name, weight=_choose(source, weights), criterion=_choose(source, criteria))
        for name in _names("a", n)
    )
    goods = _names("g", m) + _names("d", d)
    values = {
        a.name: {g: source.uniform(0.0, 10.0) if real_values else float(source.integer(0, 9))
                 for g in goods}
        for a in drawn
    }
    return Instance(agents=drawn, indivisible=goods[:m], divisible=goods[m:], values=values,
                    objective=_choose(source, objectives))


def _pick(source: Source, low: int, high: int) -> int:
    return low if low == high else source.integer(low, high)


def _choose(source: Source, options: Sequence[T]) -> T:
    return options[0] if len(options) == 1 else source.choice(options)


def _names(prefix: str, count: int) -> tuple[str, ...]:
    """``prefix`` and a number, zero-padded to one width, so names sort as they count."""
    width = len(str(count - 1))
    return tuple(f"{prefix}{k:0{width}d}" for k in range(count))


def _value_gpu(row: dict[str, float], gpu: str, seats: int, seat: float, pool: float) -> None:
    """Give every seat of ``gpu`` the value ``seat`` in ``row``, and its pool ``pool``."""
    for k in range(seats):
        row[seat_name(gpu, k)] = seat
    row[pool_name(gpu)] = pool


def _on_gpus(
    agents: tuple[Agent, ...], gpu_ids: Sequence[str], seats: int,
    values: dict[str, dict[str, float]],
) -> Instance:
    """The instance whose goods are ``seats`` seats and one pool on each GPU of ``gpu_ids``."""
    return Instance(
        agents=agents,
        indivisible=tuple(seat_name(gpu, k) for gpu in gpu_ids for k in range(seats)),
        divisible=tuple(pool_name(gpu) for gpu in gpu_ids),
        values=values,
    )

