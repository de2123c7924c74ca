"""usage rows keep the cached input tokens and an upstream's own charge; n counts the images delivered

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 05:00:00

gpt-image-2 bills input served from OpenAI's cache at lower rates
(``input_tokens_details.cached_tokens``). Kept so ``imagegate usage reprice``
recomputes such a row exactly. NULL: none reported (and older rows).
``upstream_cost_nusd``: what the upstream said it charged (Black Forest Labs'
``cost``), which is the row's cost and which reprice leaves alone.

``n`` now counts the images delivered and charged, also on a failed row (a
stream that failed after some images); a failure that delivered none has 0.
Older failed rows held the ``n`` asked for: they are set to 0.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_cached_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("upstream_cost_nusd", sa.BigInteger(), nullable=True))
    op.execute("UPDATE usage SET n = 0 WHERE status >= 400")


def downgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_column("upstream_cost_nusd")
        batch_op.drop_column("input_cached_tokens")
