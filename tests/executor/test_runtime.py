"""The runtime: loading artifacts, sessions (threads, CUDA streams) and the query codec."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from executor import runtime
from executor.codec import (
    QueryError,
    parse_query_json,
    parse_query_oip,
    query_to_json,
    query_to_oip,
)
from executor.features import Batch, Query
from executor.models import ModelSchema, zoo_model
from executor.runtime import (
    SCHEMA_MEMBER,
    SIDECAR_SUFFIX,
    ModelLoadError,
    configure_cpu_threads,
    load_model,
    save_torchscript,
)

# TorchScript is the tenant format the executor accepts, deprecated upstream or not.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

ARTIFACT = "zoo:rmc2?scale=0.0005&seed=2&user_tables=28"
TOL = 1e-5


def batches(schema: ModelSchema, seed: int, count: int) -> list[Batch]:
    rng = np.random.default_rng(seed)
    return [
        Batch.of([schema.random_query(rng, int(n)) for n in rng.integers(1, 40, size=k)])
        for k in rng.integers(1, 4, size=count)
    ]


def test_session_scores_equal_the_naive_path() -> None:
    model = load_model(ARTIFACT, "cpu")
    session = model.session()
    for batch in batches(model.schema, 0, 5):
        structured = session.run(batch)
        assert structured.dtype == np.float32 and structured.shape == (len(batch.candidate_user),)
        np.testing.assert_allclose(structured, session.run_naive(batch), atol=TOL)


def test_sessions_in_threads_score_like_one_session() -> None:
    model = load_model(ARTIFACT, "cpu")
    work = batches(model.schema, 1, 12)
    expected = [model.session().run(b) for b in work]
    results: dict[int, np.ndarray] = {}

    def serve(k: int) -> None:
        session = model.session()  # one session per thread, one shared copy of the weights
        for i in range(k, len(work), 4):
            results[i] = session.run(work[i])

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(len(work)))
    for i, want in enumerate(expected):
        np.testing.assert_allclose(results[i], want, atol=TOL)


def test_torchscript_round_trip_with_embedded_schema(tmp_path: Path) -> None:
    zoo = load_model(ARTIFACT, "cpu")
    path = tmp_path / "tenant.pt"
    save_torchscript(zoo.module, zoo.schema, path)
    tenant = load_model(f"file:{path}", "cpu")
    assert tenant.schema == zoo.schema
    for batch in batches(zoo.schema, 2, 3):
        np.testing.assert_allclose(tenant.session().run(batch), zoo.session().run(batch), atol=TOL)
        # A tenant module has no forward_naive: its naive path is one user per row.
        np.testing.assert_allclose(
            tenant.session().run_naive(batch), zoo.session().run(batch), atol=TOL
        )


def test_torchscript_schema_from_a_sidecar_file(tmp_path: Path) -> None:
    model = zoo_model("din", scale=0.0005)
    path = tmp_path / "din.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    with pytest.raises(ModelLoadError, match="no schema"):
        load_model(f"file:{path}")
    Path(str(path) + SIDECAR_SUFFIX).write_text(json.dumps(model.schema.to_dict()))
    assert load_model(f"file:{path}").schema == model.schema


class WrongArity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class WrongShape(nn.Module):
    def forward(
        self,
        user_dense: Tensor,
        user_sparse: dict[str, Tensor],
        candidate_dense: Tensor,
        candidate_sparse: dict[str, Tensor],
        candidate_user: Tensor,
    ) -> Tensor:
        return candidate_dense[:, :2]


class Crashes(WrongShape):
    def forward(
        self,
        user_dense: Tensor,
        user_sparse: dict[str, Tensor],
        candidate_dense: Tensor,
        candidate_sparse: dict[str, Tensor],
        candidate_user: Tensor,
    ) -> Tensor:
        return candidate_sparse["no-such-feature"].float().sum(1)


class FailsOnLargeBatches(WrongShape):
    """Passes the probe (5 rows) and fails on a batch the size of a large query."""

    def forward(
        self,
        user_dense: Tensor,
        user_sparse: dict[str, Tensor],
        candidate_dense: Tensor,
        candidate_sparse: dict[str, Tensor],
        candidate_user: Tensor,
    ) -> Tensor:
        if candidate_user.shape[0] > 100:
            raise RuntimeError("too many rows")
        return torch.zeros(candidate_user.shape[0])


def _save(module: nn.Module, schema: ModelSchema, path: Path) -> str:
    save_torchscript(module, schema, path)
    return f"file:{path}"


def test_bad_artifacts_are_refused_and_hurt_no_other_model(tmp_path: Path) -> None:
    good = load_model(ARTIFACT, "cpu")
    batch = batches(good.schema, 3, 1)[0]
    before = good.session().run(batch)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip archive")
    bad_schema = tmp_path / "bad_schema.pt"
    torch.jit.save(
        torch.jit.script(WrongShape()), str(bad_schema), _extra_files={SCHEMA_MEMBER: "{"}
    )
    cases = {
        f"file:{garbage}": "not a TorchScript archive",
        f"file:{tmp_path / 'missing.pt'}": "no such file",
        f"file:{bad_schema}": "bad schema",
        _save(WrongArity(), good.schema, tmp_path / "arity.pt"): "forward takes",
        _save(WrongShape(), good.schema, tmp_path / "shape.pt"): r"must return \(5,\) float scores",
        _save(Crashes(), good.schema, tmp_path / "crash.pt"): "probe forward failed",
        _save(FailsOnLargeBatches(), good.schema, tmp_path / "large.pt"): (
            r"forward failed on 1 user\(s\) with 700 candidates each \(.*too many rows"
        ),
        "api:tenant-model": "fetched by the daemon",
        "s3://bucket/model": "unknown scheme",
        "zoo:rmc2?scale=7": "scale",
    }
    for artifact, reason in cases.items():
        with pytest.raises(ModelLoadError, match=reason) as info:
            load_model(artifact, "cpu")
        assert "\n" not in str(info.value), "errors are one line"
    np.testing.assert_array_equal(good.session().run(batch), before)


def test_a_compiled_replica_runs_its_forward_at_load_on_one_user_and_several(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its forward compiles at load, not on a tenant's first queries: before load_model
    returns, the compiled forward has run, each more than once, on batches of one user and of
    several, from one candidate row to a large query's 700."""
    calls: list[tuple[int, int]] = []
    compile_forwards = runtime._compiled

    def spied(loaded: runtime.LoadedModel) -> runtime.LoadedModel:
        compiled = compile_forwards(loaded)
        inner = compiled.compiled
        assert inner is not None

        def forward(*args: Any) -> Tensor:
            calls.append((int(args[0].shape[0]), int(args[4].shape[0])))
            return inner(*args)

        return dataclasses.replace(compiled, compiled=forward)

    monkeypatch.setattr(runtime, "_compiled", spied)
    load_model(ARTIFACT, "cpu")
    shapes = set(calls)
    assert all(calls.count(shape) > 1 for shape in shapes)
    assert {users for users, _ in shapes} >= {1, 2, 3}
    for users in (1, 2, 3):
        rows = sorted(r for u, r in shapes if u == users)
        assert rows[0] == users and rows[-1] >= 699


