"""The ETag long-poll of every document the data plane pulls: a node's plan and credentials,
and the routing table.

``GET`` with ``If-None-Match`` of the current ETag is answered 304 after waiting up to ``wait``
seconds (at most ``config.max_long_poll_s``) for a different document, and 200 with the
document as soon as it differs. The wait holds no database connection, slot or worker thread:
it awaits the process's notifier (:class:`api.services.plans.PlanNotifier`, woken when this
process stores an allocation or changes a key) or about ``RECHECK_S`` (spread, so that waits
begun together do not recheck together), whichever comes first, and each read takes a slot of
the database gate for its queries (:mod:`api.db`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Response, status
from fastapi.responses import JSONResponse

from api.services.plans import etag_matches, recheck_after
from api.state import AppState

# One read: the document's ETag and its JSON body — a value to encode, or bytes already
# encoded (a plan's rendering kept by the process) — or None for the body where the reader saw
# that the caller's If-None-Match already names that ETag (a plan's recheck reads its version
# only and builds no document it would not send).
Read = Callable[[], Awaitable[tuple[str, Any | None]]]


async def long_poll(
    state: AppState, *, read: Read, wait: float, if_none_match: str | None
) -> Response:
    """The document ``read`` returns, or 304 once ``wait`` passed with it unchanged."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, state.config.max_long_poll_s)
    while True:
        etag, body = await read()
        if body is not None and not etag_matches(if_none_match, etag):
            if isinstance(body, bytes):
                return Response(body, media_type="application/json", headers={"ETag": etag})
            return JSONResponse(body, headers={"ETag": etag})
        remaining = deadline - loop.time()
        if remaining <= 0:
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        await state.notifier.wait(min(remaining, recheck_after()))
