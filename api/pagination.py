"""Cursor pagination of the list routes: ``?limit=`` and ``?after=``, and a ``Link`` to the next
page.

Every list is ordered by id (allocations: newest version first, with ``?before=``), and a page
is the first ``limit`` rows past the cursor (one more is read, to know whether a next page
exists) — a keyset, not an offset, so a page never skips or repeats a row when others are
created or deleted meanwhile, and costs one index range scan however deep it is. A page with
more after it carries ``Link: <…?after=LAST&limit=N…>; rel="next"`` (RFC 8288) with the
request's other parameters (its filters) kept; the last page carries none. The body stays the
plain list it always was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request, Response

from executor.wire.names import MAX_ID

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True)
class PageParams:
    limit: int
    after: int | None


def _page(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")] = DEFAULT_LIMIT,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_ID, description="the cursor: rows with an id above this one"),
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, after=after)


Page = Annotated[PageParams, Depends(_page)]

NEXT_LINK: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "Link": {
                "description": 'the next page, `<URL>; rel="next"`, when this one is full',
                "schema": {"type": "string"},
            }
        }
    }
}


def next_page(
    request: Request,
    response: Response,
    rows: list[T],
    *,
    limit: int,
    cursor: str,
    key: Callable[[T], int],
) -> list[T]:
    """The page of ``rows`` — read with ``limit + 1``, one past the page, to know whether more
    follow — and, when more do, ``Link`` to the next page (``cursor`` = the page's last key)."""
    page = rows[:limit]
    if len(rows) > limit:
        url = request.url.include_query_params(**{cursor: key(page[-1]), "limit": limit})
        response.headers["Link"] = f'<{url}>; rel="next"'
    return page
