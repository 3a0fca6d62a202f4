"""The fronts' HTTP/1.1 server: the inference routes without ASGI, every other route through it.

A front spends its CPU on headers and megabyte bodies, on the same cores as the engine's
forwards. Under uvicorn and Starlette a request with a 1.14 MB body cost a process that read it
whole and answered a fixed reply 0.81–0.88 ms of CPU at 240 qps on the 2-core benchmark VM,
against 0.31–0.36 ms for this server's way of reading (docs/benchmarks.md, "Serving over
HTTP"): a body arrives in 64 KiB pieces there, each a ``bytes`` object handed through the ASGI
``receive`` queue and paused and resumed by flow control; here it is received straight into one
buffer of its declared length (:class:`asyncio.BufferedProtocol`), the socket reads as much
as the kernel holds at a time, and the handler is called with the request, no scope, middleware
or routing table in between.

What it serves:

- ``POST`` to a path that one of the app's :class:`~executor.daemon.DirectRoute` s matches:
  its handler, with the request as an :class:`~executor.daemon.Exchange`; the handler reads
  the body when it wants it (admission comes first), and the connection reads nothing
  meanwhile (reading is paused, so a body nobody asked for stays in the client's socket);
- anything else: the app's ASGI app (health, metrics, the protocol's metadata), its body read
  whole first, up to the same limit.

HTTP/1.1 as clients use it: keep-alive (an idle connection is closed after
:data:`KEEP_ALIVE_S`), requests on a connection answered in order, one at a time;
``Content-Length`` bodies and ``Transfer-Encoding: chunked`` ones (the connection is closed
after a chunked request's reply; any other transfer coding is answered 501);
``Expect: 100-continue`` answered when the body is read; an ``Upgrade`` (``h2c``, a websocket)
ignored, the request answered over HTTP/1.1 (RFC 9110 §7.8), and ``CONNECT`` refused (405). A
request whose body was not read whole (refused before it, or over the limit) is answered with
``Connection: close``; so is a malformed request (400) or a head over :data:`HEAD_LIMIT`
bytes (431). The head is parsed by ``httptools`` (llhttp), as uvicorn does.

What a client can make a connection hold is bounded by what it sends and reads, never by what
it declares: a body's buffer is not written before its bytes land in it (so the kernel gives
it pages only as they come), a chunked body goes into one growing buffer, a body of which no
byte comes for :data:`BODY_STALL_S` is refused (408) and ends its request (its handler may end
the read sooner: the daemon does at the query's SLA), and a connection reads no request while
its replies wait to be written (past the transport's high-water mark), and is closed when the
client takes none of them for :data:`WRITE_STALL_S`. Receiving a ``Content-Length`` body costs
no more for it than one timer, armed once per body that does not come with its head.
"""

from __future__ import annotations

import asyncio
import enum
import http
import logging
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import httptools
import numpy as np
from starlette.responses import Response
from starlette.types import Message

from executor.daemon import Body, FrontApp, error_response

log = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024  # a request line and headers longer than this are refused (431)
KEEP_ALIVE_S = 5.0  # an idle kept-alive connection is closed after this (uvicorn's default)
# A client is given the keep-alive time to show it is still there: a body that receives no
# byte over that long is refused (408, between one and two of it after its last byte: it is
# checked once a period, so that receiving a body costs no work per read), and a connection
# whose replies wait to be written with none of them taken by the client over that long is
# closed.
BODY_STALL_S = KEEP_ALIVE_S
WRITE_STALL_S = KEEP_ALIVE_S
# A body of a route other than inference (a small JSON document, if any) must come in whole
# within this of its head: a client that trickles a byte every few seconds would otherwise
# hold its connection and request past every stall check. Inference bodies end at their SLA.
OTHER_BODY_S = 30.0
STOP_GRACE_S = 30.0  # on stop, requests in progress get this long to end
LINGER_S = 1.0  # a connection refused as malformed is read (and dropped) this long at most
# A connection receives its bodies up to this size into one buffer it keeps: a fresh megabyte
# buffer costs its page faults on every request (6 % of a front's samples at 240 qps).
REUSED_BODY_LIMIT = 8 * 1024 * 1024
_END_OF_HEAD = b"\r\n\r\n"
_ALLOW = {"Allow": "GET, HEAD, POST"}  # the methods the daemon's routes answer
# What llhttp sees of a request whose Upgrade it ended the message at, to parse its chunked body.
_CHUNKED_HEAD = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"


