"""A replayed reply carries the ETag the first one did: ``idempotency_keys.etag``.

A creating POST whose reply has an ETag (a tenant, a model: their revision) is replayed with
the same header, as "the first reply again" promises; records kept from before have none
(null), and their replays none either, as before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# A rebuilt SQLite table keeps its AUTOINCREMENT (migration 0003): ids are never reused.
NEVER_REUSED = {"sqlite_autoincrement": True}


def upgrade() -> None:
    # A plain ADD COLUMN, on SQLite too: a batch would rebuild the table and its sequence.
    op.add_column("idempotency_keys", sa.Column("etag", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", table_kwargs=NEVER_REUSED) as batch_op:
        batch_op.drop_column("etag")
