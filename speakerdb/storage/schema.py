"""The database schema's version: create new databases at head, refuse old or newer ones.

The schema exists only through the Alembic revisions in ``migrations/`` (installed as
``speakerdb.migrations``). Opening a database checks its revision against
:data:`HEAD_REVISION` with one small query; Alembic itself is imported only to create or
migrate a database, so read-only commands start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError as SADatabaseError

from ..errors import DatabaseError, SchemaOutdatedError, SchemaTooNewError
from .urls import engine_name, redact

#: The newest revision in migrations/versions. A test checks it equals Alembic's head.
HEAD_REVISION = "0010"


def migrations_dir() -> Path:
    """Where the Alembic scripts are, in a source checkout and in an installed wheel alike."""
    from .. import migrations  # mapped from ./migrations by pyproject's package-dir

    return Path(migrations.__file__).parent


def ensure_current(engine: Engine) -> None:
    """Create an empty database at head; accept one at head; refuse any other."""
    tables = _tables(engine)
    if not tables:
        if engine.dialect.name == "sqlite":
            _initialise_file(engine)
        upgrade(engine, "head")  # two nodes creating one server database: env.py serialises them
        return
    if "alembic_version" not in tables:
        kind = "an SQLite file" if engine.dialect.name == "sqlite" else "a database"
        raise DatabaseError(f"{_path(engine)} is {kind} but not a speakerdb database")
    revision = current_revision(engine)
    if revision == HEAD_REVISION:
        return
    if revision is None or _is_known(revision):
        raise SchemaOutdatedError(
            f"database {_path(engine)} has schema revision {revision or 'none'}, this speakerdb "
            f"needs {HEAD_REVISION}: back it up, then run `speakerdb db upgrade`"
        )
    raise SchemaTooNewError(
        f"database {_path(engine)} has schema revision {revision}, written by a newer speakerdb "
        f"than this one (which knows up to {HEAD_REVISION}): upgrade speakerdb"
    )


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in the database, or None if it has none."""
    with engine.connect() as conn:
        try:
            row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
        except SADatabaseError:
            return None
    return row[0] if row else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (in one IMMEDIATE transaction)."""
    from alembic import command  # deferred: alembic is heavy to import

    _run_migration(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` ("base" removes every table)."""
    from alembic import command  # deferred: alembic is heavy to import

    _run_migration(engine, command.downgrade, revision)


def _run_migration(engine: Engine, step, revision: str) -> None:
    """Run an Alembic command in one IMMEDIATE transaction with foreign keys off.

    Foreign keys must be off while tables are recreated: with them on, dropping the old
    ``speakers`` would cascade to every utterance. The pragma is ignored inside a
    transaction, so it is set on the connection before BEGIN; ``env.py`` runs
    ``PRAGMA foreign_key_check`` before the commit instead, so a migration that breaks a
    reference fails whole.
    """
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            driver: Any = conn.connection.driver_connection  # sqlite3's own connection
            driver.execute("PRAGMA foreign_keys = OFF")  # autocommit: no transaction yet
        try:
            step(_config(conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")), revision)
        finally:
            # Never hand this connection back to the pool with foreign keys off (turning
            # them on again would be ignored if a transaction were still open): discard it,
            # and the next one is set up afresh.
            conn.invalidate()


def head_revision() -> str:
    """The head according to the Alembic scripts themselves (tests compare it to HEAD_REVISION)."""
    from alembic.script import ScriptDirectory  # deferred: alembic is heavy to import

    head = ScriptDirectory.from_config(_config(None)).get_current_head()
    if head is None:  # a package installed without its revisions
        raise DatabaseError("the migration scripts are missing from this installation of speakerdb")
    return head


def _config(connection):
    from alembic.config import Config  # deferred: alembic is heavy to import

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def _is_known(revision: str) -> bool:
    from alembic.script import ScriptDirectory  # deferred: alembic is heavy to import
    from alembic.util import CommandError  # deferred: alembic is heavy to import

    try:
        return ScriptDirectory.from_config(_config(None)).get_revision(revision) is not None
    except (CommandError, KeyError, ValueError):
        return False


def _tables(engine: Engine) -> set[str]:
    try:
        with engine.connect() as conn:
            if engine.dialect.name != "sqlite":
                from sqlalchemy import inspect  # deferred: sqlalchemy is heavy to import

                return set(inspect(conn).get_table_names())
            # sqlite_sequence (AUTOINCREMENT's) is SQLite's own and outlives a downgrade
            rows = conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
            return {r[0] for r in rows}
    except SADatabaseError as e:
        reason = redact(
            e, None if engine.dialect.name == "sqlite" else engine.url.render_as_string(hide_password=False)
        )
        raise DatabaseError(f"{_path(engine)} cannot be opened as a database: {reason}") from None


# A 512-d float32 embedding is 2 KiB; with SQLite's default 4 KiB pages only one
# utterance row (~2.2 KiB) fits a page, wasting half the file. 16 KiB pages hold seven.
PAGE_SIZE = 16_384  # bytes


def _initialise_file(engine: Engine) -> None:
    """Page size and WAL journal for a new file; both must be set before the first table."""
    # journal_mode cannot change inside a transaction, and SQLAlchemy always opens one:
    # go to the driver's connection, which runs statements in autocommit here.
    raw = engine.raw_connection()
    try:
        driver: Any = raw.driver_connection  # sqlite3's own connection
        driver.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        driver.execute("PRAGMA journal_mode = WAL")
    except Exception as e:
        raise DatabaseError(f"{_path(engine)} cannot be created: {e}") from None
    finally:
        raw.close()


def _path(engine: Engine) -> str:
    return engine_name(engine)
