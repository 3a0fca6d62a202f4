"""The Open Inference Protocol: its tensors both ways (JSON and binary, zero-copy), the query's
tensors, and ``tritonclient.http`` — a client no one here wrote — against a real
``gpufair executor`` process, binary and JSON."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from executor import codec
from executor.fake import FAKE_SCHEMA
from executor.features import Batch, Query
from executor.runtime import load_model
from executor.wire import oip
from gpufair.servers import ChildServer
from tests.executor.scheduling_helpers import plan, queries, seat

ZOO = "zoo:rmc2?scale=0.001&seed=3&user_tables=28"
START_S = 120.0  # a daemon's start: torch import and a model load on a busy 2-core machine


def random_tensors(seed: int) -> dict[str, np.ndarray]:
    """One tensor of every datatype, of random shapes (some empty)."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for k, (name, dtype) in enumerate(oip.DATATYPES.items()):
        shape = tuple(int(d) for d in rng.integers(0, 4, size=int(rng.integers(0, 4))))
        values = rng.integers(0, 100, size=shape) if dtype.kind != "f" else rng.random(shape)
        tensors[f"t{k}-{name}"] = np.asarray(values).astype(dtype)
    return tensors


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("binary", [True, False])
def test_tensors_decode_to_what_was_encoded(seed: int, binary: bool) -> None:
    tensors = random_tensors(seed)
    body, header_length = oip.encode_request(tensors, binary=binary, request_id=f"q{seed}")
    assert (header_length is None) == (not binary)
    request = oip.decode_request(body, header_length)
    assert request.id == f"q{seed}" and request.binary_output
    assert list(request.inputs) == list(tensors)
    for name, array in tensors.items():
        decoded = request.inputs[name]
        assert decoded.dtype == array.dtype and decoded.shape == array.shape, name
        np.testing.assert_array_equal(decoded, array)


def test_binary_tensors_are_views_of_the_body() -> None:
    tensors: dict[str, np.ndarray] = {
        "a": np.arange(12, dtype=np.int64).reshape(3, 4),
        "b": np.ones(5, np.float32),
    }
    body, header_length = oip.encode_request(tensors)
    whole = np.frombuffer(body, np.uint8)
    request = oip.decode_request(body, header_length)
    for name in tensors:
        assert np.shares_memory(request.inputs[name], whole), name


def test_a_reply_reads_back_binary_and_json() -> None:
    scores = np.linspace(-1, 1, 7, dtype=np.float32)
    for binary in (True, False):
        body, header_length = oip.encode_reply(
            "m", {"scores": scores}, request_id="7", binary=binary
        )
        assert json.loads(body[:header_length])["id"] == "7"
        np.testing.assert_array_equal(oip.decode_reply(body, header_length)["scores"], scores)


def _binary_request(tensors: dict[str, np.ndarray]) -> tuple[dict, bytes]:
    body, header_length = oip.encode_request(tensors)
    assert header_length is not None
    return json.loads(body[:header_length]), body[header_length:]


def _reencode(doc: dict, tail: bytes) -> tuple[bytes, int]:
    header = json.dumps(doc).encode()
    return header + tail, len(header)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda doc, tail: (doc, tail[:-1]), "inputs[b]: body ends"),
        (lambda doc, tail: (doc, tail + b"x"), "1 bytes after the last binary tensor"),
        (lambda doc, tail: ({**doc, "inputs": {}}, tail), "inputs: expected a list"),
        (lambda doc, tail: (_with(doc, 0, datatype="BYTES"), tail), "inputs[a].datatype"),
        (lambda doc, tail: (_with(doc, 0, shape=[3, -4]), tail), "inputs[a].shape"),
        (lambda doc, tail: (_with(doc, 0, shape=[2, 4]), tail), "inputs[a]: binary_data_size"),
        (lambda doc, tail: (_with(doc, 1, name="a"), tail), "inputs[a]: given twice"),
        (lambda doc, tail: ({**doc, "id": 3}, tail), "id: expected a string"),
    ],
)
def test_a_malformed_request_names_the_field(change, needle) -> None:  # noqa: ANN001
    tensors: dict[str, np.ndarray] = {
        "a": np.arange(12, dtype=np.int64).reshape(3, 4),
        "b": np.ones(5, np.float32),
    }
    body, header_length = _reencode(*change(*_binary_request(tensors)))
    with pytest.raises(oip.TensorError) as caught:
        oip.decode_request(body, header_length)
    assert needle in str(caught.value)


