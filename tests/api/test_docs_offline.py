"""``/docs`` and ``/redoc`` work without internet: every asset comes from the API itself.

The route test reads each page's references and fetches them from the app; the browser test
renders both pages in headless Chromium with every host but 127.0.0.1 unresolvable (skipped
where Debian's ``/usr/bin/chromium`` is absent).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.api.conftest import Api

CHROMIUM = Path("/usr/bin/chromium")
REFERENCE = re.compile(r'(?:src|href|spec-url)="([^"]+)"|url: \'([^\']+)\'')


@pytest.mark.parametrize(("page", "script"), [("/docs", "swagger-ui-bundle.js"),
                                              ("/redoc", "redoc.standalone.js")])
def test_the_api_pages_reference_nothing_outside_the_api(api: Api, page: str,
                                                          script: str) -> None:
    reply = api.client.get(page)
    assert reply.status_code == 200
    body = reply.text
    assert "http://" not in body and "https://" not in body and "//" not in body.replace(
        "<!--", "").replace("-->", "")
    references = [a or b for a, b in REFERENCE.findall(body)]
    assert any(ref.endswith(script) for ref in references)
    assert "/openapi.json" in references
    for ref in references:
        assert ref.startswith("/"), ref  # on this host
        asset = api.client.get(ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 1000, ref  # a real file, not an empty stand-in


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_no_other_site_can_frame_the_api_pages(api: Api, page: str) -> None:
    """Their "Try it out" sends requests with the reader's token: a page of another site that
    framed them, disguised, could have a click send one."""
    headers = api.client.get(page).headers
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"


def test_the_api_pages_are_not_part_of_the_api_document(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc"} & set(paths)
    assert not any(path.startswith("/docs-assets") for path in paths)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
@pytest.mark.parametrize(("page", "rendered"), [("/docs", 'class="opblock'),
                                                ("/redoc", "api-content")])
def test_the_api_pages_render_with_the_network_blocked(
    live_url: str, tmp_path: Path, page: str, rendered: str
) -> None:
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # Every name but the loopback address fails to resolve: no CDN can answer.
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
         "--dump-dom", f"{live_url}{page}"],
        capture_output=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    dom = done.stdout.decode()
    assert rendered in dom  # the script ran and drew the operations
    assert "/v1/allocations" in dom
