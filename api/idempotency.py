"""``Idempotency-Key`` on creating POSTs: a retried request is answered, not done again.

A client that does not know whether its POST arrived (a timeout, a dropped connection) sends
it again with the same ``Idempotency-Key`` header (any string up to 255 characters, e.g. a
UUID). The first request's outcome is stored in the same transaction as what it created
(:class:`api.models.IdempotencyRow`, per caller: the admin's keys and each tenant's are apart),
so:

- the same key with the same request (method, path and body, compared as a SHA-256 of them)
  gets the stored status, body and ETag again, with ``Idempotent-Replayed: true``; nothing is
  created twice;
- the same key with another request is **422** (``field: Idempotency-Key``);
- two requests with one key at the same moment: one creates, the other's transaction fails
  on the key's unique row and is **409**, having created nothing — except
  ``POST /v1/allocations``, whose requests take the solve lock first and look for the key
  under it, so the second waits for the first solve and replays its reply;
- a reply that carried a secret shown once (an API key, a node token) is not stored: its
  replay is **409** saying the request was done, since the secret exists nowhere any more.

Records are kept for :data:`RETENTION` and deleted as new ones are written (a range delete on
an indexed column). ``POST /v1/allocations`` solves outside a transaction; its record is
written in the transaction that stores the allocation
(:func:`api.services.allocations.run_solve`), so one commits only with the other.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.errors import Conflict, InvalidInput
from api.models import IdempotencyRow, as_utc

RETENTION = timedelta(hours=24)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="any string (a UUID): a retry with the same key and request gets the first "
        "reply again instead of creating twice",
    ),
]


class Replay(Exception):  # noqa: N818 - a reply, not an error
    """The stored reply of an earlier request with the same key; the app answers with it."""

    def __init__(self, status: int, body: dict[str, Any], etag: str | None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.etag = etag


def fingerprint(request: Request, body: BaseModel | None) -> str:
    canonical = json.dumps(
        [request.method, request.url.path, body.model_dump(mode="json") if body else None],
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay_if_known(
    *, session: Session, owner: str, key: str | None, print_: str, now: datetime
) -> None:
    """Raise :class:`Replay` (or 409/422, see the module docstring) when ``key`` was used."""
    if key is None:
        return
    row = session.scalar(
        select(IdempotencyRow).where(IdempotencyRow.owner == owner, IdempotencyRow.key == key)
    )
    if row is None or as_utc(row.created_at) < now - RETENTION:
        return
    if row.fingerprint != print_:
        raise InvalidInput(
            "this Idempotency-Key was used for another request; use a new key",
            field="Idempotency-Key",
        )
    if row.body is None:
        raise Conflict(
            "this request was already done with this Idempotency-Key; its reply carried a "
            "secret shown once, which cannot be sent again"
        )
    raise Replay(row.status, row.body, row.etag)


def remember(
    *,
    session: Session,
    owner: str,
    key: str | None,
    print_: str,
    status: int,
    body: BaseModel | None,
    now: datetime,
    etag: str | None = None,
) -> None:
    """Store the outcome under ``key`` (nothing without one); ``body`` None for a reply that
    carries a secret, ``etag`` the reply's ETag header if it has one. Expired records go at
    the same time."""
    if key is None:
        return
    session.execute(
        delete(IdempotencyRow).where(IdempotencyRow.created_at < now - RETENTION),
        execution_options={"synchronize_session": False},
    )
    session.add(
        IdempotencyRow(
            owner=owner,
            key=key,
            fingerprint=print_,
            status=status,
            body=None if body is None else body.model_dump(mode="json"),
            etag=etag,
            created_at=now,
        )
    )
    session.flush()


async def _replayed(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Replay)
    headers = {"Idempotent-Replayed": "true"}
    if exc.etag is not None:
        headers["ETag"] = exc.etag
    return JSONResponse(exc.body, status_code=exc.status, headers=headers)


def install_replay_handler(app: FastAPI) -> None:
    app.add_exception_handler(Replay, _replayed)
