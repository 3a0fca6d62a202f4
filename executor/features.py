"""Structured features: the query contract between clients, the scheduler and the models.

A ranking query scores N candidates for one user. Following RecServe's structured features,
the user side (dense vector, sparse id lists) is sent and computed once per query, and only the
candidate side has N rows; a batch of several queries keeps one user row per query and maps
each candidate row to its user with ``candidate_user``. Every model in the zoo, and every
TorchScript model a tenant brings, implements the same forward over a :class:`Batch`.

Sparse features have a fixed number of ids per row for each feature (DeepRecInfra's fixed
lookups per table), so they travel as dense integer matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Query:
    """One user and N candidates, as received from a client."""

    user_dense: np.ndarray  # (Du,) float32
    user_sparse: dict[str, np.ndarray]  # user-side feature -> (Lf,) int64 ids
    candidate_dense: np.ndarray  # (N, Dc) float32
    candidate_sparse: dict[str, np.ndarray]  # candidate-side feature -> (N, Lf) int64 ids

    @property
    def num_candidates(self) -> int:
        return int(self.candidate_dense.shape[0])

    def candidates(self, start: int, stop: int) -> Query:
        """The same user with candidates [start, stop): how a large query is split."""
        return Query(
            user_dense=self.user_dense,
            user_sparse=self.user_sparse,
            candidate_dense=self.candidate_dense[start:stop],
            candidate_sparse={f: ids[start:stop] for f, ids in self.candidate_sparse.items()},
        )


@dataclass(frozen=True)
class Batch:
    """Several queries (or pieces of queries) run as one forward pass.

    Shapes: B users, N candidate rows in total. Scores come back as (N,) in row order.
    """

    user_dense: np.ndarray  # (B, Du)
    user_sparse: dict[str, np.ndarray]  # feature -> (B, Lf)
    candidate_dense: np.ndarray  # (N, Dc)
    candidate_sparse: dict[str, np.ndarray]  # feature -> (N, Lf)
    candidate_user: np.ndarray  # (N,) int64: row i belongs to user candidate_user[i]
    sizes: tuple[int, ...]  # candidate rows of each query, in order; sums to N

    @classmethod
    def of(cls, queries: list[Query]) -> Batch:
        sizes = tuple(q.num_candidates for q in queries)
        return cls(
            user_dense=np.stack([q.user_dense for q in queries]),
            user_sparse={
                f: np.stack([q.user_sparse[f] for q in queries]) for f in queries[0].user_sparse
            },
            candidate_dense=np.concatenate([q.candidate_dense for q in queries]),
            candidate_sparse={
                f: np.concatenate([q.candidate_sparse[f] for q in queries])
                for f in queries[0].candidate_sparse
            },
            candidate_user=np.repeat(np.arange(len(queries), dtype=np.int64), sizes),
            sizes=sizes,
        )

    def split_scores(self, scores: np.ndarray) -> list[np.ndarray]:
        """Cut a batch's (N,) scores back into one array per query."""
        return np.split(scores, np.cumsum(self.sizes)[:-1])
