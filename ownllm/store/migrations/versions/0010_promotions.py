"""the unattended loop: a fine-tuning job's promotion of an alias

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 11:00:00.000000

A fine-tuning job created with `promote: {"alias", "eval"}` has one `promotions` row: once
the job succeeds its adapter is evaluated and red-teamed, and the alias moves to it when
the alias's gate passes; the row keeps the runs, the verdict and the reason.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "promotions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("alias", sa.String(length=256), nullable=False),
        sa.Column("eval_id", sa.String(length=40), nullable=False),
        sa.Column("data_source", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("adapter_id", sa.String(length=64), nullable=True),
        sa.Column("eval_run_id", sa.String(length=40), nullable=True),
        sa.Column("redteam_run_id", sa.String(length=40), nullable=True),
        sa.Column("gate", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["fine_tuning_jobs.id"], name=op.f("fk_promotions_job_id_fine_tuning_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotions")),
        sa.UniqueConstraint("job_id", name=op.f("uq_promotions_job_id")),
    )
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_promotions_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_promotions_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_promotions_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_promotions_status"))
    op.drop_table("promotions")
