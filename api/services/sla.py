"""SLA attainment over time: samples taken from heartbeats, and per-tenant series read from them.

Daemons report, per (tenant, model), the queries received and those answered within the model's
SLA since the daemon process started — cumulative, so a lost heartbeat loses nothing. At
receipt the API turns them into what happened since the node's previous heartbeat: the
difference from the counts in that heartbeat (kept in the node's ``report``), summed per
tenant, one :class:`~api.models.SlaSampleRow` per (node, tenant) that saw traffic. A count
below the previous one means the daemon restarted and counts from zero again, so the delta is
then the new count; so it is for a (tenant, model) the previous heartbeat did not list.

Daemons name tenants as plans do, by name, and a deleted tenant's name may pass to a new one
while a daemon still serves (and counts) the old plan. So a sample is stored under the tenant
id the node's plan seated the (tenant, model) for (the allocation's ``tenant_ids``, found by
:mod:`api.services.nodes`), and a tenant's own series reads its id: it never sees a
predecessor's queries. The admin's series are by name, as the daemons report them.

Reads bucket a time window's samples per tenant in SQL and divide with
:func:`executor.wire.attainment.attainment`, the one definition the daemon's metrics, the
dashboard and the demo use too: Σ within_sla / Σ received per bucket — the share of queries
answered within the latency bound (docs/architecture.md §5's SLA attainment; a late answer, a
refused, dropped or failed query counts as missed). A bucket without queries has no attainment: a
gap in the chart, never 100 %. A sample is stamped when its heartbeat arrives and covers the few
seconds before it, so bucket edges are accurate to one heartbeat interval. Were a daemon to
count a query as received in one interval and as answered in the next, a bucket's ratio could
exceed 1; the definition clips it.

Served rate and p99 per model: each heartbeat also carries, per (tenant, model), what the daemon
served over its last minute (:class:`~executor.wire.heartbeat.ServedWindow`), stored with the
rest of the heartbeat in ``NodeRow.report``. :func:`served_models` reads them from the live
nodes' reports (a node silent for :data:`STALE_AFTER_S` says nothing of now), sums the counts,
adds the served rates (each node's within-SLA answers over its own window) and takes the highest
p99: the p99 of all the nodes' answers lies between their lowest and highest. Attainment is the
same :func:`~executor.wire.attainment.attainment` of those counts.

Retention: samples older than ``settings.api.sla_history_s`` are deleted while a heartbeat is
recorded, in its transaction, at most once a minute per API process (:class:`PruneSchedule`);
the delete is a range on the indexed ``at`` column.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    SQLColumnExpression,
    case,
    cast,
    delete,
    func,
    literal,
    select,
)
from sqlalchemy.orm import Session

from api.errors import InvalidInput
from api.models import ModelRow, NodeRow, SlaSampleRow, TenantRow
from api.schemas import ModelSla, SlaBucket, SlaHistory, SlaSeries
from api.services.plans import Seated
from api.services.tenants import get_tenant_or_raise
from executor.wire.attainment import attainment
from executor.wire.heartbeat import ServedWindow, SlaCount, parse_heartbeat

PRUNE_INTERVAL_S = 60.0
DEFAULT_WINDOW_S = 900
DEFAULT_BUCKETS = 30
# Bounded: the buckets are bound parameters of the read's SQL.
MAX_BUCKETS = 240
HEARTBEAT_S = 5.0  # the daemon's default executor.heartbeat_s
# A node is stale, and its report no longer says what it serves now, after three missed beats.
STALE_AFTER_S = 3 * HEARTBEAT_S


def previous_counts(report: Mapping[str, Any] | None) -> list[SlaCount]:
    """The cumulative SLA counts of a node's last heartbeat body, read back through the
    heartbeat's contract (none before the first)."""
    return list(parse_heartbeat(report).sla) if report is not None else []


def sla_deltas(
    previous: Iterable[SlaCount], current: Iterable[SlaCount]
) -> dict[Seated, tuple[int, int]]:
    """Per (tenant, model), (received, within_sla) since the previous heartbeat; pairs without
    any are left out."""
    before = {(p.tenant, p.model): (p.received, p.within_sla) for p in previous}
    deltas: dict[Seated, tuple[int, int]] = {}
    for count in current:
        old = before.get((count.tenant, count.model), (0, 0))
        if count.received < old[0] or count.within_sla < old[1]:
            old = (0, 0)  # the daemon restarted: its counts began again from zero
        received, within = count.received - old[0], count.within_sla - old[1]
        if received or within:
            deltas[(count.tenant, count.model)] = (received, within)
    return deltas


