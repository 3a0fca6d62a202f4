"""Hypothesis strategies for core instances (seeded by tests/conftest.py's profile)."""

from __future__ import annotations

from hypothesis import strategies as st

from allocator.instance import Agent, Instance
from allocator.snapshot import CRITERIA


@st.composite
def instances(
    draw: st.DrawFn,
    max_agents: int = 4,
    max_indivisible: int = 5,
    max_divisible: int = 2,
    criteria: tuple[str, ...] = CRITERIA,
    weighted: bool = True,
    objectives: tuple[str, ...] = ("utilitarian", "nash", "egalitarian"),
) -> Instance:
    n = draw(st.integers(1, max_agents))
    m = draw(st.integers(0, max_indivisible))
    d = draw(st.integers(0 if m else 1, max_divisible))
    agents = tuple(
        Agent(
            name=f"a{k}",
            weight=draw(st.sampled_from((1.0, 2.0))) if weighted else 1.0,
            criterion=draw(st.sampled_from(criteria)),
        )
        for k in range(n)
    )
    goods = [f"g{k}" for k in range(m)] + [f"d{k}" for k in range(d)]
    values = {
        a.name: {g: float(draw(st.integers(0, 9))) for g in goods} for a in agents
    }
    return Instance(
        agents=agents,
        indivisible=tuple(goods[:m]),
        divisible=tuple(goods[m:]),
        values=values,
        objective=draw(st.sampled_from(objectives)),
    )
