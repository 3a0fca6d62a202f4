"""The dashboard's HTML: one self-contained page rendered from :class:`DashboardData`.

Server-rendered with f-strings and ``html.escape`` (no template engine, no JavaScript, nothing
fetched from outside: the charts are inline SVG drawn here), so the page works on an
air-gapped cluster and under a Content-Security-Policy that allows no scripts. Every string
that comes from the database — tenant, model and node names, a daemon's error messages — goes
through :func:`e` before it reaches the page.

Sections: the cluster (nodes → devices, each seat a cell in its tenant's colour, the shared
pool as a bar split by pool share), SLA attainment over time (a line per tenant, in the same
colours), the current certificate (per tenant α, criterion, holds, slack, λ; the envy matrix as
a heatmap), SLA counters per tenant, and the allocation history with seat moves against the
previous version.
"""

from __future__ import annotations

import html
from string import Template

from api.schemas import SlaHistory, SlaSeries
from api.services.dashboard import DashboardData, DeviceView, HistoryEntry

# Tableau 10 without its red, which means "rejected" here; readable with white or dark text
# (chosen per colour by ``ink``).
PALETTE = (
    "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2",
    "#edc948", "#9c755f", "#ff9da7", "#86bcb6", "#bab0ac",
)  # fmt: skip
REJECTED = "#c62828"
EXPIRED = "#5f6670"
EMPTY = "#eef0f3"
SEATS_PER_ROW = 4
SLA_TARGET = 0.99  # the reference line: the attainment a well-behaved tenant should keep


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def percent(attainment: float) -> str:
    """An attainment figure as every panel writes it, so that the same queries read the same
    wherever they are shown (two precisions once made one figure look like two)."""
    return f"{attainment:.2%}"


def colours(tenants: tuple[str, ...]) -> dict[str, str]:
    """Tenant -> colour, by sorted name, so a tenant keeps its colour between page loads."""
    return {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(tenants)}


def ink(background: str) -> str:
    """Dark or white text, whichever reads better on ``background`` (relative luminance)."""
    r, g, b = (int(background[k : k + 2], 16) / 255 for k in (1, 3, 5))
    return "#1d2430" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.55 else "#ffffff"


