"""Per-model weights and the SLA a profile was measured within.

``models.weight`` (ω_m > 0, default 1): how a tenant's value is divided among its models
(docs/fairness.md, "Per-model weights"); existing models get 1, an equal split, which is how they
were valued before. ``profiles.sla_p99_ms``: the p99 bound a node measured the curve against,
so a model with a tighter SLA is valued at the curve translated to its own (docs/fairness.md, "A
model's SLA"); null for curves stored before, which are taken as measured at the model's SLA.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# A rebuilt SQLite table keeps its AUTOINCREMENT (migration 0003): ids are never reused.
NEVER_REUSED = {"sqlite_autoincrement": True}


def upgrade() -> None:
    # A plain ADD COLUMN, on SQLite too: a batch would rebuild the tables, and a rebuilt table
    # starts a new AUTOINCREMENT sequence, which could hand out the id of a deleted model again.
    op.add_column(
        "models", sa.Column("weight", sa.Float(), nullable=False, server_default=sa.text("1.0"))
    )
    op.add_column("profiles", sa.Column("sla_p99_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("profiles", table_kwargs=NEVER_REUSED) as batch_op:
        batch_op.drop_column("sla_p99_ms")
    with op.batch_alter_table("models", table_kwargs=NEVER_REUSED) as batch_op:
        batch_op.drop_column("weight")
