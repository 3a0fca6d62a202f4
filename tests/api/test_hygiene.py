"""What anonymous callers cannot do to the API's responses and metrics: JSON is never cached or
sniffed, and ``/metrics`` does not grow with made-up methods and paths."""

from __future__ import annotations

import httpx

from tests.api.conftest import ADMIN_TOKEN, Api

MADE_UP = 30


def _series(api: Api) -> int:
    text = api.client.get("/metrics").text
    return sum(1 for line in text.splitlines() if line.startswith("gpufair_api_requests_total{"))


def test_made_up_methods_and_paths_do_not_grow_metrics(api: Api) -> None:
    for k in range(3):
        api.client.request(f"FAKE{k}", f"/v1/nowhere-{k}")
        api.client.get(f"/no-such-path-{k}")
    _series(api)  # /metrics counts itself from its first call on
    before = _series(api)
    for k in range(3, MADE_UP):
        api.client.request(f"FAKE{k}", f"/v1/nowhere-{k}")
        api.client.get(f"/no-such-path-{k}")
    assert _series(api) == before
    text = api.client.get("/metrics").text
    assert "FAKE" not in text and "no-such-path" not in text
    assert 'method="other"' in text and 'handler="unmatched"' in text


def test_json_is_never_cached_or_sniffed(api: Api) -> None:
    _, key = api.tenant("ads")
    _, token = api.node("n1")
    replies = [
        api.client.post("/v1/tenants/1/keys", headers=api.admin),  # carries a new key
        api.client.get("/v1/tenants/me", headers=api.bearer(key)),
        api.client.get("/v1/nodes/n1/plan", headers=api.bearer(token)),
        api.client.get("/v1/tenants"),  # a refusal
        api.client.get("/healthz"),
    ]
    for reply in replies:
        assert reply.headers["content-type"].startswith("application/json")
        assert reply.headers["Cache-Control"] == "no-store", reply.request.url
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert api.client.get("/metrics").headers["X-Content-Type-Options"] == "nosniff"


def test_head_is_answered_as_get_without_a_body(live_url: str) -> None:
    """Over a real server: HEAD on any GET route has GET's status and headers and no body
    (RFC 9110: every general-purpose server supports both); it was 405 on every route, so a
    monitor or probe that checks with HEAD saw the API as broken. Metrics count it as HEAD."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=live_url, timeout=30) as client:
        for path, headers in [("/healthz", {}), ("/readyz", {}), ("/v1/tenants", admin),
                              ("/v1/tenants", {})]:  # fmt: skip
            got, head = client.get(path, headers=headers), client.head(path, headers=headers)
            assert head.status_code == got.status_code, (path, head.status_code)
            assert head.content == b""
            for name in ("content-type", "content-length", "cache-control"):
                assert head.headers.get(name) == got.headers.get(name), (path, name)
        metrics = client.get("/metrics").text
    assert 'handler="list_tenants",method="HEAD",status="200"' in metrics
