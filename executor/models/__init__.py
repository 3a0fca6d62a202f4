"""The model zoo and the feature schema every served model follows (docs/architecture.md §4).

Public surface: :class:`ModelSchema` / :class:`SparseFeature` (what a query carries),
:class:`ZooModel` (structured and naive forwards), :func:`build_model` / :func:`zoo_model` /
:func:`parse_zoo_artifact` (DeepRecInfra's RMC1-3, WnD and DIN), :func:`expand_rows` (the naive
server's row layout). See docs/models.md.
"""

from __future__ import annotations

from executor.models.layers import ZooModel, expand_rows
from executor.models.schema import ModelSchema, SchemaError, SparseFeature
from executor.models.zoo import (
    ARCHITECTURES,
    DEFAULT_SCALE,
    ZooError,
    ZooSpec,
    build_model,
    footprint_bytes,
    parse_zoo_artifact,
    zoo_model,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_SCALE",
    "ModelSchema",
    "SchemaError",
    "SparseFeature",
    "ZooError",
    "ZooModel",
    "ZooSpec",
    "build_model",
    "expand_rows",
    "footprint_bytes",
    "parse_zoo_artifact",
    "zoo_model",
]