def _num(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "—"


# --- the cluster -------------------------------------------------------------------------------


def _pool_bar(device: DeviceView, palette: dict[str, str]) -> str:
    """The device's shared pool as one SVG bar, split by the tenants' pool streams."""
    width, height = 254, 18
    if device.pool_streams <= 0:
        return '<div class="muted small">no shared pool</div>'
    parts: dict[str, float] = {}
    for seat in device.seats:
        if seat.tenant is not None and seat.pool_streams > 0:
            parts[seat.tenant] = parts.get(seat.tenant, 0.0) + seat.pool_streams
    rects, x = [], 0.0
    for tenant, streams in parts.items():
        w = width * streams / device.pool_streams
        rects.append(
            f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{height}" fill="{palette[tenant]}">'
            f"<title>{e(tenant)}: {streams:.2f} pool streams</title></rect>"
        )
        x += w
    idle = device.pool_streams - sum(parts.values())
    label = ", ".join(f"{e(t)} {s:.1f}" for t, s in parts.items()) or "unassigned"
    return (
        f'<svg class="pool" width="{width}" height="{height}" role="img" '
        f'aria-label="shared pool">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="{EMPTY}" rx="3"/>'
        f"{''.join(rects)}</svg>"
        f'<div class="small">pool: {device.pool_streams} streams — {label}'
        f"{f' · {idle:.1f} idle' if parts and idle > 1e-9 else ''}</div>"
    )


def _device(device: DeviceView, palette: dict[str, str]) -> str:
    columns = max(1, min(len(device.seats), SEATS_PER_ROW))
    cells = []
    for seat in device.seats:
        if seat.tenant is None:
            cells.append(f'<div class="seat empty"><b>seat {seat.seat}</b><span>empty</span></div>')
            continue
        colour = palette.get(seat.tenant, PALETTE[-1])
        extra = f"+{seat.dedicated_streams} ded." if seat.dedicated_streams else ""
        pool = f"+{seat.pool_streams:.1f} pool" if seat.pool_streams > 1e-9 else ""
        streams = " ".join(s for s in ("1 base", extra, pool) if s)
        cells.append(
            f'<div class="seat" style="background:{colour};color:{ink(colour)}">'
            f"<b>{e(seat.tenant)}</b><span>{e(seat.model)}</span>"
            f'<span class="small">seat {seat.seat} · {streams}</span></div>'
        )
    return (
        f'<div class="device"><div class="devhead">{e(device.device)}'
        f' <span class="muted small">{e(device.kind)} · {device.streams} streams · '
        f"{len(device.seats)} seats</span></div>"
        f'<div class="seats" style="grid-template-columns:repeat({columns},124px)">'
        f"{''.join(cells)}</div>{_pool_bar(device, palette)}</div>"
    )


def cluster_section(data: DashboardData, palette: dict[str, str]) -> str:
    if not data.devices:
        return '<p class="muted">No allocation yet: POST /v1/allocations solves one.</p>'
    nodes: dict[str, list[str]] = {}
    for device in data.devices:
        nodes.setdefault(device.node, []).append(_device(device, palette))
    blocks = "".join(
        f'<div class="node"><h3>node {e(node)}</h3><div class="devices">{"".join(d)}</div></div>'
        for node, d in nodes.items()
    )
    return f'<div class="nodes">{blocks}</div>'


def legend(palette: dict[str, str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{c}"></i>{e(t)}</span>' for t, c in palette.items()
    )
    empty = f'<span class="key"><i style="background:{EMPTY}"></i>empty / idle</span>'
    return f'<div class="legend">{items}{empty}</div>'


# --- the certificate ---------------------------------------------------------------------------


def certificate_table(data: DashboardData, palette: dict[str, str]) -> str:
    agents = data.certificate.get("agents", {})
    if not agents:
        return '<p class="muted">No certificate yet.</p>'
    rows = []
    for name, row in sorted(agents.items()):
        holds = bool(row.get("holds"))
        verdict = '<span class="ok">✓ holds</span>' if holds else '<span class="bad">✗ fails</span>'
        rows.append(
            f'<tr><td><i class="sw" style="background:{palette.get(name, PALETTE[-1])}"></i>'
            f"{e(name)}</td><td>{e(row.get('criterion', ''))}</td>"
            f"<td>{_num(row.get('weight'), 2)}</td><td>{_num(row.get('alpha'))}</td>"
            f"<td>{verdict}</td><td>{_num(row.get('slack'))}</td>"
            f"<td>{_num(row.get('lambda'))}</td><td>{_num(row.get('normalised_value'))}</td></tr>"
        )
    return (
        "<table><thead><tr><th>tenant</th><th>criterion</th><th>weight</th><th>α</th>"
        "<th>verdict</th><th>slack</th><th>λ</th><th>value (norm.)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def certificate_summary(data: DashboardData) -> str:
    c = data.certificate
    if not c:
        return ""
    verdict = (
        '<span class="badge ok">certificate holds</span>'
        if c.get("holds")
        else '<span class="badge bad">certificate fails</span>'
    )
    facts = [
        ("objective", e(c.get("objective", ""))),
        ("value", _num(c.get("objective_value"))),
        ("ratio to unconstrained", _num(c.get("ratio"))),
        ("λ (EF)", _num(c.get("lambda"))),
        ("solver", f"{e(c.get('solver', ''))} · {e(c.get('status', ''))}"),
        ("gap", _num(c.get("gap"), 4)),
        ("solve time", f"{_num(c.get('time_s'), 3)} s"),
    ]
    items = "".join(f"<div><span class='muted'>{k}</span><b>{v}</b></div>" for k, v in facts)
    estimated = sum(1 for note in c.get("notes", []) if str(note).startswith("estimated"))
    note = (
        f'<p class="small muted">{estimated} (model, device) valuations are estimates: '
        "no profile measured yet.</p>"
        if estimated
        else ""
    )
    return f'<div class="facts">{verdict}{items}</div>{note}'


def _envy_colour(value: float, scale: float) -> str:
    """Diverging: red where the row tenant envies the column's bundle, blue where it does not."""
    t = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    base = (225, 87, 89) if value > 0 else (78, 121, 167)
    r, g, b = (round(255 + (c - 255) * t) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


def envy_heatmap(data: DashboardData) -> str:
    agents = data.certificate.get("agents", {})
    names = sorted(agents)
    if not names:
        return ""
    envy = {i: agents[i].get("envy", {}) for i in names}
    scale = max((abs(v) for row in envy.values() for v in row.values()), default=0.0)
    cell, left, top = 58, 110, 76
    parts = []
    for c, name in enumerate(names):
        x = left + c * cell + cell / 2
        parts.append(
            f'<text x="{x}" y="{top - 8}" text-anchor="start" '
            f'transform="rotate(-35 {x} {top - 8})" class="lbl">{e(name)}</text>'
        )
    for r, row_name in enumerate(names):
        y = top + r * cell
        parts.append(
            f'<text x="{left - 8}" y="{y + cell / 2 + 4}" text-anchor="end" class="lbl">'
            f"{e(row_name)}</text>"
        )
        for c, col_name in enumerate(names):
            x = left + c * cell
            if row_name == col_name:
                parts.append(
                    f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="#d9dce1"/>'
                    f'<text x="{x + cell / 2 - 1}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                    f'class="cell">—</text>'
                )
                continue
            value = float(envy[row_name].get(col_name, 0.0))
            fill = _envy_colour(value, scale)
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{fill}">'
                f"<title>{e(row_name)} values {e(col_name)}'s bundle {value:+.3f} "
                f"relative to its own</title></rect>"
                f'<text x="{x + cell / 2 - 1}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                f'class="cell" fill="{ink(fill)}">{value:+.2f}</text>'
            )
    width = left + len(names) * cell + 20
    height = top + len(names) * cell + 10
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="envy matrix">'
        f"{''.join(parts)}</svg>"
        "<p class=\"small muted\">Row tenant's envy of the column tenant's bundle, in its own "
        "normalised values: red = envies, blue = prefers its own.</p>"
    )


# --- SLA attainment over time ------------------------------------------------------------------


def _sla_palette(history: SlaHistory, palette: dict[str, str]) -> dict[str, str]:
    """The page's tenant colours, extended to names only the daemons report (a deleted tenant
    whose samples are not yet pruned) so that no two lines share a colour needlessly."""
    extra = sorted(s.tenant for s in history.tenants if s.tenant not in palette)
    start = len(palette)
    return {
        **palette,
        **{name: PALETTE[(start + k) % len(PALETTE)] for k, name in enumerate(extra)},
    }


def _runs(series: SlaSeries) -> list[list[tuple[int, float]]]:
    """The series' points split at gaps: a bucket without traffic breaks the line."""
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for k, bucket in enumerate(series.buckets):
        if bucket.attainment is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((k, bucket.attainment))
    if current:
        runs.append(current)
    return runs


def sla_history_chart(data: DashboardData, palette: dict[str, str]) -> str:
    """Attainment per tenant and time bucket as an SVG line chart, y from 0 to 100 %."""
    history = data.sla_history
    minutes = (history.end - history.start).total_seconds() / 60
    if not any(s.received for s in history.tenants):
        return (
            f'<p class="muted">No SLA samples in the last {minutes:g} minutes: executor daemons '
            "report per-tenant query counts in their heartbeats.</p>"
        )
    colour = _sla_palette(history, palette)
    # Drawn at the wide section's width, scaled down (by its viewBox) in a narrower window.
    width, height = 1300, 300
    x0, x1, y0, y1 = 64, width - 24, 14, height - 52
    count = len(history.tenants[0].buckets)

    def x(k: float) -> float:
        return x0 + (x1 - x0) * k / count

    def y(value: float) -> float:
        return y1 - (y1 - y0) * value

    parts = []
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{x0}" y1="{y(tick):.1f}" x2="{x1}" y2="{y(tick):.1f}" '
            f'stroke="{"#9aa3ad" if tick == 0 else "#e3e6ea"}"/>'
            f'<text x="{x0 - 8}" y="{y(tick) + 4:.1f}" text-anchor="end" class="lbl">'
            f"{tick:.0%}</text>"
        )
    for j in range(6):
        at = x0 + (x1 - x0) * j / 5
        label = "now" if j == 5 else f"−{minutes * (5 - j) / 5:g} min"
        parts.append(
            f'<line x1="{at:.1f}" y1="{y1}" x2="{at:.1f}" y2="{y1 + 5}" stroke="#9aa3ad"/>'
            f'<text x="{at:.1f}" y="{y1 + 19}" text-anchor="middle" class="lbl">{label}</text>'
        )
    target = y(SLA_TARGET)
    parts.append(
        f'<line class="target" x1="{x0}" y1="{target:.1f}" x2="{x1}" y2="{target:.1f}" '
        f'stroke="{REJECTED}" stroke-dasharray="6 4" stroke-width="1.2"/>'
        f'<text x="{x1 - 4}" y="{target + 14:.1f}" text-anchor="end" class="lbl" '
        f'fill="{REJECTED}">{SLA_TARGET:.0%} target</text>'
        f'<text x="16" y="{(y0 + y1) / 2:.1f}" text-anchor="middle" class="lbl" '
        f'transform="rotate(-90 16 {(y0 + y1) / 2:.1f})">attainment</text>'
        f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 8}" text-anchor="middle" class="lbl muted">'
        f"time, {history.bucket_s:g} s buckets, up to {history.end:%H:%M:%S} UTC</text>"
    )
    for series in history.tenants:
        stroke = colour[series.tenant]
        lines = []
        for run in _runs(series):
            points = " ".join(f"{x(k + 0.5):.1f},{y(v):.1f}" for k, v in run)
            lines.append(
                f'<polyline points="{points}" fill="none" stroke="{stroke}" '
                'stroke-width="2.2" stroke-linejoin="round"/>'
            )
        dots = "".join(
            f'<circle cx="{x(k + 0.5):.1f}" cy="{y(b.attainment):.1f}" r="2.6" fill="{stroke}">'
            f"<title>{e(series.tenant)} {b.start:%H:%M:%S}: {percent(b.attainment)} of "
            f"{b.received:,} queries within SLA</title></circle>"
            for k, b in enumerate(series.buckets)
            if b.attainment is not None
        )
        parts.append(
            f'<g class="series" data-tenant="{e(series.tenant)}">{"".join(lines)}{dots}</g>'
        )
    keys = "".join(
        f'<span class="key"><i style="background:{colour[s.tenant]}"></i>{e(s.tenant)} '
        + (
            f'<b>{percent(s.attainment)}</b> <span class="muted">of {s.received:,} queries</span>'
            if s.attainment is not None
            else '<span class="muted">no queries</span>'
        )
        + "</span>"
        for s in history.tenants
    )
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px" '
        f'role="img" aria-label="SLA attainment over time">{"".join(parts)}</svg>'
        f'<div class="legend">{keys}</div>'
        "<p class=\"small muted\">Share of each tenant's queries answered within its models' "
        f"SLA per bucket, over the last {minutes:g} minutes (late answers, rejected, expired "
        "and failed queries count as missed); "
        "the figure in the legend is over the whole window. A break in a line is a bucket "
        "without queries, not 100 %. From the per-heartbeat SLA counts of the executor "
        "daemons.</p>"
    )


