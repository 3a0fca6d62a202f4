"""Contracts between the API and the executor, and the executor's clients, torch-free so the
API and the clients can import them.

Each module here is the one definition of something both sides must read the same way; the API
validates with it before storing, the executor checks with it before acting:

- :mod:`executor.wire.artifact`: the ``zoo:<arch>?key=value&…`` model reference;
- :mod:`executor.wire.names`: resource and device names (a node's name above all), and the
  bound on ids;
- :mod:`executor.wire.attainment`: what SLA attainment means, for the daemon's counters, the
  heartbeats that carry them, the API's /v1/sla, the dashboard and the demo;
- :mod:`executor.wire.heartbeat`: the heartbeat body, which the daemon builds and the API takes
  as its route's body and reads back from the stored report;
- :mod:`executor.wire.profiles`: the profile upload, whose curves are the allocator's
  (:data:`allocator.QpsCurve`);
- :mod:`executor.wire.credentials`: the credential document a daemon checks queries' keys
  against (salted hashes of the keys of the tenants its plans seat);
- :mod:`executor.wire.routes`: the routing table of every model's replicas, for routers and
  clients;
- :mod:`executor.wire.oip`: the Open Inference Protocol's tensors, JSON and binary, which the
  daemon reads and its clients (the demo's load generator, Triton's clients) send;
- :mod:`executor.wire.apilink`: how the API's long-running callers (the daemon, the gateway,
  the Python client) log calls that keep failing: once when they start, not once a retry.

Two seams are defined in the allocator, which produces them and may not import this package:
the node plan (``allocator.cluster.plan.NodePlan``, parsed by ``NodePlan.from_dict`` in the
daemon and in the API) and the certificate's document (``allocator.CertificateDocument``, built
by the allocator, stored and served by the API).

Nothing in this package may import torch (tests/executor/test_wire.py checks it).
"""
