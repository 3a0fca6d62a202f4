"""The fronts: what accepts, admits, reads and parses requests before the engine sees them.

A front runs the daemon's HTTP app (:mod:`executor.daemon`) over an :class:`Engine`
(:mod:`executor.front.engine`): in the engine's own process (:class:`LocalEngine`, the
in-process app of tests and tools) or in a front process of its own (:class:`RemoteEngine`
over a link, :mod:`executor.front.process`). Bodies are read and parsed in their tenant's turn
(:mod:`executor.front.fair`), so a flooding tenant's parsing falls on the flooder.
"""
