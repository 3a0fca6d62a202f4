"""Query bodies of the executor's infer routes: the Open Inference Protocol, and gpufair's JSON.

A query travels as named tensors (:data:`USER_DENSE` (Du,) float32, :data:`CANDIDATE_DENSE`
(N, Dc) float32, ``user_sparse/<f>`` (L,) and ``candidate_sparse/<g>`` (N, L) int64 ids):

- Open Inference Protocol (KServe v2, ``POST /v2/models/{model}/infer``, :mod:`executor.wire.oip`):
  the tensors as the protocol's inputs, JSON or with the binary tensor data extension. Binary
  is the format to send: one small JSON header, then the raw little-endian bytes of each
  tensor, read as zero-copy :func:`numpy.frombuffer` views (docs/executor.md measures it
  against the ``.npz`` archives it replaced). The reply's output is ``scores`` (N,) FP32
  (:func:`scores_to_oip`).
- gpufair's JSON (``POST /v1/models/{model}/infer``, docs/architecture.md §3.3), a convenience::

    {"user": {"dense": [...Du], "sparse": {"f": [ids...L]}},
     "candidates": {"dense": [[...Dc], ...N], "sparse": {"g": [[ids...L], ...N]}}}

Every form is validated against the model's :class:`~executor.models.ModelSchema`: every
feature present with its side, shapes, finite dense values and ids in ``[0, num_ids)`` — an
out-of-range id would otherwise fail inside an embedding kernel (on CUDA, a device-side assert
that takes the whole GPU context down with it). A bad body raises :class:`QueryError` (or
:class:`~executor.wire.oip.TensorError`, both ValueErrors) whose message names the field; the
daemon answers it with 400.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from executor.features import Query
from executor.models import ModelSchema
from executor.wire import oip

USER_DENSE = "user_dense"
CANDIDATE_DENSE = "candidate_dense"
USER_SPARSE = "user_sparse/"  # + feature name
CANDIDATE_SPARSE = "candidate_sparse/"
SCORES = "scores"  # the reply's one output tensor


class QueryError(ValueError):
    """A query body does not match the model's schema; the message names the field."""


def parse_query_json(
    schema: ModelSchema, body: bytes | bytearray | str | dict[str, Any]
) -> Query:
    """Parse and validate a JSON query body (raw bytes/str, or an already decoded object)."""
    if isinstance(body, bytes | bytearray | str):
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QueryError(f"body: invalid JSON ({exc})") from exc
        except RecursionError as exc:  # the decoder recurses once per level of nesting
            raise QueryError("body: invalid JSON (nested too deeply)") from exc
    doc = _object(body, "body")
    user = _object(doc.get("user"), "user")
    cands = _object(doc.get("candidates"), "candidates")
    _only(doc, {"user", "candidates"}, "body")
    _only(user, {"dense", "sparse"}, "user")
    _only(cands, {"dense", "sparse"}, "candidates")
    user_sparse = _object(user.get("sparse", {}), "user.sparse")
    cand_sparse = _object(cands.get("sparse", {}), "candidates.sparse")
    return _validated(
        schema,
        _array(user.get("dense", []), np.float32, "user.dense"),
        {f: _array(v, np.int64, f"user.sparse.{f}") for f, v in user_sparse.items()},
        _array(cands.get("dense", []), np.float32, "candidates.dense"),
        {f: _array(v, np.int64, f"candidates.sparse.{f}") for f, v in cand_sparse.items()},
    )


def parse_query_oip(
    schema: ModelSchema, body: bytes | bytearray | memoryview, header_length: int | None
) -> tuple[Query, oip.InferRequest]:
    """Parse and validate an Open Inference Protocol request (JSON, or binary when
    ``header_length`` is given); its tensors stay views of ``body`` where they can."""
    request = oip.decode_request(body, header_length)
    return query_from_tensors(schema, request.inputs), request


