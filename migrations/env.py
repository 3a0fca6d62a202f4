"""Alembic's environment: runs the migrations against the URL the config names.

The target metadata is the ORM's (``api.models.Base.metadata``), so ``alembic revision
--autogenerate`` compares the database with the models. SQLite runs in batch mode, which
rebuilds a table to alter it, since SQLite's ALTER TABLE cannot change columns or constraints.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from api.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
