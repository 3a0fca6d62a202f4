"""The fronts: what accepts, admits, reads and parses requests before the engine sees them.

A front runs the daemon's HTTP app (:mod:`executor.daemon`) over an :class:`Engine`
(:mod:`executor.front.engine`): in the engine's own process (:class:`LocalEngine`, the
in-process app of tests and tools) or in a front process of its own (:class:`RemoteEngine`
over a link, :mod:`executor.front.process`). A tenant's requests in flight at a front are
bounded by the rate it is answered at (:mod:`executor.front.budget`): a flooding tenant's excess
is refused on its headers, before the engine is asked or its body read, so its cost falls on
the flooder. A tenant with room under its bound, once the engine has admitted its model at a
front, is let in there on that admission's terms and its query admitted with the query itself, one
engine hop per query (:meth:`Engine.presume <executor.front.engine.Engine.presume>`).
"""
