"""Contracts between the API and the executor, torch-free so the API can import them.

Each module here is the one definition of something both sides must read the same way; the API
validates with it before storing, the executor checks with it before acting:

- :mod:`executor.wire.artifact`: the ``zoo:<arch>?key=value&…`` model reference;
- :mod:`executor.wire.names`: resource and device names (a node's name above all);
- :mod:`executor.wire.attainment`: what SLA attainment means, for the daemon's counters, the
  heartbeats that carry them, the API's /v1/sla, the dashboard and the demo.

Nothing in this package may import torch (tests/executor/test_wire.py checks it).
"""
