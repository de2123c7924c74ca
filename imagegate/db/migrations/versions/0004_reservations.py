"""reservations as rows, idempotency leases, settlement ids

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 02:00:00
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
        "reservations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("team", sa.String(length=128), nullable=True),
        sa.Column("amount_nusd", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reservations_key_id"), ["key_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_reservations_expires_at"), ["expires_at"], unique=False)
    with op.batch_alter_table("idempotency", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("settlement_id", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_usage_settlement_id"), ["settlement_id"])
    # Reservations held before this revision have no rows to release them by:
    # nothing can be in flight while migrations run at start, so clear them.
    op.execute("UPDATE api_keys SET reserved_nusd = 0")
    op.execute("UPDATE teams SET reserved_nusd = 0")


def downgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_usage_settlement_id"), type_="unique")
        batch_op.drop_column("settlement_id")
    with op.batch_alter_table("idempotency", schema=None) as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("owner")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reservations_expires_at"))
        batch_op.drop_index(batch_op.f("ix_reservations_key_id"))
    op.drop_table("reservations")
