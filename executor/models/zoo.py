"""The model zoo: DeepRecInfra's architectures by name, built from a ``zoo:`` artifact.

``zoo:<arch>?scale=<f>&seed=<n>&user_tables=<n>&candidate_dense=<n>`` names a replica:

- ``arch``: ``rmc1``, ``rmc2``, ``rmc3`` (DLRM), ``wnd`` (Wide & Deep), ``din`` (DIN);
- ``scale`` (default 0.01): fraction of the nominal 10⁶ rows per table, so a model fits the
  machine (RMC2 at 0.04 is 32 tables × 40,000 rows × 64 floats ≈ 330 MB);
- ``seed`` (default 0): the weights are a deterministic function of (arch, scale, seed, split);
- ``user_tables`` (default ⌊7/8 · tables⌋, e.g. 28 of RMC2's 32 as in production ranking):
  how many sparse tables describe the user and context (sent once per query); the rest
  describe the candidate;
- ``candidate_dense`` (default a quarter of the dense width): how many of the dense values
  are per candidate; the others are the user's.

docs/models.md tabulates every architecture and its split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

import torch

from executor.models.din import DIN, DIN_CONFIG
from executor.models.dlrm import DLRM, RMC1, RMC2, RMC3, DlrmConfig
from executor.models.layers import ZooModel
from executor.models.wnd import WND, WideAndDeep

DEFAULT_SCALE = 0.01


class ZooError(ValueError):
    """A zoo artifact names an unknown architecture or a bad parameter."""


@dataclass(frozen=True)
class _Arch:
    tables: int  # sparse tables the user_tables split applies to
    dense: int  # dense width the candidate_dense split applies to
    rows: int  # rows per table at scale 1
    build: Callable[..., ZooModel]


def _dlrm(config: DlrmConfig) -> _Arch:
    return _Arch(config.tables, config.dense, config.rows, lambda **kw: DLRM(config, **kw))


ARCHITECTURES: dict[str, _Arch] = {
    "rmc1": _dlrm(RMC1),
    "rmc2": _dlrm(RMC2),
    "rmc3": _dlrm(RMC3),
    "wnd": _Arch(WND.tables, WND.dense, WND.rows, lambda **kw: WideAndDeep(WND, **kw)),
    "din": _Arch(
        DIN_CONFIG.context_tables,
        DIN_CONFIG.dense,
        DIN_CONFIG.rows,
        lambda **kw: DIN(DIN_CONFIG, **kw),
    ),
}


@dataclass(frozen=True)
class ZooSpec:
    arch: str
    scale: float = DEFAULT_SCALE
    seed: int = 0
    user_tables: int | None = None  # None: ⌊7/8 · tables⌋
    candidate_dense: int | None = None  # None: dense // 4

    @property
    def artifact(self) -> str:
        """The canonical artifact string, with every default written out."""
        a = ARCHITECTURES[self.arch]
        return (
            f"zoo:{self.arch}?scale={self.scale:g}&seed={self.seed}"
            f"&user_tables={_user_tables(self, a)}&candidate_dense={_candidate_dense(self, a)}"
        )


def _user_tables(spec: ZooSpec, arch: _Arch) -> int:
    return arch.tables * 7 // 8 if spec.user_tables is None else spec.user_tables


def _candidate_dense(spec: ZooSpec, arch: _Arch) -> int:
    return arch.dense // 4 if spec.candidate_dense is None else spec.candidate_dense


def parse_zoo_artifact(artifact: str) -> ZooSpec:
    """Parse ``zoo:<arch>?k=v&…``; raise ZooError naming the bad part."""
    if not artifact.startswith("zoo:"):
        raise ZooError(f"artifact {artifact!r}: expected 'zoo:<arch>?...'")
    arch, _, query = artifact[len("zoo:") :].partition("?")
    if arch not in ARCHITECTURES:
        raise ZooError(
            f"artifact {artifact!r}: unknown architecture {arch!r}; "
            f"known: {', '.join(ARCHITECTURES)}"
        )
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key in params:
            raise ZooError(f"artifact {artifact!r}: parameter {key!r} given twice")
        params[key] = value
    unknown = set(params) - {"scale", "seed", "user_tables", "candidate_dense"}
    if unknown:
        raise ZooError(f"artifact {artifact!r}: unknown parameter {sorted(unknown)[0]!r}")
    try:
        spec = ZooSpec(
            arch=arch,
            scale=float(params.get("scale", DEFAULT_SCALE)),
            seed=int(params.get("seed", 0)),
            user_tables=int(params["user_tables"]) if "user_tables" in params else None,
            candidate_dense=int(params["candidate_dense"]) if "candidate_dense" in params else None,
        )
    except ValueError as exc:
        raise ZooError(f"artifact {artifact!r}: {exc}") from exc
    _check(spec)
    return spec


def _check(spec: ZooSpec) -> None:
    a = ARCHITECTURES[spec.arch]
    if not (spec.scale > 0 and spec.scale <= 1):
        raise ZooError(f"{spec.arch}: scale must be in (0, 1], got {spec.scale}")
    if spec.seed < 0:
        raise ZooError(f"{spec.arch}: seed must be >= 0, got {spec.seed}")
    if not 0 <= _user_tables(spec, a) <= a.tables:
        raise ZooError(
            f"{spec.arch}: user_tables must be in [0, {a.tables}], got {spec.user_tables}"
        )
    if not 0 <= _candidate_dense(spec, a) <= a.dense:
        raise ZooError(
            f"{spec.arch}: candidate_dense must be in [0, {a.dense}], got {spec.candidate_dense}"
        )


def build_model(spec: ZooSpec) -> ZooModel:
    """Build a zoo model on the CPU with weights drawn from ``spec.seed``; eval mode, frozen."""
    _check(spec)
    a = ARCHITECTURES[spec.arch]
    gen = torch.Generator().manual_seed(spec.seed)
    model = a.build(
        rows=max(1, round(a.rows * spec.scale)),
        user_tables=_user_tables(spec, a),
        candidate_dense=_candidate_dense(spec, a),
        gen=gen,
    )
    return model.eval().requires_grad_(False)


def zoo_model(arch: str, **params: float | int | None) -> ZooModel:
    """Shorthand: ``zoo_model("rmc2", scale=0.04, user_tables=28)``."""
    if arch not in ARCHITECTURES:
        raise ZooError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return build_model(ZooSpec(arch=arch, **params))  # type: ignore[arg-type]
