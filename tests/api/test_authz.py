"""The authorisation matrix: every route × (admin, tenant A, tenant B, node, anonymous).

Each route has one role allowed to call it. Anyone without a token gets 401; a token of another
role gets 403; tenant B calling a route on tenant A's rows gets 404, exactly as for rows that do
not exist, and nothing it receives from any route contains tenant A's private strings. The
matrix is checked against the app's OpenAPI document, so a new route without a row fails here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from tests.api.conftest import Api
from tests.api.test_models import torchscript_archive

SECRET = "zz-secret-of-a"  # appears in tenant A's names; must never reach tenant B

MODEL = {"artifact": "zoo:rmc1?scale=0.05", "memory_mb": 100, "sla_p99_ms": 20, "demand_qps": 100}

# (method, path, allowed role, success status, body); {names} are filled from the world below.
ROUTES: list[tuple[str, str, str, int, Any]] = [
    ("GET", "/v1/tenants/me", "tenant", 200, None),
    ("PATCH", "/v1/tenants/me", "tenant", 200, {"criterion": "ef1"}),
    ("GET", "/v1/tenants/me/keys", "tenant", 200, None),
    ("DELETE", "/v1/tenants/me/keys/{a_key_spare}", "tenant", 200, None),
    # With a grace period: the key presented keeps working for the rest of the matrix.
    ("POST", "/v1/tenants/me/keys/rotate", "tenant", 201, {"grace_s": 3600}),
    ("POST", "/v1/tenants/me/keys", "tenant", 201, {"expires_in_s": 3600}),
    ("POST", "/v1/tenants", "admin", 201, {"name": "fresh"}),
    ("GET", "/v1/tenants", "admin", 200, None),
    ("GET", "/v1/tenants/{a}", "admin", 200, None),
    ("PATCH", "/v1/tenants/{a}", "admin", 200, {"weight": 2}),
    ("DELETE", "/v1/tenants/{c}", "admin", 204, None),
    ("POST", "/v1/tenants/{a}/keys", "admin", 201, {"expires_in_s": 86400}),
    ("GET", "/v1/tenants/{a}/keys", "admin", 200, None),
    ("DELETE", "/v1/tenants/{a}/keys/{a_key_admin}", "admin", 200, None),
    ("POST", "/v1/models", "tenant", 201, {"name": "fresh", **MODEL}),
    ("GET", "/v1/models", "tenant", 200, None),
    ("GET", "/v1/models/{a_model}", "tenant", 200, None),
    ("PATCH", "/v1/models/{a_model}", "tenant", 200, {"demand_qps": 50}),
    ("DELETE", "/v1/models/{a_model_spare}", "tenant", 204, None),
    ("PUT", "/v1/models/{a_upload}/artifact", "tenant", 200, b"upload"),
    (
        "POST",
        "/v1/nodes",
        "admin",
        201,
        {
            "name": "fresh",
            "devices": [
                {"device": "cpu:0", "kind": "cpu", "memory_mb": 1000, "streams": 2, "seats": 1}
            ],
        },
    ),
    ("GET", "/v1/nodes", "admin", 200, None),
    ("GET", "/v1/nodes/n1", "admin", 200, None),
    ("POST", "/v1/nodes/n2/token", "admin", 200, None),
    ("GET", "/v1/nodes/n1/plan", "node", 200, None),
    ("GET", "/v1/nodes/n1/credentials", "node", 200, None),
    ("GET", "/v1/routes", "admin", 200, None),
    ("GET", "/v1/routes/me", "tenant", 200, None),
    ("POST", "/v1/nodes/n1/heartbeat", "node", 200, {"plan_version": 1}),
    ("PUT", "/v1/nodes/n1/profiles", "node", 200, "profiles"),
    ("GET", "/v1/nodes/n1/artifacts/{a_upload}", "node", 200, None),
    ("POST", "/v1/allocations", "admin", 201, {}),
    ("GET", "/v1/allocations", "admin", 200, None),
    ("GET", "/v1/allocations/current", "admin", 200, None),
    ("GET", "/v1/allocations/current/me", "tenant", 200, None),
    ("GET", "/v1/allocations/{allocation}", "admin", 200, None),
    ("GET", "/v1/allocations/{allocation}/diff/{allocation}", "admin", 200, None),
    ("GET", "/v1/sla", "admin", 200, None),
    ("GET", "/v1/sla/me", "tenant", 200, None),
    ("GET", "/healthz", "public", 200, None),
    ("GET", "/readyz", "public", 200, None),
    ("GET", "/metrics", "public", 200, None),
]

# Path parameters that name tenant A's own rows: tenant B must get 404 for them.
A_OWNED = ("{a_model}", "{a_model_spare}", "{a_upload}", "{a_key_spare}")


def _world(api: Api) -> dict[str, Any]:
    """Tenants A (with an uploaded model seated on n1), B and a spare C; nodes n1, n2."""
    a, key_a = api.tenant(f"a-{SECRET}")
    b, key_b = api.tenant("b")
    c, _ = api.tenant("c")
    upload = api.model(key_a, f"upload-{SECRET}", artifact="api", replicas_wanted=1, memory_mb=100)
    r = api.client.put(
        f"/v1/models/{upload['id']}/artifact",
        content=torchscript_archive(),
        headers={**api.bearer(key_a), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200
    b_model = api.model(key_b, "b-model", replicas_wanted=1, memory_mb=100)
    _, node_token = api.node("n1", gpus=1, seats=2, streams=4)
    _, n2_token = api.node("n2", gpus=1)
    # C joins no allocation
    api.client.delete(f"/v1/tenants/{c['id']}", headers={**api.admin, "If-Match": "*"})
    c, _ = api.tenant("c")
    allocation = api.solve()
    seated = api.client.get("/v1/nodes/n1/plan", headers=api.bearer(node_token)).json()
    assert str(upload["id"]) in {
        s["replica"]["model_id"] for d in seated["devices"] for s in d["seats"] if s["replica"]
    }, "the world needs tenant A's upload seated on n1"
    spare_keys = [
        api.client.post(f"/v1/tenants/{a['id']}/keys", headers=api.admin).json() for _ in (0, 1)
    ]
    # SLA samples of both tenants, so that /v1/sla/me has tenant A's data to leak to B; each
    # from the node that seats the model (a node may report nothing else).
    counts = {
        (a["name"], str(upload["id"])): {"received": 50, "within_sla": 49},
        ("b", str(b_model["id"])): {"received": 20, "within_sla": 20},
    }
    for node, token in (("n1", node_token), ("n2", n2_token)):
        plan = api.client.get(f"/v1/nodes/{node}/plan", headers=api.bearer(token)).json()
        pairs = {(s["replica"]["tenant"], s["replica"]["model_id"])
                 for d in plan["devices"] for s in d["seats"] if s["replica"]}
        sla = [{"tenant": t, "model": m, **counts[t, m]} for t, m in sorted(pairs & set(counts))]
        r = api.client.post(f"/v1/nodes/{node}/heartbeat", json={"sla": sla},
                            headers=api.bearer(token))
        assert r.status_code == 200, r.text
    everyone = api.client.get("/v1/sla", headers=api.admin).json()
    assert [s["tenant"] for s in everyone["tenants"]] == sorted([a["name"], "b"])
    return {
        "a": a["id"],
        "c": c["id"],
        "a_model": api.model(key_a, f"model-{SECRET}")["id"],
        "a_model_spare": api.model(key_a, f"spare-{SECRET}")["id"],
        "a_upload": upload["id"],
        "a_key_spare": spare_keys[0]["id"],
        "a_key_admin": spare_keys[1]["id"],
        "allocation": allocation["id"],
        "tokens": {
            "admin": api.admin["Authorization"].removeprefix("Bearer "),
            "tenant_a": key_a,
            "tenant_b": key_b,
            "node": node_token,
        },
    }


def _call(
    api: Api, method: str, path: str, token: str | None, body: Any, world: dict[str, Any]
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method in ("PATCH", "DELETE"):
        headers["If-Match"] = "*"  # required on tenants and models (428); ignored on keys
    if body == "profiles":
        body = {"profiles": [{"model_id": world["a_upload"], "device": "cuda:0", "qps": [10, 20]}]}
    if body == b"upload":
        return api.client.request(
            method,
            path,
            content=torchscript_archive(),
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
    return api.client.request(method, path, json=body, headers=headers)


def test_matrix_covers_every_route(api: Api) -> None:
    app = api.client.app
    assert isinstance(app, FastAPI)
    paths = app.openapi()["paths"]
    declared = {(method.upper(), path) for path, item in paths.items() for method in item}
    covered = set()
    for method, path, *_ in ROUTES:
        template = path
        for name, param in [
            ("{a}", "{tenant}"),
            ("{c}", "{tenant}"),
            ("{a_model}", "{model}"),
            ("{a_model_spare}", "{model}"),
            ("{a_upload}", "{model}"),
            ("{a_key_spare}", "{key_id}"),
            ("{a_key_admin}", "{key_id}"),
            ("n1", "{node}"),
            ("n2", "{node}"),
        ]:
            template = template.replace(name, param)
        template = template.replace("{allocation}/diff/{allocation}", "{allocation}/diff/{other}")
        covered.add((method, template))
    assert declared == covered


def test_isolation_matrix(api: Api) -> None:
    world = _world(api)
    tokens = world["tokens"]
    for method, template, role, ok, body in ROUTES:
        path = template.format(**{k: v for k, v in world.items() if k != "tokens"})
        where = f"{method} {template}"
        if role == "public":
            assert _call(api, method, path, None, body, world).status_code == ok, where
            continue
        anonymous = _call(api, method, path, None, body, world)
        assert anonymous.status_code == 401, where
        assert anonymous.json()["error"]["code"] == "unauthorized"
        assert _call(api, method, path, "gft_not-a-key", body, world).status_code == 401, where
        others = {
            "admin": ["tenant_a", "node"],
            "tenant": ["admin", "node"],
            "node": ["admin", "tenant_a"],
        }
        for other in others[role]:
            r = _call(api, method, path, tokens[other], body, world)
            assert r.status_code == 403, f"{where} as {other}: {r.status_code}"
        if role == "tenant":
            r = _call(api, method, path, tokens["tenant_b"], body, world)
            expected = 404 if any(p in template for p in A_OWNED) else ok
            assert r.status_code == expected, f"{where} as tenant B: {r.status_code} {r.text}"
            assert SECRET not in r.text, f"{where} leaks tenant A's data to tenant B"
        r = _call(api, method, path, tokens["tenant_a" if role == "tenant" else role], body, world)
        assert r.status_code == ok, f"{where} as {role}: {r.status_code} {r.text}"


def test_node_sees_only_its_own_plan(api: Api) -> None:
    _, token_1 = api.node("n1")
    api.node("n2")
    for path in ["/v1/nodes/n2/plan", "/v1/nodes/n3/plan", "/v1/nodes/n2/artifacts/1"]:
        r = api.client.get(path, headers=api.bearer(token_1))
        assert r.status_code == 404 and "n1" not in r.text
    r = api.client.post("/v1/nodes/n2/heartbeat", json={}, headers=api.bearer(token_1))
    assert r.status_code == 404


def test_development_token_is_refused_outside_dev_mode(tmp_path: Any, sqlite_template: Any) -> None:
    import shutil

    from fastapi.testclient import TestClient

    from api.app import create_app
    from gpufair.compose import api_config
    from gpufair.settings import DEVELOPMENT_ADMIN_TOKEN, ApiSettings, DatabaseSettings, Settings

    shutil.copy(sqlite_template, tmp_path / "db.sqlite")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    auth = {"Authorization": f"Bearer {DEVELOPMENT_ADMIN_TOKEN}"}
    for dev_mode, expected in [(False, 403), (True, 200)]:
        settings = Settings(database=DatabaseSettings(url=url), api=ApiSettings(dev_mode=dev_mode))
        with TestClient(create_app(api_config(settings))) as client:
            assert client.get("/v1/tenants", headers=auth).status_code == expected
