"""Stored heartbeat reports within the bounded contract: ``nodes.report``.

A heartbeat's replica entries used to keep keys the model does not name, and their counters had
no upper bound; the contract (``executor/wire/heartbeat.py``) now refuses both, and every
stored report is read back through it (``GET /v1/nodes``, and the SLA counts each heartbeat is
compared with). So each stored replica entry keeps only the keys the contract names, its
counters capped at the contract's bounds; the rest of a report (its cumulative SLA counts
above all, the base of the next heartbeat's samples) is kept as it is.

The bounds are written out here rather than imported, so this migration does what it did
whatever the contract later becomes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

MAX_COUNT = 2**48
MAX_MEMORY_MB = 10_000_000
REPLICA_KEYS = frozenset(
    {"device", "seat", "model_id", "tenant", "in_flight", "completed", "rejected", "expired",
     "busy_s", "memory_mb"}
)  # fmt: skip
CAPS = {"completed": MAX_COUNT, "rejected": MAX_COUNT, "expired": MAX_COUNT,
        "busy_s": MAX_COUNT, "memory_mb": MAX_MEMORY_MB}  # fmt: skip

nodes = sa.table("nodes", sa.column("id", sa.Integer()), sa.column("report", sa.JSON()))


def _bounded(replica: dict[str, Any]) -> dict[str, Any]:
    kept = {key: value for key, value in replica.items() if key in REPLICA_KEYS}
    for key, cap in CAPS.items():
        if isinstance(kept.get(key), int | float) and kept[key] > cap:
            kept[key] = cap
    return kept


def upgrade() -> None:
    connection = op.get_bind()
    reports = connection.execute(sa.select(nodes.c.id, nodes.c.report)).all()
    for node_id, report in reports:
        if not isinstance(report, dict) or not isinstance(report.get("replicas"), list):
            continue
        replicas = [_bounded(r) if isinstance(r, dict) else r for r in report["replicas"]]
        if replicas != report["replicas"]:
            connection.execute(
                nodes.update()
                .where(nodes.c.id == node_id)
                .values(report={**report, "replicas": replicas})
            )


def downgrade() -> None:
    # A bounded report is a valid report of the looser contract before: nothing to undo.
    pass
