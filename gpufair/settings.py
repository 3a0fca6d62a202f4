"""The one typed settings tree of gpufair.

Settings come from ``config.toml`` (the file named by ``GPUFAIR_CONFIG``, else ``./config.toml``
when it exists) and are overridden by environment variables ``GPUFAIR_<SECTION>_<KEY>``, for
instance ``GPUFAIR_DATABASE_URL`` or ``GPUFAIR_ALLOCATOR_TIME_LIMIT_S``. Every field is typed
and bounded, so a bad value fails at start-up with the offending key and value named, rather
than deep inside a request. Nothing here is read at import time: callers ask for
:func:`load_settings` and pass the result down (the API's app factory, the executor daemon, the
commands), which lets tests build settings of their own.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "GPUFAIR_"
DEFAULT_CONFIG_FILE = Path("config.toml")
DEVELOPMENT_ADMIN_TOKEN = "dev-admin-token"
# GPUFAIR_* variables that are not settings: the config file's name, and secrets that are passed
# to one command only (a node's token is per node, so it is no setting of the shared tree).
NOT_SETTINGS = frozenset({"GPUFAIR_CONFIG", "GPUFAIR_EXECUTOR_TOKEN"})


class SettingsError(ValueError):
    """The configuration file or an environment override is invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    # SQLAlchemy URL; the embedded default is a SQLite file under ./var/.
    url: str = "sqlite:///var/gpufair.db"
    # Log every SQL statement (debugging only).
    echo: bool = False


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # Bearer token for admin routes. The development default is refused unless dev_mode is on.
    admin_token: str = DEVELOPMENT_ADMIN_TOKEN
    # Development mode accepts the default admin token and upgrades an empty SQLite on start.
    dev_mode: bool = True
    # Requests with a larger body are refused with 413.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Longest long-poll a node may ask for with ?wait=S.
    max_long_poll_s: float = Field(default=30.0, gt=0, le=300)
    # Re-solve the allocation on this period (0 = only on request).
    solve_interval_s: float = Field(default=0.0, ge=0)
    # How long the SLA samples that heartbeats carry are kept (the dashboard's attainment
    # history); older ones are pruned as new ones arrive. At most 90 days.
    sla_history_s: float = Field(default=86400.0, ge=60, le=90 * 86400)


class AllocatorSettings(_Section):
    # MILP backend: HiGHS through highspy (default) or CBC as shipped with PuLP.
    solver: Literal["highs", "cbc"] = "highs"
    # Wall-clock limit of one MILP solve; on expiry the best certified solution is returned.
    time_limit_s: float = Field(default=8.0, gt=0, le=3600)
    # Relative MIP gap at which the solver may stop.
    gap: float = Field(default=1e-4, ge=0, le=1)
    objective: Literal["utilitarian", "nash", "egalitarian"] = "utilitarian"
    # Maximum number of seat moves from the previous plan (None = unbounded).
    churn_limit: int | None = Field(default=None, ge=0)


class ExecutorSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=9090, ge=1, le=65535)
    # Torch device kind to serve on; "auto" picks CUDA when present.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Bound on queued queries per session group; beyond it queries get 429.
    max_queue: int = Field(default=256, ge=1)
    # Longest a small query waits for others to batch with.
    batch_max_delay_ms: float = Field(default=2.0, ge=0, le=1000)
    # Candidate rows per batch; larger queries are split across the group's sessions.
    max_batch_candidates: int = Field(default=512, ge=1)
    # Seconds between heartbeats to the API.
    heartbeat_s: float = Field(default=5.0, gt=0)
    # Seconds a plan swap may wait for in-flight queries to drain.
    drain_timeout_s: float = Field(default=30.0, gt=0)
    # API mode: where the last applied plan (and the artifact cache) survives a restart;
    # unset: ./var/executor/<node>.
    state_dir: Path | None = None
    # A profile file written by `gpufair profile`; its curves are uploaded with every plan.
    profiles_path: Path | None = None


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    api: ApiSettings = ApiSettings()
    allocator: AllocatorSettings = AllocatorSettings()
    executor: ExecutorSettings = ExecutorSettings()


def _environment_overrides(environ: dict[str, str]) -> dict[str, dict[str, str]]:
    """Map ``GPUFAIR_<SECTION>_<KEY>`` variables onto the settings tree."""
    sections = set(Settings.model_fields)
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section not in sections or not key:
            continue
        overrides.setdefault(section, {})[key] = value
    return overrides


def _merge(base: dict[str, Any], overrides: dict[str, dict[str, str]]) -> dict[str, Any]:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


def load_settings(
    config_file: Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read settings from the config file and the environment; raise SettingsError if invalid."""
    environ = dict(os.environ) if environ is None else environ
    if config_file is None:
        named = environ.get("GPUFAIR_CONFIG")
        config_file = Path(named) if named else DEFAULT_CONFIG_FILE
        required = named is not None
    else:
        required = True
    data: dict[str, Any] = {}
    if config_file.exists():
        try:
            data = tomllib.loads(config_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{config_file}: invalid TOML: {exc}") from exc
    elif required:
        raise SettingsError(f"config file {config_file} does not exist")
    try:
        return Settings.model_validate(_merge(data, _environment_overrides(environ)))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SettingsError(
            f"{config_file} / GPUFAIR_*: setting {where}={first.get('input')!r}: {first['msg']}"
        ) from exc
