"""Cursor pagination and filters of every list route (api/pagination.py), on both backends."""

from __future__ import annotations

import re
from typing import Any

from tests.api.conftest import Api

LINK = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


def _walk(api: Api, url: str, headers: dict[str, str]) -> list[list[Any]]:
    """Every page of a list, following ``Link: rel="next"`` until a page has none."""
    pages = []
    while url:
        r = api.client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        link = r.headers.get("Link")
        url = LINK.match(link).group("url") if link else ""  # type: ignore[union-attr]
        assert len(pages) < 20
    return pages


def test_tenants_page_by_id_without_gaps_or_repeats_and_filter(api: Api) -> None:
    for k in range(5):
        api.tenant(f"t{k}", criterion="ef1" if k % 2 else "prop_alpha")
    pages = _walk(api, "/v1/tenants?limit=2", api.admin)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [t["name"] for p in pages for t in p] == [f"t{k}" for k in range(5)]
    # A tenant created while paging appears once, on a later page, never twice.
    first = api.client.get("/v1/tenants?limit=2", headers=api.admin)
    api.tenant("late")
    rest = _walk(api, LINK.match(first.headers["Link"]).group("url"), api.admin)  # type: ignore[union-attr]
    names = [t["name"] for t in first.json()] + [t["name"] for p in rest for t in p]
    assert names == [f"t{k}" for k in range(5)] + ["late"]
    # Filters keep to the page's cursor (the Link carries them on).
    pages = _walk(api, "/v1/tenants?limit=1&criterion=ef1", api.admin)
    assert [t["name"] for p in pages for t in p] == ["t1", "t3"]
    only = api.client.get("/v1/tenants?name=t4", headers=api.admin).json()
    assert [t["name"] for t in only] == ["t4"]
    assert api.client.get("/v1/tenants?limit=0", headers=api.admin).status_code == 422


def test_models_keys_nodes_and_allocations_page_and_filter(api: Api) -> None:
    tenant, key = api.tenant("ads")
    auth = api.bearer(key)
    for k in range(3):
        api.model(key, f"m{k}", replicas_wanted=1)
    waiting = api.model(key, "custom", artifact="api")
    pages = _walk(api, "/v1/models?limit=2", auth)
    assert [len(p) for p in pages] == [2, 2]
    not_ready = api.client.get("/v1/models?ready=false", headers=auth).json()
    assert [m["id"] for m in not_ready] == [waiting["id"]]
    assert len(api.client.get("/v1/models?ready=true", headers=auth).json()) == 3
    assert [m["name"] for m in api.client.get("/v1/models?name=m1", headers=auth).json()] == ["m1"]

    for _ in range(2):
        api.client.post(f"/v1/tenants/{tenant['id']}/keys", headers=api.admin)
    keys = api.client.get("/v1/tenants/me/keys", headers=auth).json()
    api.client.delete(f"/v1/tenants/me/keys/{keys[-1]['id']}", headers=auth)
    active = _walk(api, "/v1/tenants/me/keys?active=true&limit=1", auth)
    assert [k["id"] for p in active for k in p] == [k["id"] for k in keys[:2]]
    revoked = api.client.get(f"/v1/tenants/{tenant['id']}/keys?active=false", headers=api.admin)
    assert [k["id"] for k in revoked.json()] == [keys[-1]["id"]]

    tokens = {name: api.node(name, gpus=1)[1] for name in ("n1", "n2", "n3")}
    assert [len(p) for p in _walk(api, "/v1/nodes?limit=2", api.admin)] == [2, 1]
    for version in (1, 2, 3):
        api.solve(objective="nash" if version == 2 else "utilitarian")
    r = api.client.post("/v1/nodes/n2/heartbeat", json={"plan_version": 3},
                        headers=api.bearer(tokens["n2"]))
    assert r.status_code == 200
    behind = api.client.get("/v1/nodes?behind=true", headers=api.admin).json()
    assert [n["name"] for n in behind] == ["n1", "n3"]
    assert [n["name"] for n in api.client.get("/v1/nodes?behind=false", headers=api.admin).json()] \
        == ["n2"]

    pages = _walk(api, "/v1/allocations?limit=2", api.admin)
    assert [[a["version"] for a in p] for p in pages] == [[3, 2], [1]]
    nash = api.client.get("/v1/allocations?objective=nash", headers=api.admin).json()
    assert [a["version"] for a in nash] == [2]
