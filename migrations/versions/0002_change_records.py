"""Change records, database identity, ids never reused, named constraints.

- ``speaker_changes``: one row per change to a speaker's centroid (insert, re-centring,
  delete), written by triggers in the same transaction as the change, each bumping the
  ``generation`` setting. The search index catches up by replaying these rows, and no
  write path can skip them.
- ``database_id``: a random identity stored in the settings; index files carry it, so an
  index from another database (or an earlier one at the same path) is never used.
- ``speakers`` and ``utterances`` are recreated: ``AUTOINCREMENT`` on speakers (SQLite
  otherwise reuses the highest id after a removal) and every constraint named by the
  convention in ``store.NAMING_CONVENTION``. Rows are copied as they are: ids,
  embeddings, metadata and times unchanged.

speakerdb runs this with foreign keys off and checks them before the commit
(schema._run_migration, env.py): with them on, dropping the old ``speakers`` table would
cascade to every utterance.

On PostgreSQL the tables stay (a SERIAL sequence never hands out an id twice): their
constraints are renamed to the convention, the triggers are one PL/pgSQL function, and
the vector columns are stored uncompressed out of line (EXTERNAL): float32 vectors do not
compress, and it keeps their bytes findable by the deletion tests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SPEAKER_COLUMNS = "id, name, created_at, updated_at, metadata, centroid"
UTTERANCE_COLUMNS = "id, speaker_id, source, duration_s, audio_sha256, embedding, created_at"

# Each trigger bumps the generation (creating the setting if someone deleted it), then
# records the change at that generation. random() is a 64-bit nonce: two histories that
# reach the same generation (a restored backup written to again) tell themselves apart.
_BUMP = """
    INSERT OR IGNORE INTO settings (key, value) VALUES ('generation', '0');
    UPDATE settings SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation';
"""
_RECORD = """
    INSERT INTO speaker_changes (generation, speaker_id, op, nonce)
    VALUES ((SELECT CAST(value AS INTEGER) FROM settings WHERE key = 'generation'), {id}, '{op}', random());
"""
TRIGGERS = {
    "speakers_record_insert": "AFTER INSERT ON speakers BEGIN" + _BUMP + _RECORD.format(id="NEW.id", op="upsert") + "END",
    "speakers_record_delete": "AFTER DELETE ON speakers BEGIN" + _BUMP + _RECORD.format(id="OLD.id", op="remove") + "END",
    "speakers_record_recentre": (
        "AFTER UPDATE OF centroid ON speakers WHEN OLD.id = NEW.id AND OLD.centroid IS NOT NEW.centroid BEGIN"
        + _BUMP + _RECORD.format(id="NEW.id", op="upsert") + "END"
    ),
    "speakers_record_new_id": (
        "AFTER UPDATE OF id ON speakers WHEN OLD.id <> NEW.id BEGIN"
        + _BUMP + _RECORD.format(id="OLD.id", op="remove") + _BUMP + _RECORD.format(id="NEW.id", op="upsert") + "END"
    ),
}


def _speakers(name: str, autoincrement: bool, named: bool) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("centroid", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_speakers" if named else None),
        sa.UniqueConstraint("name", name="uq_speakers_name" if named else None),
        sqlite_autoincrement=autoincrement,
    )


def _utterances(name: str, named: bool) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("speaker_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("audio_sha256", sa.String(64), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_utterances" if named else None),
        sa.ForeignKeyConstraint(
            ["speaker_id"], ["speakers.id"], ondelete="CASCADE",
            name="fk_utterances_speaker_id_speakers" if named else None,
        ),
        sa.UniqueConstraint(
            "speaker_id", "audio_sha256", name="uq_utterances_speaker_id_audio_sha256" if named else None
        ),
    )


def _recreate(autoincrement: bool, named: bool) -> None:
    """Copy speakers and utterances into tables of the new shape, ids and all."""
    _speakers("_speakers_new", autoincrement, named)
    op.execute(f"INSERT INTO _speakers_new ({SPEAKER_COLUMNS}) SELECT {SPEAKER_COLUMNS} FROM speakers")
    _utterances("_utterances_new", named)
    op.execute(f"INSERT INTO _utterances_new ({UTTERANCE_COLUMNS}) SELECT {UTTERANCE_COLUMNS} FROM utterances")
    op.drop_index("ix_utterances_speaker_id", table_name="utterances")
    op.drop_table("utterances")
    op.drop_table("speakers")
    op.rename_table("_speakers_new", "speakers")
    op.rename_table("_utterances_new", "utterances")
    op.create_index("ix_utterances_speaker_id", "utterances", ["speaker_id"])


# PostgreSQL's default names -> the convention's (0001 names nothing itself; env.py's
# target metadata names them by the convention on databases it creates).
PG_CONSTRAINTS = [
    ("speakers", "speakers_pkey", "pk_speakers"),
    ("speakers", "speakers_name_key", "uq_speakers_name"),
    ("utterances", "utterances_pkey", "pk_utterances"),
    ("utterances", "utterances_speaker_id_fkey", "fk_utterances_speaker_id_speakers"),
    ("utterances", "utterances_speaker_id_audio_sha256_key", "uq_utterances_speaker_id_audio_sha256"),
    ("settings", "settings_pkey", "pk_settings"),
]
PG_FUNCTION = """
CREATE FUNCTION speakerdb_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    g bigint;
BEGIN
    INSERT INTO settings (key, value) VALUES ('generation', '0') ON CONFLICT (key) DO NOTHING;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.id <> NEW.id) THEN
        UPDATE settings SET value = (value::bigint + 1)::text WHERE key = 'generation' RETURNING value::bigint INTO g;
        INSERT INTO speaker_changes (generation, speaker_id, op, nonce)
        VALUES (g, OLD.id, 'remove', (random() * 4611686018427387903)::bigint);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND (OLD.id <> NEW.id OR OLD.centroid IS DISTINCT FROM NEW.centroid)) THEN
        UPDATE settings SET value = (value::bigint + 1)::text WHERE key = 'generation' RETURNING value::bigint INTO g;
        INSERT INTO speaker_changes (generation, speaker_id, op, nonce)
        VALUES (g, NEW.id, 'upsert', (random() * 4611686018427387903)::bigint);
    END IF;
    RETURN NULL;
