"""Wide & Deep (Cheng et al. 2016), as in DeepRecInfra's WnD, structured.

The plain architecture: each categorical feature (one id per row, as in Google Play's app
features) has an embedding of width ``dim``; the deep part is an MLP (1024-512-256-1) over
[dense, embeddings]; the wide part is a linear model over the dense values and one learnt
weight per id; the score is sigmoid(deep + wide). Each table stores its wide weight as an
extra column of its embedding rows, so one fused lookup fetches both.

Feature split: the first ``user_tables`` tables and the first ``Du`` dense values describe the
user and context. Once per user the structured forward does the user-side lookups, the deep
MLP's first layer on the user columns (W_u·u + b) and the wide part's user terms. Per
candidate it does the candidate lookups, the first layer's candidate columns and the rest of
the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from executor.models.layers import MLP, FusedTables, ZooModel, script_attributes, seeded_linear
from executor.models.schema import ModelSchema, SparseFeature


@dataclass(frozen=True)
class WndConfig:
    name: str
    dense: int
    deep: tuple[int, ...]  # deep MLP layer widths, ending in 1
    tables: int
    dim: int
    rows: int  # rows per table at scale 1


WND = WndConfig("wnd", dense=32, deep=(1024, 512, 256, 1), tables=20, dim=32, rows=10**6)


@script_attributes(user_names=list[str], candidate_names=list[str])
class WideAndDeep(ZooModel):
    if TYPE_CHECKING:  # buffers, typed for mypy only (TorchScript reads the real ones)
        deep_user_cols: Tensor
        deep_cand_cols: Tensor

    def __init__(
        self,
        config: WndConfig,
        *,
        rows: int,
        user_tables: int,
        candidate_dense: int,
        gen: torch.Generator,
    ) -> None:
        t, d = config.tables, config.dim
        features = tuple(
            SparseFeature(f"c{k:02d}", "user" if k < user_tables else "candidate", rows, 1)
            for k in range(t)
        )
        user_dense = config.dense - candidate_dense
        super().__init__(ModelSchema(config.name, user_dense, candidate_dense, features))
        self.user_names = [f.name for f in features[:user_tables]]
        self.candidate_names = [f.name for f in features[user_tables:]]
        self.num_user_tables = user_tables
        self.user_dense = user_dense
        self.dim = d
        # Columns 0..d-1 of a row are its embedding, column d its wide weight.
        self.tables = FusedTables(t, rows, d + 1, 1, gen)
        self.deep = MLP([config.dense + t * d, *config.deep], gen, final_relu=False)
        self.wide_dense = seeded_linear(config.dense, 1, gen)
        dense_cols = list(range(config.dense))
        emb_cols = [config.dense + k * d + j for k in range(t) for j in range(d)]
        user_cols = dense_cols[:user_dense] + emb_cols[: user_tables * d]
        cand_cols = dense_cols[user_dense:] + emb_cols[user_tables * d :]
        self.register_buffer("deep_user_cols", torch.tensor(user_cols, dtype=torch.int64))
        self.register_buffer("deep_cand_cols", torch.tensor(cand_cols, dtype=torch.int64))

    def user_part(
        self, user_dense: Tensor, user_sparse: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Per user: the deep first layer's user part and the wide part's user terms."""
        b = user_dense.shape[0]
        rows = self.tables.pooled([user_sparse[f] for f in self.user_names], 0, b)
        emb, wide_ids = rows[:, :, : self.dim], rows[:, :, self.dim]
        features = torch.cat([user_dense, emb.reshape(b, -1)], 1)
        w_user = self.deep.first.weight.index_select(1, self.deep_user_cols)
        deep_user = F.linear(features, w_user, self.deep.first.bias)
        wide_user = F.linear(
            user_dense, self.wide_dense.weight[:, : self.user_dense], self.wide_dense.bias
        ) + wide_ids.sum(1, keepdim=True)
        return deep_user, wide_user

    def candidate_lookups(self, candidate_sparse: dict[str, Tensor], rows: int) -> Tensor:
        """Per candidate row: embedding and wide weight of each candidate-side feature."""
        ids = [candidate_sparse[f] for f in self.candidate_names]
        return self.tables.pooled(ids, self.num_user_tables, rows)

    def combine(
        self,
        user: tuple[Tensor, Tensor],
        rows: Tensor,
        candidate_dense: Tensor,
        candidate_user: Tensor,
    ) -> Tensor:
        deep_user, wide_user = user
        n = rows.shape[0]
        emb, wide_ids = rows[:, :, : self.dim], rows[:, :, self.dim]
        features = torch.cat([candidate_dense, emb.reshape(n, -1)], 1)
        w_cand = self.deep.first.weight.index_select(1, self.deep_cand_cols)
        h = torch.addmm(deep_user.index_select(0, candidate_user), features, w_cand.t())
        wide = (
            F.linear(candidate_dense, self.wide_dense.weight[:, self.user_dense :])
            + wide_ids.sum(1, keepdim=True)
            + wide_user.index_select(0, candidate_user)
        )
        return torch.sigmoid(self.deep.after_first(h) + wide).view(n)

    def forward_naive(self, dense: Tensor, sparse: dict[str, Tensor]) -> Tensor:
        """The plain Wide & Deep over rows that each carry all features (user ones copied)."""
        n = dense.shape[0]
        names = self.user_names + self.candidate_names
        rows = self.tables.pooled([sparse[f] for f in names], 0, n)
        emb, wide_ids = rows[:, :, : self.dim], rows[:, :, self.dim]
        deep = self.deep(torch.cat([dense, emb.reshape(n, -1)], 1))
        wide = self.wide_dense(dense) + wide_ids.sum(1, keepdim=True)
        return torch.sigmoid(deep + wide).view(n)
