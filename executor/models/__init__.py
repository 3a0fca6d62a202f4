"""The model zoo and the feature schema every served model follows (docs/architecture.md §4).

Public surface: :class:`ModelSchema` / :class:`SparseFeature` (what a query carries),
:class:`ZooModel` (structured and naive forwards), :func:`build_model` / :func:`zoo_model` /
:func:`parse_zoo_artifact` (DeepRecInfra's RMC1-3, WnD and DIN), :func:`expand_rows` (the naive
server's row layout). See docs/models.md.

The schema is imported at once; the models, which need torch, only when first used, so that
the executor's front processes (which parse queries against schemas and never run a model)
do not pay torch's import time and memory (docs/executor.md, "Fronts and the engine").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from executor.models.schema import ModelSchema, SchemaError, SparseFeature

if TYPE_CHECKING:
    from executor.models.layers import ZooModel, expand_rows
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

# Names of the torch side and the module that defines each.
_LAZY = {
    "ZooModel": "executor.models.layers",
    "expand_rows": "executor.models.layers",
    **dict.fromkeys(
        (
            "ARCHITECTURES",
            "DEFAULT_SCALE",
            "ZooError",
            "ZooSpec",
            "build_model",
            "footprint_bytes",
            "parse_zoo_artifact",
            "zoo_model",
        ),
        "executor.models.zoo",
    ),
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
