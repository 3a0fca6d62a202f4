"""Write a cluster-shaped fair-division instance for ``gpufair divide`` on stdout.

``--tenants`` agents and ``--gpus`` GPUs, each GPU with ``--seats`` identical seats
(indivisible) and one stream pool (divisible): the headline instances, made by
``bench.instances.headline_instance`` (whose docstring says how values are drawn). Seeded: the
same arguments give the same file.

    python examples/make_large_instance.py --tenants 64 --gpus 64 --seed 0 > /tmp/x.json
    gpufair divide /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import sys

from allocator.documents import instance_to_dict
from bench.instances import headline_instance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--seats", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    instance = headline_instance(args.tenants, args.gpus, args.seed, seats=args.seats)
    json.dump(instance_to_dict(instance), sys.stdout)


if __name__ == "__main__":
    main()
