"""Tensors of the Open Inference Protocol (KServe v2), as JSON and as binary, both ways.

The protocol (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/)
carries an inference request as one JSON document::

    {"id": "...", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                              "data": [1, 2, 3, 4, 5, 6]}],
     "outputs": [{"name": "y", "parameters": {"binary_data": true}}],
     "parameters": {"binary_data_output": true}}

Its *binary tensor data* extension moves the numbers out of the JSON: the body is the JSON
document (its length in bytes in the HTTP header ``Inference-Header-Content-Length``) followed
by each binary tensor's raw little-endian bytes, in the order of the inputs, an input naming
its byte count as ``"parameters": {"binary_data_size": n}`` instead of carrying ``data``. A
reply follows the same rules for its outputs.

This is gpufair's binary body format (it replaces ``.npz``): decoding parses one small JSON
header and takes each tensor as a :func:`numpy.frombuffer` view of the body, so no byte of a
tensor is copied or looked at in Python and there is no per-tensor header and no archive to
unzip. The executor's fronts hand queries to the engine in the same layout through shared
memory (:mod:`executor.engine`). This module knows tensors only; what a query's tensors are
named and shaped is :mod:`executor.codec`'s.

Only numeric datatypes are supported (``BYTES`` tensors are refused). Every malformed
document raises :class:`TensorError` whose message names the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary extension's HTTP header
BINARY_CONTENT_TYPE = "application/octet-stream"
# The protocol's datatype names and their little-endian numpy dtypes.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAMES = {dtype.newbyteorder("<"): name for name, dtype in DATATYPES.items()}


class TensorError(ValueError):
    """A request or reply is not a valid Open Inference Protocol document; names the field."""


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: its tensors and what the client asked of the reply."""

    id: str | None  # echoed in the reply
    inputs: dict[str, np.ndarray]  # name -> tensor; binary ones are read-only views of the body
    binary_output: bool  # the client wants the outputs' bytes after the reply's JSON


def datatype_of(array: np.ndarray) -> str:
    """The protocol's name for an array's dtype; TensorError for one it has no name for."""
    name = _NAMES.get(array.dtype.newbyteorder("<"))
    if name is None:
        raise TensorError(f"dtype {array.dtype} has no Open Inference Protocol datatype")
    return name


def decode_request(
    body: bytes | bytearray | memoryview, header_length: int | None
) -> InferRequest:
    """Decode a request body; ``header_length`` is the binary extension's header (None: the
    whole body is JSON). Binary tensors are zero-copy views of ``body``."""
    doc, tail = _split(body, header_length)
    inputs = _tensors(doc.get("inputs"), tail, "inputs")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError("id: expected a string")
    binary_output = _flag(doc.get("parameters"), "binary_data_output", "parameters")
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise TensorError("outputs: expected a list")
        for k, output in enumerate(outputs):
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise TensorError(f"outputs[{k}]: expected an object with a name")
            binary_output |= _flag(
                output.get("parameters"), "binary_data", f"outputs[{k}].parameters"
            )
    return InferRequest(request_id, inputs, binary_output)


def decode_reply(body: bytes | memoryview, header_length: int | None) -> dict[str, np.ndarray]:
    """The output tensors of a reply (what a client reads)."""
    doc, tail = _split(body, header_length)
    return _tensors(doc.get("outputs"), tail, "outputs")


def encode_request(
    inputs: Mapping[str, np.ndarray],
    *,
    binary: bool = True,
    request_id: str | None = None,
    binary_output: bool = True,
) -> tuple[bytes, int | None]:
    """A request body and its header length (None for a JSON body): what a client sends."""
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    return _encode(doc, "inputs", inputs, binary)


def encode_reply(
    model: str, outputs: Mapping[str, np.ndarray], *, request_id: str | None, binary: bool
) -> tuple[bytes, int | None]:
    """A reply body and its header length (None for a JSON body)."""
    doc: dict[str, Any] = {"model_name": model}
    if request_id is not None:
        doc["id"] = request_id
    return _encode(doc, "outputs", outputs, binary)


def _encode(
    doc: dict[str, Any], key: str, tensors: Mapping[str, np.ndarray], binary: bool
) -> tuple[bytes, int | None]:
    entries: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for name, array in tensors.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    doc[key] = entries
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not binary:
        return header, None
    return b"".join([header, *buffers]), len(header)


