"""Running tensors: loading a model replica once and running batches on sessions.

This is the executor's only module that touches the device (docs/architecture.md §4, the vLLM-style
split: the scheduler decides, this runs). The scheduling side calls exactly this surface:

- ``load_model(artifact, device, *, lookup_streams=False) -> LoadedModel`` — one replica's
  weights, loaded once and shared by its sessions; raises :class:`ModelLoadError` (one line,
  naming the artifact) for anything wrong with the artifact, and touches no other model.
- ``LoadedModel.session() -> Session`` and ``Session.run(batch) -> np.ndarray`` — the (N,)
  float32 scores of a :class:`~executor.features.Batch`, in row order, computed on the
  session's own CUDA stream (GPU) or on the calling thread (CPU), under ``inference_mode``.
  ``Session.run_naive(batch)`` is the naive baseline: every candidate row carries a copy of
  its user's features through the plain architecture (zoo models' ``forward_naive``; a
  TorchScript model gets one user per row).
- ``configure_cpu_threads(n)`` — call once per serving process, before its sessions run.
- ``predict_footprint_bytes(artifact)`` and ``device_memory(device)`` — what a replica will
  hold and what a device can still take, so that a plan is checked before anything loads;
  ``LoadedModel.footprint_bytes`` is what the replica measured when it loaded.

Artifacts (allocator.cluster.plan.ModelReplica.artifact):
``zoo:<arch>?scale=…&seed=…&user_tables=…`` (executor.models.zoo), ``file:<path>`` (a
TorchScript module with the structured forward; its schema is the JSON member
``gpufair_schema.json`` of the archive — written by :func:`save_torchscript` — or else a
side-car ``<path>.schema.json``), and ``api:<model_id>``, which the daemon resolves to a
``file:`` path before calling :func:`load_model`. Every loaded model is probed with a small
batch built from its schema; a module that is not TorchScript, whose forward has the wrong
arity, or whose output is not (N,) finite floats is refused.

Sessions on the CPU. ``torch.set_num_threads`` is process-global (ATen keeps one intra-op
pool size), so a CPU session cannot own "one intra-op thread" by itself. The serving process
instead sets one intra-op thread for everyone, once (:func:`configure_cpu_threads`), and runs
each session in its own Python thread: torch releases the GIL inside every op, so k sessions
use up to k cores, which is inter-op parallelism by threads (measured by ``gpufair profile``:
docs/models.md). A single-session baseline with all cores as intra-op threads runs in its own
process with ``configure_cpu_threads(cores)``.

Compiled forwards on the CPU. A zoo model loaded on the CPU is also compiled with
``torch.jit.script`` (its structured forward and, for the naive baseline, ``forward_naive``),
and sessions call the compiled forwards: the whole forward then runs in C++ with the GIL
released once instead of around each of its ~40 ops, so the sessions of a group (Python
threads) no longer queue on the GIL between ops (the gain is measured in docs/benchmarks.md,
"Measurements behind design choices"). Scores are equal to the eager forward to float
rounding; a model that cannot be compiled is served eagerly (logged). Every TorchScript
forward (a compiled zoo model's, a ``file:`` module's) is run at load on batches of one user
and several, from one row to 700 (``WARM_SHAPES``), so that TorchScript compiles it then and
not on a tenant's first queries; a module that fails on one of them is refused.

Memory. A replica's footprint is measured when it loads: on CUDA, the bytes the caching
allocator handed out during the load (``torch.cuda.memory_allocated`` before and after, the
probe's activations freed), never less than its parameters and buffers; on the CPU, its
parameters and buffers (the process's RSS moves with every other thread's allocations, so it
would charge a replica for its neighbours' batches). Before loading, a zoo replica's bytes are
known exactly from its architecture (:func:`executor.models.footprint_bytes`) and a TorchScript
file's from the uncompressed size of its archive's tensor records. What a device can take is
CUDA's free memory (``torch.cuda.mem_get_info``) or the host's ``MemAvailable``.

Sessions on CUDA. Each session owns a ``torch.cuda.Stream``; its host-to-device copies, its
forward and its device-to-host copy are issued on that stream, and only that stream is
synchronised at the end, so sessions in different threads overlap on the GPU. With
``lookup_streams=True`` a zoo model's user-side work and its candidate-side embedding lookups
(independent until the per-candidate combine) are issued on two further streams of the
session (op-level parallelism, StreamRec/RecOS); on the CPU the switch changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from executor.features import Batch
from executor.models import (
    ModelSchema,
    SchemaError,
    ZooError,
    ZooModel,
    build_model,
    expand_rows,
    footprint_bytes,
    parse_zoo_artifact,
)

log = logging.getLogger(__name__)

# The batches a TorchScript forward is run on at load, each WARM_RUNS times: one user and
# several, from one candidate row to the sizes of large queries (users, candidate rows).
WARM_SHAPES = ((1, 1), (1, 64), (1, 700), (2, 2), (2, 64), (2, 700), (3, 3), (3, 64), (3, 700))
WARM_RUNS = 3
# Member of a TorchScript archive that holds the model's schema as JSON.
SCHEMA_MEMBER = "gpufair_schema.json"
SIDECAR_SUFFIX = ".schema.json"
FORWARD_ARGS = (
    "user_dense",
    "user_sparse",
    "candidate_dense",
    "candidate_sparse",
    "candidate_user",
)


class ModelLoadError(ValueError):
    """A model artifact cannot be served; the message names the artifact and the reason."""


def select_device(kind: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when present, else the CPU; or ``cpu`` / ``cuda[:i]``."""
    if kind == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(kind)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {kind!r}: CUDA is not available on this node")
    return device


