"""The one typed settings tree of gpufair, and the only place where setting defaults live.

Settings come from ``config.toml`` (the file named by ``GPUFAIR_CONFIG``, else ``./config.toml``
when it exists) and are overridden by environment variables ``GPUFAIR_<SECTION>_<KEY>``, for
instance ``GPUFAIR_DATABASE_URL`` or ``GPUFAIR_ALLOCATOR_TIME_LIMIT_S``. Every field is typed
and bounded, so a bad value fails at start-up with the offending key and value named, rather
than deep inside a request. Nothing here is read at import time, and building a
:class:`Settings` reads nothing either: callers ask for :func:`load_settings`, and
:mod:`gpufair.compose` turns the result into each part's own configuration, which lets tests
build settings of their own.

This module sits at the bottom of the project: it imports none of it, so every part's
configuration type can be checked against it (tests/gpufair/test_settings.py) without a cycle.
The overlay of file and environment is pydantic-settings': its TOML source reads the file, and
its environment source maps ``GPUFAIR_<SECTION>_<KEY>`` onto ``section.key`` (``_`` is the nested
delimiter, split once, since keys contain ``_`` themselves). The one custom piece is the
environment source's input: the mapping a caller passes, less :data:`NOT_SETTINGS`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "GPUFAIR_"
DEFAULT_CONFIG_FILE = Path("config.toml")
DEVELOPMENT_ADMIN_TOKEN = "dev-admin-token"
# GPUFAIR_* variables that are not settings: the config file's name, and secrets that are passed
# to one command only (a node's token is per node, so it is no setting of the shared tree; the
# gateway's token is the admin token, which only `gpufair gateway` reads under this name).
NOT_SETTINGS = frozenset({"GPUFAIR_CONFIG", "GPUFAIR_EXECUTOR_TOKEN", "GPUFAIR_GATEWAY_TOKEN"})
# The most front processes of an executor, as setting and as `gpufair executor --fronts`.
MAX_FRONTS = 64


class SettingsError(ValueError):
    """The configuration file or an environment override is invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    # SQLAlchemy URL; the embedded default is a SQLite file under ./var/.
    url: str = "sqlite:///var/gpufair.db"
    # Log every SQL statement (debugging only).
    echo: bool = False
    # Requests of one API process that use the database at once (and its pooled connections
    # for them); further ones wait their turn.
    pool_size: int = Field(default=16, ge=1, le=32)
    # Longest a request waits for its turn, a connection or SQLite's write lock; then 503 with
    # Retry-After.
    wait_timeout_s: float = Field(default=5.0, gt=0, le=60)


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # API processes serving the port (`gpufair serve --workers`): one Python process spends a
    # core at most, so a busy control plane on PostgreSQL wants one per core.
    workers: int = Field(default=1, ge=1, le=64)
    # Bearer token for admin routes. The development default is refused unless dev_mode is on.
    admin_token: str = DEVELOPMENT_ADMIN_TOKEN
    # Development mode accepts the default admin token and upgrades an empty SQLite on start.
    dev_mode: bool = True
    # Requests with a larger body are refused with 413.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # An uploaded TorchScript artifact is loaded and probed in a child process with this much
    # address space and this much time before it is accepted; beyond either it is refused.
    artifact_check_memory_mb: int = Field(default=2048, ge=1024, le=65536)
    artifact_check_timeout_s: float = Field(default=60.0, ge=5, le=600)
    # Longest long-poll a node may ask for with ?wait=S.
    max_long_poll_s: float = Field(default=30.0, gt=0, le=300)
    # Unknown, revoked or expired tokens one client address may present per minute; beyond,
    # every request of it that presents a token gets 429 until a minute has passed.
    failed_credentials_per_minute: int = Field(default=30, ge=1, le=100_000)
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
    # MiB of model weights a plan may place on one device (0: the device's free memory less
    # a 10 % reserve); a plan beyond it is refused and the refusal reported in the heartbeat.
    memory_limit_mb: float = Field(default=0.0, ge=0)
    # API mode: where the last applied plan (and the artifact cache) survives a restart;
    # unset: ./var/executor/<node>.
    state_dir: Path | None = None
    # A profile file written by `gpufair profile`; its curves are uploaded with every plan.
    profiles_path: Path | None = None
    # Front processes that accept, admit, read and parse requests for the engine process;
    # 0: one per 8 cores of the node, at least one.
    fronts: int = Field(default=0, ge=0, le=MAX_FRONTS)


class Settings(BaseSettings):
    """The whole tree. ``Settings(...)`` is a plain value — the defaults, with the sections
    given as arguments in their place — and reads neither file nor environment; only
    :func:`load_settings` does, with sources of its own."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        # GPUFAIR_ALLOCATOR_TIME_LIMIT_S is allocator.time_limit_s: split off the section only.
        env_nested_delimiter="_",
        env_nested_max_split=1,
        # A value is one key's plain string, never JSON: a whole section in one variable
        # (GPUFAIR_API='{"port": 1}') is refused like any other value of the wrong type.
        enable_decoding=False,
    )

    database: DatabaseSettings = DatabaseSettings()
    api: ApiSettings = ApiSettings()
    allocator: AllocatorSettings = AllocatorSettings()
    executor: ExecutorSettings = ExecutorSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the arguments: a test's Settings(...) must not pick up the developer's
        # GPUFAIR_* variables. load_settings passes the file and the environment explicitly.
        return (init_settings,)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over the mapping given to :func:`load_settings`
    (callers and tests pass theirs, not only ``os.environ``), without :data:`NOT_SETTINGS`.

    A variable of a known section whose key is no setting stays in, so that ``extra="forbid"``
    refuses it (a typo must not be ignored); variables of other sections are not read.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        # Set before the base class's __init__, which loads the variables through the hook below.
        self._environ = {name: value for name, value in environ.items() if name not in NOT_SETTINGS}
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Names are matched lower-cased, as the base class does: Settings is case-insensitive.
        return {name.lower(): value for name, value in self._environ.items()}


def load_settings(
    config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from the config file and the environment (which wins); raise SettingsError
    with one line naming the key and value if one is invalid."""
    environ = os.environ if environ is None else environ
    if config_file is None:
        named = environ.get("GPUFAIR_CONFIG")
        config_file = Path(named) if named else DEFAULT_CONFIG_FILE
        required = named is not None
    else:
        required = True
    if required and not config_file.exists():
        raise SettingsError(f"config file {config_file} does not exist")
    # The TOML source skips what is not a file; a directory named as the config would leave
    # every setting at its default without a word.
    if config_file.is_dir():
        raise SettingsError(f"config file {config_file} is a directory")
    try:
        # A missing default config.toml reads as empty: the defaults hold.
        file = TomlConfigSettingsSource(Settings, toml_file=config_file)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{config_file}: invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"{config_file}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start})"
        ) from None
    except OSError as exc:
        raise SettingsError(f"{config_file}: cannot read: {exc.strerror or exc}") from exc
    try:
        # Sources in priority order: the environment beats the file.
        return Settings(_build_sources=((_Environment(environ), file), {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SettingsError(
            f"{config_file} / {ENV_PREFIX}*: setting {where}={first.get('input')!r}: {first['msg']}"
        ) from exc
