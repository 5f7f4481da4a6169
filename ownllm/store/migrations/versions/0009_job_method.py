"""fine-tuning jobs name their method (supervised or dpo)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 11:00:00.000000

`method` is OpenAI's `method.type`: `supervised` (every job before this one) or `dpo`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("method", sa.String(length=16), nullable=False, server_default="supervised")
        )


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_column("method")
