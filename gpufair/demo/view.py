"""What ``gpufair demo`` prints: the allocation with its certificate beside a naive split, the
live table, and the summary of its claims.

Every table fits an 80-column terminal: short headers, a border without vertical rules, and the
legend under the table instead of long column names. SLA attainment is the executor's one
definition (answered within the SLA / received, executor/wire/attainment.py), over the window
each table names.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from allocator.certificate import CertificateDocument
from executor.wire.attainment import attainment, is_within_sla
from gpufair.demo.claims import Claim
from gpufair.demo.naive import SplitRow
from gpufair.demo.scenario import Scenario
from gpufair.loadgen import StreamStats

LIVE_WINDOW = "last 5 s"
LEGEND = (
    "α: the part of a tenant's value in whole seats (1: all; its criterion is relaxed by up to "
    "α of a seat).\nλ: the least extra relaxation under which its criterion holds (0: it "
    "holds exactly; -: not even at 1). slack: the criterion's exact margin, as a fraction of "
    "the tenant's total value (≥ 0: holds).\nvalue: the fraction of its demand its bundle "
    "serves (normalised value). share: fraction of all streams; entitled: weight / all "
    "weights."
)


class Stream(Protocol):
    """What the views read of a load stream (gpufair.loadgen.StreamProcess)."""

    @property
    def tenant(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def rate_qps(self) -> float: ...
    @property
    def sla_s(self) -> float: ...
    @property
    def stats(self) -> StreamStats: ...


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for k, column in enumerate(columns):
        table.add_column(column, justify="left" if k == 0 else "right")
    return table


def certificate_table(certificate: CertificateDocument) -> Table:
    """The certificate, one row per tenant (the one place the demo reads its rows)."""
    table = _table(
        f"certificate: {certificate.status} {certificate.objective} solve by "
        f"{certificate.solver}, λ = {certificate.lambda_ef:g}",
        "tenant", "criterion", "weight", "α", "λ", "slack", "value", "holds")
    for name, row in sorted(certificate.agents.items()):
        slack = "-" if row.slack is None else f"{row.slack:+.3f}"
        lam = "-" if row.lam is None else f"{row.lam:.3f}"
        verdict = (Text("yes", "green") if row.holds else Text("NO", "red") if row.lam is None
                   else Text("relaxed", "yellow"))
        table.add_row(name, row.criterion, f"{row.weight:g}", f"{row.alpha:.3f}", lam, slack,
                      f"{row.normalised_value:.3f}", verdict)
    return table


def comparison_table(scenario: Scenario, fair: dict[str, SplitRow],
                     naive: dict[str, SplitRow]) -> Table:
    """The fair allocation beside the equal split, for the same tenants and cluster."""
    table = _table("gpufair vs an equal split of every device (share | expected QPS | criterion)",
                   "tenant", "entitled", "demand", "gpufair", "qps", "ok", "equal", "qps", "ok")
    entitled = scenario.entitlement()
    for tenant in scenario.tenants:
        ours, theirs = fair[tenant.name], naive[tenant.name]
        table.add_row(
            tenant.name, f"{entitled[tenant.name]:.2f}", f"{tenant.model.demand_qps:.0f}",
            f"{ours.share:.2f}", f"{ours.expected_qps:.0f}", _verdict(ours.holds),
            f"{theirs.share:.2f}", f"{theirs.expected_qps:.0f}", _verdict(theirs.holds))
    return table


def _verdict(holds: bool) -> Text:
    return Text("yes", "green") if holds else Text("NO", "red")


def live_table(streams: Sequence[Stream], share: dict[str, float], entitled: dict[str, float],
               elapsed: float, required: float, flood_tenant: str,
               now: float | None = None) -> Table:
    """Per tenant over the last few seconds: offered and answered rates, 429s, p99 against the
    SLA and attainment; its share of the cluster against its entitlement. Only the flooder's
    phase reads ``flood``: the others keep sending at their steady rate."""
    now = time.monotonic() if now is None else now
    # p99 and SLA share a column, so that a four-digit SLA still fits 80 columns.
    table = _table(f"tenants ({LIVE_WINDOW})", "tenant", "phase", "sent/s", "ok/s", "429/s",
                   "p99/SLA ms", "attain", "share")
    for stream in streams:
        window = stream.stats.window(now)
        span = min(stream.stats.window_s, max(elapsed, 1e-3))
        ok = sum(1 for o in window if o.status == 200)
        refused = sum(1 for o in window if o.status == 429)
        within = sum(is_within_sla(answered=o.status == 200, latency_s=o.latency_s,
                                   sla_s=stream.sla_s) for o in window)
        attained = attainment(within_sla=within, received=len(window))
        p99_cell = "-"
        if window:
            p99 = float(np.percentile([o.latency_s for o in window], 99))
            p99_cell = f"{p99 * 1000:.0f}" if np.isfinite(p99) else "∞"
        attain_cell = Text("-") if attained is None else Text(
            f"{attained:.1%}", style="green" if attained >= required else "red")
        phase = "steady" if stream.phase == "flood" and stream.tenant != flood_tenant \
            else stream.phase
        table.add_row(
            stream.tenant, phase, f"{len(window) / span:.1f}", f"{ok / span:.1f}",
            f"{refused / span:.1f}", f"{p99_cell}/{stream.sla_s * 1000:.0f}", attain_cell,
            f"{share[stream.tenant]:.2f}/{entitled[stream.tenant]:.2f}")
    return table


def live_view(streams: Sequence[Stream], share: dict[str, float], entitled: dict[str, float],
              elapsed: float, duration: float, flood_at: float, required: float,
              flood_tenant: str) -> Group:
    flood = f"{flood_tenant} flooding" if elapsed >= flood_at else f"flood at {flood_at:.0f} s"
    progress = Text(f"{elapsed:4.0f} / {duration:.0f} s   {flood}   Ctrl-C stops")
    return Group(live_table(streams, share, entitled, elapsed, required, flood_tenant), progress)


def phase_table(streams: Sequence[Stream], phases: dict[str, float]) -> Table:
    """Per tenant over each whole phase (name -> its seconds): SLA attainment, the p99 latency
    of its answered queries, and its answered rate (the claims give the counts)."""
    columns = ["tenant", "SLA ms"]
    for name in phases:
        columns += [f"{name}", "p99 ms", "ok/s"]
    table = _table("each whole phase: attainment (within SLA / received), p99, rate", *columns)
    for stream in streams:
        cells = [stream.tenant, f"{stream.sla_s * 1000:.0f}"]
        for name, seconds in phases.items():
            counts = stream.stats.phase(name)
            attained = attainment(within_sla=counts.within_sla, received=counts.received)
            p99 = counts.p99_s()
            cells += ["-" if attained is None else f"{attained:.2%}",
                      "-" if p99 is None else f"{p99 * 1000:.0f}",
                      f"{counts.answered / seconds:.1f}" if seconds > 0 else "-"]
        table.add_row(*cells)
    return table


def claims_view(claims: Sequence[Claim]) -> Group:
    lines = []
    for claim in claims:
        mark = Text("HOLDS ", "bold green") if claim.holds else Text("FAILS ", "bold red")
        lines.append(Text.assemble(mark, claim.statement, "\n      ", (claim.figure, "dim")))
    return Group(Text("claims", style="bold"), *lines)
