"""``gpufair gateway``: one address for every tenant's queries across the nodes' daemons.

``gpufair gateway --api URL [--token T] [--host H] [--port N]`` follows the API's routing table
(``GET /v1/routes``, read with the admin token: ``--token`` or ``$GPUFAIR_GATEWAY_TOKEN``) and
proxies ``/v1/models/{model}/...`` and ``/v2/models/{model}...`` to the least-loaded live
replica of the model, retrying once elsewhere when a daemon is gone (:mod:`gpufair.gateway`).
Clients send the queries they would send a daemon, with their tenant's key.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from urllib.parse import urlsplit

import uvicorn

from gpufair.inputs import port_number, positive_number, whole_number

log = logging.getLogger(__name__)

DEFAULT_PORT = 9080
MAX_ROUTES_WAIT_S = 3600.0  # the longest long-poll GET /v1/routes accepts (?wait=S)
# As gpufair.gateway's (not imported here: it pulls Starlette and httpx in for --help).
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_BUFFERED_BYTES = 512 * 1024 * 1024


def api_url(text: str) -> str:
    """``argparse`` type of the API's URL: http or https, with a host (and a valid port).

    A URL the HTTP client cannot use would otherwise be found only by the routing table's
    pull, retried for ever while the gateway answers every query 503."""
    wanted = "expected an http:// or https:// URL such as http://gpufair-api:8080"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number to 65535
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}; {wanted}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r}: {wanted}")
    return text


def routes_wait(text: str) -> float:
    """``argparse`` type of the routing table's long-poll: above 0, at most the API's bound."""
    value = positive_number(text)
    if value > MAX_ROUTES_WAIT_S:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at most {MAX_ROUTES_WAIT_S:g}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufair gateway",
        description="Route every tenant's queries to the nodes' daemons from one address.",
    )
    p.add_argument("--api", required=True, type=api_url,
                   help="control-plane URL to read the routing table")  # fmt: skip
    p.add_argument(
        "--token",
        default=os.environ.get("GPUFAIR_GATEWAY_TOKEN"),
        help="admin token for GET /v1/routes (default: $GPUFAIR_GATEWAY_TOKEN)",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                   help=f"port to listen on, 1 to 65535 (default {DEFAULT_PORT})")  # fmt: skip
    p.add_argument(
        "--timeout-s",
        type=positive_number,
        default=30.0,
        help="a daemon that has not answered a query in this long: 504; a client "
        "whose body has not come in whole by then: 408 (default 30)",
    )
    p.add_argument(
        "--routes-wait-s",
        type=routes_wait,
        default=30.0,
        help=f"the routing table's long-poll, at most {MAX_ROUTES_WAIT_S:g} (default 30)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=whole_number(1),
        default=MAX_BODY_BYTES,
        help="a query's body over this is refused here: 413 (default "
        f"{MAX_BODY_BYTES}, the daemons' limit)",
    )
    p.add_argument(
        "--max-buffered-bytes",
        type=whole_number(1),
        default=MAX_BUFFERED_BYTES,
        help="the bodies of the queries in flight, kept for a retry, up to this "
        f"in all; beyond, 503 with Retry-After (default {MAX_BUFFERED_BYTES})",
    )
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not args.token:
        sys.stderr.write("gpufair gateway: no admin token: pass --token or set "
                         "GPUFAIR_GATEWAY_TOKEN\n")  # fmt: skip
        return 2
    if args.max_buffered_bytes < args.max_body_bytes:  # no body that large could ever pass
        sys.stderr.write("gpufair gateway: --max-buffered-bytes must be at least "
                         "--max-body-bytes\n")  # fmt: skip
        return 2
    from gpufair.gateway import create_gateway_app

    # A line per proxied query would cost the gateway more than the query's forwarding.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    app = create_gateway_app(
        args.api, args.token, timeout_s=args.timeout_s, routes_wait_s=args.routes_wait_s,
        max_body_bytes=args.max_body_bytes, max_buffered_bytes=args.max_buffered_bytes,
    )  # fmt: skip
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False,
        http="httptools", loop="uvloop",
    )  # fmt: skip
    log.info("gateway starting on http://%s:%d, following the routing table of %s",
             args.host or "0.0.0.0", args.port, args.api)  # fmt: skip
    try:
        uvicorn.Server(config).run()
    except OSError as exc:
        sys.stderr.write(f"gpufair gateway: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 2
    return 0
