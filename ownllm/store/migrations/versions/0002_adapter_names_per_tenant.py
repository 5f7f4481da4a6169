"""adapter names unique per tenant, not server-wide

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000

A server-wide unique name let one tenant take a name another needed and told
it, through the 409, that some other tenant used it. Existing rows satisfy the
new constraint (the old one was stricter). Downgrading fails where two tenants
now share a name.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.drop_constraint("uq_adapters_name", type_="unique")
        batch_op.create_unique_constraint("uq_adapters_tenant_id_name", ["tenant_id", "name"])
        batch_op.create_index("ix_adapters_name", ["name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.drop_index("ix_adapters_name")
        batch_op.drop_constraint("uq_adapters_tenant_id_name", type_="unique")
        batch_op.create_unique_constraint("uq_adapters_name", ["name"])
