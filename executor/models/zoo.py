"""The model zoo: DeepRecInfra's architectures by name, built from a parsed ``zoo:`` reference.

``zoo:<arch>?scale=<f>&seed=<n>&user_tables=<n>&candidate_dense=<n>`` names a replica; its
grammar, defaults and bounds are :mod:`executor.wire.artifact`'s, the one parser the API also
validates with, so this module only builds what a :class:`ZooSpec` names:

- ``arch``: ``rmc1``, ``rmc2``, ``rmc3`` (DLRM), ``wnd`` (Wide & Deep), ``din`` (DIN);
- ``scale``: fraction of the nominal 10⁶ rows per table, so a model fits the machine (RMC2 at
  0.04 is 32 tables × 40,000 rows × 64 floats ≈ 330 MB); every table keeps at least one row;
- ``seed``: the weights are a deterministic function of (arch, scale, seed, split);
- ``user_tables`` (e.g. 28 of RMC2's 32 as in production ranking): how many sparse tables
  describe the user and context (sent once per query); the rest describe the candidate;
- ``candidate_dense``: how many of the dense values are per candidate; the others are the
  user's.

docs/models.md tabulates every architecture and its split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from executor.models.din import DIN, DIN_CONFIG
from executor.models.dlrm import DLRM, RMC1, RMC2, RMC3, DlrmConfig
from executor.models.layers import ZooModel
from executor.models.wnd import WND, WideAndDeep
from executor.wire.artifact import DEFAULT_SCALE, ZooError, ZooSpec, parse_zoo_artifact

# Re-exported: executor.models has always offered the zoo reference's parser and spec.
__all__ = [
    "ARCHITECTURES",
    "DEFAULT_SCALE",
    "ZooError",
    "ZooSpec",
    "build_model",
    "footprint_bytes",
    "parse_zoo_artifact",
    "zoo_model",
]


@dataclass(frozen=True)
class _Arch:
    rows: int  # rows per table at scale 1
    build: Callable[..., ZooModel]


def _dlrm(config: DlrmConfig) -> _Arch:
    return _Arch(config.rows, lambda **kw: DLRM(config, **kw))


# The builders of executor.wire.artifact's architectures (the same names, checked by
# tests/executor/test_wire.py, as are the table and dense sizes it bounds the split by).
ARCHITECTURES: dict[str, _Arch] = {
    "rmc1": _dlrm(RMC1),
    "rmc2": _dlrm(RMC2),
    "rmc3": _dlrm(RMC3),
    "wnd": _Arch(WND.rows, lambda **kw: WideAndDeep(WND, **kw)),
    "din": _Arch(DIN_CONFIG.rows, lambda **kw: DIN(DIN_CONFIG, **kw)),
}


def build_model(spec: ZooSpec) -> ZooModel:
    """Build a zoo model on the CPU with weights drawn from ``spec.seed``; eval mode, frozen.

    Raises ZooError for a spec that breaks a rule of executor.wire.artifact (one made in code
    has not been checked by the parser).
    """
    spec.check()
    a = ARCHITECTURES[spec.arch]
    gen = torch.Generator().manual_seed(spec.seed)
    model = a.build(
        rows=max(1, round(a.rows * spec.scale)),
        user_tables=spec.effective_user_tables,
        candidate_dense=spec.effective_candidate_dense,
        gen=gen,
    )
    return model.eval().requires_grad_(False)


def zoo_model(arch: str, **params: float | int | None) -> ZooModel:
    """Shorthand: ``zoo_model("rmc2", scale=0.04, user_tables=28)``; raises ZooError."""
    return build_model(ZooSpec(arch, **params))  # type: ignore[arg-type]


def _bytes_of(model: ZooModel) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def footprint_bytes(spec: ZooSpec) -> int:
    """Bytes of parameters and buffers a replica of ``spec`` will hold, without building it.

    Every tensor of a zoo model is either independent of the table rows or grows linearly with
    them (the embedding tables, their offsets), so two builds of one and two rows per table,
    which take milliseconds, give the size at any scale exactly. The daemon checks a plan
    against a device's memory with it before loading anything (docs/executor.md, "Memory").
    Raises ZooError like :func:`build_model`.
    """
    spec.check()
    a = ARCHITECTURES[spec.arch]
    one, two = (
        _bytes_of(
            a.build(
                rows=rows,
                user_tables=spec.effective_user_tables,
                candidate_dense=spec.effective_candidate_dense,
                gen=torch.Generator().manual_seed(0),
            )
        )
        for rows in (1, 2)
    )
    rows = max(1, round(a.rows * spec.scale))
    return one + (two - one) * (rows - 1)
