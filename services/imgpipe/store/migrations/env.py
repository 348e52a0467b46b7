"""Alembic environment: the URL comes from imgpipe.store.db.alembic_config, never from a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from imgpipe.store.models import Base

url = context.config.get_main_option("sqlalchemy.url")
assert url, "alembic_config() sets sqlalchemy.url"

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
