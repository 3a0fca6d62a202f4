"""``GET /docs`` and ``GET /redoc``: the OpenAPI pages, with every asset served from here.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc its fonts from Google),
so on a cluster without internet they are blank. These serve the same pages with the scripts,
style sheet and icon of the ``fastapi-offline`` package, which ships them, under
:data:`ASSETS` (a static mount, :func:`mount_assets`), and nothing from another host.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
# No other site may frame a page whose "Try it out" sends requests with the reader's token (a
# click on a framed, disguised page would send them), and the page's address leaves in no
# Referer. The pages' own scripts and styles are left to the browser's defaults: Swagger UI
# and ReDoc inline both, so a script policy would need their hashes, release by release.
HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(include_in_schema=False)


def _assets_directory() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def mount_assets(app: FastAPI) -> None:
    """Serve the packaged Swagger UI and ReDoc files under ASSETS."""
    app.mount(ASSETS, StaticFiles(directory=_assets_directory()), name="docs-assets")


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="gpufair control plane: API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon.png",
        # Swagger UI would otherwise ask validator.swagger.io for a badge.
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers.update(HEADERS)
    return page


@router.get("/redoc")
def redoc() -> HTMLResponse:
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title="gpufair control plane: API reference",
        redoc_js_url=f"{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS}/favicon.png",
        with_google_fonts=False,
    )
    page.headers.update(HEADERS)
    return page
