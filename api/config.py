"""What the control plane is configured with: one frozen value, passed to the app factory.

The API defines the configuration it needs and nothing more, and takes it as an argument:
``gpufair serve`` builds it from the settings (:func:`gpufair.compose.api_config`), tests
build it the same way from settings of their own. Every field is required — the defaults are
the settings', and a second copy here could drift from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from allocator import Objective, SolveOptions


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    version: str  # the API's version, shown in its OpenAPI document
    database_url: str  # SQLAlchemy URL
    database_echo: bool  # log every SQL statement
    database_pool_size: int  # requests using the database at once (api.db's gate)
    database_wait_timeout_s: float  # longest wait for the gate, a connection or a lock: 503
    host: str  # where `gpufair serve` listens
    port: int
    admin_token: str  # bearer token of the admin routes
    # The token the docs publish for development: honoured only in dev_mode, so a deployment
    # that forgot to set its own admin token is not open to anyone who read the docs.
    development_admin_token: str
    dev_mode: bool  # also: an empty SQLite is upgraded on start
    max_body_bytes: int  # larger request bodies get 413
    # The sandbox an uploaded artifact is loaded in before it is accepted (api.artifact_check).
    artifact_check_memory_mb: int
    artifact_check_timeout_s: float
    max_long_poll_s: float  # longest ?wait=S a node may ask for
    # failed credentials one client address may present per minute before it gets 429
    failed_credentials_per_minute: int
    solve_interval_s: float  # scheduled re-solve period; 0: only on request
    sla_history_s: float  # how long heartbeats' SLA samples are kept
    solve_options: SolveOptions  # how every solve runs; its objective is the snapshot's
    default_objective: Objective  # the objective of a solve whose request names none
