"""The engine in another process, over a link: a front process's :class:`RemoteEngine`.

Requests are multiplexed on the front's one link (:mod:`executor.engine.link`): each call
sends a message with a fresh id and awaits the reply with that id, which one reader task
hands out. A query's tensors are written into the front's shared buffer, whose space
:class:`Arena` gives out and takes back when the query's reply has come (the engine has
copied them by then).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import logging
import mmap
import socket
from collections.abc import Callable
from typing import Any

import numpy as np

from executor.engine import link
from executor.features import Query
from executor.front.engine import ModelInfo, Terms, Ticket
from executor.front.local import forget_terms_after, wait_for_scores
from executor.models.schema import ModelSchema
from executor.scheduling.errors import ModelUnavailable, Overloaded, SchedulingError

log = logging.getLogger(__name__)

# Refusals a front made on its own are told to the engine in one message per this interval: a
# flood is refused hundreds of times a second, and a message each would be the engine's work.
REFUSALS_EVERY_S = 0.1
# How long a front waits for the engine's answer to a call other than a query (an admission,
# health, a model's metadata, metrics; a query waits for its own deadline). An engine that has
# not answered by then is taken for wedged: the call fails (503), and so does the daemon's
# /livez, for the kubelet to restart the node's pod.
ENGINE_ANSWER_S = 10.0


class Arena:
    """First-fit allocation of a buffer's bytes, with free neighbours merged."""

    def __init__(self, size: int) -> None:
        self._free: list[tuple[int, int]] = [(0, size)]  # (offset, size), by offset
        self._used: dict[int, int] = {}

    def allocate(self, size: int) -> int | None:
        """The offset of ``size`` free bytes, or None when no free block is that large."""
        for k, (offset, length) in enumerate(self._free):
            if length >= size:
                if length == size:
                    del self._free[k]
                else:
                    self._free[k] = (offset + size, length - size)
                self._used[offset] = size
                return offset
        return None

    def release(self, offset: int) -> None:
        size = self._used.pop(offset)
        k = bisect.bisect(self._free, (offset, 0))
        if k < len(self._free) and offset + size == self._free[k][0]:  # merge the next block
            size += self._free.pop(k)[1]
        if k > 0 and self._free[k - 1][0] + self._free[k - 1][1] == offset:  # and the previous
            offset, previous = self._free.pop(k - 1)
            size += previous
            k -= 1
        self._free.insert(k, (offset, size))

    @property
    def used(self) -> int:
        return sum(self._used.values())


