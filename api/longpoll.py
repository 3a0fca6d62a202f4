"""The ETag long-poll of every document the data plane pulls: a node's plan and credentials,
and the routing table.

``GET`` with ``If-None-Match`` of the current ETag is answered 304 after waiting up to ``wait``
seconds (at most ``config.max_long_poll_s``) for a different document, and 200 with the
document as soon as it differs. The wait holds no database connection, slot or worker thread:
it awaits the process's notifier (:class:`api.services.plans.PlanNotifier`, woken when this
process stores an allocation or changes a key, and when its
:class:`~api.services.plans.StoredPlanWatcher` sees plans another process stored), and each
read takes a slot of the database gate for its queries (:mod:`api.db`).

Two kinds of wait. A plan changes only when an allocation is stored, which the watcher notices
for all plan long-polls with one query a period, so a plan long-poll waits for a wake-up only,
until its deadline. The credential document and the routing table also change with time (a
key expires) and with writes the watcher does not look for, so their long-polls recheck on
their own about every ``RECHECK_S`` (spread, so that waits begun together do not recheck
together).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Query, Response, status
from fastapi.responses import JSONResponse

from api.services.plans import etag_matches, recheck_after
from api.state import AppState

# One read: the document's ETag and its JSON body — a value to encode, or bytes already
# encoded (a plan's rendering kept by the process) — or None for the body where the reader saw
# that the caller's If-None-Match already names that ETag (a plan's recheck reads its version
# only and builds no document it would not send).
Read = Callable[[], Awaitable[tuple[str, Any | None]]]
# The ``?wait=`` of every long-polled route: seconds, finite (NaN compared false with both
# bounds and was refused as over the upper one).
LongPollWait = Annotated[
    float, Query(ge=0, le=3600, allow_inf_nan=False, description="long-poll seconds")
]


async def long_poll(
    state: AppState, *, read: Read, wait: float, if_none_match: str | None, rechecks: bool
) -> Response:
    """The document ``read`` returns, or 304 once ``wait`` passed with it unchanged.

    With ``rechecks`` the waiter reads again about every ``RECHECK_S`` even if nothing woke
    it; without, only when woken (a plan long-poll: the app's stored-plan watcher runs while it
    waits) and once more at its deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, state.config.max_long_poll_s)
    while True:
        # Noted before the read: a wake-up during it may announce what it missed.
        since = state.notifier.generation
        etag, body = await read()
        if body is not None and not etag_matches(if_none_match, etag):
            if isinstance(body, bytes):
                return Response(body, media_type="application/json", headers={"ETag": etag})
            return JSONResponse(body, headers={"ETag": etag})
        remaining = deadline - loop.time()
        if remaining <= 0:
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        if rechecks:
            await state.notifier.wait(min(remaining, recheck_after()), since=since)
        else:
            with state.plan_watcher.waiting():
                await state.notifier.wait(remaining, since=since)
