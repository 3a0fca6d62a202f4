"""HTTP routes, one module per resource; each mounts under ``/v1`` (``/healthz`` and
``/metrics`` at the root). Routes parse, authorise through :mod:`api.deps`, call one service
and shape the reply; the rules live in :mod:`api.services`."""
