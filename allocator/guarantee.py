"""The guarantees table as code: which agents' criteria a construction always meets, and the
allocation of the construction that covers the most agents of an instance.

docs/fairness.md, "Guaranteed vs best effort", states the table with its proofs; each entry here
is one of its rows. On a plain instance (no side constraints of the cluster layer):

* **EFM construction** (:func:`allocator.constructive.efm_allocation`; Bei, Li, Liu, Liu and
  Lu, AIJ 2021) — every agent gets an EFM bundle, so it meets
  ``efm`` for every agent (EFM is unweighted by definition, whatever the weights);
  ``ef1`` for an agent of the smallest weight (EFM ⇒ V_i(A_i) ≥ V_i(A_j) − Mx_i(A_j), and
  ``w_i ≤ w_j`` scales the right-hand side down); ``prop1`` for an agent whose weight is at most
  the mean (summing EFM over the other n − 1 bundles gives
  ``V_i(A_i) + Mx_i(M∖A_i) ≥ T_i/n ≥ (w_i/W)·T_i``); and ``prop_alpha`` for an agent whose
  weight is at most the mean: an agent whose EFM rows hold has
  ``V_i(A_i) + α_i·Mx_i(M∖A_i) ≥ T_i/n`` (docs/fairness.md, proof 5: counting the bundles with
  and without divisible goods).
* **Weighted picking sequence** (:func:`allocator.constructive.picking_allocation`;
  Chakraborty, Igarashi, Suksompong and Zick, TEAC 2021) — ``ef1`` (weighted) for every agent.

An agent that values nothing (``T_i = 0``) meets any criterion. Nothing else is promised:
``ef``/``prop`` (exact) can be impossible with one indivisible good; EF^α is impossible for
n ≥ 3 identical agents once α > 1/(n−1) (Li, Li, Liu and Wu, IJCAI 2024); PROP^α for an agent
heavier than the mean weight is not covered (that paper's existence result is for equal weights,
and gpufair has no weighted construction proven here); with side constraints nothing is promised
at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from allocator import constructive
from allocator.certificate import certify
from allocator.instance import Allocation, Instance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Guarantee:
    """A construction's allocation and the agents whose criterion the table promises there."""

    construction: str  # "efm" or "weighted-picking"
    agents: frozenset[str]
    allocation: Allocation
    held: frozenset[str]  # every agent whose criterion holds exactly there (⊇ agents)


def _efm_covers(instance: Instance) -> frozenset[str]:
    weights = [a.weight for a in instance.agents]
    lightest, mean = min(weights), sum(weights) / len(weights)
    return frozenset(
        a.name for a in instance.agents
        if a.criterion == "efm"
        or (a.criterion == "ef1" and a.weight <= lightest)
        or (a.criterion in ("prop1", "prop_alpha") and a.weight <= mean)
    )


def _picking_covers(instance: Instance) -> frozenset[str]:
    return frozenset(a.name for a in instance.agents if a.criterion == "ef1")


# The rows of the table: construction name, the agents it covers, the construction. In this
# order: on a tie in coverage, the first.
CONSTRUCTIONS: tuple[tuple[str, Callable[[Instance], frozenset[str]],
                           Callable[[Instance], Allocation]], ...] = (
    ("efm", _efm_covers, constructive.efm_allocation),
    ("weighted-picking", _picking_covers, constructive.picking_allocation),
)


def covered(instance: Instance) -> tuple[str, frozenset[str]] | None:
    """The construction covering the most agents of a plain instance and those agents (with
    every agent that values nothing); None with side constraints or when no row applies."""
    if not constructive.supports(instance) or not instance.agents:
        return None
    worthless = frozenset(
        a.name for a in instance.agents if not any(instance.values.get(a.name, {}).values())
    )
    name, covers = max(
        ((name, covers(instance)) for name, covers, _ in CONSTRUCTIONS),
        key=lambda row: len(row[1]),
    )
    if not covers:
        return None
    return name, covers | worthless


def guarantee(instance: Instance) -> Guarantee | None:
    """The allocation of the construction that covers the most agents (see :func:`covered`),
    with the agents it covers. The one checker confirms each of them; one that fails (which
    the proofs rule out) is logged as an error and not claimed."""
    found = covered(instance)
    if found is None:
        return None
    name, agents = found
    build = next(b for n, _, b in CONSTRUCTIONS if n == name)
    allocation = build(instance)
    rows = certify(instance, allocation).agents
    failing = sorted(i for i in agents if not rows[i].holds)
    if failing:
        log.error("the %s construction failed a criterion it guarantees: %s", name,
                  ", ".join(failing[:8]))
    held = frozenset(i for i, row in rows.items() if row.holds)
    return Guarantee(name, agents - frozenset(failing), allocation, held)
