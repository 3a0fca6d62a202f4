"""The dashboard's colours and the geometry of its panels and SVG charts, as plain data.

The page's markup lives in Jinja2 templates (``api/templates/*.html``); what a template should
not compute — coordinates, scales, ticks, the polylines of the attainment chart, colours that
depend on a value — is computed here, in Python, where it is typed and testable on hand-made
data. Nothing here returns markup: names pass through as plain strings and the templates
escape them when they print them, so a tenant's name cannot turn into HTML on its way through
a chart.

Coordinates are SVG user units (pixels at the drawn size). Those that are not whole are
rounded to 0.1 here, which is all a screen shows and keeps the page small, so the templates
print numbers as they are and do no arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.schemas import SlaBucket, SlaHistory, SlaSeries
from api.services.dashboard import DashboardData, DeviceView, SeatView

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
# Below this many streams a share is rounding noise, not a part of the pool worth drawing.
NO_STREAMS = 1e-9


def colours(tenants: tuple[str, ...]) -> dict[str, str]:
    """Tenant -> colour, by sorted name, so a tenant keeps its colour between page loads."""
    return {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(tenants)}


def colour_of(palette: dict[str, str], tenant: str) -> str:
    """A tenant's colour; a name the page's tenants lack (deleted since) gets the last one."""
    return palette.get(tenant, PALETTE[-1])


def ink(background: str) -> str:
    """Dark or white text, whichever reads better on ``background`` (relative luminance)."""
    r, g, b = (int(background[k : k + 2], 16) / 255 for k in (1, 3, 5))
    return "#1d2430" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.55 else "#ffffff"


@dataclass(frozen=True)
class Text:
    """A label's anchor point and its words."""

    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Segment:
    """One coloured piece of a horizontal bar: ``amount`` of ``what`` for ``tenant``."""

    x: float
    width: float
    fill: str
    tenant: str
    amount: float
    what: str = ""


# --- the cluster -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolBar:
    """A device's shared pool as one bar, split by the tenants' pool streams."""

    width: int
    height: int
    streams: int  # the pool's size
    segments: tuple[Segment, ...]
    idle: float  # streams no tenant uses; 0 when none are assigned at all (then all are idle)


@dataclass(frozen=True)
class SeatCell:
    seat: SeatView
    colour: str  # the tenant's colour; EMPTY for an empty seat
    ink: str
    pool_streams: float  # the seat's part of the pool; 0 where it is rounding noise


@dataclass(frozen=True)
class DeviceLayout:
    device: DeviceView
    columns: int  # of the seats' grid
    cells: tuple[SeatCell, ...]
    pool: PoolBar | None  # None: the device has no shared pool


@dataclass(frozen=True)
class NodeLayout:
    name: str
    devices: tuple[DeviceLayout, ...]
    silent_s: float | None = None  # set when the node is stale: seconds without a heartbeat
    stale: bool = False  # no recent heartbeat: its seats are drawn greyed


def pool_bar(device: DeviceView, palette: dict[str, str]) -> PoolBar | None:
    """The bar of ``device``'s shared pool; None when it has none."""
    if device.pool_streams <= 0:
        return None
    width, height = 254, 18
    parts: dict[str, float] = {}
    for seat in device.seats:
        if seat.tenant is not None and seat.pool_streams > 0:
            parts[seat.tenant] = parts.get(seat.tenant, 0.0) + seat.pool_streams
    segments, x = [], 0.0
    for tenant, streams in parts.items():
        w = width * streams / device.pool_streams
        segments.append(
            Segment(round(x, 1), round(w, 1), colour_of(palette, tenant), tenant, streams)
        )
        x += w
    idle = device.pool_streams - sum(parts.values())
    return PoolBar(
        width=width,
        height=height,
        streams=device.pool_streams,
        segments=tuple(segments),
        idle=idle if parts and idle > NO_STREAMS else 0.0,
    )


def cluster(data: DashboardData, palette: dict[str, str]) -> tuple[NodeLayout, ...]:
    """The devices grouped by node, in the order the data lists them."""
    nodes: dict[str, list[DeviceLayout]] = {}
    for device in data.devices:
        cells = []
        for seat in device.seats:
            colour = EMPTY if seat.tenant is None else colour_of(palette, seat.tenant)
            pool = seat.pool_streams if seat.pool_streams > NO_STREAMS else 0.0
            cells.append(SeatCell(seat=seat, colour=colour, ink=ink(colour), pool_streams=pool))
        nodes.setdefault(device.node, []).append(
            DeviceLayout(
                device=device,
                columns=max(1, min(len(device.seats), SEATS_PER_ROW)),
                cells=tuple(cells),
                pool=pool_bar(device, palette),
            )
        )
    status = {n.name: n for n in data.nodes}
    layouts = []
    for name, devices in nodes.items():
        node = status.get(name)
        stale = node is None or node.stale
        silent = node.silent_s if node is not None else None
        layouts.append(NodeLayout(name, tuple(devices), silent, stale))
    return tuple(layouts)


