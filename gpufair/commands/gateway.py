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

import uvicorn

from gpufair.inputs import port_number

DEFAULT_PORT = 9080


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufair gateway",
        description="Route every tenant's queries to the nodes' daemons from one address.",
    )
    p.add_argument("--api", required=True, help="control-plane URL to read the routing table")
    p.add_argument(
        "--token",
        default=os.environ.get("GPUFAIR_GATEWAY_TOKEN"),
        help="admin token for GET /v1/routes (default: $GPUFAIR_GATEWAY_TOKEN)",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                   help=f"port to listen on, 1 to 65535 (default {DEFAULT_PORT})")  # fmt: skip
    p.add_argument("--timeout-s", type=float, default=30.0,
                   help="a daemon that has not answered a query in this long: 504 (default 30)")
    p.add_argument("--routes-wait-s", type=float, default=30.0,
                   help="the routing table's long-poll (default 30)")  # fmt: skip
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not args.token:
        sys.stderr.write("gpufair gateway: no admin token: pass --token or set "
                         "GPUFAIR_GATEWAY_TOKEN\n")  # fmt: skip
        return 2
    if not args.timeout_s > 0 or not args.routes_wait_s > 0:
        sys.stderr.write("gpufair gateway: --timeout-s and --routes-wait-s must be positive\n")
        return 2
    from gpufair.gateway import create_gateway_app

    # A line per proxied query would cost the gateway more than the query's forwarding.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    app = create_gateway_app(
        args.api, args.token, timeout_s=args.timeout_s, routes_wait_s=args.routes_wait_s
    )
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False,
        http="httptools", loop="uvloop",
    )  # fmt: skip
    try:
        uvicorn.Server(config).run()
    except OSError as exc:
        sys.stderr.write(f"gpufair gateway: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 2
    return 0
