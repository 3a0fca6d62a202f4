"""``gpufair serve``: run the control plane's REST API with uvicorn.

Before serving, the schema must be at the code's head revision: an empty SQLite database is
upgraded on first start in development mode; anything else behind makes the command stop with
one line naming ``gpufair db upgrade``. Outside development mode the development admin token is
refused, so a deployment cannot start open to anyone who read the docs.

With ``--workers N`` (settings ``api.workers``) N processes serve the one port, each an app of
its own over the shared database: one Python process spends at most a core (the GIL), so a
control plane on PostgreSQL serves about N times the requests on N cores. What the processes
share lives in the database (allocations, the solve lock, idempotency keys); what each keeps
for itself is a cache or a counter: its rendered plans (checked against the stored version on
every request), its failed-credential counts (the limit applies per process), and its metrics,
which ``/metrics`` combines over all of them (:mod:`api.metrics`). A plan one process stores
wakes the long-polls the others hold within a second (:mod:`api.services.plans`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from api.errors import SchemaNotReady
from api.metrics import MULTIPROCESS_DIR_ENV
from gpufair.cli import LOG_FORMAT
from gpufair.compose import api_config
from gpufair.inputs import port_number
from gpufair.settings import SettingsError, load_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from api.config import ApiConfig

log = logging.getLogger(__name__)
# On SIGTERM, how long requests in progress may finish before they are cut. A long-poll held
# then (plans, credentials, routes: up to 30 s) kept the process up for its whole wait, the
# pod's whole grace period; a request cut short is retried by its client (daemons and routers
# retry their long-polls, a solve is idempotent with its Idempotency-Key). Above the allocator's
# default time limit (8 s), so that a solve under way usually finishes.
GRACEFUL_SHUTDOWN_S = 10
MAX_WORKERS = 64
# Alembic announces each of its plugins at INFO; only its migration steps are worth a line.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def dashboard_sign_in(base_url: str, admin_token: str | None) -> str:
    """Where the dashboard is and how to sign in to it, in one line for the console.

    The dashboard's form takes the admin token in a POST body (never in a URL, where it would
    land in access logs), so the line names the token to type: the development token itself
    (``admin_token``), or — for a token the operator set, which is never echoed — its setting.
    """
    if admin_token is None:
        return f"{base_url}/ (sign in with the admin token, GPUFAIR_API_ADMIN_TOKEN)"
    return f"{base_url}/ (sign in with the token {admin_token})"


def freeze_startup_objects() -> None:
    """Take everything the server built before serving out of the garbage collector's sight.

    The modules, the app and its routes are some hundred thousand objects that live as long as
    the process; every full collection walked them all, a pause of 50-150 ms on a loaded
    2-core machine that stalled every request in flight (the mixed-load benchmark's p99).
    Frozen, they are never traversed again; what requests allocate is collected as before.
    """
    gc.collect()
    gc.freeze()


# How long a thread holding the GIL runs before a waiting one may take it (CPython's default is
# 5 ms); see shorten_gil_turns.
GIL_SWITCH_INTERVAL_S = 0.001


def shorten_gil_turns() -> None:
    """Let a thread that wants the GIL have it after 1 ms of another's pure-Python work, not 5.

    A solve's model building and checks run for a few hundred milliseconds in a worker thread
    without giving up the GIL; every request meanwhile needs it several times (the event loop,
    then each worker-thread hop), and each time waited up to the switch interval behind the
    solve, so reads in flight during a solve took tens of milliseconds longer (the mixed-load
    benchmark's p99 on SQLite: 105-135 ms before, 57-88 ms after, on this 2-core VM). The cost
    is more frequent switches, which only happen while two threads want the GIL at once.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpufair serve", description="Run the control plane's REST API with uvicorn."
    )
    parser.add_argument(
        "--host",
        help="address to listen on; \"\" or 0.0.0.0 for every interface (default: settings "
        "api.host)",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        help="port to listen on, 1 to 65535 (default: settings api.port)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.add_argument("--no-access-log", action="store_true", help="do not log every request")
    parser.add_argument(
        "--workers",
        type=int,
        help="API processes serving the port (default: settings api.workers, 1); one per core "
        "for a busy control plane on PostgreSQL",
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.stderr.write(f"gpufair serve: {exc}\n")
        return 2
    config = api_config(settings)
    workers = settings.api.workers if args.workers is None else args.workers
    if not 1 <= workers <= MAX_WORKERS:
        sys.stderr.write(f"gpufair serve: --workers must be 1 to {MAX_WORKERS}, got {workers}\n")
        return 2
    development_token = config.admin_token == config.development_admin_token
    if development_token and not config.dev_mode:
        sys.stderr.write(
            "gpufair serve: the development admin token is refused outside dev_mode; "
            "set GPUFAIR_API_ADMIN_TOKEN\n"
        )
        return 1
    import uvicorn

    from api.app import ensure_schema

    try:
        ensure_schema(config)
    except SchemaNotReady as exc:
        sys.stderr.write(f"gpufair serve: {exc}\n")
        return 1
    except SQLAlchemyError as exc:
        sys.stderr.write(f"gpufair serve: database error: {str(exc).splitlines()[0]}\n")
        return 1
    if config.dev_mode and development_token:
        log.warning("development mode: the development admin token is accepted")
    host = args.host if args.host is not None else config.host  # "": every interface
    port = args.port if args.port is not None else config.port
    shown = config.admin_token if development_token else None  # never echo a real secret
    base_url = f"http://{host or '0.0.0.0'}:{port}"
    sign_in = dashboard_sign_in(base_url, shown)
    # A line each, the address last, so a terminal's link detection takes it whole.
    print(f"gpufair serve: dashboard {sign_in}", flush=True)
    print(f"gpufair serve: API docs {base_url}/docs", flush=True)
    served: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": args.log_level,
        "access_log": not args.no_access_log,
        # No "server: uvicorn" banner: what runs behind the API is nobody's business.
        "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    }
    if workers > 1:
        _serve_in_processes(workers, served)
        return 0
    uvicorn.run(serving_app(config), **served)
    return 0


def serving_app(config: ApiConfig) -> FastAPI:
    """The app one serving process runs, its start-up objects frozen and its GIL turns short."""
    from api.app import create_app

    app = create_app(config)
    freeze_startup_objects()
    shorten_gil_turns()
    return app


def worker_app() -> FastAPI:
    """The app factory each of ``--workers`` processes calls: the settings read again from the
    same environment and configuration file as the parent, which checked them and the schema."""
    return serving_app(api_config(load_settings()))


def _serve_in_processes(workers: int, served: dict[str, Any]) -> None:
    """Serve the port from ``workers`` processes, their metrics in a fresh directory they
    share (removed when they stop), their log lines formatted like this process's."""
    import uvicorn

    metrics_dir = tempfile.mkdtemp(prefix="gpufair-metrics-")
    os.environ[MULTIPROCESS_DIR_ENV] = metrics_dir
    log.info("serving with %d processes", workers)
    try:
        uvicorn.run(
            f"{__name__}:worker_app",
            factory=True,
            workers=workers,
            log_config=_worker_logging(),
            **served,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker_logging() -> dict[str, Any]:
    """The logging this process was given (gpufair.cli), as the configuration uvicorn applies
    in each worker process, which starts with none."""
    root = logging.getLogger()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gpufair": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "gpufair",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": logging.getLevelName(root.level), "handlers": ["stderr"]},
    }
