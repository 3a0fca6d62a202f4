"""The boundary between scheduling and the code that runs tensors.

The scheduler never imports torch: it loads a model through a :class:`Backend`, and each
worker thread opens its own :class:`Session` on the replica it serves (a pool worker, one per
group) and calls ``run(batch)`` on it. Two backends implement the protocol: the torch backend
over :mod:`executor.runtime` (the model zoo and tenants' TorchScript modules, on CPU threads
or CUDA streams) and :class:`executor.fake.FakeBackend`, whose deterministic service
times let the scheduling rules be tested on any machine.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from executor.features import Batch


class Session(Protocol):
    """A worker's handle on one replica: its own CUDA stream on a GPU, its thread on a CPU."""

    def run(self, batch: Batch) -> np.ndarray:
        """Scores of the batch's N candidate rows, (N,), in row order."""
        ...


class Model(Protocol):
    """One loaded replica: its weights are shared by the sessions of its group."""

    @property
    def schema(self) -> Any: ...

    def session(self) -> Session:
        """A new session on this replica, used by one worker thread at a time."""
        ...


class Backend(Protocol):
    def load(self, artifact: str, device: str) -> Model:
        """Load a replica on a device; raise ValueError with a one-line reason when it cannot."""
        ...


class RuntimeBackend:
    """The torch backend: models from :func:`executor.runtime.load_model`.

    torch is imported on first use, so the scheduling package stays importable without it.
    """

    def load(self, artifact: str, device: str) -> Model:
        from executor import runtime

        return runtime.load_model(artifact, device)
