"""A fake backend beside the torch one: deterministic scores and service times, no tensors.

The scheduler's rules (batching, splitting, fair shares, admission, plan swaps) are properties
of timing, not of arithmetic, so they are tested against models whose forward costs exactly
``batch_s + row_s × rows`` seconds of wall time (a sleep, which releases the GIL as a real
kernel does) and whose score of a candidate row depends only on that row and its user, as a
real ranking model's does. Any batching or splitting that is wrong shows up as a changed score.

An artifact ``fake:NAME?row_us=R&batch_us=B`` sets the costs of one model (defaults come from
the backend), ``fake:NAME?fail=load`` is refused at load time and ``fail=run`` raises in every
forward, so tests can break one model and watch the others. Any other artifact loads a fake
model with the backend's defaults, so a real plan can be served by the fake backend
(``gpufair executor --backend fake``). ``memory_mb=M`` gives a fake replica a footprint of M MiB
(``actual_mb=A``: predicted M, measured A once loaded, as a file that holds more than its
archive says), and ``FakeBackend(device_memory_mb=...)`` devices of that many MiB, so the
memory checks of a plan are tested without allocating it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import numpy as np

from executor.features import Batch
from executor.models.schema import ModelSchema, SparseFeature

FAKE_SCHEMA = ModelSchema(
    name="fake",
    user_dense=4,
    candidate_dense=3,
    sparse=(
        SparseFeature(name="user_tags", side="user", num_ids=1000, lookups=3),
        SparseFeature(name="item_id", side="candidate", num_ids=5000, lookups=1),
    ),
)


@dataclass
class FakeModel:
    schema: ModelSchema
    row_s: float  # service time per candidate row
    batch_s: float  # service time per batch (launch overhead)
    fail_run: bool = False
    footprint_bytes: int = 0  # as declared by the artifact's memory_mb
    rows_run: int = 0  # candidate rows scored so far (all sessions)
    sessions: int = 0  # sessions opened on this replica

    def session(self) -> FakeModel:
        """Sessions share the model's state: the fake has no stream or thread to own."""
        self.sessions += 1
        return self

    def run(self, batch: Batch) -> np.ndarray:
        if self.fail_run:
            raise RuntimeError("fake model configured to fail")
        rows = batch.candidate_dense.shape[0]
        time.sleep(self.batch_s + self.row_s * rows)
        self.rows_run += rows
        return fake_scores(batch)


def fake_scores(batch: Batch) -> np.ndarray:
    """Per-row scores from the row's features and its user's: invariant to batching."""
    user = batch.user_dense.sum(axis=1) * 0.5
    for ids in batch.user_sparse.values():
        user = user + (ids % 97).sum(axis=1) * 0.01
    row = batch.candidate_dense @ np.linspace(0.3, 1.0, batch.candidate_dense.shape[1])
    for ids in batch.candidate_sparse.values():
        row = row + (ids % 89).sum(axis=1) * 0.02
    return np.tanh(user[batch.candidate_user] + row).astype(np.float32)


class FakeBackend:
    """Loads :class:`FakeModel`s with the backend's default costs."""

    def __init__(
        self,
        row_s: float = 20e-6,
        batch_s: float = 200e-6,
        device_memory_mb: float | None = None,
    ) -> None:
        self.row_s = row_s
        self.batch_s = batch_s
        self.device_memory_mb = device_memory_mb  # every device's; None: no limit
        self.loaded: dict[str, int] = {}  # device -> footprint bytes of the replicas loaded

    def predict_bytes(self, artifact: str) -> int:
        return _footprint(_params(artifact))

    def free_bytes(self, device: str) -> int | None:
        """The device's memory less what replicas loaded there hold (none is ever freed: a
        test that swaps plans gives the devices room for both)."""
        if self.device_memory_mb is None:
            return None
        return int(self.device_memory_mb * 2**20) - self.loaded.get(device, 0)

    def load(self, artifact: str, device: str) -> FakeModel:
        params = _params(artifact)
        if params.get("fail") == ["load"]:
            raise ValueError(f"fake artifact {artifact!r} refuses to load")

        def micros(key: str, default: float) -> float:
            return float(params[key][0]) * 1e-6 if key in params else default

        footprint = _footprint(params, "actual_mb") or _footprint(params)
        self.loaded[device] = self.loaded.get(device, 0) + footprint
        return FakeModel(
            schema=FAKE_SCHEMA,
            row_s=micros("row_us", self.row_s),
            batch_s=micros("batch_us", self.batch_s),
            fail_run=params.get("fail") == ["run"],
            footprint_bytes=footprint,
        )


def _params(artifact: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(artifact).query) if artifact.startswith("fake:") else {}


def _footprint(params: dict[str, list[str]], key: str = "memory_mb") -> int:
    return int(float(params[key][0]) * 2**20) if key in params else 0
