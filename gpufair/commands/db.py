"""``gpufair db upgrade|downgrade|current``: manage the database schema with Alembic.

The migrations under ``migrations/`` are the only way gpufair's schema is made. The database
is the one in the settings (``[database] url``, ``GPUFAIR_DATABASE_URL``) unless ``--url``
names another.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sqlalchemy.exc import SQLAlchemyError

from gpufair.settings import SettingsError, load_settings

log = logging.getLogger(__name__)
# Alembic announces each of its plugins at INFO as it is imported; only its migration steps are
# worth a line. So the level is set here and Alembic (through migrations) imported only after,
# in main: `gpufair db --help` loads neither.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpufair db", description="Manage the database schema with Alembic."
    )
    parser.add_argument("--url", help="database URL (default: the settings' database.url)")
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("upgrade", help="upgrade the schema (to head by default)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="downgrade the schema to REVISION ('base' empties it)")
    down.add_argument("revision")
    sub.add_parser("current", help="print the database's revision and the code's head")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import migrations
    from api.db import make_engine

    try:
        url = args.url or load_settings().database.url
        if args.action == "upgrade":
            migrations.upgrade(url, args.revision)
        elif args.action == "downgrade":
            migrations.downgrade(url, args.revision)
        engine = make_engine(url)
        try:
            current = migrations.current_revision(engine)
        finally:
            engine.dispose()
        head = migrations.head_revision()
        if current == head:
            state = "up to date"
        elif current is None or current in migrations.known_revisions():
            state = "behind: run 'gpufair db upgrade'"
        else:
            state = "ahead: a newer gpufair migrated it, and this code cannot serve it"
        sys.stdout.write(
            f"database at {current or 'nothing (empty)'}; code head {head} ({state})\n"
        )
        return 0
    except SettingsError as exc:
        sys.stderr.write(f"gpufair db: {exc}\n")
        return 2
    except SQLAlchemyError as exc:
        sys.stderr.write(f"gpufair db: database error: {str(exc).splitlines()[0]}\n")
    except Exception as exc:  # noqa: BLE001 - Alembic reports bad revisions with CommandError etc.
        sys.stderr.write(f"gpufair db: {type(exc).__name__}: {str(exc).splitlines()[0]}\n")
    return 1
