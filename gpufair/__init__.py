"""gpufair: fair multi-tenant GPU allocation and serving for recommendation inference.

This package is the command-line front (``gpufair ...``) and the one settings tree. The three
parts of the architecture live beside it: ``allocator/`` (pure fair division), ``executor/``
(the per-node serving daemon) and ``api/`` (the control plane). See ``docs/``
(``docs/architecture.md`` first).
"""

__version__ = "0.1.0"