def query_from_tensors(schema: ModelSchema, arrays: Mapping[str, np.ndarray]) -> Query:
    """The query of named tensors (see the module docstring), validated; no copy of a tensor
    that already has its dtype."""
    user_sparse: dict[str, np.ndarray] = {}
    cand_sparse: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        if key.startswith(USER_SPARSE) and len(key) > len(USER_SPARSE):
            user_sparse[key[len(USER_SPARSE) :]] = _typed(array, np.int64, key)
        elif key.startswith(CANDIDATE_SPARSE) and len(key) > len(CANDIDATE_SPARSE):
            cand_sparse[key[len(CANDIDATE_SPARSE) :]] = _typed(array, np.int64, key)
        elif key not in (USER_DENSE, CANDIDATE_DENSE):
            raise QueryError(f"body: unexpected tensor {key!r}")
    for key in (USER_DENSE, CANDIDATE_DENSE):
        if key not in arrays:
            raise QueryError(f"{key}: missing")
    return _validated(
        schema,
        _typed(arrays[USER_DENSE], np.float32, USER_DENSE),
        user_sparse,
        _typed(arrays[CANDIDATE_DENSE], np.float32, CANDIDATE_DENSE),
        cand_sparse,
    )


def query_to_tensors(query: Query) -> dict[str, np.ndarray]:
    """A query's named tensors (the inverse of :func:`query_from_tensors`)."""
    arrays = {USER_DENSE: query.user_dense, CANDIDATE_DENSE: query.candidate_dense}
    arrays.update({USER_SPARSE + f: ids for f, ids in query.user_sparse.items()})
    arrays.update({CANDIDATE_SPARSE + f: ids for f, ids in query.candidate_sparse.items()})
    return arrays


def query_to_oip(query: Query, *, binary: bool = True) -> tuple[bytes, int | None]:
    """An Open Inference Protocol request body of a query and its header length (None: JSON),
    asking for binary scores when the body is binary: what a client sends."""
    return oip.encode_request(query_to_tensors(query), binary=binary, binary_output=binary)


def scores_to_oip(
    model: str, scores: np.ndarray, request: oip.InferRequest
) -> tuple[bytes, int | None]:
    """The Open Inference Protocol reply to ``request`` carrying a query's scores, and its
    header length (None: a JSON reply, when the request did not ask for binary outputs)."""
    return oip.encode_reply(
        model, {SCORES: scores}, request_id=request.id, binary=request.binary_output
    )


def tensor_metadata(schema: ModelSchema) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The inputs and outputs of the model's Open Inference Protocol metadata (-1: N)."""
    inputs = [
        {"name": USER_DENSE, "datatype": "FP32", "shape": [schema.user_dense]},
        {"name": CANDIDATE_DENSE, "datatype": "FP32", "shape": [-1, schema.candidate_dense]},
    ]
    for f in schema.sparse:
        name, shape = (
            (USER_SPARSE + f.name, [f.lookups])
            if f.side == "user"
            else (CANDIDATE_SPARSE + f.name, [-1, f.lookups])
        )
        inputs.append({"name": name, "datatype": "INT64", "shape": shape})
    return inputs, [{"name": SCORES, "datatype": "FP32", "shape": [-1]}]


def query_to_json(query: Query) -> dict[str, Any]:
    """The JSON body of a query (what a client sends)."""
    return {
        "user": {
            "dense": query.user_dense.tolist(),
            "sparse": {f: ids.tolist() for f, ids in query.user_sparse.items()},
        },
        "candidates": {
            "dense": query.candidate_dense.tolist(),
            "sparse": {f: ids.tolist() for f, ids in query.candidate_sparse.items()},
        },
    }


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise QueryError(f"{where}: expected an object")
    return value


def _only(doc: dict[str, Any], keys: set[str], where: str) -> None:
    extra = sorted(set(doc) - keys)
    if extra:
        raise QueryError(f"{where}.{extra[0]}: unexpected field")


