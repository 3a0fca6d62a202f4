"""The fairness criteria: their names, their two families, and the good each one allows.

The notions are docs/architecture.md §2's table (EF^α and PROP^α from Li, Li, Liu and Wu,
"Allocating Mixed Goods with Customized Fairness and Indivisibility Ratio", IJCAI 2024; EFM from
Bei, Li, Liu, Liu and Lu, "Fair Division of Mixed Divisible and Indivisible Goods", AIJ 2021).
Every agent states one. EF-type criteria compare the agent's bundle with every other bundle,
PROP-type ones with its proportional share; each allows the fraction ``f_i`` of one good (the
good removed from the other bundle, or added from outside its own), and λ ∈ [0, 1] relaxes it
as ``f_i = base + λ(1 − base)``. How an allocation is measured against them is the one
checker's work (allocator.certificate).
"""

from __future__ import annotations

from typing import Literal

Criterion = Literal["prop_alpha", "ef_alpha", "efm", "ef1", "prop1", "ef", "prop"]

CRITERIA: tuple[Criterion, ...] = ("prop_alpha", "ef_alpha", "efm", "ef1", "prop1", "ef", "prop")

EF_TYPE: frozenset[Criterion] = frozenset({"ef_alpha", "ef", "ef1", "efm"})
PROP_TYPE: frozenset[Criterion] = frozenset({"prop_alpha", "prop", "prop1"})


def base_factor(criterion: Criterion, alpha: float) -> float:
    """The multiplier of the removed/added good before relaxation (α_i, 0 or 1)."""
    if criterion in ("ef_alpha", "prop_alpha"):
        return alpha
    if criterion in ("ef1", "prop1"):
        return 1.0
    return 0.0  # ef, prop; efm's divisible branch is exact too


def relaxed_factor(criterion: Criterion, alpha: float, lam: float) -> float:
    """f_i = base + λ(1 − base): λ = 0 is the criterion itself, λ = 1 is its "up to one"."""
    base = base_factor(criterion, alpha)
    return base + lam * (1.0 - base)
