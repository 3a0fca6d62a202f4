"""The engine: the process that owns the devices, the session groups and the fair scheduler.

As vLLM v1 splits its API server from ``EngineCore``, the executor daemon splits the wire from
the engine (docs/executor.md, "Fronts and the engine"): front processes accept, admit, read
and parse requests (:mod:`executor.front`), and the engine process runs the scheduler on the
queries they hand over. :mod:`executor.engine.core` is the engine's request surface,
:mod:`executor.engine.link` the fronts' channel to it (control messages on a socket, tensors
in shared memory), :mod:`executor.engine.server` serves the links and starts the fronts.
"""