def configure_cpu_threads(intra_op_threads: int = 1) -> None:
    """Set the process-wide intra-op thread count (1 for a multi-session server)."""
    if intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    torch.set_num_threads(intra_op_threads)
    log.info("CPU intra-op threads per op: %d", intra_op_threads)


@dataclass(frozen=True)
class BatchTensors:
    """A batch on the device, in the order of the structured forward's arguments."""

    user_dense: Tensor  # (B, Du) float32
    user_sparse: dict[str, Tensor]  # feature -> (B, L) int64
    candidate_dense: Tensor  # (N, Dc) float32
    candidate_sparse: dict[str, Tensor]  # feature -> (N, L) int64
    candidate_user: Tensor  # (N,) int64

    def args(self) -> tuple[Tensor, dict[str, Tensor], Tensor, dict[str, Tensor], Tensor]:
        return (
            self.user_dense,
            self.user_sparse,
            self.candidate_dense,
            self.candidate_sparse,
            self.candidate_user,
        )


def _tensor(array: np.ndarray, dtype: np.dtype[Any], device: torch.device) -> Tensor:
    array = np.ascontiguousarray(array, dtype=dtype)
    if not array.flags.writeable:  # torch.from_numpy refuses to alias read-only memory
        array = array.copy()
    return torch.from_numpy(array).to(device, non_blocking=True)


@dataclass(frozen=True)
class LoadedModel:
    """One replica: weights loaded once on ``device`` and shared by all its sessions."""

    artifact: str  # as given to load_model
    module: torch.nn.Module  # a ZooModel or a TorchScript module with the structured forward
    schema: ModelSchema
    device: torch.device
    lookup_streams: bool = False  # CUDA op-level parallelism of the lookups (zoo models only)
    compiled: Any = None  # the zoo model's structured forward, TorchScript-compiled (CPU)
    compiled_naive: Any = None  # its forward_naive, compiled (CPU)
    footprint_bytes: int = 0  # device memory the replica took when it loaded (measured)

    def tensors(self, batch: Batch) -> BatchTensors:
        """Copy a batch to the device (on the current stream)."""
        f32, i64, dev = np.dtype(np.float32), np.dtype(np.int64), self.device
        return BatchTensors(
            user_dense=_tensor(batch.user_dense, f32, dev),
            user_sparse={f: _tensor(a, i64, dev) for f, a in batch.user_sparse.items()},
            candidate_dense=_tensor(batch.candidate_dense, f32, dev),
            candidate_sparse={f: _tensor(a, i64, dev) for f, a in batch.candidate_sparse.items()},
            candidate_user=_tensor(batch.candidate_user, i64, dev),
        )

    def session(self) -> Session:
        return Session(self)

    def weight_bytes(self) -> int:
        """Bytes of the module's parameters and buffers."""
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class DeviceMemory:
    """What a device holds: bytes free now and in all."""

    free_bytes: int
    total_bytes: int


