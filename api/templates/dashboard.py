"""The dashboard's HTML: Jinja2 templates (``api/templates/*.html``) rendered from
:class:`DashboardData`.

One self-contained page: no JavaScript and nothing fetched from outside (the charts are inline
SVG), so it works on an air-gapped cluster and under the Content-Security-Policy that
``api/routes/dashboard.py`` sends, which allows no scripts. The markup is in the templates; the
charts' geometry comes from :mod:`api.templates.charts` as plain data. The environment escapes
everything a template prints (``autoescape``), so every string that comes from the database —
tenant, model and node names, a daemon's error messages — is escaped without a call per value
that one forgotten call would defeat; nothing here is marked safe.

Sections: the tenants (share of the cluster against entitlement, rates and SLA attainment over
the window, criterion verdict), served rate and p99 against the SLA per tenant and model (the
live daemons' last minute), the cluster (nodes → devices, each seat a cell in its tenant's
colour, the shared pool as a bar split by pool share; a stale node's seats greyed), SLA
attainment over time (a line per tenant, in the same colours), the current certificate (per
tenant α, criterion, holds, slack, λ with a legend; the envy matrix as a heatmap), outcome
counters per tenant, the allocation history with seat moves against the previous version, and
the nodes' liveness. The page refreshes itself every ``REFRESH_S`` seconds with a meta refresh,
and its layout holds from 800 px wide.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from api.services.dashboard import STALE_AFTER_S, DashboardData
from api.templates import charts

# The page reloads itself this often (a meta refresh: no script runs on it).
REFRESH_S = 10


def percent(attainment: float) -> str:
    """An attainment figure as every panel writes it, so that the same queries read the same
    wherever they are shown (two precisions once made one figure look like two)."""
    return f"{attainment:.2%}"


def number(value: object, digits: int = 3) -> str:
    """A figure to ``digits`` places; "—" where there is none (a certificate field the solver
    left out)."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "—"


def thousands(count: int) -> str:
    return f"{count:,}"


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("api", "templates"),
        autoescape=True,
        # A misspelt name fails the render, and so the tests, instead of printing nothing.
        undefined=StrictUndefined,
        # Block tags on lines of their own leave no blank lines in the page.
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        percent=percent, number=number, thousands=thousands, duration=charts.duration
    )
    environment.globals.update(
        EMPTY=charts.EMPTY,
        REJECTED=charts.REJECTED,
        EXPIRED=charts.EXPIRED,
        REFRESH_S=REFRESH_S,
        STALE_AFTER_S=STALE_AFTER_S,
        SLA_TARGET=charts.SLA_TARGET,
    )
    return environment


ENVIRONMENT = _environment()


def estimated_valuations(certificate: dict[str, Any]) -> int:
    """How many (model, device) valuations the solver estimated, for want of a profile."""
    return sum(1 for note in certificate.get("notes", []) if str(note).startswith("estimated"))


def render_dashboard(data: DashboardData, *, sign_out: bool = False) -> str:
    """The admin's page; with a sign-out button when ``sign_out`` (opened with a session
    cookie: a page a proxy's bearer token opened has no session to end)."""
    palette = charts.colours(data.tenants)
    agents = data.certificate.get("agents", {})
    return ENVIRONMENT.get_template("dashboard.html").render(
        data=data,
        palette=palette,
        colour_of=lambda tenant: charts.colour_of(palette, tenant),
        nodes=charts.cluster(data, palette),
        agents=sorted(agents.items()),
        estimated=estimated_valuations(data.certificate),
        envy=charts.envy_heatmap(agents),
        sla_history=charts.sla_history_chart(data.sla_history, palette),
        counters=charts.counters_chart(data, palette),
        sign_out=sign_out,
    )


def render_refusal(*, title: str, message: str, form: bool) -> str:
    """The page anonymous and non-admin callers get: no data, one sentence, maybe a form."""
    return ENVIRONMENT.get_template("refusal.html").render(title=title, message=message, form=form)
