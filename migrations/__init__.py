"""The database schema's migrations (Alembic) and the helpers that run them.

Alembic is the only way gpufair's schema is made or changed: ``gpufair db upgrade`` runs these
migrations, and ``gpufair serve`` upgrades an empty SQLite database on its first start in
development mode. The Alembic configuration is built here from the package's own files, so
the commands work from an installed package as well as from a checkout, whatever the working
directory.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """The Alembic configuration for the database at ``url``."""
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE))
    # ConfigParser interpolates '%', which URL-encoded passwords and options contain.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "migrations/versions holds no revision"
    return head


def known_revisions() -> frozenset[str]:
    """Every revision the code has a migration for: a database at another one was migrated by
    a newer gpufair (the code was rolled back), and upgrading cannot help it."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(script.revision for script in scripts.walk_revisions())


def current_revision(engine: Engine) -> str | None:
    """The revision the database at ``engine`` is at; None for an empty database."""
    with engine.connect() as connection:
        return revision_on(connection)


def revision_on(connection: Connection) -> str | None:
    """The revision of the database ``connection`` is open on; None for an empty one."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
