"""A naive inference server: FastAPI, one forward per query, one query at a time.

``python -m bench.peers.naive_fastapi --artifact ART --port P [--threads N] [--device cpu]``.
The baseline a team would write first: each request's body (the daemon's, parsed by its codec:
:mod:`bench.peers.common`) is parsed on the event loop, its
forward runs in FastAPI's thread pool under one lock (one query at a time, every core as
intra-op threads), through the model's plain forward with the user's features copied onto each
candidate row (:meth:`executor.runtime.Session.run_naive`), and no batching.
"""

from __future__ import annotations

import argparse
import logging
import threading

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from bench.peers.common import INFER_PATH, parse_request, reply
from executor.features import Batch
from executor.runtime import configure_cpu_threads, load_model

log = logging.getLogger(__name__)


def create_app(artifact: str, device: str) -> FastAPI:
    model = load_model(artifact, device)
    session = model.session()
    lock = threading.Lock()
    app = FastAPI()

    def forward(batch: Batch) -> np.ndarray:
        with lock:
            return session.run_naive(batch)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "serving", "artifact": artifact}

    @app.post(INFER_PATH.format(model="{model_id}"))
    async def infer(model_id: str, request: Request) -> Response:
        try:
            query, asked = parse_request(model.schema, await request.body(), request.headers)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        scores = await run_in_threadpool(forward, Batch.of([query]))
        content, headers = reply(model_id, scores, asked)
        return Response(content, headers=headers)

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.naive_fastapi")
    p.add_argument("--artifact", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the forward")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    configure_cpu_threads(args.threads)
    app = create_app(args.artifact, args.device)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
