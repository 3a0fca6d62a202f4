"""``GET /`` and ``GET /dashboard``: the operator's HTML view of the cluster, for the admin only.

The page shows every tenant's seats, certificate row and counters, so it takes the admin
token, like ``GET /v1/allocations``. A browser cannot send a bearer header by itself, so in
development mode (``api.dev_mode``) the token may also come as ``?token=`` — the login form
submits it that way. Outside development mode only ``Authorization: Bearer`` is accepted
(put the dashboard behind a proxy that adds it): a token in a URL lands in access logs and
browser history. Callers without a valid admin token get a small HTML page and no data:
401 with the login form when there is no or an unknown token, 403 for another role's token.

The routes are left out of the OpenAPI document: they serve a page for people, not an API.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.auth import identify
from api.deps import StateDep
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


def _token(request: Request, state: AppState) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    if state.config.dev_mode:
        return request.query_params.get("token") or None
    return None


def _refuse(status: int, title: str, message: str, *, form: bool) -> HTMLResponse:
    body = render_refusal(title=title, message=message, form=form)
    headers = {**HEADERS, "WWW-Authenticate": "Bearer"} if status == 401 else HEADERS
    return HTMLResponse(body, status_code=status, headers=headers)


@router.get("/", response_class=HTMLResponse)
@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, state: StateDep) -> HTMLResponse:
    """The dashboard for the admin; a sign-in or refusal page, without data, for anyone else."""
    dev_mode = state.config.dev_mode
    how = (
        "Enter the admin token."
        if dev_mode
        else "Send the admin token as 'Authorization: Bearer …' (for example from a proxy)."
    )
    token = _token(request, state)
    if token is None:
        return _refuse(401, "Sign in", f"The dashboard is for the admin. {how}", form=dev_mode)
    try:
        with state.db.connection() as connection:
            principal = identify(session=connection, token=token, config=state.config)
    except ApiError as exc:  # the development token outside development mode
        return _refuse(exc.status, "Refused", exc.message, form=False)
    if principal is None:
        return _refuse(401, "Sign in", f"Unknown or revoked token. {how}", form=dev_mode)
    if principal.role != "admin":
        return _refuse(
            403, "Refused", f"The dashboard is for the admin, not a {principal.role}.", form=False
        )
    with state.db.session(write=False) as session:
        data = read_dashboard(session=session, now=state.clock())
    return HTMLResponse(render_dashboard(data), headers=HEADERS)
