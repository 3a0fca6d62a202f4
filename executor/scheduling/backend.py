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

    @property
    def footprint_bytes(self) -> int:
        """Device memory the replica took when it loaded, as measured then."""
        ...

    def session(self) -> Session:
        """A new session on this replica, used by one worker thread at a time."""
        ...


class Backend(Protocol):
    def load(self, artifact: str, device: str) -> Model:
        """Load a replica on a device; raise ValueError with a one-line reason when it cannot."""
        ...

    def predict_bytes(self, artifact: str) -> int:
        """The device memory a replica of ``artifact`` will take, before it is loaded (0 when
        unknown); raise ValueError for an artifact that cannot be loaded at all."""
        ...

    def free_bytes(self, device: str) -> int | None:
        """What ``device`` can still take for replicas now (its free memory less a reserve
        for activations and workspaces); None when it does not say."""
        ...


class RuntimeBackend:
    """The torch backend: models from :func:`executor.runtime.load_model`.

    torch is imported on first use, so the scheduling package stays importable without it.
    """

    # Of a device's memory, this fraction is kept for what is not weights: batches'
    # activations, CUDA's context and workspaces, the process's own heap on the CPU.
    reserve_fraction = 0.1

    def load(self, artifact: str, device: str) -> Model:
        from executor import runtime

        return runtime.load_model(artifact, device)

    def predict_bytes(self, artifact: str) -> int:
        from executor import runtime

        return runtime.predict_footprint_bytes(artifact)

    def free_bytes(self, device: str) -> int | None:
        from executor import runtime

        memory = runtime.device_memory(device)
        return max(0, memory.free_bytes - int(memory.total_bytes * self.reserve_fraction))