def _array(value: Any, dtype: type[np.generic], where: str) -> np.ndarray:
    """A JSON list (of lists) as a numpy array; ragged, non-numeric or boolean lists refused."""
    try:
        raw = np.asarray(value)
    except (ValueError, OverflowError) as exc:
        raise QueryError(f"{where}: expected a rectangular list of numbers") from exc
    return _typed(raw, dtype, where)


def _typed(raw: np.ndarray, dtype: type[np.generic], where: str) -> np.ndarray:
    if raw.size == 0:
        return raw.astype(dtype)
    if dtype is np.int64:
        if raw.dtype.kind not in "iu":
            raise QueryError(f"{where}: expected integer ids, got {_kind(raw)}")
    elif raw.dtype.kind not in "iuf":
        raise QueryError(f"{where}: expected numbers, got {_kind(raw)}")
    try:  # copy=False: a tensor of the right dtype stays a view of the body
        return raw.astype(
            dtype, casting="same_kind" if raw.dtype.kind == "f" else "unsafe", copy=False
        )
    except (TypeError, OverflowError) as exc:
        raise QueryError(f"{where}: cannot convert to {np.dtype(dtype).name}") from exc


def _kind(raw: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "O": "mixed values", "f": "floats"}.get(
        raw.dtype.kind, raw.dtype.name
    )


def _all_finite(values: np.ndarray) -> bool:
    """Whether every float32 value is finite, in one pass: their sum in float64 is finite
    exactly when they all are (it cannot overflow, and an inf or NaN carries through)."""
    return values.size == 0 or math.isfinite(float(np.add.reduce(values, None, np.float64)))


def _validated(
    schema: ModelSchema,
    user_dense: np.ndarray,
    user_sparse: dict[str, np.ndarray],
    cand_dense: np.ndarray,
    cand_sparse: dict[str, np.ndarray],
) -> Query:
    if user_dense.shape != (schema.user_dense,):
        raise QueryError(
            f"user.dense: expected {schema.user_dense} values, got shape {user_dense.shape}"
        )
    if not _all_finite(user_dense):
        raise QueryError("user.dense: values must be finite")
    if cand_dense.size == 0 and schema.candidate_dense == 0 and cand_sparse:
        # No candidate dense values: the number of candidates comes from the sparse features.
        cand_dense = np.zeros((len(next(iter(cand_sparse.values()))), 0), np.float32)
    if cand_dense.ndim != 2 or cand_dense.shape[1] != schema.candidate_dense:
        raise QueryError(
            f"candidates.dense: expected N rows of {schema.candidate_dense} values, "
            f"got shape {cand_dense.shape}"
        )
    n = cand_dense.shape[0]
    if n == 0:
        raise QueryError("candidates: at least one candidate is required")
    if not _all_finite(cand_dense):
        raise QueryError("candidates.dense: values must be finite")
    for side, given, rows in (("user", user_sparse, ()), ("candidate", cand_sparse, (n,))):
        where = "user.sparse" if side == "user" else "candidates.sparse"
        expected = {f.name: f for f in schema.features(side)}  # type: ignore[arg-type]
        for name in sorted(set(given) - set(expected)):
            raise QueryError(f"{where}.{name}: not a {side}-side feature of {schema.name}")
        for name, feature in expected.items():
            if name not in given:
                raise QueryError(f"{where}.{name}: missing")
            ids = given[name]
            if ids.shape != (*rows, feature.lookups):
                raise QueryError(
                    f"{where}.{name}: expected shape {(*rows, feature.lookups)}, got {ids.shape}"
                )
            # One pass: a negative int64 id is past any bound once read as unsigned.
            if ids.size and int(ids.view(np.uint64).max()) >= feature.num_ids:
                raise QueryError(f"{where}.{name}: ids must lie in [0, {feature.num_ids})")
    return Query(user_dense, user_sparse, cand_dense, cand_sparse)
