"""Galleries: several separate sets of speakers in one database (tenants).

- ``galleries``: one row per gallery: id, unique name, creation time. Row 1 is the
  ``default`` gallery, made here: every row that existed before belongs to it, so an old
  database answers exactly as it did.
- ``gallery_id`` (not null, default 1, a reference to ``galleries``) on ``speakers``,
  ``cohort_embeddings``, ``api_keys`` and ``audit``: what a gallery's speakers, normalisation
  cohort, keys and audit record are. Speaker names, cohort recordings and key names are
  unique within their gallery (``uq_<table>_gallery_id_...``) instead of in the database;
  key ids stay unique in the database (a key finds its row, and so its gallery).
- A gallery's own settings (threshold, normalisation, index parameters) are rows of
  ``settings`` named ``gallery/<id>/<key>`` (store.GALLERY_SETTINGS); the default gallery
  keeps the plain names it always had. No change to the table.

SQLite cannot change a unique constraint in place: those tables are copied by Alembic's
batch mode (reflected, so every column they have is kept), the triggers on ``speakers`` are
made again afterwards, and ``speakers``' AUTOINCREMENT counter is carried over so that a
removed speaker's id is still never reused. On PostgreSQL it is plain ALTER TABLE.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DEFAULT_GALLERY_ID = 1
#: table -> (unique constraint replaced, its columns after the gallery's id); None: none replaced
SCOPED = {
    "speakers": ("uq_speakers_name", ["name"]),
    "cohort_embeddings": ("uq_cohort_embeddings_audio_sha256", ["audio_sha256"]),
    "api_keys": ("uq_api_keys_name", ["name"]),
    "audit": None,
}


def _saved_sqlite_state():
    """The triggers on the tables batch mode recreates (dropped with them) and speakers'
    AUTOINCREMENT counter (a recreated table would start again from its highest id)."""
    bind = op.get_bind()
    names = ", ".join(f"'{t}'" for t in SCOPED)
    triggers = bind.exec_driver_sql(
        f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN ({names}) ORDER BY name"
    ).all()
    seq = bind.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'speakers'").scalar()
    return triggers, seq


def _restore_sqlite_state(triggers, seq) -> None:
    bind = op.get_bind()
    present = {r[0] for r in bind.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    for name, sql in triggers:
        if name not in present:  # dropped with its table
            bind.exec_driver_sql(sql)
    if seq is not None:
        bind.exec_driver_sql("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'speakers'", (seq,))
        if bind.exec_driver_sql("SELECT count(*) FROM sqlite_sequence WHERE name = 'speakers'").scalar() == 0:
            bind.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES ('speakers', ?)", (seq,))


def _batch(table: str):
    kwargs = {"sqlite_autoincrement": True} if table == "speakers" else {}
    return op.batch_alter_table(table, recreate="auto", table_kwargs=kwargs)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    galleries = op.create_table(
        "galleries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_galleries"),
        sa.UniqueConstraint("name", name="uq_galleries_name"),
        sqlite_autoincrement=True,  # a removed gallery's id is never handed to a new one
    )
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    op.bulk_insert(galleries, [{"id": DEFAULT_GALLERY_ID, "name": "default", "created_at": now}])
    if not sqlite:  # the id was given: the serial's sequence continues after it
        op.execute(f"SELECT setval(pg_get_serial_sequence('galleries', 'id'), {DEFAULT_GALLERY_ID})")
    saved = _saved_sqlite_state() if sqlite else None
    for table, unique in SCOPED.items():
        with _batch(table) as b:
            b.add_column(sa.Column("gallery_id", sa.Integer(), nullable=False, server_default=str(DEFAULT_GALLERY_ID)))
            b.create_foreign_key(f"fk_{table}_gallery_id_galleries", "galleries", ["gallery_id"], ["id"])
            if unique is not None:
                old, columns = unique
                b.drop_constraint(old, type_="unique")
                b.create_unique_constraint(f"uq_{table}_gallery_id_{'_'.join(columns)}", ["gallery_id", *columns])
    op.create_index("ix_audit_gallery_id", "audit", ["gallery_id"])
    if saved is not None:
        _restore_sqlite_state(*saved)


def downgrade() -> None:
    bind = op.get_bind()
    others = [r[0] for r in bind.exec_driver_sql(f"SELECT name FROM galleries WHERE id <> {DEFAULT_GALLERY_ID}")]
    if others:
        # Going below 0005 would merge or lose them: the caller removes them first, on purpose.
        raise RuntimeError(
            f"the database holds galleries other than the default ({', '.join(sorted(others))}): "
            "remove them first (`speakerdb galleries remove NAME`)"
        )
    sqlite = bind.dialect.name == "sqlite"
    op.execute(sa.text("DELETE FROM settings WHERE key LIKE 'gallery/%'"))
    saved = _saved_sqlite_state() if sqlite else None
    op.drop_index("ix_audit_gallery_id", table_name="audit")
    for table, unique in SCOPED.items():
        with _batch(table) as b:
            if unique is not None:
                old, columns = unique
                b.drop_constraint(f"uq_{table}_gallery_id_{'_'.join(columns)}", type_="unique")
                b.create_unique_constraint(old, columns)
            b.drop_constraint(f"fk_{table}_gallery_id_galleries", type_="foreignkey")
            b.drop_column("gallery_id")
    if saved is not None:
        _restore_sqlite_state(*saved)
    op.drop_table("galleries")
