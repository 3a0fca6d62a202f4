"""The channel between a front process and the engine: small messages on a socket, tensors in
shared memory.

Each front has one Unix stream socket to the engine and one shared-memory buffer (a ``memfd``
the engine creates and hands over on the socket with ``SCM_RIGHTS``, mapped by both). A
message is a frame::

    <u32 header length> <u32 payload length> <JSON header> <payload bytes>

The header is a small JSON object (the operation, a request id, a model name, an error); the
payload carries raw bytes only: a reply's float32 scores, the metrics text. A query's tensors
never travel on the socket and are never pickled: the front writes them into its buffer
(:func:`write_tensors`, each tensor's bytes at an aligned offset) and sends their layout
(name, dtype, shape, offset); the engine reads them back with :func:`numpy.frombuffer` and
copies them out before it answers, so the front may reuse the space once the reply is in.

Operations, front -> engine (the engine answers each with the same ``id`` unless noted):

- ``admit {model, arrival}``: the engine's :meth:`~executor.engine.core.EngineCore.admit`;
  the reply carries the admission (model id, tenant, share, deadline, the schema's key, and
  the schema itself the first time a link meets that key) or an error;
- ``submit {layout}``: the query of an admitted ``id``; the reply, once scored: the scores as
  payload, or an error;
- ``abandon {outcome}``: an admitted ``id`` that ended at the front; no reply;
- ``health``, ``metrics``, ``model {model}``: the documents of ``/healthz``, ``/metrics`` and
  the model's metadata.

Errors travel as ``{"type": class name, "message": ..., "retry_after_s": ...}`` and are raised
again at the front as the same class (:func:`error_to_dict` / :func:`error_from_dict`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from executor.scheduling.errors import (
    DeadlineExceeded,
    GroupClosed,
    ModelFailed,
    ModelUnavailable,
    Overloaded,
    SchedulingError,
    UnknownModel,
)

FRAME = struct.Struct("<II")  # header length, payload length
ALIGN = 64  # tensors start on cache-line boundaries in the buffer
ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        UnknownModel,
        ModelUnavailable,
        Overloaded,
        DeadlineExceeded,
        ModelFailed,
        GroupClosed,
        SchedulingError,
        ValueError,
    )
}

Message = tuple[dict[str, Any], bytes]


class LinkClosed(ConnectionError):
    """The other side of a link went away."""


def frame(header: Mapping[str, Any], payload: bytes = b"") -> bytes:
    """One message as bytes on the socket."""
    text = json.dumps(header, separators=(",", ":")).encode()
    return FRAME.pack(len(text), len(payload)) + text + payload


def unframe(data: bytes) -> Message:
    """The message of :func:`frame`'s bytes."""
    head_len, payload_len = FRAME.unpack_from(data)
    end = FRAME.size + head_len
    return json.loads(data[FRAME.size : end]), data[end : end + payload_len]


def receive(sock: socket.socket) -> Message:
    """The next message on a blocking socket; LinkClosed at its end."""
    head_len, payload_len = FRAME.unpack(_exactly(sock, FRAME.size))
    header = json.loads(_exactly(sock, head_len))
    return header, _exactly(sock, payload_len) if payload_len else b""


async def read(reader: asyncio.StreamReader) -> Message:
    """The next message on an asyncio stream; LinkClosed at its end."""
    try:
        head_len, payload_len = FRAME.unpack(await reader.readexactly(FRAME.size))
        header = json.loads(await reader.readexactly(head_len))
        payload = await reader.readexactly(payload_len) if payload_len else b""
    except asyncio.IncompleteReadError as exc:
        raise LinkClosed("the engine closed the link") from exc
    return header, payload


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise LinkClosed("the front closed the link")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def tensors_size(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes :func:`write_tensors` needs for ``arrays``."""
    return sum(_aligned(a.nbytes) for a in arrays.values())


def write_tensors(
    buffer: memoryview, offset: int, arrays: Mapping[str, np.ndarray]
) -> list[list[Any]]:
    """Copy each array into ``buffer`` from ``offset`` on; its layout, for :func:`read_tensors`."""
    layout: list[list[Any]] = []
    at = offset
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        target = np.frombuffer(buffer, array.dtype, array.size, at).reshape(array.shape)
        target[...] = array
        layout.append([name, array.dtype.str, list(array.shape), at])
        at += _aligned(array.nbytes)
    return layout


def read_tensors(buffer: memoryview, layout: list[list[Any]]) -> dict[str, np.ndarray]:
    """Copies of the tensors :func:`write_tensors` laid out (the front reuses the space)."""
    arrays: dict[str, np.ndarray] = {}
    for name, dtype_str, shape, offset in layout:
        dtype = np.dtype(dtype_str)
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(buffer, dtype, count, offset).reshape(shape).copy()
    return arrays


def _aligned(size: int) -> int:
    return max(ALIGN, -(-size // ALIGN) * ALIGN)


def error_to_dict(exc: Exception) -> dict[str, Any]:
    kind = next((k.__name__ for k in type(exc).__mro__ if k.__name__ in ERRORS), "ModelFailed")
    doc: dict[str, Any] = {"type": kind, "message": str(exc)}
    if isinstance(exc, Overloaded):
        doc["retry_after_s"] = exc.retry_after_s
    return doc


def error_from_dict(doc: Mapping[str, Any]) -> Exception:
    cls = ERRORS.get(str(doc.get("type")), ModelFailed)
    message = str(doc.get("message", ""))
    if cls is Overloaded:
        return Overloaded(message, float(doc.get("retry_after_s", 1.0)))
    return cls(message)
