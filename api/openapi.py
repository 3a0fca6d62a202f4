"""The OpenAPI document, made to say what the API does: its error envelope and every status.

FastAPI documents the success reply of each operation from its return type, and a validation
error as ``{"detail": …}``; the API answers every error as ``{"error": {"code", "message",
"field"}}`` (:mod:`api.errors`). So the document is completed here, in one place, from what
each operation is:

- every operation that takes a token may answer 401 (no, an unknown, revoked or expired
  token), 403 (another role's token), 429 (too many failed credentials from the address) and
  503 (the database is busy or down);
- one with a path parameter, 404 (absent, or not the caller's); one with a body, 400 (not
  readable as its content type) and 413; one with
  any parameter or body, 422 — each with the error envelope, FastAPI's ``{"detail"}`` schema
  removed;
- the statuses only some operations have (409, 412, 428, 500, ...) are declared on the route
  itself with :func:`errors`.

Each operation also gets an example request and reply, recorded from a real run of the API
(:data:`EXAMPLES_PATH`, kept current by tests/api/test_openapi_examples.py).

``tests/api/test_schemathesis.py`` holds the document to the replies: no 5xx beyond those
documented, and every status, content type and body as documented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import ErrorBody

DESCRIPTIONS = {
    400: "the body could not be read as its content type says (`bad_request`)",
    401: "no token, or one nobody issued, or revoked, or expired (`unauthorized`)",
    403: "a valid token of another role (`forbidden`)",
    404: "absent, or not visible to the caller (`not_found`)",
    409: "conflicts with what is stored (`conflict`)",
    412: "If-Match names an older revision (`stale_etag`)",
    413: "the body is over settings.api.max_body_bytes (`too_large`)",
    422: "a parameter, header or body field is invalid; `field` names it (`invalid`)",
    428: "a change to a shared object without If-Match (`etag_required`)",
    429: "too many failed credentials from this address; Retry-After says when (`rate_limited`)",
    500: "the allocator's certificate failed its own checker; nothing stored "
    "(`allocation_rejected`)",
    503: "the database is busy or unreachable, or the solver found nothing in time; "
    "Retry-After says when to retry (`unavailable`, `solver_failed`)",
}
_REF = "#/components/schemas/ErrorBody"
# Per operation ("GET /v1/tenants/{tenant}"), a request body and the success reply a real run of
# the API gave (recorded by tests/api/test_openapi_examples.py, which keeps them current).
EXAMPLES_PATH = Path(__file__).with_name("openapi_examples.json")
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def errors(*statuses: int, **why: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route for these error statuses (``why`` overrides a description by
    status, e.g. ``s409="the name is taken"``)."""
    return {
        status: {"model": ErrorBody, "description": why.get(f"s{status}", DESCRIPTIONS[status])}
        for status in statuses
    }


def _error(status: int) -> dict[str, Any]:
    return {
        "description": DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": _REF}}},
    }


def _complete(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in ErrorBody.model_json_schema(
        ref_template="#/components/schemas/{model}"
    ).pop("$defs", {}).items():
        schemas.setdefault(name, schema)
    schemas.setdefault(
        "ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for path, item in document["paths"].items():
        for operation in item.values():
            responses = operation["responses"]
            implied: list[int] = []
            if operation.get("security"):
                implied += [401, 403, 429, 503]
            if "{" in path:
                implied.append(404)
            if "requestBody" in operation:
                implied += [400, 413, 422]
            if operation.get("parameters"):
                implied.append(422)
            for status in implied:
                responses.setdefault(str(status), _error(status))
            if "422" in responses and "HTTPValidationError" in str(responses["422"]):
                responses["422"] = _error(422)
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    _add_examples(document)
    return document


def _add_examples(document: dict[str, Any]) -> None:
    examples = json.loads(EXAMPLES_PATH.read_text()) if EXAMPLES_PATH.exists() else {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            example = examples.get(f"{method.upper()} {path}", {})
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and "request" in example:
                body["example"] = example["request"]
            for status, reply in operation["responses"].items():
                content = reply.get("content", {}).get("application/json")
                if status.startswith("2") and content is not None and "reply" in example:
                    content["example"] = example["reply"]


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) the completed document, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
