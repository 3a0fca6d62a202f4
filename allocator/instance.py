"""The pure fair-division instance and allocation (docs/architecture.md §2), independent of GPUs.

Agents with weights and criteria; indivisible goods ``M`` with values ``v_i(g)``; homogeneous
divisible goods ``D`` with values ``u_i(d)`` for the whole good. An allocation gives every
indivisible good to exactly one agent and divides every divisible good completely.
The cluster layer builds an :class:`Instance` from a snapshot and may add side constraints
(``forbidden``, ``requires``, ``caps``) that the plain core of docs/architecture.md §2 does not
have.

:func:`validate_instance` refuses a malformed instance with an InstanceError naming its first bad
part; :func:`canonical` puts a valid one in sorted order, so that ``divide``'s answer does not
depend on the order of its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from allocator.criteria import CRITERIA, Criterion
from allocator.errors import InstanceError
from allocator.objectives import OBJECTIVES, Objective

# Weights enter the EF constraints as ratios w_i / w_j; bounding them keeps every ratio (at most
# 1e12) finite and well inside what an LP solver handles without numerical trouble.
MIN_WEIGHT = 1e-6
MAX_WEIGHT = 1e6
# The most an agent's values may add up to (T_i). The checker scales an agent's values by weight
# ratios up to MAX_WEIGHT / MIN_WEIGHT = 1e12 and adds them over goods; below this bound every
# such figure stays finite, where values adding up to 2e308 printed NaN into the certificate.
MAX_TOTAL_VALUE = 1e200


@dataclass(frozen=True)
class Agent:
    name: str
    weight: float = 1.0  # entitlement w_i > 0
    criterion: Criterion = "prop_alpha"


@dataclass(frozen=True)
class Instance:
    agents: tuple[Agent, ...]
    indivisible: tuple[str, ...]  # M
    divisible: tuple[str, ...]  # D
    # values[agent][good] ≥ 0; a missing entry is 0.
    values: dict[str, dict[str, float]]
    objective: Objective = "utilitarian"
    # Side constraints of the cluster layer (empty for a plain instance):
    # (agent, indivisible good) pairs the agent may not receive (e.g. no model fits the seat).
    forbidden: frozenset[tuple[str, str]] = frozenset()
    # divisible good -> indivisible goods; an agent's share of the divisible good must be 0
    # unless it holds at least one of them (streams are usable only where the tenant is seated).
    requires: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # agent -> ((group of indivisible goods, most the agent may hold of the group), ...)
    caps: dict[str, tuple[tuple[tuple[str, ...], int], ...]] = field(default_factory=dict)
    # Goods that may stay (partly) unallocated: a seat nobody wants filled, the stream pool of a
    # GPU where nobody is seated. Plain instances have none: everything is divided completely.
    optional: frozenset[str] = frozenset()

    def value(self, agent: str, good: str) -> float:
        return self.values.get(agent, {}).get(good, 0.0)


@dataclass(frozen=True)
class Allocation:
    # indivisible good -> the agent holding it (None only where every agent is forbidden it,
    # or for an optional good)
    indivisible: dict[str, str | None]
    # divisible good -> agent -> fraction; fractions of one good sum to 1 (≤ 1 if optional)
    divisible: dict[str, dict[str, float]]


def validate_instance(instance: Instance) -> None:
    """Raise InstanceError naming the first malformed part of the instance."""
    names = [a.name for a in instance.agents]
    if not names:
        raise InstanceError("agents: at least one agent is needed")
    _unique(names, "agent")
    _unique([*instance.indivisible, *instance.divisible], "good")
    for a in instance.agents:
        if not isinstance(a.name, str) or not a.name:
            raise InstanceError(f"agent name {a.name!r}: expected a non-empty string")
        if a.criterion not in CRITERIA:
            raise InstanceError(
                f"agent {a.name!r}: unknown criterion {a.criterion!r} "
                f"(one of {', '.join(CRITERIA)})"
            )
        if not (isinstance(a.weight, int | float) and MIN_WEIGHT <= a.weight <= MAX_WEIGHT):
            raise InstanceError(
                f"agent {a.name!r}: weight must lie in [{MIN_WEIGHT:g}, {MAX_WEIGHT:g}], "
                f"got {a.weight!r}"
            )
    if instance.objective not in OBJECTIVES:
        raise InstanceError(
            f"objective: unknown {instance.objective!r} (one of {', '.join(OBJECTIVES)})"
        )
    agents, goods = set(names), {*instance.indivisible, *instance.divisible}
    for i, row in instance.values.items():
        if i not in agents:
            raise InstanceError(f"values: unknown agent {i!r}")
        for g, v in row.items():
            if g not in goods:
                raise InstanceError(f"values[{i!r}]: unknown good {g!r}")
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InstanceError(f"values[{i!r}][{g!r}]: expected a number, got {v!r}")
            if v < 0:
                raise InstanceError(f"values[{i!r}][{g!r}]: negative value {v!r}")
        if sum(row.values()) > MAX_TOTAL_VALUE:
            raise InstanceError(
                f"values[{i!r}]: the values add up to more than {MAX_TOTAL_VALUE:g}"
            )
    indivisible = set(instance.indivisible)
    for i, g in instance.forbidden:
        if i not in agents or g not in indivisible:
            raise InstanceError(f"forbidden: unknown pair ({i!r}, {g!r})")
    for d, needed in instance.requires.items():
        if d not in instance.divisible or not set(needed) <= indivisible:
            raise InstanceError(f"requires[{d!r}]: unknown goods")
    for i, caps in instance.caps.items():
        if i not in agents:
            raise InstanceError(f"caps: unknown agent {i!r}")
        for group, most in caps:
            if not set(group) <= indivisible or most < 0:
                raise InstanceError(f"caps[{i!r}]: unknown goods or negative cap")
    if not instance.optional <= goods:
        raise InstanceError("optional: unknown goods")


def _unique(names: list[str], kind: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InstanceError(f"duplicate {kind} name {name!r}")
        seen.add(name)


def canonical(instance: Instance) -> Instance:
    """The same instance with agents, goods and side constraints in sorted order."""
    return replace(
        instance,
        agents=tuple(sorted(instance.agents, key=lambda a: a.name)),
        indivisible=tuple(sorted(instance.indivisible)),
        divisible=tuple(sorted(instance.divisible)),
        values={i: dict(sorted(instance.values[i].items())) for i in sorted(instance.values)},
        requires={d: tuple(sorted(g)) for d, g in sorted(instance.requires.items())},
        caps={
            i: tuple((tuple(sorted(group)), most) for group, most in sorted(caps))
            for i, caps in sorted(instance.caps.items())
        },
    )
