"""The zoo: structured forward equals the naive forward; weights, schema and artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from executor.features import Batch, Query
from executor.models import (
    ARCHITECTURES,
    ModelSchema,
    SchemaError,
    ZooError,
    ZooModel,
    ZooSpec,
    build_model,
    expand_rows,
    parse_zoo_artifact,
    zoo_model,
)

SCALE = 0.0005  # 500 rows per table: every architecture builds in well under a second
TOL = 1e-5


def tensors(batch: Batch) -> tuple:
    t = torch.from_numpy
    return (
        t(batch.user_dense),
        {f: t(a) for f, a in batch.user_sparse.items()},
        t(batch.candidate_dense),
        {f: t(a) for f, a in batch.candidate_sparse.items()},
        t(batch.candidate_user),
    )


def scores(model: ZooModel, batch: Batch) -> np.ndarray:
    with torch.inference_mode():
        return model(*tensors(batch)).numpy()


def naive_scores(model: ZooModel, batch: Batch) -> np.ndarray:
    with torch.inference_mode():
        return model.forward_naive(*expand_rows(*tensors(batch))).numpy()


SPLITS = [{}, {"user_tables": 0}, {"candidate_dense": 0}, {"user_tables": 1, "candidate_dense": 1}]


@pytest.mark.parametrize("split", SPLITS, ids=["default", "no-user-tables", "dense-user", "thin"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_structured_forward_equals_naive_forward(arch: str, split: dict[str, int]) -> None:
    model = zoo_model(arch, scale=SCALE, seed=3, **split)
    rng = np.random.default_rng(11)
    for sizes in [(1,), (37,), (5, 1, 12), (3, 8, 2, 6, 1)]:
        batch = Batch.of([model.schema.random_query(rng, n) for n in sizes])
        structured, naive = scores(model, batch), naive_scores(model, batch)
        assert structured.shape == (sum(sizes),)
        np.testing.assert_allclose(structured, naive, rtol=0, atol=TOL, err_msg=f"sizes {sizes}")
    # Scores must spread out, or equality above would prove nothing.
    assert structured.std() > 0.01


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_all_user_tables_still_separates_candidates_by_dense(arch: str) -> None:
    tables = {"rmc1": 8, "rmc2": 32, "rmc3": 10, "wnd": 20, "din": 8}[arch]
    model = zoo_model(arch, scale=SCALE, user_tables=tables)
    rng = np.random.default_rng(0)
    batch = Batch.of([model.schema.random_query(rng, n) for n in (4, 9)])
    np.testing.assert_allclose(scores(model, batch), naive_scores(model, batch), atol=TOL)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_a_split_query_scores_like_the_whole_query(arch: str) -> None:
    model = zoo_model(arch, scale=SCALE)
    query = model.schema.random_query(np.random.default_rng(5), 23)
    whole = scores(model, Batch.of([query]))
    cuts = [0, 7, 8, 20, 23]
    pieces = [query.candidates(a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
    batched = scores(model, Batch.of(pieces))  # pieces of one query batched together
    one_by_one = np.concatenate([scores(model, Batch.of([p])) for p in pieces])
    np.testing.assert_allclose(batched, whole, atol=TOL)
    np.testing.assert_allclose(one_by_one, whole, atol=TOL)


def test_batch_scores_follow_each_querys_own_user() -> None:
    model = zoo_model("rmc2", scale=SCALE)
    rng = np.random.default_rng(1)
    queries = [model.schema.random_query(rng, n) for n in (6, 3, 9)]
    batch = Batch.of(queries)
    for query, part in zip(queries, batch.split_scores(scores(model, batch)), strict=True):
        np.testing.assert_allclose(part, scores(model, Batch.of([query])), atol=TOL)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_weights_are_a_function_of_the_seed(arch: str) -> None:
    a, b = zoo_model(arch, scale=SCALE, seed=7), zoo_model(arch, scale=SCALE, seed=7)
    c = zoo_model(arch, scale=SCALE, seed=8)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert any(
        not torch.equal(t, c.state_dict()[n])
        for n, t in a.state_dict().items()
        if t.is_floating_point()
    )
    before = torch.random.get_rng_state()
    zoo_model(arch, scale=SCALE, seed=9)
    assert torch.equal(before, torch.random.get_rng_state()), "building must not touch global RNG"


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_schema_describes_the_model(arch: str) -> None:
    spec = parse_zoo_artifact(f"zoo:{arch}?scale={SCALE}&user_tables=2&candidate_dense=3")
    model = build_model(spec)
    schema = model.schema
    assert ModelSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
    assert schema.candidate_dense == 3
    context = [f for f in schema.sparse if f.name not in ("history", "item")]
    assert [f.side for f in context[:2]] == ["user", "user"]
    assert all(f.side == "candidate" for f in context[2:])
    # The largest id of every feature is valid; an id past every feature's rows is refused by
    # the model. (One just past a feature's own rows may read another feature's row in a
    # model whose tables are one: the codec refuses it, test_runtime's bad-body cases.)
    rng = np.random.default_rng(0)
    query = schema.random_query(rng, 4)
    top = Query(
        query.user_dense,
        {
            f: np.full_like(a, schema_feature(schema, f).num_ids - 1)
            for f, a in query.user_sparse.items()
        },
        query.candidate_dense,
        {
            f: np.full_like(a, schema_feature(schema, f).num_ids - 1)
            for f, a in query.candidate_sparse.items()
        },
    )
    assert np.isfinite(scores(model, Batch.of([top]))).all()
    feature = schema.features("candidate")[0]
    bad = dict(query.candidate_sparse)
    bad[feature.name] = np.full_like(bad[feature.name], feature.num_ids * len(schema.sparse))
    with pytest.raises((IndexError, RuntimeError)):
        scores(
            model,
            Batch.of([Query(query.user_dense, query.user_sparse, query.candidate_dense, bad)]),
        )


def schema_feature(schema: ModelSchema, name: str):
    return next(f for f in schema.sparse if f.name == name)


def test_rmc2_production_split_is_the_default() -> None:
    spec = ZooSpec("rmc2")
    assert "user_tables=28" in spec.artifact
    assert parse_zoo_artifact(spec.artifact) == ZooSpec("rmc2", 0.01, 0, 28, 64)


@pytest.mark.parametrize(
    ("artifact", "words"),
    [
        ("zoo:rmc9", "unknown architecture"),
        ("zoo:rmc2?scale=0", "scale"),
        ("zoo:rmc2?scale=abc", "could not convert"),
        ("zoo:rmc2?user_tables=33", "user_tables"),
        ("zoo:rmc2?candidate_dense=-1", "candidate_dense"),
        ("zoo:rmc2?colour=red", "unknown parameter 'colour'"),
        ("zoo:rmc2?seed=1&seed=2", "given twice"),
        ("file:/x", "expected 'zoo:"),
    ],
)
def test_bad_zoo_artifacts_are_refused_with_a_reason(artifact: str, words: str) -> None:
    with pytest.raises(ZooError, match=words):
        parse_zoo_artifact(artifact)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"name": "m", "dense": {"user": -1, "candidate": 1}, "sparse": []}, "schema.dense.user"),
        ({"name": "m", "dense": {"user": 1, "candidate": 1}, "sparse": [{"name": "f"}]}, "side"),
        ({"name": "", "dense": {"user": 1, "candidate": 1}, "sparse": []}, "schema.name"),
        ({"name": "m", "dense": {"user": 1, "candidate": 1}, "sparse": {}}, "schema.sparse"),
    ],
)
def test_bad_schema_documents_name_the_field(doc: dict, field: str) -> None:
    with pytest.raises(SchemaError, match=field):
        ModelSchema.from_dict(doc)
