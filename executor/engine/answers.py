"""How each error a request can meet is answered: its HTTP status and its metrics outcome.

One table for every route, every stage (routing, the check before the body is read, parsing,
submit, the wait for the scores) and every process: the engine counts outcomes from it
(:mod:`executor.engine.core`), the fronts answer statuses from it (:mod:`executor.daemon`), so
that a condition is answered and counted the same wherever it is detected. Looked up along the
error's class hierarchy.
"""

from __future__ import annotations

from executor.scheduling.errors import (
    DeadlineExceeded,
    GroupClosed,
    ModelFailed,
    ModelUnavailable,
    NotPermitted,
    Overloaded,
    Unauthenticated,
    UnknownModel,
)

# error class -> (HTTP status, outcome in the metrics; None: not counted, as the request found
# no replica that could judge it)
ERROR_ANSWERS: dict[type[Exception], tuple[int, str | None]] = {
    # Not the model's tenant's queries, so not counted against it (executor.credentials).
    Unauthenticated: (401, None),
    NotPermitted: (403, None),
    UnknownModel: (404, None),
    ModelUnavailable: (503, None),
    # A replica drained for a plan swap hands its queries to the new plan: what reaches the
    # client is a replica closed for the node's shutdown.
    GroupClosed: (503, None),
    Overloaded: (429, "rejected"),
    DeadlineExceeded: (504, "expired"),
    ModelFailed: (500, "failed"),
    ValueError: (400, "invalid"),  # the body is no query of the model (codec.QueryError)
}


def answer_of(exc: Exception) -> tuple[int, str | None]:
    """The status and outcome of ``exc`` (an instance of one of the table's classes)."""
    return next(ERROR_ANSWERS[k] for k in type(exc).__mro__ if k in ERROR_ANSWERS)
