"""Alembic environment: run migrations on the connection ownllm hands over."""

from alembic import context

from ownllm.store.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` CLI use: build one from the configured URL
    from ownllm.store.db import make_engine

    connection = make_engine(context.config.get_main_option("sqlalchemy.url")).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    on_version_apply=context.config.attributes.get("on_version_apply"),
)
with context.begin_transaction():
    context.run_migrations()