def record_samples(
    *,
    session: Session,
    node_id: int,
    previous: Iterable[SlaCount],
    current: Iterable[SlaCount],
    owners: Mapping[Seated, int | None],
    at: datetime,
) -> int:
    """Store one sample per tenant with traffic since the previous heartbeat; return how many.
    ``owners`` gives each reported (tenant, model) the id of the tenant its plan seated it for
    (None: the allocation did not name it; such a sample is the admin's only)."""
    sums: dict[tuple[str, int | None], tuple[int, int]] = {}
    for pair, (received, within) in sla_deltas(previous, current).items():
        key = (pair[0], owners.get(pair))
        total = sums.get(key, (0, 0))
        sums[key] = (total[0] + received, total[1] + within)
    session.add_all(
        SlaSampleRow(
            node_id=node_id, tenant=tenant, tenant_id=tenant_id, at=at, received=r, within_sla=w
        )
        for (tenant, tenant_id), (r, w) in sorted(sums.items(), key=lambda kv: kv[0][0])
    )
    return len(sums)


def prune_samples(*, session: Session, before: datetime) -> int:
    """Delete the samples stamped before ``before``; return how many went."""
    result = session.execute(
        delete(SlaSampleRow).where(SlaSampleRow.at < before),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0) or 0)


class PruneSchedule:
    """Says when this API process should prune again: at most once per interval of the app's
    clock, so a heartbeat rarely pays for a delete. Thread-safe: heartbeats run in worker
    threads. A clock that goes back makes pruning due at once."""

    def __init__(self, interval_s: float = PRUNE_INTERVAL_S) -> None:
        self._interval = timedelta(seconds=interval_s)
        self._last: datetime | None = None
        self._lock = threading.Lock()

    def due(self, now: datetime) -> bool:
        with self._lock:
            if self._last is not None and self._last <= now < self._last + self._interval:
                return False
            self._last = now
            return True


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _bucket_index(
    at: SQLColumnExpression[datetime], starts: list[datetime], low: int, high: int
) -> ColumnElement[int]:
    """The index in ``low..high`` of the bucket (starting at ``starts[k]``) that holds ``at``,
    as nested CASEs that halve the range: log2(buckets) datetime comparisons a row, the same
    comparisons on SQLite and PostgreSQL (no dialect's epoch arithmetic)."""
    if low == high:
        return literal(low, Integer)
    middle = (low + high + 1) // 2
    return case(
        (at < starts[middle], _bucket_index(at, starts, low, middle - 1)),
        else_=_bucket_index(at, starts, middle, high),
    )


def sla_history(
    *,
    session: Session,
    now: datetime,
    window_s: float = DEFAULT_WINDOW_S,
    buckets: int = DEFAULT_BUCKETS,
    tenant: TenantRow | None = None,
) -> SlaHistory:
    """Per tenant name, attainment in each of ``buckets`` equal buckets of the ``window_s``
    seconds up to ``now``. With ``tenant``, only that tenant's series, present even without
    traffic: the samples stored under its id (ids are never reused, so a tenant re-created
    under an old name does not see its predecessor's) from its creation on."""
    if not 1 <= buckets <= MAX_BUCKETS:
        raise InvalidInput(f"buckets must be 1..{MAX_BUCKETS}, not {buckets}", field="buckets")
    if not window_s > 0:
        raise InvalidInput(f"window_s must be positive, not {window_s}", field="window_s")
    end = _utc(now)
    start = end - timedelta(seconds=window_s)
    width = timedelta(seconds=window_s / buckets)
    starts = [start + width * k for k in range(buckets)]
    window = select(
        SlaSampleRow.tenant,
        _bucket_index(SlaSampleRow.at, starts, 0, buckets - 1).label("bucket"),
        SlaSampleRow.received,
        SlaSampleRow.within_sla,
    ).where(SlaSampleRow.at >= start, SlaSampleRow.at <= end)
    if tenant is not None:
        window = window.where(
            SlaSampleRow.tenant_id == tenant.id, SlaSampleRow.at >= _utc(tenant.created_at)
        )
    inner = window.subquery()
    # Summed as floats: exact below 2**53 queries a bucket, and never an integer overflow.
    rows = session.execute(
        select(
            inner.c.tenant,
            inner.c.bucket,
            func.sum(cast(inner.c.received, Float)),
            func.sum(cast(inner.c.within_sla, Float)),
        ).group_by(inner.c.tenant, inner.c.bucket)
    )
    counts: dict[str, list[tuple[int, int]]] = {}
    if tenant is not None:
        counts[tenant.name] = [(0, 0)] * buckets
    for name, k, received, within in rows:
        series = counts.setdefault(name, [(0, 0)] * buckets)
        series[int(k)] = (round(received or 0), round(within or 0))
    return SlaHistory(
        start=start,
        end=end,
        bucket_s=width.total_seconds(),
        tenants=[
            SlaSeries(
                tenant=name,
                received=sum(r for r, _ in series),
                within_sla=sum(w for _, w in series),
                attainment=attainment(
                    within_sla=sum(w for _, w in series), received=sum(r for r, _ in series)
                ),
                buckets=[
                    SlaBucket(
                        start=s,
                        received=r,
                        within_sla=w,
                        attainment=attainment(within_sla=w, received=r),
                    )
                    for s, (r, w) in zip(starts, series, strict=True)
                ],
            )
            for name, series in sorted(counts.items())
        ],
    )


