"""usage rows name the backend that served them and a remote's price

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 04:10:00.000000

Behind a router, each inference row names the replica that answered (`backend`); a row
served by a `remote = true` backend says so (`remote`) and carries its price in USD from
the price table (`remote_cost_usd`, NULL when the table has no entry for its model), so `ownllm cost` shows remote spend beside self-hosted cost. Existing
rows get NULL in both: nothing is back-filled.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backend", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("remote", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("remote_cost_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_column("remote_cost_usd")
        batch_op.drop_column("remote")
        batch_op.drop_column("backend")
