"""Write a cluster-shaped fair-division instance for ``gpufair divide`` on stdout.

``--tenants`` agents and ``--gpus`` GPUs, each GPU with ``--seats`` identical seats
(indivisible) and one stream pool (divisible). A tenant's value of a seat is the throughput one
replica adds on that GPU (tenant scale × GPU speed, with noise); its value of a pool is the
throughput of the pool's extra streams; about a quarter of the tenants' models fit only the
larger GPUs (value 0 elsewhere). Criteria cycle through all seven notions; weights are 1 or 2.
Seeded: the same arguments give the same file.

    python examples/make_large_instance.py --tenants 64 --gpus 64 --seed 0 > /tmp/x.json
    gpufair divide /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import random

CRITERIA = ("prop_alpha", "ef_alpha", "efm", "ef1", "prop1", "ef", "prop")


def make(tenants: int, gpus: int, seats: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    speed = [rng.choice((1.0, 1.0, 2.0, 3.0)) for _ in range(gpus)]
    big = [s >= 2.0 for s in speed]
    indivisible = [f"gpu-{g:03d}/seat-{k}" for g in range(gpus) for k in range(seats)]
    divisible = [f"gpu-{g:03d}/pool" for g in range(gpus)]
    agents, values = [], {}
    for t in range(tenants):
        name = f"tenant-{t:03d}"
        agents.append({
            "name": name,
            "criterion": CRITERIA[t % len(CRITERIA)],
            "weight": 2.0 if t % 5 == 0 else 1.0,
        })
        scale = rng.uniform(0.5, 2.0)
        stream_share = rng.uniform(0.2, 0.8)  # how much of its value lies in extra streams
        needs_big = rng.random() < 0.25
        row: dict[str, float] = {}
        for g in range(gpus):
            if needs_big and not big[g]:
                continue
            base = scale * speed[g] * rng.uniform(0.8, 1.2)
            seat = round(base * (1 - stream_share), 3)
            for k in range(seats):
                row[f"gpu-{g:03d}/seat-{k}"] = seat
            row[f"gpu-{g:03d}/pool"] = round(base * stream_share * seats, 3)
        values[name] = row
    return {"agents": agents, "indivisible": indivisible, "divisible": divisible,
            "values": values, "objective": "utilitarian"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--seats", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    json.dump(make(args.tenants, args.gpus, args.seats, args.seed), __import__("sys").stdout)


if __name__ == "__main__":
    main()
