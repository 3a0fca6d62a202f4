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
after a chunked request's reply); ``Expect: 100-continue`` answered when the body is read. A
request whose body was not read whole (refused before it, or over the limit) is answered with
``Connection: close``; so is a malformed request (400) or a head over :data:`HEAD_LIMIT`
bytes (431). The head is parsed by ``httptools`` (llhttp), as uvicorn does.
"""

from __future__ import annotations

import asyncio
import enum
import http
import logging
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import httptools
from starlette.responses import Response
from starlette.types import Message

from executor.daemon import Body, FrontApp, error_response

log = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024  # a request line and headers longer than this are refused (431)
KEEP_ALIVE_S = 5.0  # an idle kept-alive connection is closed after this (uvicorn's default)
STOP_GRACE_S = 30.0  # on stop, requests in progress get this long to end
LINGER_S = 1.0  # a connection refused as malformed is read (and dropped) this long at most
# A connection receives its bodies up to this size into one buffer it keeps: a fresh megabyte
# buffer costs its page faults on every request (6 % of a front's samples at 240 qps).
REUSED_BODY_LIMIT = 8 * 1024 * 1024
_END_OF_HEAD = b"\r\n\r\n"


class ClientGone(ConnectionError):
    """The client closed its connection before its body came in whole."""


class _Phase(enum.Enum):
    HEAD = "head"  # reading a request's head
    WAITING = "waiting"  # a request is being handled; nothing is read unless its body is asked
    BODY = "body"  # reading a Content-Length body into its buffer
    CHUNKED = "chunked"  # feeding a chunked body to the parser
    DISCARD = "discard"  # refused as malformed: what else comes is dropped until the close


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
        self.chunks: list[bytes] = []
        self.chunked_bytes = 0
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        self.raw_headers.append((lower, value))
        dict.__setitem__(self.headers, lower.decode("latin-1"), value.decode("latin-1"))

    def on_body(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.chunked_bytes += len(chunk)

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

    async def read_body(self, limit: int) -> Body | None:
        if self.body_read:
            return b""
        if self.content_length is not None and self.content_length > limit:
            return None
        if self._headers.get("expect", "").lower() == "100-continue":
            self.connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self.connection.receive_body(self, limit)
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
        self._spare = bytearray()  # the body buffer, kept for the connection's next request
        self._body = memoryview(self._spare)  # where the body in progress goes
        self._body_filled = 0
        self._body_limit = 0
        self._head: _Head | None = None
        self._parser: httptools.HttpRequestParser | None = None
        self._body_done: asyncio.Future[Body | None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closed = False
        self._gone: asyncio.Future[None] | None = None  # set when the client leaves

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
        self._cancel_idle()
        if self._body_done is not None and not self._body_done.done():
            self._body_done.set_exception(ClientGone("the client left before its body came"))
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

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
                self._finish_body(self._body)
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
        try:
            parser.feed_data(memoryview(self._buffer)[:end])
            url = httptools.parse_url(head.url)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._refuse(400, f"malformed request: {exc}")
            return
        request = WireRequest(
            self,
            parser.get_method().decode("ascii"),
            unquote(url.path.decode("latin-1")),
            url.query or b"",
            head,
            parser.should_keep_alive(),
        )
        self._parser, self._head = parser, head
        self._cancel_idle()
        # What came after the head stays at the buffer's start: the body's first bytes, or (for
        # a request without a body) the next request.
        self._buffer[: self._filled - end] = self._buffer[end : self._filled]
        self._filled -= end
        self._phase = _Phase.WAITING
        self.pause()
        task = asyncio.get_running_loop().create_task(self._server.handle(request))
        self._server.tasks.add(task)
        task.add_done_callback(self._server.tasks.discard)

    async def receive_body(self, request: WireRequest, limit: int) -> Body | None:
        """The request's body, read once its handler asks (None: over ``limit`` bytes)."""
        if self._closed:
            raise ClientGone("the client left before its body came")
        self._body_done = asyncio.get_running_loop().create_future()
        self._body_limit = limit
        if request.chunked:
            self._phase = _Phase.CHUNKED
            held, self._filled = bytes(self._buffer[: self._filled]), 0
            self._feed_chunked(memoryview(held))
        else:
            length = request.content_length or 0
            if length <= len(self._spare):
                self._body = memoryview(self._spare)[:length]
            else:
                fresh = bytearray(length)
                if length <= REUSED_BODY_LIMIT:
                    self._spare = fresh
                self._body = memoryview(fresh)
            taken = min(length, self._filled)
            self._body[:taken] = self._buffer[:taken]
            self._buffer[: self._filled - taken] = self._buffer[taken : self._filled]
            self._filled -= taken
            self._body_filled = taken
            self._phase = _Phase.BODY
            if taken == length:
                self._finish_body(self._body)
        if not self._body_done.done():
            self.resume()
        return await self._body_done

    def _feed_chunked(self, data: memoryview) -> None:
        assert self._parser is not None and self._head is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed chunked body: {exc}")
            return
        if self._head.chunked_bytes > self._body_limit:
            self._finish_body(None)
        elif self._head.complete:
            self._finish_body(b"".join(self._head.chunks))

    def _finish_body(self, body: Body | None) -> None:
        self._phase = _Phase.WAITING
        self.pause()
        if self._body_done is not None and not self._body_done.done():
            self._body_done.set_result(body)

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
            self.close()
            return
        self._phase = _Phase.HEAD
        self._parser = self._head = None
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

    def _refuse(self, status: int, message: str) -> None:
        """Answer a malformed request and close the connection, reading and dropping what the
        client still sends for at most LINGER_S: closed with its bytes unread, the kernel would
        reset the connection, and the client might never read the answer."""
        log.info("refused a request: %s", message)
        self.write(_wire(error_response(status, message), close=True, with_body=True))
        if self._transport is None or self._closed:
            return
        self._phase = _Phase.DISCARD
        self._cancel_idle()
        self._transport.write_eof()
        self.resume()
        self._idle = asyncio.get_running_loop().call_later(LINGER_S, self.close)

    def _await_head(self) -> None:
        """Give the next request's head KEEP_ALIVE_S to come in whole."""
        self._cancel_idle()
        self._idle = asyncio.get_running_loop().call_later(KEEP_ALIVE_S, self.close_if_idle)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None


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
        except ClientGone:
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
        body = await request.read_body(self._max_body_bytes)
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