def tenant_sla_history(
    *, session: Session, tenant_id: int, now: datetime, window_s: float, buckets: int
) -> SlaHistory:
    """The tenant's own series, from its creation on: a tenant re-created under an old name
    does not see its predecessor's samples; with a row per model of the tenant
    (:func:`served_models`)."""
    tenant = get_tenant_or_raise(session=session, tenant_id=tenant_id)
    history = sla_history(
        session=session, now=now, window_s=window_s, buckets=buckets, tenant=tenant
    )
    return with_models(history, served_models(session=session, now=now, tenant_id=tenant_id))


def live_reports(*, session: Session, now: datetime) -> list[list[ServedWindow]]:
    """The ``served`` rows of each node's last heartbeat, for the nodes heard from within
    STALE_AFTER_S of ``now``."""
    since = _utc(now) - timedelta(seconds=STALE_AFTER_S)
    reports = session.scalars(
        select(NodeRow.report).where(
            NodeRow.report.is_not(None), NodeRow.last_heartbeat_at >= since
        )
    )
    return [list(parse_heartbeat(report).served) for report in reports]


def served_models(
    *, session: Session, now: datetime, tenant_id: int | None = None
) -> dict[str, list[ModelSla]]:
    """Per tenant name, a row per model that a live node reported queries for, by model id;
    with ``tenant_id``, only that tenant's models, each present even without traffic."""
    sums: dict[tuple[str, str], list[ServedWindow]] = {}
    for rows in live_reports(session=session, now=now):
        for row in rows:
            sums.setdefault((row.tenant, row.model), []).append(row)
    query = select(ModelRow.id, ModelRow.name, ModelRow.sla_p99_ms, TenantRow.name).join(
        TenantRow, TenantRow.id == ModelRow.tenant_id
    )
    if tenant_id is not None:
        query = query.where(ModelRow.tenant_id == tenant_id)
    known: dict[str, tuple[str | None, float | None, str]] = {
        str(mid): (name, sla, owner) for mid, name, sla, owner in session.execute(query)
    }
    if tenant_id is not None:
        # The tenant's own models, under its current name: ids are never reused, so a
        # predecessor's rows under the same name are not its.
        sums = {key: rows for key, rows in sums.items() if key[1] in known
                and key[0] == known[key[1]][2]}
        for model, (_, _, owner) in known.items():
            sums.setdefault((owner, model), [])
    out: dict[str, list[ModelSla]] = {}
    for (tenant, model), rows in sorted(sums.items(), key=lambda kv: (kv[0][0], _id(kv[0][1]))):
        # No name: the model was deleted since, or the plan named another owner for its id.
        name, sla_ms, owner = known.get(model, (None, None, tenant))
        if owner != tenant:
            name = sla_ms = None
        received = sum(r.received for r in rows)
        within = sum(r.within_sla for r in rows)
        p99s = [r.p99_ms for r in rows if r.p99_ms is not None]
        out.setdefault(tenant, []).append(
            ModelSla(
                model_id=_id(model),
                model=name,
                sla_ms=float(sla_ms) if sla_ms is not None else None,
                window_s=max((r.window_s for r in rows), default=None),
                received=received,
                within_sla=within,
                attainment=attainment(within_sla=within, received=received),
                served_qps=sum(r.within_sla / r.window_s for r in rows),
                p99_ms=max(p99s, default=None),
                nodes=len(rows),
            )
        )
    return out


def _id(model: str) -> int:
    """A plan's model id as a number (plans name models by their decimal id)."""
    return int(model) if model.isdecimal() else -1


def with_models(history: SlaHistory, models: Mapping[str, list[ModelSla]]) -> SlaHistory:
    """The history with each series' per-model rows."""
    return history.model_copy(
        update={
            "tenants": [
                series.model_copy(update={"models": models.get(series.tenant, [])})
                for series in history.tenants
            ]
        }
    )
