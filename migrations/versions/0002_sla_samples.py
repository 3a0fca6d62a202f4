"""SLA samples: per heartbeat, node and tenant, the queries received and answered within SLA.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sla_samples",
        # BIGSERIAL on PostgreSQL; SQLite's rowid alias must be spelled INTEGER.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("within_sla", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_sla_samples_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_samples")),
    )
    with op.batch_alter_table("sla_samples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sla_samples_at"), ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sla_samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sla_samples_at"))

    op.drop_table("sla_samples")