def device_memory(device: torch.device | str) -> DeviceMemory:
    """Free and total memory of a CUDA device, or of the host for the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        return DeviceMemory(int(free), int(total))
    return _host_memory()


def _host_memory() -> DeviceMemory:
    # MemAvailable counts the page cache the kernel would drop for us; MemFree does not.
    fields: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                key, _, value = line.partition(":")
                fields[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if "MemAvailable" in fields and "MemTotal" in fields:
        return DeviceMemory(fields["MemAvailable"], fields["MemTotal"])
    page = os.sysconf("SC_PAGE_SIZE")
    return DeviceMemory(os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page)


def predict_footprint_bytes(artifact: str) -> int:
    """The bytes a replica of ``artifact`` will hold once loaded, before loading it: exact
    for a zoo model, the uncompressed tensor records of a TorchScript archive (0 when the
    file cannot be read: loading it will say why). Raises ModelLoadError for a bad reference."""
    scheme, _, rest = artifact.partition(":")
    if scheme == "zoo":
        try:
            return footprint_bytes(parse_zoo_artifact(artifact))
        except ZooError as exc:
            raise ModelLoadError(str(exc)) from exc
    if scheme == "file":
        try:
            with zipfile.ZipFile(rest) as archive:
                # torch.save/jit.save keep each tensor's storage as one record under data/.
                return sum(i.file_size for i in archive.infolist() if "/data/" in i.filename)
        except (OSError, zipfile.BadZipFile):
            return 0
    raise ModelLoadError(f"artifact {artifact!r}: unknown scheme; expected zoo: or file:")


class Session:
    """A worker's context for one replica: its own CUDA stream on a GPU, nothing on a CPU.

    A session is used by one thread at a time; sessions of one replica share its weights.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        cuda = model.device.type == "cuda"
        self.stream = torch.cuda.Stream(model.device) if cuda else None
        self.side_streams = (
            (torch.cuda.Stream(model.device), torch.cuda.Stream(model.device))
            if cuda and model.lookup_streams and isinstance(model.module, ZooModel)
            else None
        )

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.stream is None:
                yield
            else:
                with torch.cuda.stream(self.stream):
                    yield

    def run(self, batch: Batch) -> np.ndarray:
        """Scores of the batch's N candidate rows, (N,) float32, with the structured forward."""
        with self._context():
            t = self.model.tensors(batch)
            module = self.model.module
            if self.side_streams is not None and isinstance(module, ZooModel):
                scores = _forward_on_streams(module, t, self.side_streams)
            elif self.model.compiled is not None:
                scores = self.model.compiled(*t.args())
            else:
                scores = module(*t.args())
            return _host(scores)

    def run_naive(self, batch: Batch) -> np.ndarray:
        """The naive baseline's scores: user features copied onto every candidate row."""
        with self._context():
            args = self.model.tensors(batch).args()
            module = self.model.module
            if self.model.compiled_naive is not None:
                scores = self.model.compiled_naive(*expand_rows(*args))
            elif isinstance(module, ZooModel):
                scores = module.forward_naive(*expand_rows(*args))
            else:
                user_dense, user_sparse, cand_dense, cand_sparse, cand_user = args
                rows = torch.arange(cand_user.shape[0], device=cand_user.device)
                scores = module(
                    user_dense.index_select(0, cand_user),
                    {f: ids.index_select(0, cand_user) for f, ids in user_sparse.items()},
                    cand_dense,
                    cand_sparse,
                    rows,
                )
            return _host(scores)


