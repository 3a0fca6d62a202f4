"""The allocator's one exception tree.

Every error the allocator raises on purpose is an :class:`AllocatorError`; callers (the CLI,
the API) catch that one class at their edge and turn it into a one-line message or an HTTP
status. Leaves subclass the nearest builtin so generic handlers still work::

    AllocatorError (Exception)
    ├── InstanceError (ValueError)        the input instance or snapshot is malformed
    ├── AllocationError (ValueError)      an allocation is malformed for its instance
    │                                     (validate_allocation)
    ├── CertificateError                  an allocation's certificate fails: refused
    ├── InfeasibleError                   no allocation meets the side constraints, even with
    │                                     every fairness criterion fully relaxed
    └── SolverError (RuntimeError)        the MILP solver returned no usable solution
        └── SolverTimeoutError (TimeoutError)
                                          the time limit passed before any solution was found
                                          and no certified constructive fallback applies

Documents validated by pydantic models (throughput curves, the certificate document) fail with
pydantic's ValidationError; :func:`first_error` turns one into the one-line message that names
the field, as every hand-written check here does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class AllocatorError(Exception):
    """Base class of every error the allocator raises on purpose."""


class InstanceError(AllocatorError, ValueError):
    """The instance (or cluster snapshot) is malformed; the message names the bad field."""


class AllocationError(AllocatorError, ValueError):
    """An allocation does not fit its instance (incomplete, over-allocated, side constraint)."""


class CertificateError(AllocatorError):
    """An allocation's certificate does not hold; the allocation must not be used."""


class InfeasibleError(AllocatorError):
    """No allocation satisfies the side constraints and the (fully relaxed) criteria."""


class SolverError(AllocatorError, RuntimeError):
    """The MILP solver failed or returned a status that is neither proven nor accepted."""


class SolverTimeoutError(SolverError, TimeoutError):
    """The solver's time limit passed before it found any solution."""


def first_error(exc: ValidationError, where: str) -> str:
    """``where.field[k]: reason`` for the first error of a pydantic validation, one line."""
    first = exc.errors()[0]
    path = where
    for part in first["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return f"{path}: {first['msg'].removeprefix('Value error, ')}"
