"""vector stores: stores, their files (the ingestion queue), file batches, chunks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 03:40:00.000000

Chunks keep their text and their vector (float32 bytes) in the database, so any
replica can build a store's index from them; nothing is back-filled.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vector_stores",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("embedding_model", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_active_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_after", sa.JSON(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vector_stores")),
    )
    with op.batch_alter_table("vector_stores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vector_stores_tenant_id"), ["tenant_id"])
        batch_op.create_index(batch_op.f("ix_vector_stores_created_at"), ["created_at"])

    op.create_table(
        "vector_store_files",
        sa.Column("vector_store_id", sa.String(length=40), nullable=False),
        sa.Column("file_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("batch_id", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_error", sa.JSON(), nullable=True),
        sa.Column("chunking", sa.JSON(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=True),
        sa.Column("usage_bytes", sa.BigInteger(), nullable=False),
        sa.Column("num_chunks", sa.Integer(), nullable=False),
        sa.Column("num_tokens", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("heartbeat_at", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["vector_store_id"],
            ["vector_stores.id"],
            name=op.f("fk_vector_store_files_vector_store_id_vector_stores"),
        ),
        sa.PrimaryKeyConstraint("vector_store_id", "file_id", name=op.f("pk_vector_store_files")),
    )
    with op.batch_alter_table("vector_store_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vector_store_files_tenant_id"), ["tenant_id"])
        batch_op.create_index(batch_op.f("ix_vector_store_files_batch_id"), ["batch_id"])
        batch_op.create_index(batch_op.f("ix_vector_store_files_status"), ["status"])

    op.create_table(
        "vector_store_file_batches",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("vector_store_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("is_cancelled", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["vector_store_id"],
            ["vector_stores.id"],
            name=op.f("fk_vector_store_file_batches_vector_store_id_vector_stores"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vector_store_file_batches")),
    )
    with op.batch_alter_table("vector_store_file_batches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vector_store_file_batches_vector_store_id"), ["vector_store_id"]
        )
        batch_op.create_index(batch_op.f("ix_vector_store_file_batches_tenant_id"), ["tenant_id"])

    op.create_table(
        "vector_store_chunks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vector_store_id", sa.String(length=40), nullable=False),
        sa.Column("file_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("num_tokens", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["vector_store_id"],
            ["vector_stores.id"],
            name=op.f("fk_vector_store_chunks_vector_store_id_vector_stores"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vector_store_chunks")),
        sa.UniqueConstraint(
            "vector_store_id", "file_id", "seq", name="uq_vector_store_chunks_store_file_seq"
        ),
    )
    with op.batch_alter_table("vector_store_chunks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vector_store_chunks_vector_store_id"), ["vector_store_id"]
        )


def downgrade() -> None:
    op.drop_table("vector_store_chunks")
    op.drop_table("vector_store_file_batches")
    op.drop_table("vector_store_files")
    op.drop_table("vector_stores")
