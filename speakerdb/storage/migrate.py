"""Schema management and copying, on databases that :class:`speakerdb.SpeakerDB` may refuse to
open (an older schema, a file that is not a database): read the revision, migrate up or
down, and copy every row from one database to another (SQLite to PostgreSQL or back).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from sqlalchemy.engine import Engine

from ..config import db_target
from ..errors import DatabaseError, InvalidInputError, SpeakerDBError
from . import paths, schema, store
from . import settings as stored

#: The first 16 bytes of every SQLite database file (an empty file is an empty database too).
SQLITE_HEADER = b"SQLite format 3\x00"


def database_revision(db_path: str | os.PathLike[str] | None = None) -> tuple[str | None, str]:
    """(revision stamped in the database, revision this speakerdb needs); DatabaseError for a
    file that is not a database, or a database with tables but none of speakerdb's record.
    None: an empty database (such as one downgraded to "base")."""
    engine, name = engine_for(db_path)
    try:
        # A text file must not read as "revision none" (SQLite reports nothing until it reads a page).
        if engine.dialect.name == "sqlite":
            try:
                with open(str(engine.url.database), "rb") as f:
                    head = f.read(len(SQLITE_HEADER))
            except OSError as e:
                raise DatabaseError(f"cannot read database {name}: {e.strerror or e}") from None
            if head and head != SQLITE_HEADER:
                raise DatabaseError(f"{name} is not a speakerdb database: not an SQLite file")
        tables = schema._tables(engine)
        if tables and "alembic_version" not in tables:
            raise DatabaseError(f"{name} is a database but not a speakerdb database (no schema revision in it)")
        return schema.current_revision(engine), schema.HEAD_REVISION
    finally:
        engine.dispose()


def upgrade_database(db_path: str | os.PathLike[str] | None = None, revision: str = "head") -> str | None:
    """Migrate a database to ``revision`` (default: newest); returns the new revision."""
    return migrate(db_path, schema.upgrade, revision)


def downgrade_database(db_path: str | os.PathLike[str] | None, revision: str) -> str | None:
    """Migrate a database down to ``revision`` ("base": no tables). For developers and rollbacks."""
    return migrate(db_path, schema.downgrade, revision)


def engine_for(db_path: str | os.PathLike[str] | None) -> tuple[Engine, str]:
    """An engine for a database that must exist (a file is never created here), and its name."""
    target = db_target(db_path)
    if isinstance(target, str):  # a server URL
        return store.open_server_engine(target), store.display_url(target)
    path = target
    paths.check_db_path(path, create=False)  # reading a revision or migrating must not create a file
    return store.open_engine(path), str(path)


def migrate(db_path: str | os.PathLike[str] | None, step: Callable[[Engine, str], Any], revision: str) -> str | None:
    """Run ``step`` (schema.upgrade or schema.downgrade) to ``revision``; returns the revision reached."""
    engine, name = engine_for(db_path)
    try:
        step(engine, revision)
        return schema.current_revision(engine)
    except SpeakerDBError:
        raise
    except Exception as e:  # Alembic's CommandError (unknown revision), SQLAlchemy errors
        reason = store.redact(e, engine.url.render_as_string(hide_password=False))
        raise DatabaseError(f"migration of {name} to {revision} failed: {reason}") from None
    finally:
        engine.dispose()


def open_source(source: str | os.PathLike[str]) -> tuple[store.Store, str]:
    """The database a copy reads (which must exist), and its name as shown (never a password)."""
    # A source is always named: "" is a path (the working directory), not the default database.
    source_target = db_target(source or Path())
    if isinstance(source_target, str):
        name = store.display_url(source_target)
    else:
        name = str(source_target)
        paths.check_db_path(source_target, create=False)
    return paths.open_store(source_target), name


def copy(
    src: store.Store, src_name: str, dst: store.Store, dst_name: str, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy every row of ``src`` into the empty ``dst`` in one transaction (see
    :func:`speakerdb.api.copy_database`); returns the rows copied per table."""
    with src.read(every_gallery=True) as rs, dst.write(every_gallery=True) as ws:
        if store.has_speakers(ws) or ws.scalar(store.select(store.ApiKey.id).limit(1)) is not None:
            raise DatabaseError(f"database {dst_name} is not empty: copy into a new or empty database")
        settings = store.get_settings(rs)  # every gallery's, as stored
        try:
            rows = store.copy_rows(rs, ws, stored.dim(settings), progress)
        except InvalidInputError as e:
            raise DatabaseError(f"{src_name} cannot be copied: {e}; nothing was written to {dst_name}") from None
        for key, value in settings.items():
            if key not in store.OWN_SETTINGS:
                store.set_setting(ws, key, value)
        # The other galleries' rows came with their counts; the default's is the destination's
        # own row: it goes on from the source's too, so no client sees its number go back.
        store.add_gallery_generation(ws, store.DEFAULT_GALLERY_ID, store.gallery_generation(rs))
        store.reset_sequences(ws)
    return rows
