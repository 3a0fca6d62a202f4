"""SLA samples name their tenant by id: ``sla_samples.tenant_id``.

A daemon reports its counts under the tenant's name, as its plan names it; a deleted tenant's
name may pass to a new tenant while a daemon still serves the old plan. The API now stores each
sample under the id of the tenant the node's plan seated the counted model for (the
allocation's ``tenant_ids``), and a tenant's own series (``GET /v1/sla/me``) reads its id.

Existing samples get the id the old read would have shown them to: the tenant that has the
sample's name now and was created before the sample was taken. Samples of a tenant deleted
since, or taken before the tenant of their name was created, get null and are the admin's only,
as they were.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# A rebuilt SQLite table keeps its AUTOINCREMENT (migration 0003): ids are never reused.
NEVER_REUSED = {"sqlite_autoincrement": True}


def upgrade() -> None:
    # A plain ADD COLUMN, on SQLite too: a batch would rebuild the table, and a rebuilt table
    # starts a new AUTOINCREMENT sequence.
    op.add_column("sla_samples", sa.Column("tenant_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE sla_samples SET tenant_id = (SELECT tenants.id FROM tenants "
        "WHERE tenants.name = sla_samples.tenant AND tenants.created_at <= sla_samples.at)"
    )


def downgrade() -> None:
    with op.batch_alter_table("sla_samples", table_kwargs=NEVER_REUSED) as batch_op:
        batch_op.drop_column("tenant_id")
