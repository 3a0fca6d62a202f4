"""Footprints: the memory a model's replica measured on a device, as its node uploaded it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "footprints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_footprints_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_footprints_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_footprints")),
        sa.UniqueConstraint("model_id", "device_id", name=op.f("uq_footprints_model_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("footprints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_footprints_model_id"), ["model_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("footprints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_footprints_model_id"))

    op.drop_table("footprints")
