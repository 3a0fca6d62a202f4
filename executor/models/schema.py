"""The feature schema of a model: what a query for it must carry, and on which side.

A :class:`ModelSchema` names every input of a model under the structured-feature contract
(:mod:`executor.features`, RecServe's structured features): how many dense values describe the
user and how many each candidate, and for each sparse feature its side (``"user"`` or
``"candidate"``), its id range ``[0, num_ids)`` and its fixed number of ids per row
(DeepRecInfra's lookups per table). The daemon serves it at ``/v1/models/{model}/schema``; the
codec validates queries against it; the runtime builds probe batches from it. It is JSON-able
and ``from_dict`` is its one parser.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from executor.features import Batch, Query

Side = Literal["user", "candidate"]
SIDES: tuple[Side, ...] = ("user", "candidate")


class SchemaError(ValueError):
    """A schema document is malformed; the message names the offending field."""


@dataclass(frozen=True)
class SparseFeature:
    name: str  # key of the feature in a query's sparse dict
    side: Side  # "user": sent once per query; "candidate": one row per candidate
    num_ids: int  # ids lie in [0, num_ids)
    lookups: int  # ids per row, fixed (sum-pooled or attended over by the model)


@dataclass(frozen=True)
class ModelSchema:
    name: str  # architecture ("rmc2") or a tenant's model name
    user_dense: int  # Du: dense values describing the user/context, sent once per query
    candidate_dense: int  # Dc: dense values per candidate row
    sparse: tuple[SparseFeature, ...]  # every sparse feature, user and candidate side

    def features(self, side: Side) -> tuple[SparseFeature, ...]:
        return self._by_side[side]

    @functools.cached_property
    def _by_side(self) -> dict[Side, tuple[SparseFeature, ...]]:
        # Asked for on every query the codec validates: computed once per schema.
        return {side: tuple(f for f in self.sparse if f.side == side) for side in SIDES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dense": {"user": self.user_dense, "candidate": self.candidate_dense},
            "sparse": [
                {"name": f.name, "side": f.side, "num_ids": f.num_ids, "lookups": f.lookups}
                for f in self.sparse
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> ModelSchema:
        """Parse and validate a schema document; raise SchemaError naming the bad field."""
        doc = _mapping(data, "schema")
        dense = _mapping(doc.get("dense"), "schema.dense")
        features = doc.get("sparse")
        if not isinstance(features, list):
            raise SchemaError("schema.sparse: expected a list of features")
        sparse = tuple(_feature(f, f"schema.sparse[{k}]") for k, f in enumerate(features))
        names = [f.name for f in sparse]
        if len(set(names)) != len(names):
            raise SchemaError("schema.sparse: duplicate feature names")
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaError("schema.name: expected a non-empty string")
        return cls(
            name=name,
            user_dense=_count(dense.get("user"), "schema.dense.user", 0),
            candidate_dense=_count(dense.get("candidate"), "schema.dense.candidate", 0),
            sparse=sparse,
        )

    def random_query(self, rng: np.random.Generator, num_candidates: int) -> Query:
        """A valid query with random features: for probes, tests, the profiler and benchmarks."""

        def ids(f: SparseFeature, rows: tuple[int, ...]) -> np.ndarray:
            return rng.integers(0, f.num_ids, size=(*rows, f.lookups), dtype=np.int64)

        return Query(
            user_dense=rng.standard_normal(self.user_dense, dtype=np.float32),
            user_sparse={f.name: ids(f, ()) for f in self.features("user")},
            candidate_dense=rng.standard_normal(
                (num_candidates, self.candidate_dense), dtype=np.float32
            ),
            candidate_sparse={
                f.name: ids(f, (num_candidates,)) for f in self.features("candidate")
            },
        )

    def probe_batch(self, seed: int = 0) -> Batch:
        """Two users with 3 and 2 candidates: checks a loaded model's forward and output shape."""
        rng = np.random.default_rng(seed)
        return Batch.of([self.random_query(rng, 3), self.random_query(rng, 2)])


def _mapping(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected an object")
    return data


def _count(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SchemaError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _feature(data: Any, where: str) -> SparseFeature:
    doc = _mapping(data, where)
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise SchemaError(f"{where}.name: expected a non-empty string")
    side = doc.get("side")
    if side not in SIDES:
        raise SchemaError(f"{where}.side: expected 'user' or 'candidate', got {side!r}")
    return SparseFeature(
        name=name,
        side=side,
        num_ids=_count(doc.get("num_ids"), f"{where}.num_ids", 1),
        lookups=_count(doc.get("lookups"), f"{where}.lookups", 1),
    )
