"""Ids are never handed out twice, on either backend, and what a stored plan or allocation names
by id is served only to the owner it named.

The defects these guard against were on SQLite, whose plain integer keys reuse the id of the
newest row once it is deleted: a new tenant read a deleted tenant's allocation, and a node
downloaded a new tenant's weights for a deleted model's still-planned seat.
"""

from __future__ import annotations

from tests.api.conftest import Api
from tests.api.test_models import torchscript_archive


def _upload(api: Api, key: str, model_id: int) -> None:
    etag = api.client.get(f"/v1/models/{model_id}", headers=api.bearer(key)).headers["ETag"]
    r = api.client.put(
        f"/v1/models/{model_id}/artifact",
        content=torchscript_archive(),
        headers={
            **api.bearer(key),
            "Content-Type": "application/octet-stream",
            "If-Match": etag,
        },
    )
    assert r.status_code == 200, r.text


def _delete(api: Api, path: str, headers: dict[str, str]) -> None:
    etag = api.client.get(path, headers=headers).headers["ETag"]
    r = api.client.delete(path, headers={**headers, "If-Match": etag})
    assert r.status_code == 204, r.text


def test_a_deleted_tenants_id_is_never_given_again(api: Api) -> None:
    api.tenant("ads")
    gone, key = api.tenant("feed")  # the newest tenant, with the newest model
    model = api.model(key, "ranker", replicas_wanted=1)
    _delete(api, f"/v1/tenants/{gone['id']}", api.admin)
    fresh, key = api.tenant("fresh")
    assert fresh["id"] > gone["id"]
    assert api.model(key, "ranker", replicas_wanted=1)["id"] > model["id"]


def test_a_new_tenant_never_reads_a_deleted_tenants_allocation(api: Api) -> None:
    _, keep = api.tenant("ads")
    api.model(keep, "ranker", replicas_wanted=1)
    gone, gone_key = api.tenant("zz-gone")  # the newest tenant: its id is the largest
    api.model(gone_key, "ranker", replicas_wanted=1)
    api.node("n1", gpus=1, seats=2)
    api.solve()
    _delete(api, f"/v1/tenants/{gone['id']}", api.admin)
    fresh, key = api.tenant("fresh")
    r = api.client.get("/v1/allocations/current/me", headers=api.bearer(key))
    assert r.status_code == 404, r.text
    assert "zz-gone" not in r.text


def test_a_node_never_downloads_another_tenants_weights_for_a_planned_seat(api: Api) -> None:
    _, owner = api.tenant("ads")
    planned = api.model(owner, "ranker", artifact="api", replicas_wanted=1)
    _upload(api, owner, planned["id"])
    _, token = api.node("n1", gpus=1, seats=1)
    api.solve()
    path = f"/v1/nodes/n1/artifacts/{planned['id']}"
    assert api.client.get(path, headers=api.bearer(token)).status_code == 200
    # The seated model is deleted (its plan still seats it) and another tenant uploads one.
    _delete(api, f"/v1/models/{planned['id']}", api.bearer(owner))
    _, other = api.tenant("feed")
    newer = api.model(other, "ranker", artifact="api", replicas_wanted=1)
    _upload(api, other, newer["id"])
    assert newer["id"] != planned["id"]
    r = api.client.get(path, headers=api.bearer(token))
    assert r.status_code == 404, r.text
