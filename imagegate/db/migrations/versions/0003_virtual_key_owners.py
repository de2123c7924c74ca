"""virtual key owners

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 10:00:00.000000

Existing virtual keys get no owners, so only admin keys may use them until an
operator grants them to teams or keys (fail closed).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("virtual_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_teams", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column("owner_keys", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
    with op.batch_alter_table("virtual_keys", schema=None) as batch_op:
        batch_op.alter_column("owner_teams", server_default=None)
        batch_op.alter_column("owner_keys", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("virtual_keys", schema=None) as batch_op:
        batch_op.drop_column("owner_keys")
        batch_op.drop_column("owner_teams")
