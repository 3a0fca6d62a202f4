"""The gateway's HTTP/1.1 client to the daemons: kept-alive connections and one exchange on one.

A general-purpose client (httpx) builds request and response objects, header maps and stream
wrappers for every call; forwarding a query needs none of it: the request head is written as
bytes, the body's chunks as they arrive, and the answer read back as a status, raw header lines
and its bytes. ``gpufair bench gateway`` measured httpx at about 4 ms of added p50 per query on
the 2-core development VM, which this module is here to cut.

Connections are kept per daemon URL and reused (at most ``max_idle`` idle ones each). A reused
connection the daemon closed while it was idle fails before any byte of an answer arrives; the
exchange is then tried once more on a fresh connection (:class:`Stale` is never raised past
:meth:`Upstream.exchange`). Any other failure to connect, write or read is :class:`Gone`: the
caller holds the daemon dead and sends the query elsewhere.

A daemon answers some queries before it reads their bodies (another tenant's key, a tenant over
its bound) and closes the connection with the body unread, which its kernel turns into a reset
of a body still being written: the client's write fails, and the answer the daemon sent may be
lost with the connection. A body over ``EXPECT_CONTINUE_BYTES`` (or of unknown length) is
therefore sent only once the daemon has said it will read it: the request carries ``Expect:
100-continue``, and an answer other than ``100 Continue`` is the query's answer, its body never
sent (RFC 9110 §10.1.1). A smaller body goes with its head, within the sockets' buffers.
Interim answers (1xx) are read past, never taken for the answer.

An answer is scores and metadata, a few kB: one whose body is over ``max_answer_bytes``
(``MAX_ANSWER_BYTES`` by default), declared or as it comes (chunked, or up to the connection's
end), is a broken daemon's and :class:`Gone`, read no further, so that no daemon can make the
gateway hold more than that for one query. Only ``http://`` URLs are spoken to (no TLS here): a
URL of another scheme is :class:`Gone` at once, its scheme named, rather than spoken to in
plain text on port 80.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
# Bodies larger than this wait for the daemon's 100 Continue: a round trip, where a refusal
# could otherwise reset the connection under a body larger than the sockets' buffers.
EXPECT_CONTINUE_BYTES = 64 * 1024
# An answer's body over this is a broken daemon's: answers are scores and metadata, a few kB.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# How much of an answer delimited by the connection's end is read at a time.
READ_BYTES = 64 * 1024
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Gone(Exception):
    """The daemon could not be reached, or the connection broke before its answer was whole."""


class Stale(Gone):
    """A reused connection had been closed by the daemon before this exchange began."""


class AnswerTooLarge(ValueError):
    """An answer's body is over the client's cap: the exchange fails rather than buffer it."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]  # as received, less the connection's own
    content: bytes


# Headers of one connection, not of the message (RFC 9110 §7.6.1), and the framing this client
# writes itself.
OWN = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
     b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length"}
)  # fmt: skip


