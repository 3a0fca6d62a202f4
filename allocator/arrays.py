"""An instance's values as dense arrays: the one place that turns the value dicts into numpy.

The checker (:mod:`allocator.certificate`) and the scalable path (:mod:`allocator.scalable.data`)
both work on matrices — agents × goods products take milliseconds where walking the dicts took
seconds at hundreds of agents — and both read them from here, in the instance's own order of
agents and goods, so that row ``i`` and column ``g`` mean the same thing everywhere.
"""

from __future__ import annotations

import numpy as np

from allocator.instance import Instance


def value_matrices(instance: Instance) -> tuple[np.ndarray, np.ndarray]:
    """``(vm, vd)``: ``vm[i, g] = v_i(g)`` over the indivisible goods and ``vd[i, d] = u_i(d)``
    over the divisible ones, agents and goods in the instance's order, missing values 0."""
    n = len(instance.agents)
    goods = {g: k for k, g in enumerate(instance.indivisible)}
    pools = {d: k for k, d in enumerate(instance.divisible)}
    vm = np.zeros((n, len(goods)))
    vd = np.zeros((n, len(pools)))
    for i, agent in enumerate(instance.agents):
        for good, value in instance.values.get(agent.name, {}).items():
            if good in goods:
                vm[i, goods[good]] = value
            else:
                vd[i, pools[good]] = value
    return vm, vd
