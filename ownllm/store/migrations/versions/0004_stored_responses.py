"""stored responses: the stored_responses table (POST /v1/responses with store)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 03:40:00.000000

A response created with `store` (the default) is kept, per tenant, for
GET/DELETE /v1/responses/{id}, its input items, and `previous_response_id`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("previous_response_id", sa.String(length=64), nullable=True),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("input_items", sa.JSON(), nullable=False),
        sa.Column("conversation", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_responses")),
    )
    with op.batch_alter_table("stored_responses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stored_responses_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_stored_responses_tenant_id"), ["tenant_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("stored_responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stored_responses_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_stored_responses_created_at"))
    op.drop_table("stored_responses")