END
$$
"""
PG_TRIGGER = ("CREATE TRIGGER speakers_record_change AFTER INSERT OR UPDATE OR DELETE ON speakers "
              "FOR EACH ROW EXECUTE FUNCTION speakerdb_record_change()")
PG_VECTOR_COLUMNS = [("speakers", "centroid"), ("utterances", "embedding")]


def _rename_constraints(renames: list[tuple[str, str, str]]) -> None:
    """Rename the constraints that still have PostgreSQL's default names (0001 run by an
    env.py without the naming convention); those already named by it are left alone."""
    present = {row[0] for row in op.get_bind().exec_driver_sql(
        "SELECT conname FROM pg_constraint WHERE connamespace = current_schema()::regnamespace")}
    for table, old, new in renames:
        if old in present:
            op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {old} TO {new}")


def _changes_table() -> None:
    op.create_table(
        "speaker_changes",
        sa.Column("generation", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("speaker_id", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("generation", name="pk_speaker_changes"),
    )


def _identity() -> None:
    """The generation (kept) and a new random database id."""
    settings = sa.table("settings", sa.column("key", sa.String), sa.column("value", sa.Text))
    bind = op.get_bind()
    if bind.execute(sa.select(settings.c.key).where(settings.c.key == "generation")).first() is None:
        op.bulk_insert(settings, [{"key": "generation", "value": "0"}])
    op.execute(settings.delete().where(settings.c.key == "database_id"))
    op.bulk_insert(settings, [{"key": "database_id", "value": f'"{uuid.uuid4().hex}"'}])


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _rename_constraints(PG_CONSTRAINTS)
        for table, column in PG_VECTOR_COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTERNAL")
        _changes_table()
        _identity()
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
        return
    _recreate(autoincrement=True, named=True)
    _changes_table()
    _identity()
    for name, body in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS speakers_record_change ON speakers")
        op.execute("DROP FUNCTION IF EXISTS speakerdb_record_change()")
        op.drop_table("speaker_changes")
        op.execute("DELETE FROM settings WHERE key = 'database_id'")
        for table, column in PG_VECTOR_COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTENDED")
        return
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("speaker_changes")
    op.execute("DELETE FROM settings WHERE key = 'database_id'")
    _recreate(autoincrement=False, named=False)
