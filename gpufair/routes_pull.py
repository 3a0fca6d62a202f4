"""One pull of the API's routing table, as ``gpufair gateway`` and :mod:`gpufair.client` make it.

Both long-poll a routing table with its ETag (the gateway ``GET /v1/routes`` with the admin
token, the client ``GET /v1/routes/me`` with a tenant's key) and hand each new table to their
:class:`~gpufair.routing.Routes`. What differs is what they do between pulls (how they back
off, what a refused key means to them), so each keeps its own loop; the pull itself, and how
its failure reads in a log line or on ``/healthz``, is this one function.
"""

from __future__ import annotations

import logging

import httpx

from executor.wire.routes import RoutingTable
from gpufair.routing import Routes

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 300  # of a failure's message: one line of a log, or a /healthz field


class RoutesPullFailed(Exception):
    """A pull that brought neither a table nor a 304: the message is one line naming the URL
    and what went wrong; ``status`` the API's HTTP status (0: no answer, or one that is not a
    routing table)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line of at most ``limit`` characters, for a log line or a document."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def api_message(response: httpx.Response) -> str:
    """The API's error message (``{"error": {"message": ...}}``), else the body, on one line."""
    try:
        error = response.json()["error"]
        text = str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        text = response.text
    return one_line(text)


async def pull_routes(api: httpx.AsyncClient, path: str, routes: Routes, wait_s: float) -> bool:
    """One long-poll of the routing table at ``path`` (waiting up to ``wait_s`` while the table
    is ``routes``'s), a new table handed to ``routes``; whether the next pull can long-poll
    (False: the table came without an ETag, so the next pull would be answered at once).
    Raises RoutesPullFailed."""
    where = f"GET {str(api.base_url).rstrip('/')}{path}"
    headers = {"If-None-Match": routes.etag} if routes.etag else {}
    try:
        response = await api.get(path, params={"wait": f"{wait_s:g}"}, headers=headers)
    except httpx.HTTPError as exc:
        raise RoutesPullFailed(one_line(f"{where}: {type(exc).__name__}: {exc}")) from exc
    if response.status_code == 304:
        return True
    if response.status_code != 200:
        status = response.status_code
        raise RoutesPullFailed(f"{where}: HTTP {status}: {api_message(response)}", status)
    try:
        table = RoutingTable.model_validate_json(response.content)
    except ValueError as exc:
        raise RoutesPullFailed(one_line(f"{where}: not a routing table: {exc}")) from exc
    etag = response.headers.get("ETag")
    routes.update(table, etag)
    log.info("routing table of allocation %d: %d model(s)", table.version, len(table.models))
    return etag is not None
