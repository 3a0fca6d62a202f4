"""Ids are never reused: SQLite tables get AUTOINCREMENT, seeded past every id ever referenced.

SQLite's plain ``INTEGER PRIMARY KEY`` hands out ``max(id) + 1``, so the row created after the
newest one was deleted gets its id back — and with it whatever still names that id: a stored
allocation's ``tenant_ids`` (a new tenant read the deleted tenant's seats) or a stored plan's
seats (a node downloaded a new model's weights for a deleted model's seat). ``AUTOINCREMENT``
keeps the largest id ever handed out in ``sqlite_sequence``. Rows deleted *before* this
migration left no trace in the tables themselves, so each sequence is also moved past the
largest id the stored allocations and plans still name. PostgreSQL's sequences never go back:
nothing to do there.

Each table is rebuilt (Alembic's batch mode copies every row, ids included); foreign keys stay
off during the migration (the migration environment's connections never turn them on), so
dropping the old table cascades nowhere.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
from typing import Any

from alembic import op
from sqlalchemy import Connection, text

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Parents before children, so a rebuilt child's foreign keys name a table that exists.
TABLES = ("tenants", "api_keys", "models", "nodes", "devices", "profiles", "sla_samples")


def _rebuild(autoincrement: bool) -> None:
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def _as_document(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _referenced_ids(connection: Connection) -> dict[str, int]:
    """The largest tenant and model ids that stored allocations and plans name."""
    tenants = 0
    for (tenant_ids,) in connection.execute(text("SELECT tenant_ids FROM allocations")):
        tenants = max([tenants, *map(int, _as_document(tenant_ids).values())])
    models = 0
    for (plan,) in connection.execute(text("SELECT plan FROM node_plans")):
        for device in _as_document(plan).get("devices", []):
            for seat in device.get("seats", []):
                replica = seat.get("replica")
                if replica and str(replica.get("model_id", "")).isdigit():
                    models = max(models, int(replica["model_id"]))
    return {"tenants": tenants, "models": models}


def _seed_sequences(connection: Connection) -> None:
    for table, floor in _referenced_ids(connection).items():
        current = connection.execute(
            text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}
        ).scalar()
        if current is None:
            connection.execute(
                text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"),
                {"t": table, "s": floor},
            )
        elif current < floor:
            connection.execute(
                text("UPDATE sqlite_sequence SET seq = :s WHERE name = :t"),
                {"t": table, "s": floor},
            )


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        return
    _rebuild(autoincrement=True)
    _seed_sequences(connection)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _rebuild(autoincrement=False)