def test_cpu_threads_are_configured_once_per_process() -> None:
    saved = torch.get_num_threads()
    try:
        configure_cpu_threads(1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="intra_op_threads"):
            configure_cpu_threads(0)
    finally:
        torch.set_num_threads(saved)


# ---- codec -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> ModelSchema:
    return zoo_model("din", scale=0.0005, user_tables=3, candidate_dense=2).schema


def assert_same_query(a: Query, b: Query) -> None:
    np.testing.assert_array_equal(a.user_dense, b.user_dense)
    np.testing.assert_array_equal(a.candidate_dense, b.candidate_dense)
    assert a.user_sparse.keys() == b.user_sparse.keys()
    assert a.candidate_sparse.keys() == b.candidate_sparse.keys()
    for f in a.user_sparse:
        np.testing.assert_array_equal(a.user_sparse[f], b.user_sparse[f])
    for f in a.candidate_sparse:
        np.testing.assert_array_equal(a.candidate_sparse[f], b.candidate_sparse[f])


def test_json_and_binary_bodies_round_trip(schema: ModelSchema) -> None:
    query = schema.random_query(np.random.default_rng(0), 6)
    assert_same_query(parse_query_json(schema, json.dumps(query_to_json(query)).encode()), query)
    assert_same_query(parse_query_json(schema, query_to_json(query)), query)
    parsed, _ = parse_query_oip(schema, *query_to_oip(query))
    assert_same_query(parsed, query)
    assert parsed.candidate_sparse["item"].dtype == np.int64


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_dense_values_must_be_finite_and_the_largest_finite_ones_pass(
    schema: ModelSchema, bad: float
) -> None:
    query = schema.random_query(np.random.default_rng(3), 5)
    largest = np.finfo(np.float32).max
    big = Query(
        np.full_like(query.user_dense, largest),
        query.user_sparse,
        np.full_like(query.candidate_dense, largest),
        query.candidate_sparse,
    )
    assert_same_query(parse_query_oip(schema, *query_to_oip(big))[0], big)  # no overflow
    for where, message in (("user", "user.dense"), ("candidate", "candidates.dense")):
        user, candidates = big.user_dense.copy(), big.candidate_dense.copy()
        (user if where == "user" else candidates).reshape(-1)[-1] = bad
        broken = Query(user, query.user_sparse, candidates, query.candidate_sparse)
        with pytest.raises(QueryError, match=f"{message}: values must be finite"):
            parse_query_oip(schema, *query_to_oip(broken))


