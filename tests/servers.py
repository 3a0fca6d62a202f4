"""Servers inside the test process: an ASGI app (the API's or the executor daemon's) served by
a real uvicorn on 127.0.0.1, or the daemon's HTTP surface by the fronts' own server, for tests
that need real sockets and truly parallel clients without a child process (tests that run
gpufair's own processes use :mod:`gpufair.servers`)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


class BackgroundServer:
    """An ASGI app served by uvicorn on a thread of the test process.

    ``with BackgroundServer(app, "127.0.0.1", 0) as server:`` binds a free port (read it from
    ``server.port``) and stops the server on exit, after the requests in progress end or, with
    ``graceful_shutdown_s``, after at most that many seconds (a long-poll may hold one for long).
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        graceful_shutdown_s: int | None = None,
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self.host = host
        self.port = port

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = int(sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10.0)


class BackgroundFront:
    """The daemon's HTTP surface served by a front's own server (:mod:`executor.front.http`,
    as the front processes run it) on a thread of the test process, with its own event loop.

    ``with BackgroundFront(front_app) as server:`` listens on a free port of 127.0.0.1 (read
    ``server.url``) and stops the server on exit, after the requests in progress end.
    """

    def __init__(self, app: Any, max_body_bytes: int = 64 * 1024 * 1024) -> None:
        from executor.front.http import FrontServer

        self._server = FrontServer(app, max_body_bytes)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="front", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BackgroundFront:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._server.start(self._listener), self._loop).result(10)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(40)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10.0)
        self._loop.close()
        self._listener.close()
