"""The scheduling side's one error tree, translated to HTTP status codes at the daemon's edge.

::

    SchedulingError
    ├── UnknownModel        (LookupError)   no replica of the model on this node   → 404
    ├── ModelUnavailable    (RuntimeError)  its artifact failed to load             → 503
    ├── Overloaded          (RuntimeError)  admission refused it; has retry_after_s → 429
    ├── DeadlineExceeded    (TimeoutError)  its deadline passed before it was served → 504
    ├── ModelFailed         (RuntimeError)  the model raised while running its batch → 500
    ├── GroupClosed         (RuntimeError)  internal: the group drains for a plan swap; retried
    ├── Unauthenticated     (PermissionError) no credential, or none is known yet          → 401
    └── NotPermitted        (PermissionError) a credential that is no key of the model's
                                            tenant (executor.credentials)                → 403

    PlanRefused             (ValueError)    a plan's replicas do not fit a device's memory:
                                            no query's error, so outside the tree; the
                                            heartbeat reports it
"""

from __future__ import annotations


class SchedulingError(Exception):
    """Base of every error the scheduler raises or sets on a query's future."""


class UnknownModel(SchedulingError, LookupError):
    pass


class ModelUnavailable(SchedulingError, RuntimeError):
    pass


class Overloaded(SchedulingError, RuntimeError):
    """Admission control refused the query; the client should retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(SchedulingError, TimeoutError):
    pass


class ModelFailed(SchedulingError, RuntimeError):
    pass


class GroupClosed(SchedulingError, RuntimeError):
    pass


class Unauthenticated(SchedulingError, PermissionError):
    pass


class NotPermitted(SchedulingError, PermissionError):
    pass


class PlanRefused(ValueError):
    """A plan version the node will not serve; the message says which device lacks how much."""

    def __init__(self, version: int, reason: str) -> None:
        super().__init__(f"plan version {version} refused: {reason}")
        self.version = version
        self.reason = reason