def _mutated(schema: ModelSchema, change) -> dict:
    body = query_to_json(schema.random_query(np.random.default_rng(1), 3))
    change(body)
    return body


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b["user"].update(dense=[1.0]), "user.dense: expected 14 values"),
        (lambda b: b["user"]["sparse"].pop("history"), "user.sparse.history: missing"),
        (lambda b: b["user"]["sparse"].update(zz=[1]), "user.sparse.zz: not a user-side feature"),
        (lambda b: b["candidates"]["sparse"]["item"][1].append(0), "candidates.sparse.item"),
        (
            lambda b: b["candidates"]["sparse"]["item"].__setitem__(0, [10**6]),
            r"ids must lie in \[0, 500\)",
        ),
        (  # one past the table: a model would read another feature's row, without an error
            lambda b: b["candidates"]["sparse"]["item"].__setitem__(0, [500]),
            r"ids must lie in \[0, 500\)",
        ),
        (lambda b: b["candidates"]["sparse"]["item"].__setitem__(0, [-1]), "ids must lie"),
        (
            lambda b: b["candidates"]["sparse"].update(item=[[True]] * 3),
            "integer ids, got booleans",
        ),
        (lambda b: b["candidates"]["sparse"]["item"].__setitem__(0, [1.5]), "integer ids"),
        (lambda b: b["candidates"].update(dense=[[1.0, "x"]] * 3), "candidates.dense"),
        (
            lambda b: b["candidates"].update(dense=[[1.0]] * 3),
            "candidates.dense: expected N rows of 2",
        ),
        (lambda b: b["candidates"].update(dense=[]), "candidates.dense"),
        (lambda b: b.update(extra=1), "body.extra: unexpected field"),
        (lambda b: b.pop("user"), "user: expected an object"),
    ],
)
def test_bad_json_bodies_name_the_field(schema: ModelSchema, change, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query_json(schema, _mutated(schema, change))


def test_unparseable_bodies_are_query_errors(schema: ModelSchema) -> None:
    with pytest.raises(QueryError, match="invalid JSON"):
        parse_query_json(schema, b"{nope")
    with pytest.raises(ValueError, match="invalid JSON"):
        parse_query_oip(schema, b"PK garbage", 2)
    query = schema.random_query(np.random.default_rng(2), 2)
    bad = Query(
        query.user_dense, query.user_sparse, query.candidate_dense[:, :1], query.candidate_sparse
    )
    with pytest.raises(QueryError, match="candidate"):
        parse_query_oip(schema, *query_to_oip(bad))


# ---- GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_sessions_match_the_cpu_and_streams_change_nothing() -> None:
    cpu = load_model(ARTIFACT, "cpu")
    plain = load_model(ARTIFACT, "cuda")
    streamed = load_model(ARTIFACT, "cuda", lookup_streams=True)
    work = batches(cpu.schema, 4, 6)
    results: dict[int, np.ndarray] = {}

    def serve(k: int) -> None:
        session = streamed.session()
        for i in range(k, len(work), 3):
            results[i] = session.run(work[i])

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, batch in enumerate(work):
        want = cpu.session().run(batch)
        np.testing.assert_allclose(plain.session().run(batch), want, atol=1e-4)
        np.testing.assert_allclose(results[i], want, atol=1e-4)
        np.testing.assert_allclose(plain.session().run_naive(batch), want, atol=1e-4)
