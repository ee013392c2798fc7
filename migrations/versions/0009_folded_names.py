"""Folded speaker names, indexed: finding a name's twins reads the matching rows only.

- ``speakers.folded_name``: the name as twins and opt-outs compare it (NFKC, case folded,
  inner whitespace as one space: ``storage.store.fold_name``), cut to 200 characters
  (``store.folded_key``), filled here for every row. speakerdb sets it with the name on every
  path that writes one (storage/store.py, ``Speaker._fold``); NULL only in a row written
  behind its back.
- ``ix_speakers_gallery_id_folded_name`` on (gallery_id, folded_name): names are a gallery's
  own (revision 0005), and so are its twins. Not unique: a database may hold twins made
  before they were refused, and must upgrade with them.

The column is a copy of a person's name: it goes with the row (remove, expire, opt-out) as
the name does.

Only portable operations: the same revision runs on PostgreSQL. On SQLite the column is added
with ALTER TABLE ADD COLUMN (nullable, no default), which rewrites nothing and keeps the
speakers table's triggers; the backfill updates no centroid, so they record no change.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

INDEX = "ix_speakers_gallery_id_folded_name"
MAX_NAME_LENGTH = 200  # characters, as speakers.name
BATCH = 2_000  # rows read and written at a time: memory stays bounded at a million speakers


def _folded_key(name: str) -> str:
    # A copy of storage.store.folded_key as it is at this revision (revisions import no package
    # code: a later change to the package must not change what this one did). Must match it.
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())[:MAX_NAME_LENGTH]


def upgrade() -> None:
    op.add_column("speakers", sa.Column("folded_name", sa.String(MAX_NAME_LENGTH), nullable=True))
    speakers = sa.table(
        "speakers", sa.column("id", sa.Integer), sa.column("name", sa.String), sa.column("folded_name", sa.String)
    )
    bind = op.get_bind()
    last = 0
    while True:
        rows = bind.execute(
            sa.select(speakers.c.id, speakers.c.name)
            .where(speakers.c.id > last)
            .order_by(speakers.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        bind.execute(
            speakers.update().where(speakers.c.id == sa.bindparam("row_id")).values(folded_name=sa.bindparam("key")),
            [{"row_id": r.id, "key": _folded_key(r.name)} for r in rows],
        )
        last = rows[-1].id
    op.create_index(INDEX, "speakers", ["gallery_id", "folded_name"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="speakers")
    # DROP COLUMN: SQLite 3.35+ and PostgreSQL alike; its index is gone, nothing else refers to it.
    op.drop_column("speakers", "folded_name")