def _host(scores: Tensor) -> np.ndarray:
    # .cpu() synchronises only the current (the session's) stream.
    return scores.detach().to("cpu", torch.float32).numpy()


def _forward_on_streams(
    module: ZooModel, t: BatchTensors, streams: tuple[torch.cuda.Stream, torch.cuda.Stream]
) -> Tensor:
    """The structured forward with user-side and candidate-side work on two side streams."""
    main = torch.cuda.current_stream(t.user_dense.device)
    user_stream, cand_stream = streams
    user_stream.wait_stream(main)
    cand_stream.wait_stream(main)
    with torch.cuda.stream(user_stream):
        user = module.user_part(t.user_dense, t.user_sparse)  # type: ignore[operator]
    with torch.cuda.stream(cand_stream):
        lookups = module.candidate_lookups(  # type: ignore[operator]
            t.candidate_sparse, t.candidate_dense.shape[0]
        )
    main.wait_stream(user_stream)
    main.wait_stream(cand_stream)
    # Tensors made on a side stream and used on the main one must not be reused by the
    # caching allocator before the main stream is done with them.
    for tensor in _tensors_in((user, lookups)):
        tensor.record_stream(main)
    return module.combine(user, lookups, t.candidate_dense, t.candidate_user)  # type: ignore[operator]


