"""Route tests of /v1/models: a tenant's models, zoo references and TorchScript uploads."""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import torch
from torch import Tensor, nn

from api.artifact_check import SandboxLimits, check_artifact
from api.errors import InvalidInput
from executor.models import ZooError, build_model, parse_zoo_artifact
from executor.runtime import save_torchscript
from gpufair.settings import Settings
from tests.api.conftest import Api


class Scores(nn.Module):
    """A small ranking model with the structured forward the executor serves."""

    def forward(
        self,
        user_dense: Tensor,
        user_sparse: dict[str, Tensor],
        candidate_dense: Tensor,
        candidate_sparse: dict[str, Tensor],
        candidate_user: Tensor,
    ) -> Tensor:
        return candidate_dense.sum(1) + user_dense[candidate_user].sum(1)


class Hoards(Scores):
    """Asks for 64 GiB in its forward."""

    def forward(
        self,
        user_dense: Tensor,
        user_sparse: dict[str, Tensor],
        candidate_dense: Tensor,
        candidate_sparse: dict[str, Tensor],
        candidate_user: Tensor,
    ) -> Tensor:
        hoard = torch.ones([17179869184])  # 2**34 floats: 64 GiB
        return candidate_dense.sum(1) + hoard[0]


class Spins(Scores):
    """Never returns (an int64 counter that would take centuries to wrap)."""

    def forward(
        self,
        user_dense: Tensor,
        user_sparse: dict[str, Tensor],
        candidate_dense: Tensor,
        candidate_sparse: dict[str, Tensor],
        candidate_user: Tensor,
    ) -> Tensor:
        steps = 0
        while steps >= 0:
            steps += 1
        return candidate_dense.sum(1)


@functools.cache
def torchscript_archive(module: type[nn.Module] = Scores) -> bytes:
    """``module`` saved as gpufair's TorchScript artifact (``save_torchscript``: the scripted
    module with the schema of a tiny RMC1 inside), a few KiB."""
    schema = build_model(parse_zoo_artifact("zoo:rmc1?scale=0.0001")).schema
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        save_torchscript(module(), schema, path)
        return path.read_bytes()


def test_crud_with_etags(api: Api) -> None:
    _, key = api.tenant("ads")
    auth = api.bearer(key)
    model = api.model(key, "ranker")
    assert model["ready"] and model["artifact"] == "zoo:rmc1?scale=0.05&seed=1"
    url = f"/v1/models/{model['id']}"
    r = api.client.get(url, headers=auth)
    assert r.status_code == 200 and r.headers["ETag"] == f'"r{model["revision"]}"'
    r = api.client.patch(
        url, json={"demand_qps": 900}, headers={**auth, "If-Match": r.headers["ETag"]}
    )
    assert r.status_code == 200 and r.json()["demand_qps"] == 900.0
    assert [m["name"] for m in api.client.get("/v1/models", headers=auth).json()] == ["ranker"]
    assert api.client.delete(url, headers={**auth, "If-Match": r.headers["ETag"]}).status_code \
        == 204
    assert api.client.get(url, headers=auth).status_code == 404


@pytest.mark.parametrize(
    "artifact",
    [
        "rmc1",
        "zoo:",
        "zoo:rmc1?scale=-1",
        "zoo:rmc1?seed=x",
        "zoo:rmc1?colour=red",
        "file:/etc/passwd",
    ],
)
def test_bad_artifact_references_are_422(api: Api, artifact: str) -> None:
    _, key = api.tenant("ads")
    body = {"name": "m", "artifact": artifact, "memory_mb": 1, "sla_p99_ms": 5, "demand_qps": 1}
    r = api.client.post("/v1/models", json=body, headers=api.bearer(key))
    assert r.status_code == 422 and r.json()["error"]["field"] == "artifact"