# --- the certificate's envy matrix -------------------------------------------------------------


@dataclass(frozen=True)
class HeatCell:
    x: float
    y: float
    size: float
    column: str
    value: float | None  # None on the diagonal: a tenant's envy of itself is not a figure
    fill: str
    ink: str
    label: Text  # where the figure is written, centred


@dataclass(frozen=True)
class HeatRow:
    label: Text  # the row tenant's name, right-aligned left of the row
    cells: tuple[HeatCell, ...]


@dataclass(frozen=True)
class Heatmap:
    width: float
    height: float
    columns: tuple[Text, ...]  # the column tenants' names, rotated about their anchors
    rows: tuple[HeatRow, ...]


def envy_colour(value: float, scale: float) -> str:
    """Diverging: red where the row tenant envies the column's bundle, blue where it does not."""
    t = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    base = (225, 87, 89) if value > 0 else (78, 121, 167)
    r, g, b = (round(255 + (c - 255) * t) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


def envy_heatmap(agents: dict[str, dict[str, Any]]) -> Heatmap | None:
    """The certificate's per-tenant envy (``agents[row]["envy"][column]``) as a square grid,
    coloured on one scale: the largest envy in either direction."""
    names = sorted(agents)
    if not names:
        return None
    envy = {name: dict(agents[name].get("envy") or {}) for name in names}
    scale = max((abs(v) for row in envy.values() for v in row.values()), default=0.0)
    cell, left, top = 58, 110, 76
    columns = tuple(Text(left + c * cell + cell / 2, top - 8, name) for c, name in enumerate(names))
    rows = []
    for r, row_name in enumerate(names):
        y = top + r * cell
        cells = []
        for c, column in enumerate(names):
            x = left + c * cell
            label_x, label_y = x + cell / 2 - 1, y + cell / 2 + 4
            if row_name == column:
                fill, value, figure = "#d9dce1", None, "—"
            else:
                value = float(envy[row_name].get(column, 0.0))
                fill, figure = envy_colour(value, scale), f"{value:+.2f}"
            cells.append(
                HeatCell(
                    x=x,
                    y=y,
                    size=cell - 2,
                    column=column,
                    value=value,
                    fill=fill,
                    ink=ink(fill),
                    label=Text(label_x, label_y, figure),
                )
            )
        rows.append(HeatRow(Text(left - 8, y + cell / 2 + 4, row_name), tuple(cells)))
    return Heatmap(
        width=left + len(names) * cell + 20,
        height=top + len(names) * cell + 10,
        columns=columns,
        rows=tuple(rows),
    )


# --- SLA attainment over time ------------------------------------------------------------------


@dataclass(frozen=True)
class GridLine:
    """A horizontal line at an attainment level, with its label left of the plot."""

    y: float
    stroke: str
    label: Text


@dataclass(frozen=True)
class TimeTick:
    x: float
    label: Text


@dataclass(frozen=True)
class Dot:
    """One bucket's attainment: a point on the line, with the figures of its tooltip."""

    cx: float
    cy: float
    bucket: SlaBucket


@dataclass(frozen=True)
class SeriesLine:
    tenant: str
    colour: str
    runs: tuple[str, ...]  # polyline points ("x,y x,y …"); a bucket without queries splits them
    dots: tuple[Dot, ...]
    received: int  # over the window, for the legend
    attainment: float | None


@dataclass(frozen=True)
class SlaChart:
    width: int
    height: int
    x0: float  # the plot's left and right edges
    x1: float
    axis_y: float  # the time axis (0 %), where the ticks hang
    tick_end: float  # the ticks' lower end
    grid: tuple[GridLine, ...]
    ticks: tuple[TimeTick, ...]
    target_y: float
    target: Text
    y_title: Text  # rotated about its anchor
    x_title: Text
    series: tuple[SeriesLine, ...]


def duration(seconds: float) -> str:
    """A span as a person reads it: "12 s", "29 min", "3.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def sla_palette(history: SlaHistory, palette: dict[str, str]) -> dict[str, str]:
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


def sla_history_chart(history: SlaHistory, palette: dict[str, str]) -> SlaChart | None:
    """Attainment per tenant and time bucket as a line chart, y from 0 to 100 %; None when the
    window holds no samples at all."""
    if not any(s.received for s in history.tenants):
        return None
    colour = sla_palette(history, palette)
    window_s = (history.end - history.start).total_seconds()
    # Drawn at the wide section's width, scaled down (by its viewBox) in a narrower window.
    width, height = 1300, 300
    x0, x1, y0, y1 = 64, width - 24, 14, height - 52
    count = len(history.tenants[0].buckets)

    def x(k: float) -> float:
        return x0 + (x1 - x0) * k / count

    def y(value: float) -> float:
        return y1 - (y1 - y0) * value

    grid = tuple(
        GridLine(
            y=round(y(tick), 1),
            stroke="#9aa3ad" if tick == 0 else "#e3e6ea",
            label=Text(x0 - 8, round(y(tick) + 4, 1), f"{tick:.0%}"),
        )
        for tick in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    ticks = []
    for j in range(6):
        at = round(x0 + (x1 - x0) * j / 5, 1)
        label = "now" if j == 5 else f"−{duration(window_s * (5 - j) / 5)}"
        ticks.append(TimeTick(at, Text(at, y1 + 19, label)))
    target = y(SLA_TARGET)
    series = tuple(
        SeriesLine(
            tenant=s.tenant,
            colour=colour[s.tenant],
            runs=tuple(
                " ".join(f"{x(k + 0.5):.1f},{y(v):.1f}" for k, v in run) for run in _runs(s)
            ),
            dots=tuple(
                Dot(round(x(k + 0.5), 1), round(y(b.attainment), 1), b)
                for k, b in enumerate(s.buckets)
                if b.attainment is not None
            ),
            received=s.received,
            attainment=s.attainment,
        )
        for s in history.tenants
    )
    middle = round((y0 + y1) / 2, 1)
    return SlaChart(
        width=width,
        height=height,
        x0=x0,
        x1=x1,
        axis_y=y1,
        tick_end=y1 + 5,
        grid=grid,
        ticks=tuple(ticks),
        target_y=round(target, 1),
        target=Text(x1 - 4, round(target + 14, 1), f"{SLA_TARGET:.0%} target"),
        y_title=Text(16, middle, "attainment"),
        x_title=Text(
            round((x0 + x1) / 2, 1),
            height - 8,
            f"time, {history.bucket_s:.0f} s buckets, up to {history.end:%H:%M:%S} UTC",
        ),
        series=series,
    )


# --- SLA counters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CounterRow:
    tenant: str
    y: int  # the bar's top
    text_y: float  # the baseline of the tenant's name and of its count
    segments: tuple[Segment, ...]  # completed, rejected, expired
    received: int


@dataclass(frozen=True)
class CounterChart:
    width: int
    height: int
    bar: int  # a bar's height
    name_x: int  # the tenants' names end here, right-aligned
    figure_x: int  # the counts start here
    rows: tuple[CounterRow, ...]


def counters_chart(data: DashboardData, palette: dict[str, str]) -> CounterChart | None:
    """Per tenant one bar of its replicas' outcomes, scaled to the bar's length, and the queries
    received beside it; None before any daemon reported counters. No attainment here: these
    counts run since each daemon started, and the page has one attainment, over its window."""
    if not data.counters:
        return None
    width, bar, gap, left = 560, 22, 14, 130
    plot = width - left - 150  # the rest: the count of queries received, in millions maybe
    rows = []
    for k, (tenant, counts) in enumerate(data.counters.items()):
        y = 10 + k * (bar + gap)
        total = counts.completed + counts.rejected + counts.expired
        x = float(left)
        segments = []
        for value, fill, what in (
            (counts.completed, colour_of(palette, tenant), "completed"),
            (counts.rejected, REJECTED, "rejected"),
            (counts.expired, EXPIRED, "expired"),
        ):
            w = plot * value / total if total else 0.0
            segments.append(Segment(round(x, 1), round(w, 1), fill, tenant, value, what))
            x += w
        rows.append(
            CounterRow(
                tenant=tenant,
                y=y,
                text_y=y + bar / 2 + 4,
                segments=tuple(segments),
                received=counts.received,
            )
        )
    return CounterChart(
        width=width,
        height=10 + len(data.counters) * (bar + gap),
        bar=bar,
        name_x=left - 8,
        figure_x=left + plot + 8,
        rows=tuple(rows),
    )