def _tensors_in(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _tensors_in(item)


def load_model(
    artifact: str, device: torch.device | str = "cpu", *, lookup_streams: bool = False
) -> LoadedModel:
    """Load and probe one replica; raise ModelLoadError with a one-line reason."""
    dev = select_device(device) if isinstance(device, str) else device
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
    loaded = _load(artifact, dev, lookup_streams)
    _probe(loaded)
    _warm(loaded)
    footprint = loaded.weight_bytes()
    if cuda:
        torch.cuda.synchronize(dev)
        footprint = max(footprint, torch.cuda.memory_allocated(dev) - before)
    loaded = dataclasses.replace(loaded, footprint_bytes=footprint)
    log.info("loaded %s on %s (%.1f MiB)", artifact, dev, footprint / 2**20)
    return loaded


def _load(artifact: str, dev: torch.device, lookup_streams: bool) -> LoadedModel:
    scheme, _, rest = artifact.partition(":")
    if scheme == "zoo":
        try:
            model = build_model(parse_zoo_artifact(artifact)).to(dev)
        except ZooError as exc:
            raise ModelLoadError(str(exc)) from exc
        loaded = LoadedModel(artifact, model, model.schema, dev, lookup_streams)
        if dev.type == "cpu":
            loaded = _compiled(loaded)
    elif scheme == "file":
        module, schema = _load_torchscript(artifact, Path(rest), dev)
        loaded = LoadedModel(artifact, module, schema, dev, lookup_streams)
    elif scheme == "api":
        raise ModelLoadError(
            f"artifact {artifact!r}: api: artifacts are fetched by the daemon and loaded as file:"
        )
    else:
        raise ModelLoadError(f"artifact {artifact!r}: unknown scheme; expected zoo:, file: or api:")
    return loaded


class _NaiveForward(torch.nn.Module):
    """A zoo model's ``forward_naive`` as a module's forward, so that it can be scripted."""

    def __init__(self, model: ZooModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: Tensor, sparse: dict[str, Tensor]) -> Tensor:
        return self.model.forward_naive(dense, sparse)  # type: ignore[operator]


def _compiled(loaded: LoadedModel) -> LoadedModel:
    """The zoo model with its forwards compiled by TorchScript, or as it is if that fails."""
    module = loaded.module
    try:
        compiled = torch.jit.script(module)
        naive = torch.jit.script(_NaiveForward(module))  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - serving eagerly is always correct
        log.warning("%s: TorchScript failed, serving eagerly (%s)", loaded.artifact, _summary(exc))
        return loaded
    return dataclasses.replace(loaded, compiled=compiled, compiled_naive=naive)


def save_torchscript(module: torch.nn.Module, schema: ModelSchema, path: str | Path) -> None:
    """Script ``module`` (unless it already is) and save it with its schema inside the archive."""
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    extra = {SCHEMA_MEMBER: json.dumps(schema.to_dict())}
    torch.jit.save(scripted, str(path), _extra_files=extra)


def _load_torchscript(
    artifact: str, path: Path, device: torch.device
) -> tuple[torch.jit.ScriptModule, ModelSchema]:
    if not path.is_file():
        raise ModelLoadError(f"artifact {artifact!r}: no such file {str(path)!r}")
    extra = {SCHEMA_MEMBER: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad archive
        raise ModelLoadError(
            f"artifact {artifact!r}: not a TorchScript archive ({_summary(exc)})"
        ) from exc
    text = extra[SCHEMA_MEMBER]
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if not text and sidecar.is_file():
        text = sidecar.read_text()
    if not text:
        raise ModelLoadError(
            f"artifact {artifact!r}: no schema (archive member {SCHEMA_MEMBER} or {sidecar.name})"
        )
    try:
        schema = ModelSchema.from_dict(json.loads(text))
    except (json.JSONDecodeError, SchemaError) as exc:
        raise ModelLoadError(f"artifact {artifact!r}: bad schema: {exc}") from exc
    arguments = [a.name for a in module.forward.schema.arguments][1:]
    if len(arguments) != len(FORWARD_ARGS):
        raise ModelLoadError(
            f"artifact {artifact!r}: forward takes ({', '.join(arguments)}); "
            f"expected ({', '.join(FORWARD_ARGS)})"
        )
    module.eval()
    return module, schema


def _probe(model: LoadedModel) -> None:
    """Run a small batch; refuse the model unless it returns (N,) finite floats."""
    batch = model.schema.probe_batch()
    n = int(batch.candidate_user.shape[0])
    try:
        with torch.inference_mode():
            out = model.module(*model.tensors(batch).args())
    except Exception as exc:  # noqa: BLE001 - any failure of foreign code refuses the model
        raise ModelLoadError(
            f"artifact {model.artifact!r}: probe forward failed ({_summary(exc)})"
        ) from exc
    if not isinstance(out, Tensor) or tuple(out.shape) != (n,) or not out.is_floating_point():
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelLoadError(
            f"artifact {model.artifact!r}: forward must return ({n},) float scores, got {shape}"
        )
    if not all(math.isfinite(v) for v in out.float().cpu().tolist()):
        raise ModelLoadError(f"artifact {model.artifact!r}: probe scores are not finite")


def _warm(model: LoadedModel) -> None:
    """Run a TorchScript forward on WARM_SHAPES, so that its first queries do not compile it.

    TorchScript's profiling executor compiles a forward when it is first called and again for
    the first few new kinds of input (one user or several, one row or many): a compiled RMC2
    replica's first forward took 57–61 ms of CPU and its second 23–24 ms, against 3–6 ms after
    (docs/benchmarks.md). At load, before a plan swaps the replica in, those compilations cost
    no tenant a query, and its measured service rate, which admission control predicts with,
    starts from forwards as they will run.
    """
    forward = model.compiled
    if forward is None and isinstance(model.module, torch.jit.ScriptModule):
        forward = model.module
    if forward is None:
        return
    rng = np.random.default_rng(0)
    for users, rows in WARM_SHAPES:
        each = max(1, rows // users)
        batch = Batch.of([model.schema.random_query(rng, each) for _ in range(users)])
        try:
            with torch.inference_mode():
                args = model.tensors(batch).args()
                for _ in range(WARM_RUNS):
                    forward(*args)
        except Exception as exc:  # noqa: BLE001 - any failure of foreign code refuses the model
            raise ModelLoadError(
                f"artifact {model.artifact!r}: forward failed on {users} user(s) with "
                f"{each} candidates each ({_summary(exc)})"
            ) from exc


def _summary(exc: BaseException) -> str:
    """The last meaningful line of an exception (TorchScript errors span many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]
