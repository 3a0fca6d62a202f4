"""``GET /`` and ``GET /dashboard``: the operator's HTML view of the cluster, for the admin only.

The page shows every tenant's seats, certificate row and counters, so it takes the admin
token, like ``GET /v1/allocations``: as ``Authorization: Bearer`` (a proxy may add it), or by
signing in. A browser cannot send a bearer header by itself, so the sign-in form POSTs the
token to ``/sign-in`` — in the body, never in a URL, where it would land in access logs and
browser history — and gets a session cookie (HttpOnly, SameSite=Lax, Secure over HTTPS; a MAC
of its expiry keyed by the admin token, 12 hours, :func:`api.auth.dashboard_session`) and a
redirect to the page. A ``?token=`` in the URL is ignored. Failed sign-ins count against the
address like any failed credential (:mod:`api.ratelimit`). Callers without a valid admin
token get a small HTML page and no data: 401 with the sign-in form when there is no or an
unknown token, 403 for another role's token, 429 when the address failed too often.

The routes are left out of the OpenAPI document: they serve a page for people, not an API.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from api.auth import DASHBOARD_SESSION_S, dashboard_session, identify, is_dashboard_session
from api.deps import StateDep, client_address
from api.errors import ApiError
from api.services.dashboard import read_dashboard
from api.state import AppState
from api.templates.dashboard import render_dashboard, render_refusal

router = APIRouter(include_in_schema=False)

# No scripts and nothing from elsewhere may run on a page that shows every tenant's data; the
# token, when it came in the URL, must not leave in a Referer header.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src data:; form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


SESSION_COOKIE = "gpufair_dashboard"
HOW = "Enter the admin token."


def _bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials else None


def _refuse(status: int, title: str, message: str, *, form: bool) -> HTMLResponse:
    body = render_refusal(title=title, message=message, form=form)
    headers = {**HEADERS, "WWW-Authenticate": "Bearer"} if status == 401 else HEADERS
    return HTMLResponse(body, status_code=status, headers=headers)


def _check_admin(request: Request, state: AppState, token: str) -> HTMLResponse | None:
    """None when ``token`` is the admin's; else the refusal page (failures counted)."""
    address = client_address(request)
    try:
        state.failed_credentials.check(address)
        with state.db.connection() as connection:
            principal = identify(session=connection, token=token, config=state.config)
    except ApiError as exc:  # the development token outside development mode; rate limited
        return _refuse(exc.status, "Refused", exc.message, form=False)
    if principal is None:
        state.failed_credentials.failed(address)
        return _refuse(401, "Sign in", f"Unknown or revoked token. {HOW}", form=True)
    if principal.role != "admin":
        return _refuse(
            403, "Refused", f"The dashboard is for the admin, not a {principal.role}.", form=False
        )
    return None


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, state: StateDep) -> Response:
    """The sign-in form's target: the admin token in the body (form-encoded ``token``); a
    session cookie and a redirect to the dashboard, or the refusal page."""
    fields = parse_qs((await request.body()).decode(errors="replace"), max_num_fields=4)
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


@router.get("/", response_class=HTMLResponse)
@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, state: StateDep) -> HTMLResponse:
    """The dashboard for the admin; a sign-in or refusal page, without data, for anyone else."""
    token = _bearer(request)
    cookie = request.cookies.get(SESSION_COOKIE)
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
    return HTMLResponse(render_dashboard(data), headers=HEADERS)