def _with(doc: dict, index: int, **fields: object) -> dict:
    inputs = [dict(entry) for entry in doc["inputs"]]
    inputs[index].update(fields)
    return {**doc, "inputs": inputs}


def test_json_tensors_refuse_what_does_not_fit_their_datatype() -> None:
    cases = [
        ({"name": "x", "datatype": "INT64", "shape": [2], "data": [1.5, 2]}, "integers"),
        ({"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}, "2 values for"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}, "numbers"),
        ({"name": "x", "datatype": "FP32", "shape": [2]}, "data: expected a list"),
    ]
    for entry, needle in cases:
        with pytest.raises(oip.TensorError) as caught:
            oip.decode_request(json.dumps({"inputs": [entry]}).encode(), None)
        assert needle in str(caught.value), entry
    with pytest.raises(oip.TensorError, match="not within the body"):
        oip.decode_request(b"{}", 3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"inputs": [], "parameters": {"binary_data_output": 1}}',
         "parameters.binary_data_output: expected true or false"),
        (b'{"inputs": [], "outputs": [{"name": "s", "parameters": []}]}',
         "outputs[0].parameters: expected an object"),
        (b'{"inputs": [{"name": "x", "datatype": ["FP32"], "shape": [1], "data": [1]}]}',
         "inputs[x].datatype: expected one of BOOL,"),
        (b'{"inputs": [{"name": "x", "datatype": {}, "shape": [1], "data": [1]}]}',
         "inputs[x].datatype: expected one of BOOL,"),
        (b"[" * 100_000 + b"]" * 100_000, "body: invalid JSON (nested too deeply)"),
    ],
)  # fmt: skip
def test_a_malformed_document_is_refused_with_the_path_of_its_field(
    body: bytes, message: str
) -> None:
    with pytest.raises(oip.TensorError) as caught:
        oip.decode_request(body, None)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_json_query_nested_too_deeply_is_refused_as_malformed() -> None:
    with pytest.raises(codec.QueryError, match=r"nested too deeply"):
        codec.parse_query_json(FAKE_SCHEMA, b"[" * 5000 + b"]" * 5000)


_ODD_VALUES: list[Any] = [None, True, 0, -1, 1.5, 10**30, "", "FP32", [], {}, [[1]], {"a": 1}]


def _mutated(doc: Any, rng: random.Random) -> Any:
    """``doc`` with one value somewhere in it (or itself) replaced by an odd one."""
    doc = copy.deepcopy(doc)
    paths: list[tuple[Any, ...]] = []

    def walk(value: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value[:3]):
                walk(item, (*path, index))

    walk(doc, ())
    path = rng.choice(paths)
    odd = rng.choice(_ODD_VALUES)
    if not path:
        return odd
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = odd
    return doc


@pytest.mark.parametrize("seed", range(3))
def test_a_query_body_with_any_odd_value_is_parsed_or_refused_as_malformed(seed: int) -> None:
    """Whatever value a field of a valid query is replaced by, in any of the three bodies, the
    parse either succeeds or raises a ValueError (the daemon's 400), never another error
    (its 500)."""
    rng = random.Random(seed)
    query = queries(FAKE_SCHEMA, [3], seed=seed)[0]
    as_json = json.loads(codec.query_to_oip(query, binary=False)[0])
    binary, header_length = codec.query_to_oip(query)
    assert header_length is not None
    header, tail = json.loads(binary[:header_length]), binary[header_length:]
    v1 = codec.query_to_json(query)
    for _ in range(300):
        try:
            codec.parse_query_oip(FAKE_SCHEMA, json.dumps(_mutated(as_json, rng)).encode(), None)
        except ValueError:
            pass
        try:
            mutated = json.dumps(_mutated(header, rng)).encode()
            codec.parse_query_oip(FAKE_SCHEMA, mutated + tail, len(mutated))
        except ValueError:
            pass
        try:
            codec.parse_query_json(FAKE_SCHEMA, json.dumps(_mutated(v1, rng)).encode())
        except ValueError:
            pass


@pytest.fixture(scope="module")
def zoo_model():
    return load_model(ZOO)


def test_a_query_travels_as_tensors_and_back(zoo_model) -> None:
    schema = zoo_model.schema
    for query in queries(schema, [1, 33], seed=40):
        for binary in (True, False):
            body, header_length = codec.query_to_oip(query, binary=binary)
            parsed, request = codec.parse_query_oip(schema, body, header_length)
            assert request.binary_output == binary
            _assert_same_query(parsed, query)


