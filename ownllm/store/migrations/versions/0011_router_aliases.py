"""router aliases: an alias may route each request to the nearest of several versions

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 11:30:00.000000

`model_aliases.router` holds a router alias's versions, each with an index of its
training prompts' embeddings, and the threshold below which the base model answers; NULL
for an alias that points at one version (every existing row).
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("router", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.drop_column("router")