def _split(
    body: bytes | bytearray | memoryview, header_length: int | None
) -> tuple[dict[str, Any], memoryview]:
    """The JSON document and the binary tail after it."""
    view = memoryview(body)
    end = len(view) if header_length is None else header_length
    if not 0 <= end <= len(view):
        raise TensorError(f"{HEADER_LENGTH}: {end} is not within the body's {len(view)} bytes")
    try:
        doc = json.loads(bytes(view[:end]))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TensorError(f"body: invalid JSON ({exc})") from exc
    except RecursionError as exc:  # the decoder recurses once per level of nesting
        raise TensorError("body: invalid JSON (nested too deeply)") from exc
    if not isinstance(doc, dict):
        raise TensorError("body: expected a JSON object")
    return doc, view[end:]


def _flag(parameters: Any, key: str, where: str) -> bool:
    """The boolean ``key`` of a ``parameters`` object (``where`` names that object)."""
    if parameters is None:
        return False
    if not isinstance(parameters, dict):
        raise TensorError(f"{where}: expected an object")
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise TensorError(f"{where}.{key}: expected true or false")
    return value


def _tensors(entries: Any, tail: memoryview, key: str) -> dict[str, np.ndarray]:
    """Each tensor of ``entries``: from its ``data``, or the next bytes of ``tail``."""
    if not isinstance(entries, list):
        raise TensorError(f"{key}: expected a list of tensors")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for k, entry in enumerate(entries):
        where = f"{key}[{k}]"
        if not isinstance(entry, dict):
            raise TensorError(f"{where}: expected an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise TensorError(f"{where}.name: expected a non-empty string")
        where = f"{key}[{name}]"
        if name in tensors:
            raise TensorError(f"{where}: given twice")
        datatype = entry.get("datatype")
        dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise TensorError(
                f"{where}.datatype: expected one of {', '.join(DATATYPES)}, got {datatype!r}"
            )
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise TensorError(f"{where}.shape: expected a list of non-negative integers")
        count = math.prod(shape)  # Python ints: a made-up shape cannot overflow
        size = _binary_size(entry.get("parameters"), where)
        if size is None:
            tensors[name] = _from_data(entry.get("data"), dtype, shape, count, where)
            continue
        if size != count * dtype.itemsize:
            raise TensorError(
                f"{where}: binary_data_size {size} is not {count} x {dtype.itemsize} bytes "
                f"of shape {shape}"
            )
        if offset + size > len(tail):
            raise TensorError(f"{where}: body ends before its {size} bytes")
        tensors[name] = np.frombuffer(tail, dtype, count, offset).reshape(shape)
        offset += size
    if offset != len(tail):
        raise TensorError(f"body: {len(tail) - offset} bytes after the last binary tensor")
    return tensors


def _binary_size(parameters: Any, where: str) -> int | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise TensorError(f"{where}.parameters: expected an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TensorError(f"{where}.parameters.binary_data_size: expected a byte count")
    return size


def _from_data(
    data: Any, dtype: np.dtype[Any], shape: list[int], count: int, where: str
) -> np.ndarray:
    """A JSON tensor's values (flat, or nested in row-major order) as an array of ``shape``."""
    if not isinstance(data, list):
        raise TensorError(f"{where}.data: expected a list (or binary_data_size)")
    try:
        flat = np.asarray(data).reshape(-1)
    except (ValueError, OverflowError) as exc:
        raise TensorError(f"{where}.data: expected a rectangular list of numbers") from exc
    if flat.size != count:
        raise TensorError(f"{where}.data: {flat.size} values for shape {shape}")
    if flat.size and flat.dtype.kind not in "biuf":
        raise TensorError(f"{where}.data: expected numbers")
    if flat.size and dtype.kind in "iu" and flat.dtype.kind not in "iu":
        raise TensorError(f"{where}.data: expected integers for {_NAMES[dtype]}")
    try:
        return flat.astype(dtype).reshape(shape)
    except (TypeError, OverflowError, ValueError) as exc:
        raise TensorError(f"{where}.data: cannot convert to {_NAMES[dtype]}") from exc