class BodyLost(ConnectionError):
    """The connection ended a request before its body came in whole: its client left, or the
    body stalled (answered 408) or its chunks were malformed (400) and the connection answered
    it itself and closes. Its handler gives no reply."""


class _Ended(enum.Enum):
    """Why a body read ended without the body (what its future is resolved with: a future
    holding an exception would hold its traceback, whose frames hold the connection)."""

    GONE = "the client left before its body came"
    REFUSED = "the connection refused the request's body"
    LATE = "the body was still coming in at its deadline"


class _Phase(enum.Enum):
    HEAD = "head"  # reading a request's head
    WAITING = "waiting"  # a request is being handled; nothing is read unless its body is asked
    BODY = "body"  # reading a Content-Length body into its buffer
    CHUNKED = "chunked"  # feeding a chunked body to the parser
    DISCARD = "discard"  # refused, or its body late: what else comes is dropped until the close


class Headers(dict[str, str]):
    """A request's headers by lower-case name, looked up by any case (as Starlette's are); a
    header sent twice keeps its last value."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class _Head:
    """httptools' callbacks for one request head (and a chunked body)."""

    def __init__(self) -> None:
        self.url = b""
        self.headers = Headers()
        self.raw_headers: list[tuple[bytes, bytes]] = []
        # A chunked body's payload, in one buffer: a bytes object per chunk would cost a
        # client's two-byte chunks some 50 bytes of the front's memory each.
        self.body = bytearray()
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        self.raw_headers.append((lower, value))
        dict.__setitem__(self.headers, lower.decode("latin-1"), value.decode("latin-1"))

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk

    def on_message_complete(self) -> None:
        self.complete = True


class WireRequest:
    """One request on a connection, as its handler sees it (:class:`~executor.daemon.Exchange`)."""

    def __init__(
        self,
        connection: _Connection,
        method: str,
        path: str,
        query: bytes,
        head: _Head,
        keep_alive: bool,
    ) -> None:
        self.connection = connection
        self.method = method
        self.path = path
        self.query = query
        self.raw_headers = head.raw_headers
        self._headers = head.headers
        self.path_params: Mapping[str, str] = {}
        self.keep_alive = keep_alive
        declared = head.headers.get("content-length")
        self.content_length = int(declared) if declared is not None else None
        self.chunked = "chunked" in head.headers.get("transfer-encoding", "").lower()
        self.body_read = self.content_length in (None, 0) and not self.chunked

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    async def read_body(self, limit: int, deadline: float | None = None) -> Body | None:
        if self.body_read:
            return b""
        if self.content_length is not None and self.content_length > limit:
            return None
        if self._headers.get("expect", "").lower() == "100-continue":
            self.connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self.connection.receive_body(self, limit, deadline)
        self.body_read = body is not None
        return body


