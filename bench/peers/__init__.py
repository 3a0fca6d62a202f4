"""Servers gpufair is compared with over HTTP, each serving the same model with the same body
format as the daemon (``gpufair bench serve --http``, docs/benchmarks.md):

- :mod:`bench.peers.naive_fastapi`: FastAPI with one forward per query, one query at a time,
  user features copied onto every candidate row (what a plain PyTorch service does);
- :mod:`bench.peers.ray_serve`: Ray Serve with ``@serve.batch``, a deployment per tenant (run
  only where Ray is installed: ``requirements-ray.txt``, never in gpufair's lock);
- :mod:`bench.peers.echo`: no model at all, a body read and a fixed reply: what the load client
  and the loopback can carry, to show the client is not the bottleneck.

Each is a process of its own (``python -m bench.peers.NAME --port P ...``) that answers
``GET /healthz`` with 200 once it serves, and ``POST /v2/models/{model}/infer`` with the
daemon's request and reply: Open Inference Protocol binary tensors, parsed and answered by the
daemon's codec (:mod:`bench.peers.common`).
"""
