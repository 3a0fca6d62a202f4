"""The dashboard's sign-in and pages under attack: forged cross-site POSTs, framing, guessing,
malformed forms, and a session the operator can end.

Over HTTP against the app (conftest's ``api``, on each database), as a browser would send the
requests: the TestClient's requests go to ``http://testserver``, so a page of this site has
the ``Origin`` ``http://testserver``. Failed credentials are limited to a few per minute here,
so a test can reach the limit.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from api.routes.dashboard import SESSION_COOKIE
from gpufair.settings import Settings
from tests.api.conftest import ADMIN_TOKEN, Api, make_settings

FAILED_CREDENTIALS_PER_MINUTE = 3
OWN_PAGE = {"Origin": "http://testserver"}
# What browsers send with a form POSTed from a page of another site: with Sec-Fetch-Site (to
# HTTPS and localhost addresses), or with only an Origin (plain HTTP elsewhere), "null" from
# a sandboxed frame or a file:// page.
FORGED = {
    "another site (Sec-Fetch-Site)": {"Sec-Fetch-Site": "cross-site", **OWN_PAGE},
    "a sibling subdomain": {"Sec-Fetch-Site": "same-site"},
    "another site (Origin)": {"Origin": "http://attacker.example"},
    "another port": {"Origin": "http://testserver:8080"},
    "a sandboxed frame": {"Origin": "null"},
}
# A request of this site's own page, of the person typing the address, or of no browser.
GENUINE = {
    "the sign-in page (Sec-Fetch-Site)": {"Sec-Fetch-Site": "same-origin", **OWN_PAGE},
    "the address bar": {"Sec-Fetch-Site": "none"},
    "the sign-in page (Origin)": OWN_PAGE,
    "a proxy that rewrites Host": {
        "Origin": "https://gpufair.example",
        "Host": "backend:8000",
        "X-Forwarded-Host": "gpufair.example",
    },
    "curl": {},
}


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url, failed_credentials_per_minute=FAILED_CREDENTIALS_PER_MINUTE)


def _sign_in(client: TestClient, token: str, headers: dict[str, str]) -> Response:
    return client.post("/sign-in", data={"token": token}, headers=headers, follow_redirects=False)


def _gives_session(reply: Response) -> bool:
    return SESSION_COOKIE in reply.headers.get("set-cookie", "")


def test_a_sign_in_posted_from_another_site_is_refused_and_not_counted(api: Api) -> None:
    # A page on any site can POST the form: it must neither sign the visitor's browser in nor,
    # with wrong tokens, use up the failures of the visitor's address (every API client
    # behind the same proxy would then get 429 for a minute).
    for who, headers in FORGED.items():
        for token in ["wrong"] * FAILED_CREDENTIALS_PER_MINUTE + [ADMIN_TOKEN]:
            r = _sign_in(api.client, token, headers)
            assert r.status_code == 403 and not _gives_session(r), (who, r.status_code)
            assert r.headers["content-type"].startswith("text/html")
            assert '<form method="post" action="/sign-in">' in r.text  # sign in from here
    for who, headers in GENUINE.items():
        r = _sign_in(api.client, ADMIN_TOKEN, headers)
        assert r.status_code == 303 and _gives_session(r), (who, r.status_code)
    r = api.client.post("/v1/tenants", json={"name": "t1"}, headers=api.admin)
    assert r.status_code == 201, r.text


def test_sign_out_ends_the_browser_s_session(api: Api) -> None:
    assert _sign_in(api.client, ADMIN_TOKEN, OWN_PAGE).status_code == 303
    page = api.client.get("/")
    assert page.status_code == 200
    assert '<form class="sign-out" method="post" action="/sign-out">' in page.text
    # Another site cannot sign the admin out: the session still opens the page.
    for who, headers in FORGED.items():
        r = api.client.post("/sign-out", headers=headers, follow_redirects=False)
        assert r.status_code == 403 and not _gives_session(r), who
        assert api.client.get("/").status_code == 200, who
    r = api.client.post("/sign-out", headers=OWN_PAGE, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cleared = r.headers["set-cookie"]
    assert f'{SESSION_COOKIE}=""' in cleared and "Max-Age=0" in cleared and "HttpOnly" in cleared
    signed_out = api.client.get("/")
    assert signed_out.status_code == 401 and "Sign in" in signed_out.text
    # A page a proxy's bearer token opens has no session to end, so no button.
    assert "/sign-out" not in api.client.get("/", headers=api.admin).text


def test_a_sign_in_form_with_more_fields_than_its_own_gets_a_400_page(api: Api) -> None:
    fields = {f"field{k}": "x" for k in range(10)}
    r = api.client.post("/sign-in", data={**fields, "token": ADMIN_TOKEN}, headers=OWN_PAGE,
                        follow_redirects=False)
    assert r.status_code == 400 and not _gives_session(r)
    assert r.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/sign-in">' in r.text


def test_a_guessing_address_is_told_when_it_may_sign_in_again(api: Api) -> None:
    for _ in range(FAILED_CREDENTIALS_PER_MINUTE):
        assert _sign_in(api.client, "wrong", OWN_PAGE).status_code == 401
    signing_in = _sign_in(api.client, ADMIN_TOKEN, OWN_PAGE)
    for refused in (signing_in, api.client.get("/", headers=api.admin)):
        assert refused.status_code == 429 and not _gives_session(refused)
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["content-type"].startswith("text/html")


def test_no_dashboard_reply_can_be_framed_by_another_site(api: Api) -> None:
    # frame-ancestors 'none' in the policy, and X-Frame-Options for browsers without it:
    # a framed sign-in form or page could be clicked through by a hidden overlay.
    replies = {
        "page": api.client.get("/", headers=api.admin),
        "sign-in page": api.client.get("/"),
        "sign-in": _sign_in(api.client, ADMIN_TOKEN, OWN_PAGE),
        "refused sign-in": _sign_in(api.client, "wrong", OWN_PAGE),
        "forged sign-in": _sign_in(api.client, ADMIN_TOKEN, FORGED["another site (Origin)"]),
        "sign-out": api.client.post("/sign-out", headers=OWN_PAGE, follow_redirects=False),
    }
    for what, reply in replies.items():
        assert reply.headers.get("x-frame-options") == "DENY", what
        assert "frame-ancestors 'none'" in reply.headers["content-security-policy"], what
