"""model lifecycle: evals, eval runs and their output items; model aliases and their moves

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 03:35:17.837965

Evals (OpenAI's Evals API, and the red-team suite's) with runs claimed by workers and
per-item results, so a run resumes after a lost worker; aliases a tenant's clients call,
moved by promotion and rollback, each move recorded with the gate's figures.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evals",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("data_source_config", sa.JSON(), nullable=False),
        sa.Column("testing_criteria", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evals")),
    )
    with op.batch_alter_table("evals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evals_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_evals_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_evals_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "model_aliases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=True),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_aliases")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_model_aliases_tenant_id_name"),
    )
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_aliases_target"), ["target"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_aliases_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "alias_moves",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alias_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_target", sa.String(length=64), nullable=True),
        sa.Column("to_target", sa.String(length=64), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["alias_id"], ["model_aliases.id"], name=op.f("fk_alias_moves_alias_id_model_aliases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_moves")),
    )
    with op.batch_alter_table("alias_moves", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alias_moves_alias_id"), ["alias_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_alias_moves_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("eval_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("adapter_id", sa.String(length=64), nullable=True),
        sa.Column("data_source", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result_counts", sa.JSON(), nullable=False),
        sa.Column("per_testing_criteria_results", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("heartbeat_at", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["eval_id"], ["evals.id"], name=op.f("fk_eval_runs_eval_id_evals")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_runs")),
    )
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_runs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_runs_eval_id"), ["eval_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_runs_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_runs_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "eval_output_items",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("datasource_item_id", sa.Integer(), nullable=False),
        sa.Column("datasource_item", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("sample", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["eval_runs.id"], name=op.f("fk_eval_output_items_run_id_eval_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_output_items")),
        sa.UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_id"),
    )
    with op.batch_alter_table("eval_output_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_output_items_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_eval_output_items_tenant_id"), ["tenant_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("eval_output_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_output_items_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_eval_output_items_run_id"))

    op.drop_table("eval_output_items")
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_runs_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_eval_runs_status"))
        batch_op.drop_index(batch_op.f("ix_eval_runs_eval_id"))
        batch_op.drop_index(batch_op.f("ix_eval_runs_created_at"))

    op.drop_table("eval_runs")
    with op.batch_alter_table("alias_moves", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alias_moves_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_alias_moves_alias_id"))

    op.drop_table("alias_moves")
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_aliases_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_model_aliases_target"))

    op.drop_table("model_aliases")
    with op.batch_alter_table("evals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evals_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_evals_name"))
        batch_op.drop_index(batch_op.f("ix_evals_created_at"))

    op.drop_table("evals")
