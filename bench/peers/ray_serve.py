"""The same model on Ray Serve, tuned: ``@serve.batch``, replicas of one thread each.

``<ray python> -m bench.peers.ray_serve --artifact ART --port P --models m [--replicas 2]``.
One deployment per model name (``--models calm,flood`` gives each tenant its own, as a Ray
user would isolate tenants), each with ``--replicas`` replicas of one CPU and one intra-op
thread, serving ``POST /v2/models/<name>/infer``: the body (the daemon's, Open Inference
Protocol binary tensors) is parsed by gpufair's codec in the replica
(:mod:`bench.peers.common`), queries are batched by ``@serve.batch`` (up to ``--max-batch``
queries, waiting at most ``--batch-wait-ms``) into one structured forward — the forward
gpufair runs — and each gets its slice of the scores in the daemon's reply.
``GET /healthz`` answers once every deployment is up.

Ray's proxy runs in its throughput-optimised mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``, set by
this module before Ray starts). Runs where ``ray[serve]`` is installed (requirements-ray.txt);
gpufair itself never imports Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")

import numpy as np  # noqa: E402
import ray  # type: ignore[import-not-found]  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402

from bench.peers.common import INFER_PATH  # noqa: E402

log = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Ranker:
    def __init__(self, name: str, artifact: str, max_batch: int, batch_wait_s: float) -> None:
        self.name = name
        from executor.runtime import configure_cpu_threads, load_model

        configure_cpu_threads(1)
        self.model = load_model(artifact, "cpu")
        self.session = self.model.session()
        self.infer_batch.set_max_batch_size(max_batch)
        self.infer_batch.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def infer_batch(self, queries: list) -> list[np.ndarray]:
        from executor.features import Batch

        batch = Batch.of(queries)
        scores = self.session.run(batch)
        return list(np.split(scores, np.cumsum(batch.sizes)[:-1]))

    async def __call__(self, request: Request) -> Response:
        from bench.peers.common import parse_request, reply

        try:
            query, asked = parse_request(self.model.schema, await request.body(), request.headers)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        content, headers = reply(self.name, await self.infer_batch(query), asked)
        return Response(content, headers=headers)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Health:
    async def __call__(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "serving"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.ray_serve")
    p.add_argument("--artifact", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--models", default="m", help="comma-separated model names, one deployment each")
    p.add_argument("--replicas", type=int, default=2, help="replicas per deployment")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs Ray may use")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    for name in args.models.split(","):
        deployment = Ranker.options(  # type: ignore[attr-defined]
            num_replicas=args.replicas, max_ongoing_requests=256
        )
        app = deployment.bind(name, args.artifact, args.max_batch, args.batch_wait_ms / 1000)
        serve.run(app, name=name, route_prefix=INFER_PATH.format(model=name))
    health = Health.bind()  # type: ignore[attr-defined]
    serve.run(health, name="healthz", route_prefix="/healthz")
    log.info("ray serve ready on port %d", args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        time.sleep(0.5)
    # Ray's own shutdown stops every process of the local cluster it started; Serve's drains
    # the deployments first, which a benchmark between turns does not need.
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