class RemoteEngine:
    """:class:`~executor.front.engine.Engine` over a link to the engine process."""

    def __init__(
        self,
        sock: socket.socket,
        buffer: mmap.mmap,
        on_close: Callable[[], None],
        answer_s: float = ENGINE_ANSWER_S,
    ) -> None:
        self._sock = sock
        self._answer_s = answer_s
        self._view = memoryview(buffer)
        self._arena = Arena(len(buffer))
        self._on_close = on_close
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[link.Message]] = {}
        self._held: dict[int, int] = {}  # request id -> its tensors' offset in the buffer
        self._schemas: dict[str, ModelSchema] = {}
        self._terms: dict[str, Terms] = {}  # model, as requests name it -> its last admission's
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._refusals: collections.Counter[str] = collections.Counter()  # model -> not yet told
        self._closed = False  # the link is gone: every call fails at once (503)

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._reader_task = asyncio.create_task(self._read_replies(reader))

    async def stop(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header, payload = await link.read(reader)
                key = int(header.get("id", -1))
                offset = self._held.pop(key, None)
                if offset is not None:
                    self._arena.release(offset)
                waiting = self._waiting.pop(key, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result((header, payload))
        except link.LinkClosed:
            log.error("the engine closed this front's link; the front stops")
        finally:
            self._closed = True
            error = ModelUnavailable("the engine is not running")
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(error)
            self._waiting.clear()
            self._on_close()

    def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        if self._closed or self._writer is None or self._writer.is_closing():
            raise ModelUnavailable("the engine is not running")
        self._writer.write(link.frame(header, payload))

    def _call(self, header: dict[str, Any]) -> asyncio.Future[link.Message]:
        """Send a message and return the future of its reply."""
        key = header.setdefault("id", next(self._ids))
        future: asyncio.Future[link.Message] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        self._send(header)
        return future

    async def _ask(self, header: dict[str, Any]) -> link.Message:
        """Send a message and wait for its reply, at most ``answer_s`` (ModelUnavailable)."""
        future = self._call(header)
        try:
            return await asyncio.wait_for(future, self._answer_s)
        except TimeoutError:
            self._waiting.pop(header["id"], None)  # a reply that comes later is dropped
            raise ModelUnavailable(f"the engine did not answer in {self._answer_s:g} s") from None

    @staticmethod
    def _raise_error(header: dict[str, Any]) -> None:
        if "error" in header:
            raise link.error_from_dict(header["error"])

    async def admit(self, model: str, arrival: float, credential: str | None = None) -> Ticket:
        header, _ = await self._ask(
            {"op": "admit", "model": model, "arrival": arrival, "credential": credential}
        )
        self._raise_error(header)
        schema_key = header["schema_key"]
        if "schema" in header:
            self._schemas[schema_key] = ModelSchema.from_dict(header["schema"])
        terms = Terms(
            model_id=header["model_id"],
            tenant=header["tenant"],
            schema=self._schemas[schema_key],
            schema_key=schema_key,
            sla_s=float(header["sla_s"]),
            expiry_s=float(header["deadline"]) - arrival,
        )
        self._terms[model] = terms
        return Ticket(
            header["id"], terms.model_id, terms.tenant, terms.schema, arrival + terms.expiry_s,
            terms.sla_s,
        )  # fmt: skip

    def presume(self, model: str, arrival: float, credential: str | None) -> Ticket | None:
        terms = self._terms.get(model)
        return None if terms is None else terms.ticket(next(self._ids), model, arrival, credential)

    async def infer(self, ticket: Ticket, query: Query) -> np.ndarray:
        offset = self._arena.allocate(link.query_size(ticket.schema, query.num_candidates))
        if offset is None:
            self.abandon(ticket, "rejected")
            raise Overloaded("this front's shared buffer is full of queries in flight", 1.0)
        link.write_query(self._view, offset, ticket.schema, query)
        self._held[ticket.key] = offset  # released when the reply comes, however late
        message: dict[str, Any] = {
            "op": "submit", "id": ticket.key, "offset": offset, "rows": query.num_candidates
        }  # fmt: skip
        presumed = ticket.presumed
        if presumed is not None:  # admitted by the engine with its query, in this one message
            message.update(
                op="query",
                model=presumed.model,
                arrival=presumed.arrival,
                credential=presumed.credential,
                schema_key=presumed.schema_key,
            )
        try:
            header, payload = await wait_for_scores(self._call(message), ticket)
            self._raise_error(header)
        except SchedulingError as exc:
            if presumed is not None and forget_terms_after(exc):
                self._terms.pop(presumed.model, None)
            raise
        return np.frombuffer(payload, dtype="<f4")

    def abandon(self, ticket: Ticket, outcome: str | None) -> None:
        if ticket.presumed is None:
            self._send({"op": "abandon", "id": ticket.key, "outcome": outcome})
        elif outcome is not None:  # the engine never heard of it: only its outcome to count
            self._send({"op": "ended", "model": ticket.presumed.model, "outcome": outcome})

    def refused(self, model: str) -> None:
        if not self._refusals:
            asyncio.get_running_loop().call_later(REFUSALS_EVERY_S, self._tell_refusals)
        self._refusals[model] += 1

    def _tell_refusals(self) -> None:
        counts, self._refusals = dict(self._refusals), collections.Counter()
        try:
            self._send({"op": "refused", "counts": counts})
        except ModelUnavailable:  # the engine is gone, and its counts with it
            pass

    async def health(self) -> dict[str, Any] | None:
        header, _ = await self._ask({"op": "health"})
        health: dict[str, Any] | None = header["health"]
        return health

    async def model(self, model: str, credential: str | None) -> ModelInfo:
        header, _ = await self._ask({"op": "model", "model": model, "credential": credential})
        self._raise_error(header)
        return ModelInfo(
            header["model_id"], ModelSchema.from_dict(header["schema"]), int(header["version"])
        )

    async def metrics(self) -> bytes:
        _, payload = await self._ask({"op": "metrics"})
        return payload
