"""Deep Interest Network (Zhou et al. 2018), as in DeepRecInfra's DIN, structured.

The plain architecture: the user's behaviour sequence (the last ``history`` items it
interacted with) and the candidate item share one item table. An activation unit scores each
behaviour item e against the candidate v with an MLP over [e, v, e−v, e⊙v] (80-40-1, ReLU in
place of the paper's Dice); the user's interest in v is the weighted sum of the e's (no softmax,
as in the paper). The top MLP (200-80-1) reads [dense, context embeddings, interest, v] and a
sigmoid gives the score.

Feature split: the behaviour sequence, the first ``user_tables`` context tables and ``Du``
dense values describe the user. The attention is user × candidate and cannot be done once per
user, but its first layer can be regrouped: W·[e; v; e−v; e⊙v] = (W_e+W_d)·e + (W_v−W_d)·v +
W_p·(e⊙v). Once per user the structured forward looks the behaviour items up and computes
(W_e+W_d)·e + b for each, plus the user part of the top MLP's first layer; per candidate it
looks up v and its context, computes (W_v−W_d)·v once, W_p·(e⊙v) per behaviour item, and the
rest. This saves about half of the attention's multiply-adds, all user-side lookups and the
user columns of the top layer.
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
class DinConfig:
    name: str
    dense: int
    context_tables: int  # one-id context features besides the behaviour sequence and the item
    dim: int
    history: int  # behaviour sequence length (ids per user)
    attention: tuple[int, ...]  # activation unit MLP widths after its 4·dim input, ending in 1
    top: tuple[int, ...]  # top MLP widths, ending in 1
    rows: int  # rows of the item table and of each context table at scale 1


DIN_CONFIG = DinConfig(
    "din",
    dense=16,
    context_tables=8,
    dim=32,
    history=50,
    attention=(80, 40, 1),
    top=(200, 80, 1),
    rows=10**6,
)


@script_attributes(user_names=list[str], candidate_names=list[str])
class DIN(ZooModel):
    if TYPE_CHECKING:  # buffers, typed for mypy only (TorchScript reads the real ones)
        top_user_cols: Tensor
        top_cand_cols: Tensor

    def __init__(
        self,
        config: DinConfig,
        *,
        rows: int,
        user_tables: int,
        candidate_dense: int,
        gen: torch.Generator,
    ) -> None:
        t, d = config.context_tables, config.dim
        context = tuple(
            SparseFeature(f"x{k:02d}", "user" if k < user_tables else "candidate", rows, 1)
            for k in range(t)
        )
        features = (
            SparseFeature("history", "user", rows, config.history),
            SparseFeature("item", "candidate", rows, 1),
            *context,
        )
        user_dense = config.dense - candidate_dense
        super().__init__(ModelSchema(config.name, user_dense, candidate_dense, features))
        self.user_names = [f.name for f in context[:user_tables]]
        self.candidate_names = [f.name for f in context[user_tables:]]
        self.num_user_tables = user_tables
        self.dim = d
        self.items = FusedTables(1, rows, d, 1, gen)
        self.context = FusedTables(t, rows, d, 1, gen)
        self.attention = MLP([4 * d, *config.attention], gen, final_relu=False)
        self.top = MLP([config.dense + t * d + 2 * d, *config.top], gen, final_relu=False)
        dense_cols = list(range(config.dense))
        emb_cols = [config.dense + k * d + j for k in range(t) for j in range(d)]
        tail = list(range(config.dense + t * d, config.dense + t * d + 2 * d))
        user_cols = dense_cols[:user_dense] + emb_cols[: user_tables * d]
        cand_cols = dense_cols[user_dense:] + emb_cols[user_tables * d :] + tail
        self.register_buffer("top_user_cols", torch.tensor(user_cols, dtype=torch.int64))
        self.register_buffer("top_cand_cols", torch.tensor(cand_cols, dtype=torch.int64))

    def user_part(
        self, user_dense: Tensor, user_sparse: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per user: behaviour embeddings, their attention pre-activations, top user part."""
        b = user_dense.shape[0]
        history = F.embedding(user_sparse["history"], self.items.weight)  # (B, L, d)
        w = self.attention.first.weight
        d = self.dim
        w_history = w[:, :d] + w[:, 2 * d : 3 * d]
        pre_user = F.linear(history, w_history, self.attention.first.bias)  # (B, L, H)
        context = self.context.pooled([user_sparse[f] for f in self.user_names], 0, b)
        features = torch.cat([user_dense, context.reshape(b, -1)], 1)
        w_top = self.top.first.weight.index_select(1, self.top_user_cols)
        top_user = F.linear(features, w_top, self.top.first.bias)
        return history, pre_user, top_user

    def candidate_lookups(
        self, candidate_sparse: dict[str, Tensor], rows: int
    ) -> tuple[Tensor, Tensor]:
        """Per candidate row: the item embedding and the candidate-side context."""
        item = F.embedding(candidate_sparse["item"], self.items.weight).view(rows, self.dim)
        ids = [candidate_sparse[f] for f in self.candidate_names]
        return item, self.context.pooled(ids, self.num_user_tables, rows)

    def combine(
        self,
        user: tuple[Tensor, Tensor, Tensor],
        lookups: tuple[Tensor, Tensor],
        candidate_dense: Tensor,
        candidate_user: Tensor,
    ) -> Tensor:
        history, pre_user, top_user = user
        item, context = lookups
        n = item.shape[0]
        d = self.dim
        w = self.attention.first.weight
        pre_item = F.linear(item, w[:, d : 2 * d] - w[:, 2 * d : 3 * d])  # (N, H)
        w_product = w[:, 3 * d :]
        if history.shape[0] == 1:
            # One user (the common case): broadcast its history instead of copying it per row.
            seq = history[0]  # (L, d)
            pre = pre_user[0].unsqueeze(0) + pre_item.unsqueeze(1)
            pre = pre + F.linear(seq.unsqueeze(0) * item.unsqueeze(1), w_product)
            weights = self.attention.after_first(pre).squeeze(2)  # (N, L)
            interest = torch.mm(weights, seq)
        else:
            seq = history.index_select(0, candidate_user)  # (N, L, d)
            pre = pre_user.index_select(0, candidate_user) + pre_item.unsqueeze(1)
            pre = pre + F.linear(seq * item.unsqueeze(1), w_product)
            weights = self.attention.after_first(pre)  # (N, L, 1)
            interest = torch.bmm(weights.transpose(1, 2), seq).squeeze(1)
        features = torch.cat([candidate_dense, context.reshape(n, -1), interest, item], 1)
        w_top = self.top.first.weight.index_select(1, self.top_cand_cols)
        h = torch.addmm(top_user.index_select(0, candidate_user), features, w_top.t())
        return torch.sigmoid(self.top.after_first(h)).view(n)

    def forward_naive(self, dense: Tensor, sparse: dict[str, Tensor]) -> Tensor:
        """The plain DIN over rows that each carry all features (user ones copied)."""
        n = dense.shape[0]
        history = F.embedding(sparse["history"], self.items.weight)  # (N, L, d)
        item = F.embedding(sparse["item"], self.items.weight)  # (N, 1, d)
        item_seq = item.expand_as(history)
        unit_in = torch.cat([history, item_seq, history - item_seq, history * item_seq], 2)
        weights = self.attention(unit_in)  # (N, L, 1)
        interest = (weights * history).sum(1)
        names = self.user_names + self.candidate_names
        context = self.context.pooled([sparse[f] for f in names], 0, n)
        features = torch.cat([dense, context.reshape(n, -1), interest, item.view(n, -1)], 1)
        return torch.sigmoid(self.top(features)).view(n)
