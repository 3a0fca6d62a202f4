"""Route tests of /v1/models: a tenant's models, zoo references and TorchScript uploads."""

from __future__ import annotations

import io
import zipfile

import pytest

from executor.models import ZooError, parse_zoo_artifact
from tests.api.conftest import Api


def torchscript_like() -> bytes:
    """A zip archive, as torch.jit.save writes; the API checks the format, never loads it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data.pkl", b"weights")
    return buffer.getvalue()


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
    data = torchscript_like()
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
