"""The gateway's HTTP/1.1 client (gpufair.upstream) against small real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gpufair.servers import free_port
from gpufair.upstream import MAX_ANSWER_BYTES, Gone, Upstream


async def _serve(answer: bytes, close_after: bool) -> tuple[asyncio.Server, list[bytes]]:
    """A server answering every request with ``answer``; it records each request's bytes and
    closes the connection after each answer when ``close_after``."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            received.append(head + await reader.readexactly(length))
            writer.write(answer)
            await writer.drain()
            if close_after:
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), received


async def _body() -> AsyncIterator[bytes]:
    for chunk in (b"abc", b"", b"def"):
        yield chunk


def test_a_request_is_forwarded_whole_and_a_chunked_answer_read_whole() -> None:
    async def scenario() -> None:
        answer = (
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\n"
            b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        server, received = await _serve(answer, close_after=False)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        upstream = Upstream(connect_timeout_s=2)
        headers = [(b"authorization", b"Bearer k"), (b"host", b"gateway"), (b"connection", b"x")]
        got = await upstream.exchange(url, "POST", "/v2/models/7/infer?a=1", headers, _body, 6)
        assert (got.status, got.content) == (429, b"abcde")
        assert (b"retry-after", b"3") in got.headers
        request = received[0]
        assert request.startswith(b"POST /v2/models/7/infer?a=1 HTTP/1.1\r\n")
        assert b"authorization: Bearer k\r\n" in request and b"gateway" not in request
        assert b"content-length: 6\r\n" in request and request.endswith(b"\r\n\r\nabcdef")
        upstream.close()
        server.close()

    asyncio.run(scenario())


def test_a_connection_closed_while_idle_is_replaced_and_a_dead_daemon_is_gone() -> None:
    async def scenario() -> None:
        answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        server, received = await _serve(answer, close_after=True)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        upstream = Upstream(connect_timeout_s=2)
        for _ in range(3):  # each idle connection was closed by the server after its answer
            got = await upstream.exchange(url, "POST", "/x", [], _body, 6)
            assert (got.status, got.content) == (200, b"ok")
            await asyncio.sleep(0.05)
        assert len(received) == 3
        with pytest.raises(Gone):
            await upstream.exchange(f"http://127.0.0.1:{free_port()}", "GET", "/", [], None, None)
        upstream.close()
        server.close()

    asyncio.run(scenario())


CAP = 1024  # the answers' cap of the clients below


def _framed(size: int, framing: str) -> bytes:
    """An answer of ``size`` bytes of body, its length declared, chunked (512-byte chunks) or
    delimited by the connection's end."""
    body = b"x" * size
    if framing == "declared":
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (size, body)
    if framing == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 512]), body[i : i + 512])
                          for i in range(0, size, 512))  # fmt: skip
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%s0\r\n\r\n" % chunks
    return b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + body


@pytest.mark.parametrize("framing", ["declared", "chunked", "until-close"])
def test_an_answer_over_the_cap_is_gone_not_buffered(framing: str) -> None:
    """A broken daemon declaring or streaming an answer of any size made the gateway buffer
    all of it: past the cap the exchange fails, and an answer at the cap still comes whole."""
    assert MAX_ANSWER_BYTES >= 64 * 1024 * 1024  # generous: real answers are a few kB

    async def scenario() -> None:
        upstream = Upstream(connect_timeout_s=2, max_answer_bytes=CAP)
        for size in (CAP, CAP + 1, 4 * CAP):
            server, _ = await _serve(_framed(size, framing), close_after=True)
            url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            if size <= CAP:
                got = await upstream.exchange(url, "GET", "/", [], None, None)
                assert (got.status, len(got.content)) == (200, size)
            else:
                with pytest.raises(Gone, match=f"answer's body .* exceeds {CAP} bytes"):
                    await upstream.exchange(url, "GET", "/", [], None, None)
            server.close()
        upstream.close()

    asyncio.run(scenario())


def test_an_https_url_is_refused_by_name_not_spoken_to_in_plain_text() -> None:
    """An https:// daemon was sent a plain-text request (on port 80 unless the URL named one):
    no TLS is spoken here, so such a URL fails at once and says why."""

    async def scenario() -> None:
        answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        server, received = await _serve(answer, close_after=True)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        upstream = Upstream(connect_timeout_s=2)
        with pytest.raises(Gone, match="https:// URL scheme not supported"):
            await upstream.exchange(url, "GET", "/", [], None, None)
        assert received == []
        upstream.close()
        server.close()

    asyncio.run(scenario())
