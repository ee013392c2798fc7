"""Each gallery's own generation: the count of changes to its speakers' centroids.

- ``galleries.generation`` (not null, default 0): bumped by triggers on ``speakers``, in the
  same transaction as the change, once for each change record the database's triggers
  (revision 0002) write for one of the gallery's speakers: an insert, a re-centring, a
  delete, a new id; a speaker moved to another gallery bumps both. No write path can skip
  it, as none can skip the change record.

``info``'s ``generation`` is the gallery's: a key of gallery A must not see how often other
tenants change their speakers. The database's generation and its change record stay what
the search indexes and the cohort statistics replay. At the upgrade every gallery starts
from the database's generation, so that no client sees its gallery's number go back.

On SQLite the column is added with ALTER TABLE ADD COLUMN (rewrites nothing, keeps the
triggers) and the triggers are plain SQL; on PostgreSQL they are one PL/pgSQL function.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _bump(gallery: str) -> str:
    return f"UPDATE galleries SET generation = generation + 1 WHERE id = {gallery};"


# The conditions of 0002's triggers, so that a gallery counts exactly its speakers' change records.
TRIGGERS = {
    "galleries_count_insert": f"AFTER INSERT ON speakers BEGIN {_bump('NEW.gallery_id')} END",
    "galleries_count_delete": f"AFTER DELETE ON speakers BEGIN {_bump('OLD.gallery_id')} END",
    "galleries_count_recentre": (
        "AFTER UPDATE OF centroid ON speakers WHEN OLD.id = NEW.id AND OLD.centroid IS NOT NEW.centroid "
        f"BEGIN {_bump('NEW.gallery_id')} END"
    ),
    "galleries_count_new_id": (
        f"AFTER UPDATE OF id ON speakers WHEN OLD.id <> NEW.id BEGIN {_bump('OLD.gallery_id')} "
        f"{_bump('NEW.gallery_id')} END"
    ),
    "galleries_count_move": (
        "AFTER UPDATE OF gallery_id ON speakers WHEN OLD.gallery_id <> NEW.gallery_id "
        f"BEGIN {_bump('OLD.gallery_id')} {_bump('NEW.gallery_id')} END"
    ),
}
PG_FUNCTION = """
CREATE FUNCTION speakerdb_count_gallery_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND (OLD.id <> NEW.id OR OLD.gallery_id <> NEW.gallery_id)) THEN
        UPDATE galleries SET generation = generation + 1 WHERE id = OLD.gallery_id;
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND (OLD.id <> NEW.id OR OLD.gallery_id <> NEW.gallery_id
            OR OLD.centroid IS DISTINCT FROM NEW.centroid)) THEN
        UPDATE galleries SET generation = generation + 1 WHERE id = NEW.gallery_id;
    END IF;
    RETURN NULL;
END
$$
"""
PG_TRIGGER = (
    "CREATE TRIGGER speakers_count_gallery_change AFTER INSERT OR UPDATE OR DELETE ON speakers "
    "FOR EACH ROW EXECUTE FUNCTION speakerdb_count_gallery_change()"
)


def upgrade() -> None:
    op.add_column("galleries", sa.Column("generation", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
    database = "SELECT CAST(value AS BIGINT) FROM settings WHERE key = 'generation'"
    op.execute(sa.text(f"UPDATE galleries SET generation = COALESCE(({database}), 0)"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
        return
    for name, body in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS speakers_count_gallery_change ON speakers")
        op.execute("DROP FUNCTION IF EXISTS speakerdb_count_gallery_change()")
    else:
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    # DROP COLUMN: SQLite 3.35+ and PostgreSQL alike; the column is neither indexed nor constrained.
    op.drop_column("galleries", "generation")
