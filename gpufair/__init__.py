"""gpufair: fair multi-tenant GPU allocation and serving for recommendation inference.

This package is the command-line front (``gpufair ...``), the one settings tree, and the
composition that builds each part's configuration from it (``gpufair.compose``). The three
parts of the architecture live beside it and never import it: ``allocator/`` (pure fair
division), ``executor/`` (the per-node serving daemon) and ``api/`` (the control plane). See
``docs/`` (``docs/architecture.md`` first).
"""

__version__ = "0.1.0"
