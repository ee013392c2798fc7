"""Alembic environment for speakerdb.

speakerdb runs migrations itself (``speakerdb db upgrade``) and passes its own connection
in ``config.attributes["connection"]``. Developers can also run the ``alembic`` command
from the repository root: the database is then ``-x db=PATH`` or ``$SPEAKERDB_DB``.
"""

import os

from alembic import context

from speakerdb.store import Base, open_engine

target_metadata = Base.metadata


def _run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    path = context.get_x_argument(as_dictionary=True).get("db") or os.environ.get("SPEAKERDB_DB")
    if not path:
        raise SystemExit("give the database with -x db=PATH or SPEAKERDB_DB=PATH")
    from pathlib import Path

    engine = open_engine(Path(path))
    with engine.connect() as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("speakerdb migrations run online only (SQLite)")
run_migrations_online()
