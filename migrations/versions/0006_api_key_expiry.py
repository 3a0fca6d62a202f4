"""API keys may expire: ``api_keys.expires_at``, null for a key that does not.

An expired key is refused like a revoked one. The admin may give a key an expiry when issuing
it, and a tenant that rotates its key gives the old one a grace period, stored as its expiry
(docs/api.md, "Roles and tokens"). Existing keys keep working: the column is null for them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# A rebuilt SQLite table keeps its AUTOINCREMENT (migration 0003): ids are never reused.
NEVER_REUSED = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("api_keys", table_kwargs=NEVER_REUSED) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", table_kwargs=NEVER_REUSED) as batch_op:
        batch_op.drop_column("expires_at")