class _Connection(asyncio.BufferedProtocol):
    """One client connection: heads into a fixed buffer, each body straight into its own."""

    def __init__(self, server: FrontServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray(HEAD_LIMIT)
        self._filled = 0  # bytes of self._buffer holding an unparsed head (and what follows)
        self._phase = _Phase.HEAD
        self._spare = memoryview(bytearray())  # the body buffer, kept for the next request
        self._body = self._spare  # where the body in progress goes
        self._body_filled = 0
        self._body_limit = 0
        self._chunked_fed = 0  # bytes of a chunked body fed to the parser (its progress)
        self._deadline: float | None = None  # the body in progress ends then (monotonic)
        self._head: _Head | None = None
        self._parser: httptools.HttpRequestParser | None = None
        self._body_done: asyncio.Future[Body | _Ended | None] | None = None
        # What the connection waits for from its client: a head (KEEP_ALIVE_S), a body's next
        # bytes (BODY_STALL_S, or its deadline), the end of a linger (LINGER_S).
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._gone: asyncio.Future[None] | None = None  # set when the client leaves
        self._writing_paused = False  # the transport's write buffer is over its high-water mark
        self._held = False  # the next request waits for the replies before it to be written
        self._write_timer: asyncio.TimerHandle | None = None

    # -- asyncio's side -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's, no asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        self._cancel_timer()
        self._cancel_write_timer()
        self._end_body(_Ended.GONE)
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def pause_writing(self) -> None:
        """The transport holds more replies than its high-water mark: no request is started
        until they are written (a client that sends requests and reads no reply would
        otherwise have the front hold every reply), and the connection is closed if the client
        takes none of them for WRITE_STALL_S."""
        self._writing_paused = True
        self._watch_writes()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._cancel_write_timer()
        if self._held:
            self._held = False
            self._next_request()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._phase is _Phase.BODY:
            return self._body[self._body_filled :]
        if self._phase in (_Phase.CHUNKED, _Phase.DISCARD):
            return memoryview(self._buffer)
        return memoryview(self._buffer)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._phase is _Phase.BODY:
            self._body_filled += nbytes
            if self._body_filled == len(self._body):
                self._end_body(self._body)
        elif self._phase is _Phase.CHUNKED:
            self._feed_chunked(memoryview(self._buffer)[:nbytes])
        elif self._phase is _Phase.DISCARD:
            return
        else:
            self._filled += nbytes
            self._parse_head(max(0, self._filled - nbytes - len(_END_OF_HEAD) + 1))

    def eof_received(self) -> bool | None:
        return None  # close the transport

    # -- requests -------------------------------------------------------------------------------

    def _parse_head(self, search_from: int) -> None:
        """Start the request whose head is now in the buffer, if it is whole."""
        end = self._buffer.find(_END_OF_HEAD, search_from, self._filled)
        if end < 0:
            if self._filled == len(self._buffer):
                self._refuse(431, "request head too large")
            return
        end += len(_END_OF_HEAD)
        head = _Head()
        parser = httptools.HttpRequestParser(head)
        upgrade = False
        try:
            parser.feed_data(memoryview(self._buffer)[:end])
        except httptools.HttpParserUpgrade:
            # llhttp stops at the head of a request that asks for another protocol. CONNECT
            # asks for a tunnel, which this server does not make; any other Upgrade (h2c, a
            # websocket) is ignored and the request answered over HTTP/1.1 (RFC 9110 §7.8).
            if parser.get_method() == b"CONNECT":
                self._refuse(405, "CONNECT: this server opens no tunnels", _ALLOW)
                return
            upgrade = True
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed request: {exc}")
            return
        try:
            url = httptools.parse_url(head.url)
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed request target: {exc}")
            return
        coding = head.headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            # llhttp takes any codings ending in chunked; the others are not undone here.
            self._refuse(501, f"transfer coding {coding!r}: send the body as it is, chunked")
            return
        request = WireRequest(
            self,
            parser.get_method().decode("ascii"),
            # An absolute-form target (a proxy's request) may have no path: it names "/".
            unquote(url.path.decode("latin-1")) if url.path else "/",
            url.query or b"",
            head,
            parser.should_keep_alive(),
        )
        if upgrade and request.chunked:  # llhttp ended the message at its head
            head = _Head()
            parser = httptools.HttpRequestParser(head)
            parser.feed_data(_CHUNKED_HEAD)
        self._parser, self._head = parser, head
        self._cancel_timer()
        # What came after the head stays at the buffer's start: the body's first bytes, or (for
        # a request without a body) the next request.
        self._buffer[: self._filled - end] = self._buffer[end : self._filled]
        self._filled -= end
        self._phase = _Phase.WAITING
        self.pause()
        task = asyncio.get_running_loop().create_task(self._server.handle(request))
        self._server.tasks.add(task)
        task.add_done_callback(self._server.tasks.discard)

    async def receive_body(
        self, request: WireRequest, limit: int, deadline: float | None
    ) -> Body | None:
        """The request's body, read once its handler asks (None: over ``limit`` bytes);
        TimeoutError if it has not come in whole by ``deadline`` (``time.monotonic()``),
        BodyLost if the client leaves or it stalls first."""
        if self._closed:
            raise BodyLost(_Ended.GONE.value)
        done = self._body_done = asyncio.get_running_loop().create_future()
        self._body_limit = limit
        if request.chunked:
            self._phase = _Phase.CHUNKED
            self._chunked_fed = 0
            held, self._filled = bytes(self._buffer[: self._filled]), 0
            self._feed_chunked(memoryview(held))
        else:
            length = request.content_length or 0
            if length <= len(self._spare):
                self._body = self._spare[:length]
            else:
                # Left unwritten, memory costs the front only the pages the client fills, not the
                # length it declares: a bytearray is zeroed whole at once. An anonymous mapping
                # would cost each connection's first body its page faults (tripling its CPU),
                # where freed memory is reused by malloc, as it is here.
                fresh = np.empty(length, np.uint8).data
                if length <= REUSED_BODY_LIMIT:
                    self._spare = fresh
                self._body = fresh
            taken = min(length, self._filled)
            self._body[:taken] = self._buffer[:taken]
            self._buffer[: self._filled - taken] = self._buffer[taken : self._filled]
            self._filled -= taken
            self._body_filled = taken
            self._phase = _Phase.BODY
            if taken == length:
                self._end_body(self._body)
        if not done.done():
            self._deadline = deadline
            self._watch_body()
            self.resume()
        try:
            body = await done
        finally:
            self._body_done = None
            if done.cancelled():  # its handler gave up on it: the reply closes the connection
                self._cancel_timer()
        if body is _Ended.LATE:
            raise TimeoutError(body.value)
        if isinstance(body, _Ended):
            raise BodyLost(body.value)
        return body

    def _feed_chunked(self, data: memoryview) -> None:
        assert self._parser is not None and self._head is not None
        self._chunked_fed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed chunked body: {exc}")
            return
        if len(self._head.body) > self._body_limit:
            self._end_body(None)
        elif self._head.complete:
            self._end_body(self._head.body)

    def _end_body(self, body: Body | _Ended | None) -> None:
        """End the body read in progress, if any: ``body``, None (over the limit) or why not."""
        done = self._body_done
        if done is None or done.done():
            return
        self._cancel_timer()
        if body is _Ended.LATE:  # what still comes is dropped until the reply closes
            self._phase = _Phase.DISCARD
        elif not isinstance(body, _Ended):
            self._phase = _Phase.WAITING
            self.pause()
        done.set_result(body)

    def _watch_body(self) -> None:
        """Check the body's progress when BODY_STALL_S has passed, or at its deadline."""
        delay, late = BODY_STALL_S, False
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= delay:
                delay, late = max(left, 0.0), True
        received = self._body_filled + self._chunked_fed
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_body, received, late)

    def _check_body(self, received: int, late: bool) -> None:
        self._timer = None
        if late:
            self._end_body(_Ended.LATE)
        elif self._body_filled + self._chunked_fed == received:
            self._refuse(408, f"the body stalled: no byte of it came in {BODY_STALL_S:g} s")
        else:
            self._watch_body()

    def reply(self, request: WireRequest, response: Response) -> None:
        """Write the response to ``request`` and go on to the connection's next request."""
        if self._closed:
            return
        close = (
            not request.keep_alive
            or not request.body_read
            or request.chunked
            or response.headers.get("connection", "").lower() == "close"
            or self._server.stopping
        )
        self.write(_wire(response, close, with_body=request.method != "HEAD"))
        if close:
            if self._phase is _Phase.DISCARD:  # its body was still coming in
                self._linger()
            else:
                self.close()
            return
        self._phase = _Phase.HEAD
        self._parser = self._head = None
        if self._writing_paused:  # until the client takes its replies (resume_writing)
            self._held = True
            return
        self._next_request()

    def _next_request(self) -> None:
        """Read (or parse what has come of) the connection's next request."""
        self.resume()
        self._await_head()
        if self._filled:
            self._parse_head(0)

    async def disconnected(self) -> None:
        """Returns once the client has left."""
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
            if self._closed:
                self._gone.set_result(None)
        await self._gone

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._closed:
            self._transport.write(data)

    def close(self) -> None:
        self._held = False  # no request is read once its replies are written
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def close_if_idle(self) -> None:
        """Close the connection unless a request of it is in progress."""
        if self._phase is _Phase.HEAD:
            self.close()

    def pause(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def _refuse(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer a request the connection cannot go on with (malformed, or its body stalled),
        end its body read if one is in progress, and close the connection after a linger."""
        log.info("refused a request: %s", message)
        self.write(_wire(error_response(status, message, headers), close=True, with_body=True))
        self._end_body(_Ended.REFUSED)
        self._linger()

    def _linger(self) -> None:
        """Close the connection, reading and dropping what the client still sends for at most
        LINGER_S: closed with its bytes unread, the kernel would reset the connection, and the
        client might never read the answer."""
        if self._transport is None or self._closed:
            return
        self._phase = _Phase.DISCARD
        self._cancel_timer()
        self._transport.write_eof()
        self.resume()
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, self.close)

    def _await_head(self) -> None:
        """Give the next request's head KEEP_ALIVE_S to come in whole."""
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(KEEP_ALIVE_S, self.close_if_idle)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _watch_writes(self) -> None:
        """Close the connection unless its write buffer shrinks within WRITE_STALL_S."""
        self._cancel_write_timer()
        assert self._transport is not None  # the transport pauses a protocol it was made for
        self._write_timer = asyncio.get_running_loop().call_later(
            WRITE_STALL_S, self._check_writes, self._transport.get_write_buffer_size()
        )

    def _check_writes(self, buffered: int) -> None:
        self._write_timer = None
        if not self._writing_paused or self._transport is None:
            return
        if self._transport.get_write_buffer_size() >= buffered:
            log.info(
                "closed a connection whose client read none of its replies in %g s", WRITE_STALL_S
            )
            self._transport.abort()
            return
        self._watch_writes()


class FrontServer:
    """The HTTP server of one front process over a :class:`~executor.daemon.FrontApp`."""

    def __init__(self, app: FrontApp, max_body_bytes: int) -> None:
        self._app = app
        self._max_body_bytes = max_body_bytes
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        """Start the app's engine, then accept connections on ``sock`` (a listening socket
        other processes may share)."""
        await self._app.engine.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)

    async def stop(self) -> None:
        """Stop accepting, let the requests in progress end (for at most STOP_GRACE_S), close
        the connections, stop the engine."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=STOP_GRACE_S)
        for connection in list(self.connections):
            connection.close()
        await self._app.engine.stop()

    async def handle(self, request: WireRequest) -> None:
        connection = request.connection
        try:
            response = await self._respond(request)
        except BodyLost:
            return
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = error_response(500, "internal error")
            request.keep_alive = False
        connection.reply(request, response)

    async def _respond(self, request: WireRequest) -> Response:
        if request.method == "POST":
            for route in self._app.direct:
                match = route.pattern.fullmatch(request.path)
                if match is not None:
                    request.path_params = {
                        k: v for k, v in match.groupdict().items() if v is not None
                    }
                    return await route.handle(request)
        return await self._asgi(request)

    async def _asgi(self, request: WireRequest) -> Response:
        """``request`` answered by the app's ASGI app."""
        try:
            body = await request.read_body(self._max_body_bytes, time.monotonic() + OTHER_BODY_S)
        except TimeoutError:
            request.keep_alive = False  # what still comes of the body is dropped as it closes
            return error_response(408, f"the body did not come in whole in {OTHER_BODY_S:g} s")
        if body is None:
            return error_response(413, f"body exceeds {self._max_body_bytes} bytes")
        connection = request.connection
        sent = False
        started: dict[str, Any] = {}
        parts: list[bytes] = []

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            await connection.disconnected()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": request.path,
            "raw_path": request.path.encode(),
            "query_string": request.query,
            "root_path": "",
            "headers": request.raw_headers,
            "client": None,
            "server": None,
            "state": {},
        }
        await self._app.asgi(scope, receive, send)
        response = Response(b"".join(parts), int(started.get("status", 500)))
        response.raw_headers = [
            (name.lower(), value)
            for name, value in started.get("headers", [])
            if name.lower() != b"content-length"
        ]
        response.raw_headers.append((b"content-length", str(len(response.body)).encode()))
        return response


def _wire(response: Response, close: bool, with_body: bool) -> bytes:
    """``response`` as HTTP/1.1 bytes, saying whether the connection closes after it."""
    status = response.status_code
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _phrase(status).encode())]
    lines += [b"%s: %s\r\n" % pair for pair in response.raw_headers if pair[0] != b"connection"]
    lines.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    if with_body:
        lines.append(bytes(response.body))
    return b"".join(lines)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
