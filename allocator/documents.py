"""JSON documents of the core: the instance that ``gpufair divide`` reads (docs/architecture.md
§3.1).

One parser, shared by the CLI, the benchmark and the tests, that refuses a malformed document
with an InstanceError naming the bad field (the CLI prints that one line). Besides the fields of
docs/architecture.md §3.1 it accepts the side constraints of :class:`~allocator.instance.Instance`
(``forbidden``, ``requires``, ``caps``, ``optional``) so that cluster-derived instances can be
replayed through the CLI. The cluster's document (``gpufair allocate``'s file) has its own
parser, allocator.cluster.documents.
"""

from __future__ import annotations

import math
from typing import Any

from allocator.criteria import CRITERIA
from allocator.errors import InstanceError
from allocator.instance import Agent, Instance
from allocator.objectives import OBJECTIVES

_KEYS = {"agents", "indivisible", "divisible", "values", "objective",
         "forbidden", "requires", "caps", "optional"}


def instance_from_dict(doc: Any) -> Instance:
    """Parse and validate an instance document; raise InstanceError on the first problem."""
    if not isinstance(doc, dict):
        raise InstanceError(f"instance: expected a JSON object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise InstanceError(f"instance: unknown field {unknown[0]!r}")
    agents = tuple(_agent(a, k) for k, a in enumerate(_list(doc.get("agents"), "agents")))
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InstanceError(f"agents: duplicate agent name {dup!r}")
    indivisible = tuple(_names(doc.get("indivisible", []), "indivisible"))
    divisible = tuple(_names(doc.get("divisible", []), "divisible"))
    goods = [*indivisible, *divisible]
    if len(set(goods)) != len(goods):
        dup = next(g for g in goods if goods.count(g) > 1)
        raise InstanceError(f"goods: duplicate good name {dup!r}")
    known_agents, known_goods = set(names), set(goods)
    values_doc = doc.get("values", {})
    if not isinstance(values_doc, dict):
        raise InstanceError("values: expected an object of agent -> {good: value}")
    values: dict[str, dict[str, float]] = {}
    for i, row in values_doc.items():
        if i not in known_agents:
            raise InstanceError(f"values: unknown agent {i!r}")
        if not isinstance(row, dict):
            raise InstanceError(f"values[{i!r}]: expected an object of good -> value")
        values[i] = {}
        for g, v in row.items():
            if g not in known_goods:
                raise InstanceError(f"values[{i!r}]: unknown good {g!r}")
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InstanceError(f"values[{i!r}][{g!r}]: expected a number, got {v!r}")
            if v < 0:
                raise InstanceError(f"values[{i!r}][{g!r}]: negative value {v!r}")
            values[i][g] = float(v)
    objective = doc.get("objective", "utilitarian")
    if objective not in OBJECTIVES:
        raise InstanceError(f"objective: unknown {objective!r} (one of {', '.join(OBJECTIVES)})")
    forbidden = frozenset(
        tuple(_names(pair, "forbidden[]")) for pair in _list(doc.get("forbidden", []), "forbidden")
    )
    if any(len(p) != 2 for p in forbidden):
        raise InstanceError("forbidden: expected [agent, good] pairs")
    requires_doc = doc.get("requires", {})
    if not isinstance(requires_doc, dict):
        raise InstanceError("requires: expected an object of divisible good -> [goods]")
    requires = {d: tuple(_names(g, f"requires[{d!r}]")) for d, g in requires_doc.items()}
    caps_doc = doc.get("caps", {})
    if not isinstance(caps_doc, dict):
        raise InstanceError("caps: expected an object of agent -> [[goods, count], ...]")
    caps = {i: tuple(_cap(c, f"caps[{i!r}]") for c in _list(v, f"caps[{i!r}]"))
            for i, v in caps_doc.items()}
    return Instance(
        agents=agents,
        indivisible=indivisible,
        divisible=divisible,
        values=values,
        objective=objective,
        forbidden=frozenset((p[0], p[1]) for p in forbidden),
        requires=requires,
        caps=caps,
        optional=frozenset(_names(doc.get("optional", []), "optional")),
    )


def instance_to_dict(instance: Instance) -> dict[str, Any]:
    """The document :func:`instance_from_dict` reads back to an equal instance."""
    doc: dict[str, Any] = {
        "agents": [{"name": a.name, "criterion": a.criterion, "weight": a.weight}
                   for a in instance.agents],
        "indivisible": list(instance.indivisible),
        "divisible": list(instance.divisible),
        "values": {i: dict(row) for i, row in instance.values.items()},
        "objective": instance.objective,
    }
    if instance.forbidden:
        doc["forbidden"] = sorted([i, g] for i, g in instance.forbidden)
    if instance.requires:
        doc["requires"] = {d: list(g) for d, g in instance.requires.items()}
    if instance.caps:
        doc["caps"] = {i: [[list(g), k] for g, k in c] for i, c in instance.caps.items()}
    if instance.optional:
        doc["optional"] = sorted(instance.optional)
    return doc


def _agent(doc: Any, k: int) -> Agent:
    where = f"agents[{k}]"
    if not isinstance(doc, dict):
        raise InstanceError(f"{where}: expected an object with a name")
    unknown = sorted(set(doc) - {"name", "criterion", "weight"})
    if unknown:
        raise InstanceError(f"{where}: unknown field {unknown[0]!r}")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise InstanceError(f"{where}.name: expected a non-empty string, got {name!r}")
    criterion = doc.get("criterion", "prop_alpha")
    if criterion not in CRITERIA:
        raise InstanceError(
            f"agent {name!r}: unknown criterion {criterion!r} (one of {', '.join(CRITERIA)})"
        )
    weight = doc.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
        math.isfinite(weight) and weight > 0
    ):
        raise InstanceError(f"agent {name!r}: weight must be a positive number, got {weight!r}")
    return Agent(name=name, weight=float(weight), criterion=criterion)


def _cap(doc: Any, where: str) -> tuple[tuple[str, ...], int]:
    if not isinstance(doc, list | tuple) or len(doc) != 2:
        raise InstanceError(f"{where}: expected [[goods], count]")
    group, most = doc
    if isinstance(most, bool) or not isinstance(most, int) or most < 0:
        raise InstanceError(f"{where}: count must be an integer ≥ 0, got {most!r}")
    return tuple(_names(group, where)), most


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InstanceError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _names(value: Any, where: str) -> list[str]:
    items = _list(value, where)
    for item in items:
        if not isinstance(item, str) or not item:
            raise InstanceError(f"{where}: expected non-empty strings, got {item!r}")
    return items
