"""usage rows keep the output tokens as billed: image and text

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 03:00:00

With ``input_text_tokens`` and ``input_image_tokens``, a row now holds every
count a token price applies to, so ``imagegate usage reprice`` can recompute
its cost exactly once a price is added. NULL: the upstream reported no usage
(and on rows written before this revision).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("output_image_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("output_text_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_column("output_text_tokens")
        batch_op.drop_column("output_image_tokens")