# --- SLA counters ------------------------------------------------------------------------------


def sla_chart(data: DashboardData, palette: dict[str, str]) -> str:
    if not data.counters:
        return (
            '<p class="muted">No replica counters yet: executor daemons report them in their '
            "heartbeats.</p>"
        )
    width, bar, gap, left = 560, 22, 14, 130
    plot = width - left - 150  # the rest: the attainment figure and its millions of queries
    parts = []
    for k, (tenant, counts) in enumerate(data.counters.items()):
        y = 10 + k * (bar + gap)
        total = counts.completed + counts.rejected + counts.expired
        x = float(left)
        for value, fill, what in (
            (counts.completed, palette.get(tenant, PALETTE[-1]), "completed"),
            (counts.rejected, REJECTED, "rejected"),
            (counts.expired, EXPIRED, "expired"),
        ):
            w = plot * value / total if total else 0.0
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{fill}">'
                f"<title>{e(tenant)}: {value} {what}</title></rect>"
            )
            x += w
        attainment = counts.attainment
        figure = (
            f'{percent(attainment)} <tspan class="muted">of {counts.received:,}</tspan>'
            if attainment is not None
            else '<tspan class="muted">no SLA counts</tspan>'
        )
        parts.append(
            f'<text x="{left - 8}" y="{y + bar / 2 + 4}" text-anchor="end" class="lbl">'
            f"{e(tenant)}</text>"
            f'<text x="{left + plot + 8}" y="{y + bar / 2 + 4}" class="lbl">{figure}</text>'
        )
    height = 10 + len(data.counters) * (bar + gap)
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="SLA attainment">'
        f"{''.join(parts)}</svg>"
        '<div class="legend small"><span class="key">completed (in time or late): the '
        "tenant's colour</span>"
        f'<span class="key"><i style="background:{REJECTED}"></i>rejected (429)</span>'
        f'<span class="key"><i style="background:{EXPIRED}"></i>expired (dropped, 504)</span>'
        "</div>"
        '<p class="small muted">Cumulative counters from each node\'s latest heartbeat, summed '
        "per tenant: since each daemon started. Attainment = queries answered within the SLA / "
        "queries received, as charted above: completed includes answers past the SLA, which "
        "count as missed, like rejected, expired and failed queries.</p>"
    )