class Upstream:
    """Kept-alive connections to the daemons, by URL."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        max_idle: int = 256,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle
        self._max_answer_bytes = max_answer_bytes
        self._idle: dict[str, list[Connection]] = {}

    async def exchange(
        self,
        url: str,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: Callable[[], AsyncIterator[bytes]] | None,
        length: int | None,
    ) -> Answer:
        """Send one request to ``url`` (``target``: path and query) and read its answer.

        ``body`` makes the body's chunks (called again for a retry on a fresh connection);
        ``length`` is its declared length, else it is sent chunked. Raises Gone.
        """
        idle = self._idle.setdefault(url, [])
        while idle:
            connection = idle.pop()
            try:
                return await self._once(url, connection, True, method, target, headers, body,
                                        length)  # fmt: skip
            except Stale:
                continue  # closed while idle: the next idle one, or a fresh connection
        connection = await self._connect(url)
        return await self._once(url, connection, False, method, target, headers, body, length)

    async def _connect(self, url: str) -> Connection:
        parts = urlsplit(url)
        if parts.scheme != "http":
            # Spoken to in plain text on port 80, an https:// daemon would fail obscurely or
            # answer whatever listens there.
            raise Gone(f"cannot connect to {url}: {parts.scheme or 'no'}:// URL scheme not "
                       "supported (the gateway speaks plain http:// to the daemons)")  # fmt: skip
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, parts.port or 80),
                self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise Gone(f"cannot connect: {exc or exc.__class__.__name__}") from exc

    async def _once(
        self,
        url: str,
        connection: Connection,
        reused: bool,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: Callable[[], AsyncIterator[bytes]] | None,
        length: int | None,
    ) -> Answer:
        reader, writer = connection
        host = urlsplit(url).netloc.encode()
        head = [method.encode(), b" ", target.encode(), b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
        for name, value in headers:
            if name not in OWN:
                head += [name, b": ", value, b"\r\n"]
        chunked = body is not None and length is None
        if length is not None:
            head.append(b"content-length: %d\r\n" % length)
        elif chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        expect = body is not None and (length is None or length > EXPECT_CONTINUE_BYTES)
        if expect:
            head.append(b"expect: 100-continue\r\n")
        head.append(b"\r\n")
        answered = False
        sent_whole = False  # only a connection whose request went out whole may be reused
        try:
            writer.write(b"".join(head))
            early = b""  # an answer before the body: the daemon will not read it
            if expect:
                await writer.drain()
                early = await _status_line(reader, interim_continue=True)
                if _status(early) == b"100":
                    early = b""
            if early:
                status_line = early
            else:
                if body is not None:
                    async for chunk in body():
                        if chunk:
                            writer.write(
                                b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                            )
                            await writer.drain()
                    if chunked:
                        writer.write(b"0\r\n\r\n")
                await writer.drain()
                sent_whole = True
                status_line = await _status_line(reader, interim_continue=False)
            answered = True
            answer, keep = await _read_answer(status_line, reader, self._max_answer_bytes)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            writer.close()
            if reused and not answered and _was_idle(exc):
                raise Stale(str(exc)) from exc
            raise Gone(f"{exc.__class__.__name__}: {exc}") from exc
        except BaseException:
            writer.close()  # cancelled (the caller's timeout): the connection is mid-exchange
            raise
        idle = self._idle.setdefault(url, [])
        if keep and sent_whole and len(idle) < self._max_idle:
            idle.append(connection)
        else:
            writer.close()
        return answer

    def close(self) -> None:
        for connections in self._idle.values():
            for _, writer in connections:
                writer.close()
        self._idle.clear()


async def _status_line(reader: asyncio.StreamReader, *, interim_continue: bool) -> bytes:
    """The status line of the next answer, past interim (1xx) ones: ``100 Continue`` is
    returned when ``interim_continue`` (the answer to ``Expect``), read past otherwise."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("closed before answering")
        status = _status(line)
        if len(status) != 3 or not status.startswith(b"1") or status == b"101":
            return line  # a final answer (or no status line at all, which _read_answer says)
        await _skip_head(reader)
        if interim_continue and status == b"100":
            return line


def _status(status_line: bytes) -> bytes:
    """The status code of a status line (b"" when it has none)."""
    parts = status_line.split(b" ", 2)
    return parts[1].strip() if len(parts) > 1 else b""


async def _skip_head(reader: asyncio.StreamReader) -> None:
    """Read past an interim answer's header lines."""
    size = 0
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise ValueError("interim answer head too large")


def _was_idle(exc: BaseException) -> bool:
    """Whether a failure before any answer byte looks like a connection the peer had closed."""
    return isinstance(exc, ConnectionResetError | BrokenPipeError | asyncio.IncompleteReadError)


async def _read_answer(
    status_line: bytes, reader: asyncio.StreamReader, max_bytes: int
) -> tuple[Answer, bool]:
    """The answer after its status line, and whether the connection may be reused; raises
    AnswerTooLarge as soon as its body is known to be over ``max_bytes``."""
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    status = int(parts[1])
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked, keep, size = False, True, 0
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise ValueError("answer head too large")
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep = b"close" not in value.lower()
        if name not in OWN:
            headers.append((name, value))
    pieces: list[bytes] = []
    if chunked:
        body_size = 0
        while (count := int((await reader.readline()).split(b";")[0], 16)) > 0:
            body_size += count
            _check_size(body_size, max_bytes, "chunked")
            pieces.append(await reader.readexactly(count))
            await reader.readexactly(2)
        while await reader.readline() not in (b"\r\n", b"\n", b""):  # trailers, dropped
            pass
        content = b"".join(pieces)
    elif length is not None:
        _check_size(length, max_bytes, "declared")
        content = await reader.readexactly(length)
    elif status in (204, 304) or status < 200:
        content = b""
    else:  # delimited by the connection's end
        body_size = 0
        while piece := await reader.read(READ_BYTES):
            body_size += len(piece)
            _check_size(body_size, max_bytes, "up to the connection's end")
            pieces.append(piece)
        content, keep = b"".join(pieces), False
    return Answer(status, headers, content), keep


def _check_size(size: int, max_bytes: int, framing: str) -> None:
    """Raise AnswerTooLarge when an answer's body (``size`` bytes so far) is over the cap."""
    if size > max_bytes:
        raise AnswerTooLarge(f"the answer's body ({framing}) exceeds {max_bytes} bytes: "
                             "a daemon answers a few kB")  # fmt: skip
