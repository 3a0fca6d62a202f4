"""Every failure has one JSON shape, {"error": {"code", "message", "field"?}}, and bad input is
never a 500."""

from __future__ import annotations

from tests.api.conftest import Api


def _shape(body: dict) -> dict:
    assert set(body) == {"error"}
    error = body["error"]
    assert {"code", "message"} <= set(error) <= {"code", "message", "field"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_unknown_route_and_method(api: Api) -> None:
    r = api.client.get("/v1/nowhere")
    assert r.status_code == 404 and _shape(r.json())["code"] == "not_found"
    r = api.client.put("/v1/tenants", headers=api.admin)
    assert r.status_code == 405 and _shape(r.json())["code"] == "method_not_allowed"


def test_malformed_json_is_422_on_the_body(api: Api) -> None:
    r = api.client.post(
        "/v1/tenants",
        content=b"{not json",
        headers={**api.admin, "Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert _shape(r.json())["field"].startswith("body")


def test_parameters_are_named_with_their_location(api: Api) -> None:
    _, token = api.node("n1")
    r = api.client.get("/v1/nodes/n1/plan?wait=-1", headers=api.bearer(token))
    assert r.status_code == 422 and _shape(r.json())["field"] == "query.wait"
    r = api.client.get(f"/v1/tenants/{2**40}", headers=api.admin)
    assert r.status_code == 422 and _shape(r.json())["field"] == "path.tenant"
    r = api.client.get("/v1/allocations?limit=0", headers=api.admin)
    assert r.status_code == 422 and _shape(r.json())["field"] == "query.limit"


def test_non_finite_numbers_are_refused(api: Api) -> None:
    r = api.client.post(
        "/v1/tenants",
        content=b'{"name": "x", "weight": 1e999}',
        headers={**api.admin, "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and _shape(r.json())["field"] == "weight"
    # A long-poll's wait: NaN was refused as "less than or equal to 3600", inf likewise.
    _, token = api.node("n1")
    admin_routes = ("/v1/routes", api.admin)
    for path, headers in [("/v1/nodes/n1/plan", api.bearer(token)), admin_routes]:
        for value in ("nan", "inf"):
            r = api.client.get(f"{path}?wait={value}", headers=headers)
            error = _shape(r.json())
            assert r.status_code == 422 and error["field"] == "query.wait", r.text
            assert "finite" in error["message"], r.text


def test_number_fields_take_json_numbers_only(api: Api) -> None:
    """A boolean or a numeric string where a number belongs is a client's bug, not 1 or 3.5:
    422 naming the field, and nothing created. An integer is still a number for a float."""
    device = {"device": "cpu:0", "kind": "cpu", "memory_mb": 1000, "streams": 2, "seats": 1}
    for path, body, field in [
        ("/v1/tenants", {"name": "a", "weight": True}, "weight"),
        ("/v1/tenants", {"name": "a", "weight": "3.5"}, "weight"),
        ("/v1/nodes", {"name": "n", "devices": [{**device, "memory_mb": True}]},
         "devices[0].memory_mb"),
        ("/v1/nodes", {"name": "n", "devices": [{**device, "streams": "2"}]},
         "devices[0].streams"),
        ("/v1/nodes", {"name": "n", "devices": [{**device, "seats": 1.0}]}, "devices[0].seats"),
    ]:  # fmt: skip
        r = api.client.post(path, json=body, headers=api.admin)
        assert r.status_code == 422 and _shape(r.json())["field"] == field, (body, r.text)
    assert api.client.get("/v1/tenants", headers=api.admin).json() == []
    assert api.client.get("/v1/nodes", headers=api.admin).json() == []
    tenant, key = api.tenant("ads", weight=2)
    assert tenant["weight"] == 2.0
    model = {"name": "m", "artifact": "zoo:rmc1", "memory_mb": 10, "sla_p99_ms": 20}
    r = api.client.post("/v1/models", json={**model, "demand_qps": True},
                        headers=api.bearer(key))  # fmt: skip
    assert r.status_code == 422 and _shape(r.json())["field"] == "demand_qps", r.text
    r = api.client.post("/v1/models", json={**model, "demand_qps": 5},
                        headers=api.bearer(key))  # fmt: skip
    assert r.status_code == 201 and r.json()["demand_qps"] == 5.0, r.text


def test_auth_errors_have_the_shape_and_a_challenge(api: Api) -> None:
    r = api.client.get("/v1/tenants")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert _shape(r.json())["code"] == "unauthorized"
    r = api.client.get("/v1/tenants", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert r.status_code == 401


def test_nothing_to_allocate_is_409(api: Api) -> None:
    r = api.client.post("/v1/allocations", headers=api.admin)
    assert r.status_code == 409 and _shape(r.json())["code"] == "conflict"
    r = api.client.get("/v1/allocations/current", headers=api.admin)
    assert r.status_code == 404 and _shape(r.json())["code"] == "not_found"


def test_metrics_count_requests_by_handler(api: Api) -> None:
    api.client.get("/v1/tenants", headers=api.admin)
    api.client.get("/v1/nowhere")
    text = api.client.get("/metrics").text
    assert 'handler="list_tenants",method="GET",status="200"' in text
    assert 'handler="unmatched",method="GET",status="404"' in text
    assert "gpufair_api_request_seconds_bucket" in text


def test_an_unreadable_json_body_says_why(api: Api) -> None:
    """A body the JSON parser cannot read is answered with what is wrong with it and
    ``field: body``, not "There was an error parsing the body": bytes that are not UTF-8, an
    integer longer than Python converts, nesting deeper than the parser goes. Nothing is
    created."""
    json_headers = {**api.admin, "Content-Type": "application/json"}
    for body, status, reason in [
        (b'{"name": "a\xffb"}', 400, "not UTF-8 (byte 0xff at offset 11)"),
        (b'{"name": "a", "weight": ' + b"9" * 5000 + b"}", 400, "4300 digits"),
        (b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested too deeply"),
        (b'{"name": "a",}', 422, "Expecting property name enclosed in double quotes at "
         "character 13"),
    ]:  # fmt: skip
        r = api.client.post("/v1/tenants", content=body, headers=json_headers)
        error = _shape(r.json())
        assert r.status_code == status and error["field"] == "body", r.text
        assert reason in error["message"], r.text
    assert api.client.get("/v1/tenants", headers=api.admin).json() == []


def test_a_body_sent_as_another_content_type_says_to_send_json(api: Api) -> None:
    """Valid JSON sent as text/plain (curl -d without -H) or as a form is not read as JSON;
    the answer says so instead of claiming the body is not an object."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        r = api.client.post("/v1/tenants", content=b'{"name": "ads"}',
                            headers={**api.admin, "Content-Type": content_type})  # fmt: skip
        error = _shape(r.json())
        assert r.status_code == 422 and error["field"] == "body", r.text
        assert "Content-Type: application/json" in error["message"], r.text
        assert content_type in error["message"], r.text
