"""``GET /`` and ``GET /dashboard``: the operator's HTML view of the cluster, for the admin only.

The page shows every tenant's seats, certificate row and counters, so it takes the admin
token, like ``GET /v1/allocations``: as ``Authorization: Bearer`` (a proxy may add it), or by
signing in. A browser cannot send a bearer header by itself, so the sign-in form POSTs the
token to ``/sign-in`` — in the body, never in a URL, where it would land in access logs and
browser history — and gets a session cookie (HttpOnly, SameSite=Lax, Secure over HTTPS; a MAC
of its expiry keyed by the admin token, 12 hours, :func:`api.auth.dashboard_session`) and a
redirect to the page. A ``?token=`` in the URL is ignored. Failed sign-ins count against the
address like any failed credential (:mod:`api.ratelimit`). ``POST /sign-out`` (the page's
button) clears the cookie; the session itself holds nothing on the server, so a copy of the
cookie lasts until it expires or the admin token changes. Callers without a valid admin
token get a small HTML page and no data: 401 with the sign-in form when there is no or an
unknown token, 403 for another role's token, 429 (with ``Retry-After``) when the address
failed too often.

Both POSTs are refused (403, nothing counted, no cookie) when a browser sent them from
another site's page (:func:`_cross_site`): such a page could otherwise sign a visitor's
browser in or out, or make it post wrong tokens until the visitor's address — shared by
everyone behind the same proxy — is refused every token for a minute (:mod:`api.ratelimit`).

The routes are left out of the OpenAPI document: they serve a page for people, not an API.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from api.auth import DASHBOARD_SESSION_S, dashboard_session, identify, is_dashboard_session
from api.deps import StateDep, client_address
from api.errors import ApiError, TooManyRequests, Unavailable
from api.services.dashboard import read_dashboard
from api.state import AppState
from api.templates.dashboard import render_dashboard, render_refusal

router = APIRouter(include_in_schema=False)

# No scripts and nothing from elsewhere may run on a page that shows every tenant's data, no
# other site may frame it (X-Frame-Options for browsers that ignore frame-ancestors), and its
# address leaves in no Referer header.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src data:; form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


SESSION_COOKIE = "gpufair_dashboard"
HOW = "Enter the admin token."
# The sign-in form sends one field; a body with more than this many is not from it.
MAX_FORM_FIELDS = 4
# What a browser's Sec-Fetch-Site says of a request this site's own page (or the person, by
# typing the address) made.
OWN_SITE = ("same-origin", "none")


def _bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials else None


def _cross_site(request: Request) -> bool:
    """Whether a browser sent this POST from a page of another site (a cross-site request
    forgery), which a form on any web page can do, cookies or not.

    Browsers say so in ``Sec-Fetch-Site`` (sent to HTTPS and localhost addresses); where they
    do not, the ``Origin`` of a POST must name the host the request was sent to (``Host``, or
    ``X-Forwarded-Host`` from a proxy that rewrites ``Host``: a form cannot set either). A
    request without either header is no browser's (curl, a script), so no forgery.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.lower() not in OWN_SITE
    origin = request.headers.get("origin")
    if origin is None:
        return False
    forwarded = request.headers.get("x-forwarded-host", "").split(",")
    hosts = {host.strip().lower() for host in [request.headers.get("host", ""), *forwarded]}
    # "null" (a sandboxed frame, a file:// page) names no host, so it matches none.
    return urlsplit(origin).netloc.lower() not in hosts - {""}


def _refuse(
    status: int, title: str, message: str, *, form: bool, retry_after_s: int | None = None
) -> HTMLResponse:
    body = render_refusal(title=title, message=message, form=form)
    headers = {**HEADERS, "WWW-Authenticate": "Bearer"} if status == 401 else dict(HEADERS)
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return HTMLResponse(body, status_code=status, headers=headers)


def _refuse_cross_site() -> HTMLResponse:
    # The form is this site's own, so signing in from the refusal page works.
    message = f"Sign-in and sign-out are taken only from this site's pages. {HOW}"
    return _refuse(403, "Sign in", message, form=True)


def _check_admin(request: Request, state: AppState, token: str) -> HTMLResponse | None:
    """None when ``token`` is the admin's; else the refusal page (failures counted)."""
    address = client_address(request)
    try:
        state.failed_credentials.check(address)
        with state.db.connection() as connection:
            principal = identify(session=connection, token=token, config=state.config)
    except ApiError as exc:  # the development token outside development mode; rate limited
        retry_after_s = (
            exc.retry_after_s if isinstance(exc, TooManyRequests | Unavailable) else None
        )
        return _refuse(
            exc.status, "Refused", exc.message, form=False, retry_after_s=retry_after_s
        )
    if principal is None:
        state.failed_credentials.failed(address)
        return _refuse(401, "Sign in", f"Unknown or revoked token. {HOW}", form=True)
    if principal.role != "admin":
        return _refuse(
            403, "Refused", f"The dashboard is for the admin, not the {principal.role}.", form=False
        )
    return None


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, state: StateDep) -> Response:
    """The sign-in form's target: the admin token in the body (form-encoded ``token``); a
    session cookie and a redirect to the dashboard, or the refusal page."""
    if _cross_site(request):
        return _refuse_cross_site()
    body = (await request.body()).decode(errors="replace")
    try:
        fields = parse_qs(body, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:  # more fields than the form has: a 400 page, not a 500
        return _refuse(400, "Sign in", f"The sign-in form sends one field. {HOW}", form=True)
    token = (fields.get("token") or [""])[0].strip()
    if not token:
        return _refuse(401, "Sign in", f"The dashboard is for the admin. {HOW}", form=True)
    refusal = await run_in_threadpool(_check_admin, request, state, token)
    if refusal is not None:
        return refusal
    redirect = RedirectResponse("/", status_code=303, headers=HEADERS)
    redirect.set_cookie(
        SESSION_COOKIE,
        dashboard_session(state.config, state.clock()),
        max_age=DASHBOARD_SESSION_S,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return redirect


@router.post("/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request) -> Response:
    """The page's sign-out button: the session cookie cleared and a redirect to the sign-in
    page, so a shared browser is left without the admin's session."""
    if _cross_site(request):
        return _refuse_cross_site()
    redirect = RedirectResponse("/", status_code=303, headers=HEADERS)
    redirect.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return redirect


@router.get("/", response_class=HTMLResponse)
@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, state: StateDep) -> HTMLResponse:
    """The dashboard for the admin; a sign-in or refusal page, without data, for anyone else."""
    token = _bearer(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    # A page opened with a bearer token (from a proxy) has no session to end.
    signed_in = token is None
    if token is not None:
        refusal = _check_admin(request, state, token)
        if refusal is not None:
            return refusal
    elif cookie is None or not is_dashboard_session(cookie, state.config, state.clock()):
        expired = "Your sign-in expired. " if cookie is not None else ""
        return _refuse(
            401, "Sign in", f"{expired}The dashboard is for the admin. {HOW}", form=True
        )
    with state.db.session(write=False) as session:
        data = read_dashboard(session=session, now=state.clock())
    return HTMLResponse(render_dashboard(data, sign_out=signed_in), headers=HEADERS)
