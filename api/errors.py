"""The control plane's one error tree and its one JSON shape.

Services raise these exceptions; the app's handlers (:func:`install_error_handlers`) turn them,
FastAPI's validation errors and Starlette's routing errors into one body,
``{"error": {"code": ..., "message": ..., "field": ...}}``, so a client parses every failure the
same way and a bad input never reaches the client as a 500 or a traceback::

    ApiError                       (status, code)
    ├── InvalidInput   ValueError  422 invalid        a field is wrong; ``field`` names it
    ├── Unauthorized               401 unauthorized   no credentials, or unknown ones
    ├── Forbidden                  403 forbidden      valid credentials of the wrong role
    ├── NotFound       LookupError 404 not_found      absent, or not visible to the caller
    ├── Conflict                   409 conflict       a unique name is taken; nothing to solve
    │   └── SnapshotChanged        409 conflict       tenants or models changed during every
    │                                                 solve of the request; nothing was stored
    ├── PreconditionFailed         412 stale_etag     If-Match names an old revision
    ├── PayloadTooLarge            413 too_large      body over settings.api.max_body_bytes
    ├── PreconditionRequired       428 etag_required  a change to a shared object without If-Match
    ├── TooManyRequests            429 rate_limited   too many failed credentials; Retry-After
    ├── AllocationRejected         500 allocation_rejected
    │                                  the allocator's certificate failed its own checker;
    │                                  nothing was stored (a defect, never the caller's fault)
    ├── SolverFailed               503 solver_failed
    │                                  the MILP solver found nothing usable in its time limit
    └── Unavailable                503 unavailable    the database is busy or down: no connection
                                       or lock within settings.database.wait_timeout_s;
                                       Retry-After says when to try again

``SchemaNotReady`` is not an HTTP error: ``gpufair serve`` raises it at start-up when the
database schema is behind the code's migrations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Base of every error the API reports to a client."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class InvalidInput(ApiError, ValueError):
    status = 422
    code = "invalid"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError, LookupError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class SnapshotChanged(Conflict):
    """A tenant or model of the solve's snapshot was deleted or changed before its allocation
    could be stored (api.services.allocations): the allocation would seat what is gone."""


class PreconditionFailed(ApiError):
    status = 412
    code = "stale_etag"


class PayloadTooLarge(ApiError):
    status = 413
    code = "too_large"


class PreconditionRequired(ApiError):
    status = 428
    code = "etag_required"


class TooManyRequests(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AllocationRejected(ApiError):
    status = 500
    code = "allocation_rejected"


class SolverFailed(ApiError):
    status = 503
    code = "solver_failed"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SchemaNotReady(RuntimeError):
    """The database schema is not at the code's head revision."""


def error_response(exc: ApiError) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, Unavailable | TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _field_of(loc: Sequence[Any]) -> str:
    """``("body", "devices", 0, "seats")`` -> ``"devices[0].seats"``; keeps the location kind
    for query, path and header parameters so a client knows where to look."""
    parts = list(loc)
    prefix = ""
    if parts and parts[0] == "body":
        parts = parts[1:]
    elif parts and parts[0] in ("query", "path", "header"):
        prefix = f"{parts.pop(0)}."
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return prefix + text if text else (prefix.rstrip(".") or "body")


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.status >= 500:
        log.error("%s: %s", exc.code, exc.message)
    return error_response(exc)


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _reason(request: Request, error: dict[str, Any]) -> str:
    """What is wrong, in words a client can act on: where a JSON syntax error is, and that a
    body sent as another content type than JSON was not read as JSON at all (pydantic says
    only that it is not an object)."""
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid":
        syntax = error.get("ctx", {}).get("error", "invalid JSON")
        return f"{message}: {syntax} at character {error.get('loc', ('body', '?'))[-1]}"
    content_type = request.headers.get("content-type")
    if (
        tuple(error.get("loc", ())) == ("body",)
        and error.get("type") == "model_attributes_type"
        and content_type is not None
        and not _is_json(content_type)
    ):
        return f"expected a JSON object sent as Content-Type: application/json, got {content_type}"
    return message


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    # A JSON syntax error's location is a character offset, not a field.
    loc = ("body",) if first.get("type") == "json_invalid" else first.get("loc", ("body",))
    field = _field_of(loc)
    message = f"{field}: {_reason(request, first)}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response(InvalidInput(message, field=field))


def _unreadable_body(cause: BaseException | None) -> ApiError | None:
    """Why a JSON body could not be parsed, where FastAPI answers only "There was an error
    parsing the body": bytes that are not UTF-8, nesting deeper than the parser recurses, an
    integer longer than Python converts. None for any other cause."""
    if isinstance(cause, UnicodeDecodeError):
        reason = f"not UTF-8 (byte {cause.object[cause.start]:#04x} at offset {cause.start})"
    elif isinstance(cause, RecursionError):
        reason = "arrays or objects nested too deeply"
    elif isinstance(cause, ValueError):
        # "Exceeds the limit (4300 digits) for integer string conversion: ...; use sys...."
        reason = str(cause).split(";", 1)[0]
    else:
        return None
    return ApiError(f"body: not readable as JSON: {reason}", field="body")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    unreadable = _unreadable_body(exc.__cause__) if exc.status_code == 400 else None
    if unreadable is not None:
        return error_response(unreadable)
    codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
    body = {"error": {"code": codes.get(exc.status_code, "http_error"), "message": exc.detail}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """No connection within the pool's timeout, SQLite's write lock not granted within its busy
    timeout, or the server unreachable: the request did nothing, and may be retried."""
    log.warning("database unavailable: %s", str(exc).splitlines()[0])
    return error_response(Unavailable("the database is busy or unreachable; retry shortly"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
