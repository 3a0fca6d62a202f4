"""Building blocks shared by the zoo: seeded layers, fused embedding tables, the zoo base class.

Weights come from one ``torch.Generator`` per model, drawn on the CPU in a fixed order, so the
same (architecture, scale, seed, split) gives bit-identical weights on any device and never
touches torch's global RNG. Layers use He-normal initialisation and embedding rows are scaled
so that a sum-pooled vector has per-component variance 1/sqrt(dim): activations neither vanish
nor saturate the final sigmoid, which keeps score comparisons in the tests meaningful.

:class:`FusedTables` stores several tables of the same width as one weight with row offsets, so
a group of tables is pooled by a single ``F.embedding_bag`` call (one kernel instead of one per
table) — the per-candidate lookups of the structured forward are the hot path of serving.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from executor.models.schema import ModelSchema

T = TypeVar("T")

# Below this many rows, CPU lookups of several tables go through one fused call.
PER_TABLE_MIN_ROWS = 32


def script_attributes(**types: Any) -> Callable[[type[T]], type[T]]:
    """Declare attribute types for TorchScript, which cannot infer the type of an empty list.

    Class-body annotations stay strings under ``from __future__ import annotations`` and
    TorchScript does not resolve those, so the evaluated types are added here.
    """

    def declare(cls: type[T]) -> type[T]:
        cls.__annotations__ = {**cls.__dict__.get("__annotations__", {}), **types}
        return cls

    return declare


def seeded_linear(fan_in: int, fan_out: int, gen: torch.Generator) -> nn.Linear:
    """A frozen Linear layer with He-normal weights drawn from ``gen``."""
    layer = nn.utils.skip_init(nn.Linear, fan_in, fan_out)
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(fan_out, fan_in, generator=gen) * math.sqrt(2.0 / fan_in))
        layer.bias.copy_((torch.rand(fan_out, generator=gen) * 2 - 1) * bound)
    layer.requires_grad_(False)
    return layer


class MLP(nn.Module):
    """Linear layers with ReLU between them; the first layer is exposed on its own.

    The structured forward splits the first layer's input into a user part and a candidate part
    (W·[u;c] = W_u·u + W_c·c) and continues with :meth:`after_first` on the sum.
    """

    def __init__(self, sizes: list[int], gen: torch.Generator, final_relu: bool) -> None:
        super().__init__()
        if len(sizes) < 3:
            raise ValueError(f"an MLP needs at least two layers, got sizes {sizes}")
        self.first = seeded_linear(sizes[0], sizes[1], gen)
        rest: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[1:-1], sizes[2:], strict=True):
            rest += [nn.ReLU(), seeded_linear(fan_in, fan_out, gen)]
        if final_relu:
            rest.append(nn.ReLU())
        self.rest = nn.Sequential(*rest)

    def forward(self, x: Tensor) -> Tensor:
        return self.rest(self.first(x))

    def after_first(self, h: Tensor) -> Tensor:
        return self.rest(h)


class FusedTables(nn.Module):
    """``count`` embedding tables of ``rows`` rows and width ``dim``, stored as one weight."""

    if TYPE_CHECKING:  # buffers, typed for mypy only (TorchScript reads the real ones)
        offsets: Tensor

    def __init__(self, count: int, rows: int, dim: int, lookups: int, gen: torch.Generator) -> None:
        super().__init__()
        # Pooled per-component variance 1/sqrt(dim): uniform(-a, a) has variance a²/3.
        bound = math.sqrt(3.0 / (lookups * math.sqrt(dim)))
        # In place: the tables are most of a model's bytes, and an out-of-place expression
        # would hold two copies of them at once while loading.
        weight = torch.rand(count * rows, dim, generator=gen).mul_(2).sub_(1).mul_(bound)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("offsets", torch.arange(count, dtype=torch.int64) * rows)
        self.dim = dim
        self.rows = rows
        self.per_table_min_rows = PER_TABLE_MIN_ROWS

    def pooled(self, ids: list[Tensor], first: int, rows: int) -> Tensor:
        """Sum-pool tables ``first, first+1, …`` over their ids: (rows, len(ids), dim).

        ``ids[k]`` is the (rows, L) id matrix of table ``first + k``. A few rows over many
        tables (the user side of a query) are pooled by one kernel over shifted ids, as is
        everything on CUDA. Many rows on the CPU (the candidate side) are pooled one table per
        call: each call's working set is then one table, which stays in cache better, and no
        shifted copy of the ids is made (measured in docs/models.md).
        """
        if len(ids) == 0:
            return self.weight.new_zeros(rows, 0, self.dim)
        if self.weight.is_cuda or rows < self.per_table_min_rows:
            stacked = torch.stack(ids, 1)  # (rows, T, L)
            count = stacked.shape[1]
            shifted = stacked + self.offsets[first : first + count].view(1, count, 1)
            pooled = F.embedding_bag(shifted.view(rows * count, -1), self.weight, mode="sum")
            return pooled.view(rows, count, self.dim)
        outputs: list[Tensor] = []
        for k, table_ids in enumerate(ids):
            start = (first + k) * self.rows
            table = self.weight[start : start + self.rows]
            outputs.append(F.embedding_bag(table_ids, table, mode="sum"))
        return torch.stack(outputs, 1)


class ZooModel(nn.Module):
    """Base of the zoo's architectures: a schema, a structured forward and a naive forward.

    Every subclass implements the structured-feature forward of :mod:`executor.features` in
    three stages, which the runtime may place on different CUDA streams (StreamRec/RecOS
    op-level parallelism): ``user_part`` (everything that depends on the users only),
    ``candidate_lookups`` (the candidate-side embedding lookups) and ``combine`` (the rest,
    per candidate row). ``forward_naive`` is the plain unsplit architecture over rows that each
    carry a copy of their user's features: the baseline server's compute, and the reference
    the structured forward must equal.
    """

    # The schema is plain Python; TorchScript compiles the tensor code only.
    __jit_ignored_attributes__ = ["schema"]

    def __init__(self, schema: ModelSchema) -> None:
        super().__init__()
        self.schema = schema

    def forward(
        self,
        user_dense: Tensor,
        user_sparse: dict[str, Tensor],
        candidate_dense: Tensor,
        candidate_sparse: dict[str, Tensor],
        candidate_user: Tensor,
    ) -> Tensor:
        """The structured forward: (N,) scores. TorchScript compiles it per subclass."""
        user = self.user_part(user_dense, user_sparse)
        lookups = self.candidate_lookups(candidate_sparse, candidate_dense.shape[0])
        return self.combine(user, lookups, candidate_dense, candidate_user)

    # The three stages; each subclass defines them with its own tensor tuples.
    user_part: Callable[..., Any]
    candidate_lookups: Callable[..., Any]
    combine: Callable[..., Tensor]

    def memory_mb(self) -> float:
        """Bytes of parameters and buffers of one replica, in MiB."""
        tensors = list(self.parameters()) + list(self.buffers())
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20

    def forward_naive(self, dense: Tensor, sparse: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


def expand_rows(
    user_dense: Tensor,
    user_sparse: dict[str, Tensor],
    candidate_dense: Tensor,
    candidate_sparse: dict[str, Tensor],
    candidate_user: Tensor,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The naive server's input: every candidate row with a copy of its user's features.

    Dense columns are the user's then the candidate's; sparse holds every feature per row.
    """
    dense = torch.cat([user_dense.index_select(0, candidate_user), candidate_dense], 1)
    sparse = {f: ids.index_select(0, candidate_user) for f, ids in user_sparse.items()}
    sparse.update(candidate_sparse)
    return dense, sparse
