"""meter fine-tuning and exports: usage.trained_tokens, usage.bytes, fine_tuning_jobs.key_id

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:00:00.000000

A finished fine-tuning job writes a ledger row with the tokens it trained
(every epoch), an adapter export one with the bytes it sent; inference rows
keep 0 in both. Jobs remember the key that created them, so that row names
it. Existing rows get 0 and jobs no key: nothing is back-filled.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("trained_tokens", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("bytes", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_column("key_id")
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_column("bytes")
        batch_op.drop_column("trained_tokens")