def test_a_query_with_a_wrong_tensor_is_refused_naming_it(zoo_model) -> None:
    schema = zoo_model.schema
    query = queries(schema, [4], seed=41)[0]
    tensors = codec.query_to_tensors(query)
    feature = next(iter(query.candidate_sparse))
    bad_ids = {
        **tensors,
        codec.CANDIDATE_SPARSE + feature: tensors[codec.CANDIDATE_SPARSE + feature] + 10**9,
    }
    no_user = {k: v for k, v in tensors.items() if k != codec.USER_DENSE}
    extra = {**tensors, "bogus": np.zeros(1, np.float32)}
    as_floats = {
        **tensors,
        codec.USER_SPARSE + next(iter(query.user_sparse)): np.zeros(
            len(next(iter(query.user_sparse.values()))), np.float32
        ),
    }
    for arrays, needle in [
        (bad_ids, feature),
        (no_user, "user_dense: missing"),
        (extra, "'bogus'"),
        (as_floats, "expected integer ids"),
    ]:
        body, header_length = oip.encode_request(arrays)
        with pytest.raises(codec.QueryError) as caught:
            codec.parse_query_oip(schema, body, header_length)
        assert needle in str(caught.value)


def test_the_metadata_names_every_tensor_a_query_carries(zoo_model) -> None:
    schema = zoo_model.schema
    inputs, outputs = codec.tensor_metadata(schema)
    query = queries(schema, [6], seed=42)[0]
    tensors = codec.query_to_tensors(query)
    assert {i["name"] for i in inputs} == set(tensors)
    for entry in inputs:
        array = tensors[entry["name"]]
        assert entry["datatype"] == oip.datatype_of(array)
        assert [len(array) if d == -1 else d for d in entry["shape"]] == list(array.shape)
    assert outputs == [{"name": "scores", "datatype": "FP32", "shape": [-1]}]


def _assert_same_query(parsed: Query, query: Query) -> None:
    np.testing.assert_array_equal(parsed.user_dense, query.user_dense)
    np.testing.assert_array_equal(parsed.candidate_dense, query.candidate_dense)
    for side_parsed, side in (
        (parsed.user_sparse, query.user_sparse),
        (parsed.candidate_sparse, query.candidate_sparse),
    ):
        assert side_parsed.keys() == side.keys()
        for f in side:
            np.testing.assert_array_equal(side_parsed[f], side[f])


# -- tritonclient.http against the daemon as a process -----------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildServer]:
    folder: Path = tmp_path_factory.mktemp("oip")
    plan_path = folder / "plan.json"
    node_plan = plan([seat(0, "rank", artifact=ZOO, tenant="ads", sla_ms=5000)])
    plan_path.write_text(json.dumps(node_plan.to_dict()))
    args = ["executor", "--plan", str(plan_path), "--device", "cpu", "--host", "127.0.0.1"]
    with ChildServer("gpufair executor", args, log_path=folder / "daemon.log") as child:
        child.wait_healthy(START_S)
        yield child


@pytest.mark.slow
def test_tritonclient_runs_inferences_against_the_daemon(daemon, zoo_model) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=daemon.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("rank") and not client.is_model_ready("absent")
    metadata = client.get_model_metadata("rank")
    assert metadata["name"] == "rank"
    assert metadata["inputs"] == codec.tensor_metadata(zoo_model.schema)[0]
    session = zoo_model.session()
    for k, query in enumerate(queries(zoo_model.schema, [1, 50, 300], seed=43)):
        expected = session.run(Batch.of([query]))
        for binary in (True, False):
            inputs = []
            for name, array in codec.query_to_tensors(query).items():
                tensor = httpclient.InferInput(name, list(array.shape), oip.datatype_of(array))
                tensor.set_data_from_numpy(array, binary_data=binary)
                inputs.append(tensor)
            outputs = [httpclient.InferRequestedOutput("scores", binary_data=binary)]
            result = client.infer("rank", inputs, outputs=outputs, request_id=f"q{k}")
            assert result.get_response()["id"] == f"q{k}"
            np.testing.assert_allclose(result.as_numpy("scores"), expected, atol=1e-5)
    with pytest.raises(Exception, match="not served") as caught:  # the protocol's error body
        client.infer("absent", inputs)
    assert type(caught.value).__name__ == "InferenceServerException"
    client.close()
