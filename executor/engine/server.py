"""The engine's side of the fronts: it starts the front processes and serves their links.

:class:`Fronts` binds the daemon's listening socket once and starts ``count`` front processes
(``multiprocessing`` spawn: a fresh interpreter that never imports torch) that all accept on
it, so the kernel spreads connections over them. Each front gets a link (a socket pair) and a
shared-memory buffer (a ``memfd`` of :data:`BUFFER_BYTES`, sent over the link); one
:class:`FrontLink` thread per front serves its messages on the
:class:`~executor.engine.core.EngineCore` (:mod:`executor.engine.link` describes them). A front
that exits unexpectedly is logged and started again, up to :data:`MAX_FRONT_EXITS` times within
:data:`FRONT_EXITS_WINDOW_S`; past that the daemon stops with an error (:class:`FrontsFailing`),
rather than start a front that dies at once again and again while serving nothing.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import mmap
import multiprocessing
import os
import socket
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from executor.engine import link
from executor.engine.core import Admission, EngineCore
from executor.front.process import FrontOptions, run_front
from executor.scheduling import SchedulingError
from executor.scheduling.errors import ModelFailed

log = logging.getLogger(__name__)

# Each front's shared buffer. Only the pages queries touch are ever allocated; a front refuses
# a query (429) when its queries in flight fill it.
BUFFER_BYTES = 256 * 2**20
SWITCH_INTERVAL_S = 0.0005  # how long a thread waiting for the engine's GIL waits at most
# A front started again more often than this within the window is failing for good (a bad
# build, memory it is always killed for): the daemon exits, for its supervisor to see.
MAX_FRONT_EXITS = 5
FRONT_EXITS_WINDOW_S = 60.0


class FrontsFailing(RuntimeError):
    """Fronts exited more than MAX_FRONT_EXITS times within FRONT_EXITS_WINDOW_S."""


class FrontLink(threading.Thread):
    """Serves one front's messages on the engine until the front closes its link.

    Replies never wait for the front: a query's reply is sent from the session worker that
    scored it, and a front that does not read its link for a while (parsing a large body,
    stopped, hung) held that worker in ``sendall``, and with it the session, every tenant's
    batches on it included. What the socket does not take at once is sent, in order, by the
    link's writer thread. When the front is gone, the queries it submitted that are still
    queued are cancelled (the scheduler discards them unserved): nobody waits for their scores.
    """

    def __init__(self, core: EngineCore, sock: socket.socket, buffer: mmap.mmap, name: str):
        super().__init__(name=f"link-{name}", daemon=True)
        self._core = core
        self._sock = sock
        self._view = memoryview(buffer)
        self._buffer = buffer
        self._admitted: dict[Any, Admission] = {}
        self._queued: dict[Any, Future[np.ndarray]] = {}  # request id -> its scores, unanswered
        self._schemas_sent: set[str] = set()  # schema keys this front has been told
        self._send_lock = threading.Lock()
        self._unsent: collections.deque[memoryview] = collections.deque()  # in order
        self._unsent_ready = threading.Condition(self._send_lock)
        self._closed = False  # under _send_lock: the front is gone, nothing more is sent
        self._writer = threading.Thread(
            target=self._write_unsent, name=f"link-{name}-writer", daemon=True
        )

    def run(self) -> None:
        self._writer.start()
        try:
            while True:
                try:
                    header, _ = link.receive(self._sock)
                except link.MalformedMessage as exc:
                    log.error("%s sent a message the engine cannot read (%s)", self.name, exc)
                    continue
                self._handle(header)
        except (link.LinkClosed, OSError):
            pass
        except link.OversizedFrame as exc:
            log.error("%s sent a frame the engine will not read (%s); closing its link (the "
                      "front stops and is started again)", self.name, exc)  # fmt: skip
        except Exception:  # a bug must not pass silently; the front sees the link close
            log.exception("link to %s failed", self.name)
        finally:
            self._close()

    def _close(self) -> None:
        """Stop sending, close the socket and cancel the front's queries still queued."""
        with self._send_lock:
            self._closed = True
            self._unsent.clear()
            self._unsent_ready.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the writer if it waits on the front
        self._writer.join()
        self._sock.close()  # only now: no thread sends on the descriptor any more
        self._admitted.clear()
        dropped = sum(future.cancel() for future in list(self._queued.values()))
        self._queued.clear()
        if dropped:
            log.warning("%s is gone: %d of its queries taken off the queues unserved",
                        self.name, dropped)  # fmt: skip

    def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """Send a message without waiting for the front (see the class docstring); nothing
        once the front is gone (its requests died with it)."""
        data = link.frame(header, payload)
        with self._send_lock:
            if self._closed:
                return
            if not self._unsent:  # else earlier messages wait: this one goes after them
                try:
                    sent = self._sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return
                if sent == len(data):
                    return
                data = data[sent:]
            self._unsent.append(memoryview(data))
            self._unsent_ready.notify()

    def _write_unsent(self) -> None:
        """The writer thread: send what the front's socket did not take at once, in order."""
        while True:
            with self._unsent_ready:
                while not self._unsent and not self._closed:
                    self._unsent_ready.wait()
                if self._closed:
                    return
                chunk = self._unsent[0]  # stays first meanwhile, so that _send queues behind it
            try:
                sent = self._sock.send(chunk)  # this thread, and only it, waits for the front
            except OSError:  # the front is gone; the link thread sees it too
                return
            with self._send_lock:
                if self._unsent and self._unsent[0] is chunk:
                    if sent == len(chunk):
                        self._unsent.popleft()
                    else:
                        self._unsent[0] = chunk[sent:]

    def _handle(self, header: dict[str, Any]) -> None:
        key = header.get("id", -1)
        core = self._core
        try:
            op = header["op"]
            if op == "admit":
                admission = core.admit(
                    header["model"], float(header["arrival"]), header.get("credential")
                )
                self._admitted[key] = admission
                self._send(self._admission(key, admission))
            elif op in ("submit", "query"):
                if op == "submit":
                    admission = self._admitted.pop(key)
                else:  # a presumed request: admitted now, on the schema its body was parsed with
                    admission = core.admit(
                        header["model"],
                        float(header["arrival"]),
                        header.get("credential"),
                        header["schema_key"],
                    )
                query = link.read_query(
                    self._view, int(header["offset"]), admission.schema, int(header["rows"])
                )
                future = core.submit(admission, query)
                self._queued[key] = future
                future.add_done_callback(lambda f: self._answer(key, f))
            elif op == "abandon":
                admission = self._admitted.pop(key)
                core.abandon(admission, header.get("outcome"))
            elif op == "ended":
                core.ended(header["model"], header["outcome"])
            elif op == "refused":
                for model, count in header["counts"].items():
                    core.refused(model, int(count))
            elif op == "health":
                self._send({"id": key, "health": core.health()})
            elif op == "metrics":
                self._send({"id": key}, core.metrics.render())
            elif op == "model":
                schema, model_id, version = core.model(header["model"], header.get("credential"))
                self._send(
                    {"id": key, "schema": schema.to_dict(), "model_id": model_id,
                     "version": version}
                )  # fmt: skip
            else:
                raise ValueError(f"unknown operation {op!r}")
        except SchedulingError as exc:
            self._send({"id": key, "error": link.error_to_dict(exc)})
        except (LookupError, TypeError, ValueError) as exc:
            # A front's bug (a field missing or of the wrong type, an id the engine does not
            # hold, a query outside the buffer): that request fails (500), the link serves on.
            log.error("%s sent a malformed %r message: %s: %s", self.name, header.get("op"),
                      type(exc).__name__, exc)  # fmt: skip
            failed = ModelFailed(f"the engine could not read the front's message: {exc}")
            self._send({"id": key, "error": link.error_to_dict(failed)})

    def _admission(self, key: Any, admission: Admission) -> dict[str, Any]:
        group = admission.group
        schema_key = admission.schema_key
        reply: dict[str, Any] = {
            "id": key,
            "model_id": group.model_id,
            "tenant": admission.tenant,
            "deadline": admission.deadline,
            "sla_s": group.sla_s,
            "schema_key": schema_key,
        }
        if schema_key not in self._schemas_sent:
            self._schemas_sent.add(schema_key)
            reply["schema"] = admission.schema.to_dict()
        return reply

    def _answer(self, key: Any, future: Future[np.ndarray]) -> None:
        self._queued.pop(key, None)
        if future.cancelled():  # by _close: the front is gone
            return
        error = future.exception()
        if error is None:
            scores = np.ascontiguousarray(future.result(), dtype="<f4")
            self._send({"id": key}, scores.tobytes())
        elif isinstance(error, Exception):
            self._send({"id": key, "error": link.error_to_dict(error)})


