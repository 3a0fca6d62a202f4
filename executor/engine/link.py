"""The channel between a front process and the engine: small messages on a socket, tensors in
shared memory.

Each front has one Unix stream socket to the engine and one shared-memory buffer (a ``memfd``
the engine creates and hands over on the socket with ``SCM_RIGHTS``, mapped by both). A
message is a frame::

    <u32 header length> <u32 payload length> <JSON header> <payload bytes>

The header is a small JSON object (the operation, a request id, a model name, an error); the
payload carries raw bytes only: a reply's float32 scores, the metrics text. A query's tensors
never travel on the socket and are never pickled: the front writes them into its buffer
(:func:`write_query`, each tensor's bytes at an aligned offset of the layout both sides derive
from the model's schema and the number of candidates, :func:`query_layout`) and sends the
query's offset and rows; the engine reads them back with :func:`numpy.frombuffer`
(:func:`read_query`) and copies them out before it answers, so the front may reuse the space
once the reply is in.

Operations, front -> engine (the engine answers each with the same ``id`` unless noted):

- ``admit {model, arrival, credential}``: the engine's
  :meth:`~executor.engine.core.EngineCore.admit`; the reply carries the admission (model id,
  tenant, deadline, SLA, the schema's key, and the schema itself the first time a link meets
  that key) or an error;
- ``submit {offset, rows}``: the query of an admitted ``id``, in the front's buffer at
  ``offset``; the reply, once scored: the scores as payload, or an error;
- ``query {model, arrival, credential, schema_key, offset, rows}``: ``admit`` and ``submit``
  in one message, for a request the front let in on its own (a tenant under its in-flight
  bound at the front, :meth:`executor.front.engine.Engine.presume`); answered as ``submit``,
  or with the error admission raised;
- ``abandon {outcome}``: an admitted ``id`` that ended at the front; no reply;
- ``ended {model, outcome}``: a presumed request that ended at the front, counted as
  ``outcome``; no reply;
- ``refused {counts}``: requests per model the front refused before asking the engine
  (:mod:`executor.front.budget`), counted as rejected; no reply;
- ``health``, ``metrics``, ``model {model}``: the documents of ``/healthz``, ``/metrics`` and
  the model's metadata.

Errors travel as ``{"type": class name, "message": ..., "retry_after_s": ...}`` and are raised
again at the front as the same class (:func:`error_to_dict` / :func:`error_from_dict`).

The link is internal, but a front's bug must not take the engine down: :func:`receive` refuses a
frame longer than :data:`MAX_FRAME_BYTES` before reading it (:class:`OversizedFrame`: the
stream can no longer be trusted, so the engine closes that front's link) and a frame read whole
whose header is no JSON object (:class:`MalformedMessage`: the engine drops it and serves on).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from executor.features import Query
from executor.models.schema import ModelSchema
from executor.scheduling.errors import (
    DeadlineExceeded,
    GroupClosed,
    ModelFailed,
    ModelUnavailable,
    NotPermitted,
    Overloaded,
    SchedulingError,
    Unauthenticated,
    UnknownModel,
)

FRAME = struct.Struct("<II")  # header length, payload length
# What the engine reads of one front's message at most (header and payload): a front's
# messages are a few hundred bytes (a refused message's counts grow with the models served),
# and a length read from a broken stream could make the engine buffer gigabytes.
MAX_FRAME_BYTES = 1 << 20
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
        Unauthenticated,
        NotPermitted,
        SchedulingError,
        ValueError,
    )
}

Message = tuple[dict[str, Any], bytes]
_FLOAT = np.dtype("<f4")  # a validated query's dense values
_IDS = np.dtype("<i8")  # and its sparse ids


class LinkClosed(ConnectionError):
    """The other side of a link went away."""


class OversizedFrame(ValueError):
    """A frame that declares more than :data:`MAX_FRAME_BYTES`: where the next message starts
    is no longer known, so the link cannot go on."""


class MalformedMessage(ValueError):
    """A frame read whole whose header is not a JSON object: this message is lost, the link's
    framing is intact."""


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
    """The next message on a blocking socket (the engine's side of a front's link); LinkClosed
    at its end, OversizedFrame or MalformedMessage for a message no front should send."""
    head_len, payload_len = FRAME.unpack(_exactly(sock, FRAME.size))
    if head_len + payload_len > MAX_FRAME_BYTES:
        raise OversizedFrame(
            f"a frame of {head_len} + {payload_len} bytes exceeds {MAX_FRAME_BYTES}"
        )
    text = _exactly(sock, head_len)
    payload = _exactly(sock, payload_len) if payload_len else b""
    try:
        header = json.loads(text)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise MalformedMessage(f"a header that is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedMessage(f"a header that is a JSON {type(header).__name__}, not an object")
    return header, payload


async def read(reader: asyncio.StreamReader) -> Message:
    """The next message on an asyncio stream (a front's side of its link); LinkClosed at its
    end, also when the engine died with messages of the front unread (the kernel then resets
    the socket instead of ending it)."""
    try:
        head_len, payload_len = FRAME.unpack(await reader.readexactly(FRAME.size))
        header = json.loads(await reader.readexactly(head_len))
        payload = await reader.readexactly(payload_len) if payload_len else b""
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
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


@dataclass(frozen=True)
class Slot:
    """Where one of a query's tensors lies in the buffer, from the query's own offset."""

    side: str  # "user_dense", "candidate_dense", "user_sparse" or "candidate_sparse"
    feature: str  # the sparse feature's name ("" for a dense tensor)
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    at: int  # bytes from the query's offset; a multiple of ALIGN


@functools.lru_cache(maxsize=1024)
def query_layout(schema: ModelSchema, rows: int) -> tuple[tuple[Slot, ...], int]:
    """The slots of a validated query of ``rows`` candidates of ``schema`` and the bytes they
    take: the user's dense values, the candidates', then each sparse feature in the schema's
    order. Both sides of a link derive it from the schema (the front's copy came from the
    engine), so a submit message carries only the query's offset and its number of rows."""
    slots: list[Slot] = []
    at = 0

    def add(side: str, feature: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        nonlocal at
        slots.append(Slot(side, feature, dtype, shape, at))
        at += _aligned(math.prod(shape) * dtype.itemsize)

    add("user_dense", "", _FLOAT, (schema.user_dense,))
    add("candidate_dense", "", _FLOAT, (rows, schema.candidate_dense))
    for f in schema.sparse:
        if f.side == "user":
            add("user_sparse", f.name, _IDS, (f.lookups,))
        else:
            add("candidate_sparse", f.name, _IDS, (rows, f.lookups))
    return tuple(slots), at


def query_size(schema: ModelSchema, rows: int) -> int:
    """Bytes :func:`write_query` needs for a query of ``rows`` candidates."""
    return query_layout(schema, rows)[1]


def write_query(buffer: memoryview, offset: int, schema: ModelSchema, query: Query) -> None:
    """Copy a validated query's tensors into ``buffer`` from ``offset`` on, as
    :func:`query_layout` lays them out."""
    slots, _ = query_layout(schema, query.num_candidates)
    for slot in slots:
        source = _tensor_of(query, slot)
        target = np.frombuffer(buffer, slot.dtype, source.size, offset + slot.at)
        target.reshape(slot.shape)[...] = source


def read_query(buffer: memoryview, offset: int, schema: ModelSchema, rows: int) -> Query:
    """A copy of the query :func:`write_query` put at ``offset`` (the front reuses the space
    once the query is answered). ValueError for a place that is no query's: a query has a
    candidate at least and lies inside the buffer (numpy checks its end)."""
    if rows < 1 or offset < 0:
        raise ValueError(f"no query has {rows} candidates at offset {offset}")
    slots, size = query_layout(schema, rows)
    whole = np.frombuffer(buffer, np.uint8, size, offset).copy()
    user_sparse: dict[str, np.ndarray] = {}
    candidate_sparse: dict[str, np.ndarray] = {}
    dense: dict[str, np.ndarray] = {}
    for slot in slots:
        count = math.prod(slot.shape)
        array = np.frombuffer(whole, slot.dtype, count, slot.at).reshape(slot.shape)
        if slot.side == "user_sparse":
            user_sparse[slot.feature] = array
        elif slot.side == "candidate_sparse":
            candidate_sparse[slot.feature] = array
        else:
            dense[slot.side] = array
    return Query(dense["user_dense"], user_sparse, dense["candidate_dense"], candidate_sparse)


def _tensor_of(query: Query, slot: Slot) -> np.ndarray:
    if slot.side == "user_dense":
        return query.user_dense
    if slot.side == "candidate_dense":
        return query.candidate_dense
    if slot.side == "user_sparse":
        return query.user_sparse[slot.feature]
    return query.candidate_sparse[slot.feature]


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
