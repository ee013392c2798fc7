"""Alembic environment for speakerdb.

speakerdb runs migrations itself (``speakerdb db upgrade``) and passes its own connection
in ``config.attributes["connection"]``. Developers can also run the ``alembic`` command
from the repository root: the database is then ``-x db=PATH`` or ``$SPEAKERDB_DB``.
"""

from alembic import context

from speakerdb.config import DB_ENV, db_from_env, db_target
from speakerdb.storage.store import Base, open_engine, open_server_engine

target_metadata = Base.metadata


def _run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
    # transactional_ddl: Alembic's SQLite default (False) commits after each revision, before
    # the check below could undo anything; SQLite runs DDL in transactions perfectly well.
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=True, transactional_ddl=True
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two services creating or upgrading one database at once: one migrates, the
            # other then finds it at head (Alembic reads the version after this lock).
            # Waiting for another node's migration is right however long it takes: the
            # lock_timeout of speakerdb's sessions is lifted for this one wait only.
            timeout = connection.exec_driver_sql("SHOW lock_timeout").scalar()
            connection.exec_driver_sql("SET LOCAL lock_timeout = 0")
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('speakerdb-migrations'))")
            connection.exec_driver_sql("SELECT set_config('lock_timeout', %s, true)", (timeout,))
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            # speakerdb runs migrations with foreign keys off (schema.py): check them all
            # before the commit, so that a broken reference undoes the whole migration.
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(
                    f"the migration would leave {len(broken)} broken reference(s), first {broken[0]}: undone"
                )


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    given = context.get_x_argument(as_dictionary=True).get("db") or db_from_env()
    if not given:
        raise SystemExit(f"give the database with -x db=PATH or {DB_ENV}=PATH")
    target = db_target(given)  # file or server URL: decided where the library decides it
    if isinstance(target, str):  # a server URL; a file is a Path
        with open_server_engine(target).connect() as conn:
            _run(conn)
        return
    engine = open_engine(target)
    with engine.connect() as conn:
        conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # see schema._run_migration
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("speakerdb migrations run online only")
run_migrations_online()
