"""DLRM (Naumov et al. 2019) in DeepRecInfra's RMC1/RMC2/RMC3 configurations, structured.

The plain architecture: a bottom MLP over the dense features gives a vector x of the embedding
width; every table sum-pools its ids to one vector e_k; the dot-interaction takes the pairwise
dot products of Z = [x, e_1, …, e_T] below the diagonal; the top MLP reads [x, pairs] and a
sigmoid gives the score.

Feature split (RecServe's structured features): the first ``user_tables`` tables describe the
user and context and are sent once per query; the others describe the candidate. The dense
input is split into ``Du`` user values (first columns) and ``Dc`` candidate values. The
structured forward then does, once per user: the user-side lookups; the bottom MLP entirely
(when Dc = 0) or its first layer's user part W_u·u + b; the user–user dot products; and the
user part of the top MLP's first layer (its columns for x when x is user-side and for the
user–user pairs). Per candidate it does only the candidate-side lookups (one fused
embedding_bag), the candidate part of the bottom MLP, the candidate–candidate and
user–candidate dot products, and the rest of the top MLP. The sum over the first layer's
columns is regrouped, so it equals the naive forward up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from executor.models.layers import MLP, FusedTables, ZooModel, script_attributes
from executor.models.schema import ModelSchema, SparseFeature


@dataclass(frozen=True)
class DlrmConfig:
    name: str
    dense: int  # bottom MLP input width (the first number of DeepRecInfra's bottom sizes)
    bottom: tuple[int, ...]  # bottom MLP layer widths; the last is the embedding width
    top: tuple[int, ...]  # top MLP layer widths, ending in 1
    tables: int
    dim: int  # embedding width
    lookups: int  # ids per table per row
    rows: int  # rows per table at scale 1


RMC1 = DlrmConfig("rmc1", 128, (64, 32), (256, 64, 1), tables=8, dim=32, lookups=80, rows=10**6)
RMC2 = DlrmConfig("rmc2", 256, (128, 64), (128, 64, 1), tables=32, dim=64, lookups=120, rows=10**6)
RMC3 = DlrmConfig(
    "rmc3", 2560, (1024, 256, 32), (512, 256, 1), tables=10, dim=32, lookups=20, rows=10**6
)


def _pair_column(i: int, j: int) -> int:
    """Position of the dot product (i, j), i > j, in DLRM's row-major lower triangle."""
    return i * (i - 1) // 2 + j


