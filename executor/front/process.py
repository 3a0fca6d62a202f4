"""A front process: the daemon's HTTP app on the shared listening socket, over a link.

Started by :class:`executor.engine.server.Fronts` with ``multiprocessing``'s spawn method, so
it is a fresh interpreter that imports no torch (the models' package loads torch only when a
model is built). It receives its shared buffer on the link, serves on its own HTTP server
(:mod:`executor.front.http`, on uvloop) until it is told to stop (SIGTERM or SIGINT: the
requests in progress end first) or the engine closes the link.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import mmap
import signal
import socket
from dataclasses import dataclass

import uvloop

from executor.daemon import create_front
from executor.engine import link
from executor.front.http import FrontServer
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
    uvloop.run(_serve(listener, link_socket, buffer, options))


async def _serve(
    listener: socket.socket, link_socket: socket.socket, buffer: mmap.mmap, options: FrontOptions
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    engine = RemoteEngine(link_socket, buffer, on_close=stop.set)
    app = create_front(engine, max_body_bytes=options.max_body_bytes)
    server = FrontServer(app, options.max_body_bytes)
    await server.start(listener)
    # What the front has built by now (imports, the app, its routes) lives as long as it does;
    # a full pass of the cyclic collector over it paused every request of this front for 20-30
    # ms (docs/benchmarks.md), as the engine's before it froze its own (executor.scheduling.node).
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
    finally:
        await server.stop()
