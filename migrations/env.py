"""Alembic's environment: runs the migrations against the URL the config names.

The target metadata is the ORM's (``api.models.Base.metadata``), so ``alembic revision
--autogenerate`` compares the database with the models. SQLite runs in batch mode, which
rebuilds a table to alter it, since SQLite's ALTER TABLE cannot change columns or constraints.

One run (an upgrade or downgrade over any number of revisions) is one transaction that holds
the database's migration lock, on SQLite as on PostgreSQL:

- all or nothing: a run that fails or is killed half-way leaves the schema and the version
  table as they were. pysqlite opens no transaction before DDL, so each CREATE, ALTER or DROP
  used to commit on its own: a failed step left its schema change behind under the old
  version, and every later upgrade failed on it ("duplicate column name"). The engine comes
  from :func:`api.db.make_engine`, whose SQLite connections leave BEGIN to SQLAlchemy (and
  keep foreign keys off, which a table rebuild needs);
- one at a time: a second ``gpufair db upgrade`` started while one runs (a Kubernetes Job
  retried) waits for it and then finds the database at head, instead of running the same
  steps again beside it (which failed, or on SQLite left a batch's temporary table behind).
  SQLite's ``BEGIN IMMEDIATE`` takes the write lock; PostgreSQL takes a transaction-scoped
  advisory lock named after the schema. Alembic reads the version only after either.

SQLite's ``AUTOINCREMENT`` sequences never go back over a run (:func:`_keep_sequences`): a
batch that rebuilds a table (a downgrade's dropped column) restarts its sequence at the
largest id left in it, which would hand out again the ids of deleted rows that stored
allocations and plans still name (migration 0003).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from api.db import make_engine
from api.models import Base

config = context.config
target_metadata = Base.metadata

# Names gpufair's migration lock among PostgreSQL's advisory locks (the two-key form, with the
# schema's hash as the second key; the solve lock uses the one-key form: they never meet).
MIGRATION_LOCK_KEY = 0x6766_6D67


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _lock(connection: Connection) -> None:
    """Wait for any other migration run on this database (schema) to end. On SQLite the
    transaction's ``BEGIN IMMEDIATE`` already holds the write lock."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key, hashtext(current_schema()))"),
            {"key": MIGRATION_LOCK_KEY},
        )


def _sequences(connection: Connection) -> dict[str, int]:
    """SQLite's AUTOINCREMENT high-water marks, by table (none before the first such table)."""
    if connection.dialect.name != "sqlite" or not connection.scalar(
        text("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'")
    ):
        return {}
    rows = connection.execute(text("SELECT name, seq FROM sqlite_sequence"))
    return {name: seq for name, seq in rows}


def _keep_sequences(connection: Connection, before: dict[str, int]) -> None:
    """Move each AUTOINCREMENT sequence the run moved back (or dropped, with its rebuilt table)
    to where it was before. Tables the run dropped, or rebuilt without AUTOINCREMENT (0003's
    downgrade), are left alone."""
    after = _sequences(connection)
    for table, seq in before.items():
        if after.get(table, -1) >= seq:
            continue
        sql = connection.scalar(
            text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"), {"t": table}
        )
        if sql is None or "AUTOINCREMENT" not in sql.upper():
            continue
        if table in after:
            connection.execute(
                text("UPDATE sqlite_sequence SET seq = :s WHERE name = :t"), {"t": table, "s": seq}
            )
        else:
            connection.execute(
                text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"),
                {"t": table, "s": seq},
            )


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_engine(url, foreign_keys=False)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                connection.execution_options(sqlite_begin="IMMEDIATE")
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                # One transaction for the whole run: SQLite's DDL too, now that pysqlite
                # leaves BEGIN to SQLAlchemy (make_engine).
                transactional_ddl=True,
            )
            with context.begin_transaction():
                _lock(connection)
                sequences = _sequences(connection)
                context.run_migrations()
                _keep_sequences(connection, sequences)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