@script_attributes(user_names=list[str], candidate_names=list[str])
class DLRM(ZooModel):
    if TYPE_CHECKING:  # buffers, typed for mypy only (TorchScript reads the real ones)
        uu_flat: Tensor
        cc_flat: Tensor
        tril_flat: Tensor
        top_user_cols: Tensor
        top_cand_cols: Tensor

    def __init__(
        self,
        config: DlrmConfig,
        *,
        rows: int,
        user_tables: int,
        candidate_dense: int,
        gen: torch.Generator,
    ) -> None:
        t, d = config.tables, config.dim
        features = tuple(
            SparseFeature(
                f"t{k:02d}", "user" if k < user_tables else "candidate", rows, config.lookups
            )
            for k in range(t)
        )
        super().__init__(
            ModelSchema(config.name, config.dense - candidate_dense, candidate_dense, features)
        )
        self.user_names = [f.name for f in features[:user_tables]]
        self.candidate_names = [f.name for f in features[user_tables:]]
        self.num_user_tables = user_tables
        self.user_dense = config.dense - candidate_dense
        self.dim = d
        self.x_on_user = candidate_dense == 0
        self.tables = FusedTables(t, rows, d, config.lookups, gen)
        self.bottom = MLP([config.dense, *config.bottom], gen, final_relu=True)
        vectors = t + 1
        self.top = MLP([d + vectors * (vectors - 1) // 2, *config.top], gen, final_relu=False)

        # Z index of each vector: 0 is x, 1 + k is table k.
        zu = ([0] if self.x_on_user else []) + list(range(1, 1 + user_tables))
        zc = ([] if self.x_on_user else [0]) + list(range(1 + user_tables, 1 + t))
        nu, nc = len(zu), len(zc)
        uu = [(a, b) for a in range(nu) for b in range(a)]
        cc = [(a, b) for a in range(nc) for b in range(a)]
        x_cols = list(range(d))
        user_cols = (x_cols if self.x_on_user else []) + [
            d + _pair_column(zu[a], zu[b]) for a, b in uu
        ]
        cand_cols = (
            ([] if self.x_on_user else x_cols)
            + [d + _pair_column(zc[a], zc[b]) for a, b in cc]
            + [
                d + _pair_column(max(zc[a], zu[b]), min(zc[a], zu[b]))
                for a in range(nc)
                for b in range(nu)
            ]
        )
        assert sorted(user_cols + cand_cols) == list(range(self.top.first.in_features))
        # Flat indices into the (n × n) Gram matrices, and the first-layer columns they feed.
        self.register_buffer(
            "uu_flat", torch.tensor([a * nu + b for a, b in uu], dtype=torch.int64)
        )
        self.register_buffer(
            "cc_flat", torch.tensor([a * nc + b for a, b in cc], dtype=torch.int64)
        )
        self.register_buffer(
            "tril_flat",
            torch.tensor(
                [i * vectors + j for i in range(vectors) for j in range(i)], dtype=torch.int64
            ),
        )
        self.register_buffer("top_user_cols", torch.tensor(user_cols, dtype=torch.int64))
        self.register_buffer("top_cand_cols", torch.tensor(cand_cols, dtype=torch.int64))

    def user_part(
        self, user_dense: Tensor, user_sparse: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per user: the user vectors U, the top layer's user part, the bottom layer's user part."""
        b = user_dense.shape[0]
        pooled = self.tables.pooled([user_sparse[f] for f in self.user_names], 0, b)
        if self.x_on_user:
            x = self.bottom(user_dense)
            vectors = torch.cat([x.unsqueeze(1), pooled], 1)
            bottom_user = x.new_zeros(b, 0)
            features = torch.cat([x, self._user_pairs(vectors)], 1)
        else:
            vectors = pooled
            w_user = self.bottom.first.weight[:, : self.user_dense]
            bottom_user = F.linear(user_dense, w_user, self.bottom.first.bias)
            features = self._user_pairs(vectors)
        w_top = self.top.first.weight.index_select(1, self.top_user_cols)
        top_user = F.linear(features, w_top, self.top.first.bias)
        return vectors, top_user, bottom_user

    def _user_pairs(self, vectors: Tensor) -> Tensor:
        gram = torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1)
        return gram.index_select(1, self.uu_flat)

    def candidate_lookups(self, candidate_sparse: dict[str, Tensor], rows: int) -> Tensor:
        """Per candidate row: the candidate-side tables, pooled by one fused embedding_bag."""
        ids = [candidate_sparse[f] for f in self.candidate_names]
        return self.tables.pooled(ids, self.num_user_tables, rows)

    def combine(
        self,
        user: tuple[Tensor, Tensor, Tensor],
        pooled: Tensor,
        candidate_dense: Tensor,
        candidate_user: Tensor,
    ) -> Tensor:
        user_vectors, top_user, bottom_user = user
        if self.x_on_user:
            vectors = pooled
            head: list[Tensor] = []
        else:
            w_cand = self.bottom.first.weight[:, self.user_dense :]
            h = bottom_user.index_select(0, candidate_user) + F.linear(candidate_dense, w_cand)
            x = self.bottom.after_first(h)
            vectors = torch.cat([x.unsqueeze(1), pooled], 1)
            head = [x]
        n = vectors.shape[0]
        cand_pairs = (
            torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1).index_select(1, self.cc_flat)
        )
        if user_vectors.shape[0] == 1:
            # One user (the common case): one GEMM against its vectors, no per-row copy.
            cross = torch.matmul(vectors, user_vectors[0].t())
        else:
            cross = torch.bmm(vectors, user_vectors.index_select(0, candidate_user).transpose(1, 2))
        features = torch.cat(head + [cand_pairs, cross.reshape(n, -1)], 1)
        w_top = self.top.first.weight.index_select(1, self.top_cand_cols)
        h = torch.addmm(top_user.index_select(0, candidate_user), features, w_top.t())
        return torch.sigmoid(self.top.after_first(h)).view(n)

    def forward_naive(self, dense: Tensor, sparse: dict[str, Tensor]) -> Tensor:
        """The plain DLRM over rows that each carry all features (user ones copied)."""
        n = dense.shape[0]
        x = self.bottom(dense)
        pooled = self.tables.pooled(
            [sparse[f] for f in self.user_names + self.candidate_names], 0, n
        )
        z = torch.cat([x.unsqueeze(1), pooled], 1)
        pairs = torch.bmm(z, z.transpose(1, 2)).flatten(1).index_select(1, self.tril_flat)
        return torch.sigmoid(self.top(torch.cat([x, pairs], 1))).view(n)