def nodes_table(data: DashboardData) -> str:
    if not data.nodes:
        return '<p class="muted">No nodes registered.</p>'
    rows = []
    for node in data.nodes:
        seen = (
            node.last_heartbeat_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            if node.last_heartbeat_at
            else "never"
        )
        broken = "; ".join(f"model {e(m)}: {e(why)}" for m, why in sorted(node.broken.items()))
        serving = "—" if node.running_version is None else f"v{node.running_version}"
        lag = (
            ' <span class="bad">(behind)</span>'
            if data.version is not None
            and node.running_version is not None
            and node.running_version < data.version
            else ""
        )
        rows.append(
            f"<tr><td>{e(node.name)}</td><td>{seen}</td><td>{serving}{lag}</td>"
            f'<td class="small">{broken or "—"}</td></tr>'
        )
    return (
        "<table><thead><tr><th>node</th><th>last heartbeat</th><th>serving</th>"
        f"<th>broken replicas</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


# --- history -----------------------------------------------------------------------------------


def _replica(ref: object, model_names: dict[str, str]) -> str:
    if ref is None:
        return '<span class="muted">empty</span>'
    model_id, tenant = getattr(ref, "model_id", ""), getattr(ref, "tenant", "")
    return f"{e(tenant)}/{e(model_names.get(model_id, model_id))}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _moves(entry: HistoryEntry, model_names: dict[str, str]) -> str:
    if entry.diff is None:
        return '<span class="muted">first allocation</span>'
    moves = entry.diff.seat_moves
    shares = entry.diff.share_changes
    if not moves and not shares:
        return '<span class="muted">no change</span>'
    items = [
        f"<li>{e(m.node)}/{e(m.device)} seat {m.seat}: {_replica(m.before, model_names)} → "
        f"{_replica(m.after, model_names)}</li>"
        for m in moves
    ]
    summary = f"{_plural(len(moves), 'seat move')}, {_plural(len(shares), 'share change')}"
    return f"<details><summary>{summary}</summary><ul>{''.join(items)}</ul></details>"


def history_table(data: DashboardData) -> str:
    if not data.history:
        return '<p class="muted">No allocations yet.</p>'
    rows = [
        f"<tr><td>v{h.version}</td><td>{e(h.objective)}</td>"
        f"<td>{h.created_at.strftime('%m-%d %H:%M:%S')}</td><td>{h.solve_seconds:.3f} s</td>"
        f"<td>{'<span class=ok>✓</span>' if h.holds else '<span class=bad>✗</span>'} "
        f"{e(h.status)}</td><td>{_moves(h, data.model_names)}</td></tr>"
        for h in data.history
    ]
    return (
        "<table><thead><tr><th>version</th><th>objective</th><th>created (UTC)</th>"
        "<th>solve</th><th>status</th><th>changes vs previous</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# --- the page ----------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
  background:#f5f6f8;color:#1d2430}
header{background:#1d2430;color:#fff;padding:14px 28px;display:flex;align-items:baseline;gap:18px}
header h1{font-size:20px;margin:0}header .muted{color:#aab3c0}
main{padding:18px 28px;display:grid;grid-template-columns:minmax(0,1.25fr) minmax(0,1fr);gap:18px}
section{background:#fff;border-radius:8px;padding:14px 18px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
section.wide{grid-column:1/-1}
h2{font-size:16px;margin:0 0 10px}h3{font-size:14px;margin:6px 0}
.muted{color:#6b7480}.small{font-size:12px}
.legend{display:flex;flex-wrap:wrap;gap:14px;margin:4px 0 10px}
.key{display:inline-flex;align-items:center;gap:6px}
.key i,.sw{display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:-2px;
  margin-right:6px}
.key i{margin:0}
.devices{display:flex;flex-wrap:wrap;gap:12px}
.device{border:1px solid #dfe3e8;border-radius:6px;padding:8px 10px}
.devhead{font-weight:600;margin-bottom:6px}
.nodes{display:flex;flex-wrap:wrap;gap:10px 28px}
.seats{display:grid;gap:6px;margin-bottom:8px}
.seat{border-radius:5px;padding:6px 8px;display:flex;flex-direction:column;min-height:54px}
.seat span{font-size:12px;opacity:.95}.seat.empty{background:#eef0f3;color:#6b7480}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef1;vertical-align:top}
th{font-size:12px;color:#6b7480;font-weight:600}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}
.badge{padding:3px 10px;border-radius:12px;color:#fff}.badge.ok{background:#2e7d32;color:#fff}
.badge.bad{background:#c62828;color:#fff}
.facts{display:flex;flex-wrap:wrap;gap:18px;align-items:center;margin-bottom:10px}
.facts div{display:flex;flex-direction:column}.facts .muted{font-size:11px}
svg .lbl{font-size:12px;fill:#1d2430}svg .cell{font-size:12px}svg .muted{fill:#6b7480}
#history td{white-space:nowrap}#history td:last-child{white-space:normal}
details summary{cursor:pointer}ul{margin:4px 0;padding-left:18px}
"""

PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gpufair dashboard</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>$style</style></head>
<body><header><h1>gpufair</h1><span class="muted">$headline</span></header>
<main>
<section class="wide" id="cluster"><h2>Cluster: devices × seats, coloured by tenant</h2>
$legend$cluster</section>
<section class="wide" id="sla-history"><h2>SLA attainment over time</h2>$sla_history</section>
<section id="certificate"><h2>Certificate</h2>$summary$certificate</section>
<section id="envy"><h2>Envy matrix</h2>$envy</section>
<section id="sla"><h2>SLA counters per tenant</h2>$sla</section>
<section id="history"><h2>Allocation history</h2>$history</section>
<section class="wide" id="nodes"><h2>Nodes</h2>$nodes</section>
</main></body></html>
""")


def render_dashboard(data: DashboardData) -> str:
    palette = colours(data.tenants)
    headline = (
        f"allocation v{data.version} · {len(data.tenants)} tenants · {len(data.nodes)} nodes · "
        f"{len(data.devices)} devices"
        if data.version is not None
        else f"no allocation yet · {len(data.tenants)} tenants · {len(data.nodes)} nodes"
    )
    return PAGE.substitute(
        style=STYLE,
        headline=headline,
        legend=legend(palette),
        cluster=cluster_section(data, palette),
        summary=certificate_summary(data),
        certificate=certificate_table(data, palette),
        envy=envy_heatmap(data),
        sla_history=sla_history_chart(data, palette),
        sla=sla_chart(data, palette),
        nodes=nodes_table(data),
        history=history_table(data),
    )


LOGIN = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gpufair dashboard: sign in</title>
<style>$style main{display:block;max-width:460px;margin:60px auto}</style></head>
<body><header><h1>gpufair</h1></header><main><section><h2>$title</h2><p>$message</p>$form
</section></main></body></html>
""")

LOGIN_FORM = (
    '<form method="get" action="/"><input type="password" name="token" placeholder="admin '
    'token" autocomplete="current-password" style="width:70%;padding:6px"> '
    '<button type="submit" style="padding:6px 12px">Open</button></form>'
)


def render_refusal(*, title: str, message: str, form: bool) -> str:
    """The page anonymous and non-admin callers get: no data, one sentence, maybe a form."""
    return LOGIN.substitute(
        style=STYLE, title=e(title), message=e(message), form=LOGIN_FORM if form else ""
    )