def test_a_model_without_demand_is_422_and_one_stored_before_is_left_out_of_solves(
    api: Api, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A demand of 0 leaves a model's value (the fraction of its demand served) undefined and
    made every solve of the cluster 409: create and update refuse it, naming the field; a row
    stored before the API did is left out of the solve with a warning, not the whole cluster."""
    _, key = api.tenant("ads")
    auth = api.bearer(key)
    body = {"name": "idle", "artifact": "zoo:rmc1", "memory_mb": 100, "sla_p99_ms": 50,
            "demand_qps": 0}  # fmt: skip
    for demand in (0, 0.0, -1):
        r = api.client.post("/v1/models", json={**body, "demand_qps": demand}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["field"] == "demand_qps", r.text
    model = api.model(key, "ranker", replicas_wanted=1)
    r = api.client.patch(f"/v1/models/{model['id']}", json={"demand_qps": 0},
                         headers={**auth, "If-Match": "*"})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["field"] == "demand_qps", r.text
    legacy = api.model(key, "legacy", replicas_wanted=1)
    engine = sqlalchemy.create_engine(settings.database.url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.text("UPDATE models SET demand_qps = 0 WHERE id = :id"),
                {"id": legacy["id"]},
            )
    finally:
        engine.dispose()
    api.node("n1", gpus=1)
    with caplog.at_level(logging.WARNING, logger="api.services.allocations"):
        allocation = api.solve()
    seated = {s["model_id"] for s in
              api.client.get("/v1/allocations/current/me", headers=auth).json()["seats"]}
    assert seated == {str(model["id"])}, allocation
    assert f"model {legacy['id']} of tenant 'ads' left out" in caplog.text


def test_duplicate_model_name_within_a_tenant_only(api: Api) -> None:
    _, key_a = api.tenant("a")
    _, key_b = api.tenant("b")
    api.model(key_a, "ranker")
    api.model(key_b, "ranker")  # another tenant may use the same name
    body = {
        "name": "ranker",
        "artifact": "zoo:din",
        "memory_mb": 1,
        "sla_p99_ms": 5,
        "demand_qps": 1,
    }
    r = api.client.post("/v1/models", json=body, headers=api.bearer(key_a))
    assert r.status_code == 409 and r.json()["error"]["field"] == "name"


def test_upload_makes_an_api_model_ready(api: Api) -> None:
    _, key = api.tenant("ads")
    auth = api.bearer(key)
    model = api.model(key, "custom", artifact="api")
    assert model["artifact"] == f"api:{model['id']}" and not model["ready"]
    bad = api.client.put(
        f"/v1/models/{model['id']}/artifact",
        content=b"not a zip",
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    assert bad.status_code == 422
    data = torchscript_archive()
    r = api.client.put(
        f"/v1/models/{model['id']}/artifact",
        content=data,
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200 and r.json()["size_bytes"] == len(data)
    after = api.client.get(f"/v1/models/{model['id']}", headers=auth).json()
    assert after["ready"] and after["revision"] > model["revision"]


def test_oversized_upload_is_413(api: Api) -> None:
    _, key = api.tenant("ads")
    model = api.model(key, "custom", artifact="api")
    big = b"PK\x03\x04" + b"0" * (300 * 1024)  # the test settings allow 256 KiB
    r = api.client.put(
        f"/v1/models/{model['id']}/artifact",
        content=big,
        headers={**api.bearer(key), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(10):
            yield b"0" * (32 * 1024)

    r = api.client.put(
        f"/v1/models/{model['id']}/artifact",
        content=chunks(),
        headers={**api.bearer(key), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 413


def _executor_loads(artifact: str) -> bool:
    """Whether the executor's loader (executor.runtime.load_model) takes the reference."""
    try:
        parse_zoo_artifact(artifact)
    except ZooError:
        return False
    return True


@pytest.mark.parametrize(
    ("artifact", "accepted"),
    [
        ("zoo:rmc1?scale=0.05&seed=1", True),
        ("zoo:din", True),
        ("zoo:rmc2?candidate_dense=3", True),
        ("zoo:wnd?user_tables=0", True),
        ("zoo:rmc2?user_tables=32&candidate_dense=256", True),
        ("zoo:rmc3?scale=1&seed=9223372036854775807", True),
        ("zoo:rmc1?scale=1e-05", True),
        ("api", True),  # an upload follows; the API's own, never sent to an executor
        ("zoo:nosuch?scale=0.5", False),
        ("zoo:rmc1?scale=5", False),
        ("zoo:rmc1?scale=1e300", False),
        ("zoo:rmc1?user_tables=9", False),
        ("zoo:rmc1?user_tables=1000000000", False),
        ("zoo:rmc1?candidate_dense=129", False),
        ("zoo:rmc1?seed=18446744073709551616", False),
        ("zoo:rmc1?seed= 1", False),
        ("zoo:rmc1?seed=1&seed=2", False),
        ("zoo:rmc1?scale=%30.5", False),
        ("zoo:rmc1?&", False),
    ],
)
def test_the_api_takes_exactly_the_zoo_references_the_executor_loads(
    api: Api, artifact: str, accepted: bool
) -> None:
    if artifact != "api":
        assert _executor_loads(artifact) == accepted
    _, key = api.tenant("ads")
    body = {"name": "m", "artifact": artifact, "memory_mb": 1, "sla_p99_ms": 5, "demand_qps": 1}
    r = api.client.post("/v1/models", json=body, headers=api.bearer(key))
    if accepted:
        assert r.status_code == 201, r.text
    else:
        assert r.status_code == 422 and r.json()["error"]["field"] == "artifact", r.text
        assert repr(artifact) in r.json()["error"]["message"], r.text  # quotes what is wrong


def _upload(api: Api, key: str, model_id: int, data: bytes) -> Any:
    return api.client.put(
        f"/v1/models/{model_id}/artifact",
        content=data,
        headers={**api.bearer(key), "Content-Type": "application/octet-stream"},
    )


def test_an_upload_is_accepted_only_once_it_loaded_and_served_a_probe(api: Api) -> None:
    """Zip-shaped junk, and a real TorchScript module whose forward asks for 64 GiB, are 422
    with the loader's reason (the sandbox's memory limit stops the second); the model stays
    not ready, and the API keeps serving."""
    _, key = api.tenant("ads")
    model = api.model(key, "custom", artifact="api")
    junk = b"PK\x03\x04" + bytes(200 * 1024)
    for data, reason in [
        (junk, "not a TorchScript archive"),
        (torchscript_archive(Hoards), "probe forward failed"),
    ]:
        r = _upload(api, key, model["id"], data)
        assert r.status_code == 422 and r.json()["error"]["field"] == "body", r.text
        assert reason in r.json()["error"]["message"], r.text
    after = api.client.get(f"/v1/models/{model['id']}", headers=api.bearer(key)).json()
    assert not after["ready"] and after["revision"] == model["revision"]
    assert _upload(api, key, model["id"], torchscript_archive()).status_code == 200


@pytest.mark.slow
def test_an_artifact_that_never_returns_is_refused_within_the_time_limit() -> None:
    with pytest.raises(InvalidInput, match="within 15 s|killed by signal"):
        check_artifact(torchscript_archive(Spins), SandboxLimits(memory_mb=2048, timeout_s=15))