@dataclass
class _Front:
    process: multiprocessing.process.BaseProcess
    link: FrontLink
    buffer: mmap.mmap


class Fronts:
    """The front processes of one daemon, on one listening socket (see the module docstring)."""

    def __init__(
        self, core: EngineCore, *, host: str, port: int, count: int, options: FrontOptions
    ) -> None:
        if count < 1:
            raise ValueError(f"fronts must be >= 1, got {count}")
        self._core = core
        self._count = count
        self._options = options
        self._listener = socket.create_server((host, port), backlog=4096)
        self.port = int(self._listener.getsockname()[1])
        self._context = multiprocessing.get_context("spawn")
        self._fronts: list[_Front] = []
        self._stopping = threading.Event()

    def start(self) -> None:
        # The link threads share the engine's GIL with the session threads, whose forward
        # passes hold it between torch ops: at the default 5 ms switch interval a front's
        # admit or submit waited up to 5 ms per hop for the GIL (three hops per query).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._fronts = [self._spawn(index) for index in range(self._count)]

    def _spawn(self, index: int) -> _Front:
        engine_end, front_end = socket.socketpair()
        fd = os.memfd_create(f"gpufair-front-{index}")
        try:
            os.ftruncate(fd, BUFFER_BYTES)
            buffer = mmap.mmap(fd, BUFFER_BYTES)
            process = self._context.Process(
                target=run_front,
                args=(index, self._listener, front_end, self._options),
                name=f"gpufair-front-{index}",
            )
            process.start()
            front_end.close()
            socket.send_fds(engine_end, [link.frame({"buffer_bytes": BUFFER_BYTES})], [fd])
        finally:
            os.close(fd)
        front_link = FrontLink(self._core, engine_end, buffer, f"front-{index}")
        front_link.start()
        log.info("front %d started (pid %s)", index, process.pid)
        return _Front(process, front_link, buffer)

    def watch(
        self,
        stop: threading.Event,
        every_s: float = 1.0,
        max_exits: int = MAX_FRONT_EXITS,
        window_s: float = FRONT_EXITS_WINDOW_S,
    ) -> None:
        """Until ``stop`` is set: start again any front that exited; raise FrontsFailing when
        fronts exited more than ``max_exits`` times within ``window_s``."""
        exits: collections.deque[float] = collections.deque()
        while not stop.wait(every_s):
            for index, front in enumerate(self._fronts):
                if front.process.is_alive() or stop.is_set():
                    continue
                now = time.monotonic()
                exits.append(now)
                while exits[0] < now - window_s:
                    exits.popleft()
                if len(exits) > max_exits:
                    raise FrontsFailing(
                        f"front {index} exited with {front.process.exitcode}, the "
                        f"{len(exits)}th front exit within {window_s:g} s; not starting it again"
                    )
                log.error(
                    "front %d exited with %s; starting it again", index, front.process.exitcode
                )
                self._fronts[index] = self._spawn(index)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the fronts (SIGTERM: each ends its requests in progress), then the links.

        The engine's copy of the listening socket is closed first: each front closes its own
        as it stops accepting, so the socket closes with the last of them and a client that
        connects meanwhile is refused at once (a router tries another replica). Held open, it
        kept the socket listening through the drain: connections queued there unaccepted and
        were reset only when the last front had ended its requests, seconds later.
        """
        self._listener.close()
        for front in self._fronts:
            if front.process.is_alive():
                front.process.terminate()
        end = time.monotonic() + timeout_s
        for front in self._fronts:
            front.process.join(max(end - time.monotonic(), 0.1))
            if front.process.is_alive():
                front.process.kill()
                front.process.join()
        for front in self._fronts:
            front.link.join(timeout=1.0)
