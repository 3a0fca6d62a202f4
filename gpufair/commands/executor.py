"""``gpufair executor``: run one node's serving daemon from a plan file or from the API.

Standalone: ``gpufair executor --plan PLAN.json [--host H] [--port N]`` serves the plan in the
file (a bad file ends with one line on stderr and exit status 2). API mode:
``gpufair executor --api URL --node NAME --token T`` long-polls the node's plan and sends
heartbeats (:mod:`executor.plan_client`); if the API goes away the last plan keeps serving.
Each applied plan is saved in ``--state-dir`` (default ``./var/executor/NAME``) and served
again at the next start before the API is asked; with no saved plan ``/healthz`` answers 503
until the first plan arrives. ``--profiles FILE`` (written by ``gpufair profile``) uploads the
file's throughput curves for the models of every applied plan; a bad file ends with one line
on stderr and exit status 2.

The daemon is one engine process (this one: the devices, the session groups, the fair
scheduler, the plan client) and ``--fronts`` front processes that accept connections on the
listening socket, admit, read and parse requests and hand the queries over in shared memory
(docs/executor.md, "Fronts and the engine"). SIGINT or SIGTERM stops the fronts, then drains
the engine. A front that exits is started again; fronts exiting more than 5 times within a
minute stop the daemon (exit status 1), so its supervisor sees a failing node.

A plan whose replicas do not fit a device's memory (``executor.memory_limit_mb``, else the
device's free memory less a reserve) is refused before anything loads: standalone, one line
on stderr and exit status 1; in API mode the last plan serves on and the heartbeat reports
the refusal.

``--backend fake`` serves every replica with :class:`executor.fake.FakeBackend` (no torch:
for trying the HTTP surface and the scheduler, or simulating a GPU as ``gpufair demo`` does);
``--fake-row-us`` and ``--fake-batch-us`` set its service time per candidate row and per batch.
Data-plane credentials (:mod:`executor.credentials`): in API mode every query must carry a key
of its model's tenant (``Authorization: Bearer <key>``), checked against the credential
document the daemon long-polls beside its plan (401 without one, 403 for another tenant's or a
revoked key); the heartbeat advertises ``--advertise-url`` (default ``http://HOST:PORT``, the
machine's name for a wildcard host) for the routing table (``GET /v1/routes``) that
``gpufair gateway`` and :mod:`gpufair.client` route by. Standalone, with no API to learn keys
from, the daemon answers every query and logs a warning saying so.

``--device cpu`` maps every device of the plan onto the CPU, so a GPU node's plan can be tried
on a laptop; ``--device cuda`` (or the setting) on a node without CUDA ends with one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from allocator.cluster.plan import NodePlan, PlanError
from executor.wire.heartbeat import ADVERTISED_URL, MAX_URL_CHARS
from executor.wire.names import InvalidNameError, validate_node_name
from gpufair.compose import front_count, scheduler_config
from gpufair.inputs import InputError, port_number, read_text, whole_number
from gpufair.settings import MAX_FRONTS, SettingsError, load_settings

if TYPE_CHECKING:
    from executor.plan_client import PlanClient

log = logging.getLogger(__name__)

# A node's state lives in DEFAULT_STATE_ROOT / NODE: executor.wire.names keeps the name one
# safe directory name as well as one the API registers.
DEFAULT_STATE_ROOT = Path("var/executor")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufair executor", description="Run one node's serving daemon."
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--plan", type=Path, help="node plan JSON file (standalone mode)")
    source.add_argument("--api", help="control-plane URL to pull the plan from (API mode)")
    p.add_argument("--node", help="this node's name (API mode)")
    p.add_argument(
        "--token",
        default=os.environ.get("GPUFAIR_EXECUTOR_TOKEN"),
        help="node token for the API (default: $GPUFAIR_EXECUTOR_TOKEN)",
    )
    p.add_argument(
        "--host",
        help="address to listen on; \"\" or 0.0.0.0 for every interface (default: settings "
        "executor.host)",
    )
    p.add_argument(
        "--port",
        type=port_number,
        help="port to listen on, 1 to 65535 (default: settings executor.port)",
    )
    p.add_argument(
        "--advertise-url",
        type=advertised_url,
        help="API mode: the URL routers and clients reach this daemon at, http(s)://HOST:PORT "
        "with no path, sent with every heartbeat (default: http://HOST:PORT, the machine's "
        "name for a wildcard HOST)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="cpu: run every device of the plan on the CPU; cuda: on this node's CUDA devices, "
        "refused where there are none (default: settings executor.device)",
    )
    p.add_argument(
        "--fronts",
        type=whole_number(0, MAX_FRONTS),
        help=f"front processes that accept, read and parse requests, 0 to {MAX_FRONTS} (default: "
        "settings executor.fronts; 0: one per 8 cores, at least one)",
    )
    p.add_argument("--backend", choices=("torch", "fake"), default="torch")
    p.add_argument("--fake-row-us", type=float, default=20.0,
                   help="--backend fake: service time per candidate row, µs (default 20)")
    p.add_argument("--fake-batch-us", type=float, default=200.0,
                   help="--backend fake: service time per batch, µs (default 200)")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="API mode: where the last plan survives restarts (default: settings "
        "executor.state_dir, else ./var/executor/NODE)",
    )
    p.add_argument(
        "--profiles",
        type=Path,
        help="API mode: profile file of `gpufair profile` to upload with every plan "
        "(default: settings executor.profiles_path)",
    )
    return p


def _read_plan(path: Path) -> NodePlan:
    """The plan in the file; InputError or PlanError naming the file if it is unusable."""
    text = read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path}: invalid JSON: {exc}") from exc
    return NodePlan.from_dict(doc)


def _placement(device: str) -> Callable[[str], str]:
    """Plan device -> backend device: everything on the CPU when CUDA is absent or refused.
    ModelLoadError when ``device`` is ``cuda`` and the node has no CUDA device."""
    from executor.runtime import select_device

    use_cuda = select_device(device).type == "cuda"
    if device == "auto" and not use_cuda:
        log.info("no CUDA device: every device of the plan runs on the CPU")
    if use_cuda:
        return lambda name: name
    return lambda name: name if name.startswith("cpu") else "cpu:0"


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.stderr.write(f"gpufair executor: {exc}\n")
        return 2
    cfg = settings.executor
    if not (args.fake_row_us >= 0 and args.fake_batch_us >= 0):
        sys.stderr.write("gpufair executor: --fake-row-us and --fake-batch-us must be >= 0\n")
        return 2
    if args.api and not (args.node and args.token):
        sys.stderr.write("gpufair executor: --api needs --node and --token\n")
        return 2
    if args.api:
        try:
            validate_node_name(args.node)
        except InvalidNameError as exc:
            sys.stderr.write(f"gpufair executor: --node: {exc}\n")
            return 2
    plan: NodePlan | None = None
    if args.plan is not None:
        try:
            plan = _read_plan(args.plan)
        except (InputError, PlanError) as exc:
            sys.stderr.write(f"gpufair executor: bad plan: {exc}\n")
            return 2
        if args.state_dir or args.profiles:
            log.warning("--state-dir and --profiles are for API mode; a plan file uses neither")

    from executor.credentials import OPEN, Credentials
    from executor.daemon import DEFAULT_MAX_BODY_BYTES
    from executor.engine.core import EngineCore
    from executor.engine.server import Fronts, FrontsFailing
    from executor.front.process import FrontOptions
    from executor.metrics import ExecutorMetrics
    from executor.plan_client import TOKEN_REJECTED_TRIES, PlanClient
    from executor.profiles import ProfileCurve, ProfileError, read_profiles
    from executor.scheduling import NodeRuntime
    from executor.scheduling.backend import Backend, RuntimeBackend

    profiles: dict[str, ProfileCurve] = {}
    profiles_path = (args.profiles or cfg.profiles_path) if plan is None else None
    if profiles_path is not None:
        try:
            profiles = read_profiles(profiles_path)
        except ProfileError as exc:
            sys.stderr.write(f"gpufair executor: bad profiles: {exc}\n")
            return 2
    backend: Backend
    if args.backend == "fake":
        from executor.fake import FakeBackend

        backend = FakeBackend(row_s=args.fake_row_us * 1e-6, batch_s=args.fake_batch_us * 1e-6)
        place = None
    else:
        from executor.runtime import ModelLoadError, configure_cpu_threads

        device = args.device or cfg.device
        try:
            place = _placement(device)
        except ModelLoadError as exc:
            where = "--device" if args.device else "settings executor.device"
            sys.stderr.write(f"gpufair executor: {where}: {exc}\n")
            return 2
        configure_cpu_threads(1)  # CPU sessions are threads with one intra-op thread each
        backend = RuntimeBackend()
    # A tenant's batches with more of its work queued behind them take only the CPU that the
    # fronts and the other tenants' batches leave (executor.scheduling.device.BackgroundLane).
    config = dataclasses.replace(scheduler_config(cfg), over_share_at_idle_priority=True)
    runtime = NodeRuntime(backend, config, place)
    metrics = ExecutorMetrics(runtime)
    client: PlanClient | None = None
    host = args.host if args.host is not None else cfg.host  # "": every interface
    port = args.port if args.port is not None else cfg.port
    credentials = OPEN
    if plan is not None:
        log.warning("standalone mode: no control plane to learn tenants' keys from, so every "
                    "query is answered, whatever credential it carries")  # fmt: skip
        from executor.scheduling import PlanRefused

        try:
            report = runtime.apply(plan)
        except PlanRefused as exc:
            sys.stderr.write(f"gpufair executor: {exc}\n")
            return 1
        if report is not None and report.broken:
            for model_id, why in report.broken.items():
                log.error("model %s is not served: %s", model_id, why)
    else:
        # httpx logs every request at INFO: a line per long-poll and per heartbeat would bury
        # the log. The plan client logs when the API's answers change instead.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        credentials = Credentials()
        client = PlanClient(
            runtime,
            api_url=args.api,
            node=args.node,
            token=args.token,
            heartbeat_s=cfg.heartbeat_s,
            state_dir=args.state_dir or cfg.state_dir or DEFAULT_STATE_ROOT / args.node,
            profiles=profiles,
            metrics=metrics,
            credentials=credentials,
            advertise_url=args.advertise_url or _advertised(host, port),
        )
        client.resume()  # the saved plan serves at once, whether or not the API answers
        client.start()
    if args.fronts is not None:
        cfg = cfg.model_copy(update={"fronts": args.fronts})
    count = front_count(cfg)
    options = FrontOptions(DEFAULT_MAX_BODY_BYTES, logging.getLogger().getEffectiveLevel())
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if client is not None:
        _stop_when_token_rejected(client, stop)
    try:
        core = EngineCore(runtime, metrics, credentials)
        fronts = Fronts(core, host=host, port=port, count=count, options=options)
    except OSError as exc:
        sys.stderr.write(f"gpufair executor: cannot listen on {host}:{port}: {exc.strerror}\n")
        runtime.close()
        return 2
    try:
        fronts.start()
        log.info("executor listening on http://%s:%d (%d front process(es))", host, port, count)
        fronts.watch(stop)
    except FrontsFailing as exc:
        log.critical("%s", exc)
        sys.stderr.write(f"gpufair executor: {exc}; the daemon stops (its log says why)\n")
        return 1
    finally:
        log.info("executor stopping: the fronts end their requests, then the engine drains")
        fronts.stop()
        if client is not None:
            client.stop()
        runtime.close()
        log.info("executor stopped")
    if client is not None and client.token_rejected.is_set():
        sys.stderr.write(
            f"gpufair executor: token rejected by the API for node {args.node!r} "
            f"{TOKEN_REJECTED_TRIES} times and no plan to serve; check --token\n"
        )
        return 2
    return 0


def advertised_url(text: str) -> str:
    """An --advertise-url as the heartbeat carries it (one trailing slash dropped); one it
    would refuse is refused here, at start, not in every heartbeat while the node stays out of
    the routing table."""
    url = text[:-1] if text.endswith("/") else text
    if len(url) > MAX_URL_CHARS or re.fullmatch(ADVERTISED_URL, url) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give http(s)://HOST:PORT, no path (routers add /v2/models/...), at most "
            f"{MAX_URL_CHARS} characters"
        )
    return url


def _advertised(host: str, port: int) -> str:
    """The URL a daemon listening on ``host``:``port`` is reached at by default."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _stop_when_token_rejected(client: PlanClient, stop: threading.Event) -> None:
    """Stop serving once the API has rejected the node's token with no plan served."""

    def watch() -> None:
        client.token_rejected.wait()
        stop.set()

    threading.Thread(target=watch, name="token-watch", daemon=True).start()
