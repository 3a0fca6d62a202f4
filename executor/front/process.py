"""A front process: the daemon's HTTP app on the shared listening socket, over a link.

Started by :class:`executor.engine.server.Fronts` with ``multiprocessing``'s spawn method, so
it is a fresh interpreter that imports no torch (the models' package loads torch only when a
model is built). It receives its shared buffer on the link, serves until it is told to stop
(SIGTERM or SIGINT: uvicorn ends the requests in progress) or the engine closes the link.
"""

from __future__ import annotations

import logging
import mmap
import socket
from dataclasses import dataclass

import uvicorn

from executor.daemon import create_front_app
from executor.engine import link
from executor.front.remote import RemoteEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontOptions:
    max_body_bytes: int  # bodies over this are refused with 413
    log_level: int = logging.INFO


def run_front(
    index: int, listener: socket.socket, link_socket: socket.socket, options: FrontOptions
) -> None:
    """The front process's main function."""
    logging.basicConfig(
        level=options.log_level, format=f"%(asctime)s front-{index} %(levelname)s %(message)s"
    )
    message, fds, _, _ = socket.recv_fds(link_socket, 1024, 1)
    hello, _ = link.unframe(message)
    buffer = mmap.mmap(fds[0], int(hello["buffer_bytes"]))
    server: uvicorn.Server | None = None

    def engine_gone() -> None:
        if server is not None:
            server.should_exit = True

    engine = RemoteEngine(link_socket, buffer, on_close=engine_gone)
    app = create_front_app(engine, max_body_bytes=options.max_body_bytes)
    # uvicorn's C parser and event loop: a front's CPU goes to headers and megabyte bodies.
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        http="httptools",
        loop="uvloop",
    )
    server = uvicorn.Server(config)
    server.run(sockets=[listener])
