"""The pure fair-division instance and allocation (docs/architecture.md §2), independent of GPUs.

Agents with weights and criteria; indivisible goods ``M`` with values ``v_i(g)``; homogeneous
divisible goods ``D`` with values ``u_i(d)`` for the whole good. An allocation gives every
indivisible good to exactly one agent and divides every divisible good completely.
The cluster layer builds an :class:`Instance` from a snapshot and may add side constraints
(``forbidden``, ``requires``, ``caps``) that the plain core of docs/architecture.md §2 does not
have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from allocator.snapshot import Criterion, Objective


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
