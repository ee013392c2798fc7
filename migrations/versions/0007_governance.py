"""Consent, retention and opt-out (issue 27 items 1-3): what a database keeps to govern its voiceprints.

- ``speakers.consent``, ``consent_at``, ``consent_by``: the consent recorded at enrollment
  (the text given: who consented, how, or a reference to a signed form), when it was
  recorded (UTC) and by which API key (NULL: a local command). All NULL: none recorded.
- ``speakers.external_id_hash``: the keyed hash (HMAC-SHA256, hex) of an external id given
  at enrollment; the id itself is never stored.
- ``speakers.last_seen``: when a decision (identify, verify, timeline) last named the
  speaker (UTC; NULL: never). Expiry counts from it, or from the last enrollment.
- ``optouts``: one row per opted-out person: the keyed hashes of the normalised name and of
  the external id (either may be NULL), when, and the gallery (tenant, revision 0005) it
  belongs to: an opt-out refuses enrollments in its own gallery. Never a name.

The policy itself (consent required, retention period: a gallery's own settings, as its
threshold) and the database's HMAC key are settings (``settings`` table, see
storage/governance.py): no column of their own.

Only portable operations and named constraints: the same revision runs on PostgreSQL. On
SQLite the columns are added with ALTER TABLE ADD COLUMN (nullable, no default), which
rewrites nothing and keeps the speakers table's triggers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SPEAKER_COLUMNS = ("consent", "consent_at", "consent_by", "external_id_hash", "last_seen")
#: The settings this revision's features write; a downgrade takes them away with the columns.
SETTINGS = ("require_consent", "expire_after_s", "optout_key")


def upgrade() -> None:
    op.add_column("speakers", sa.Column("consent", sa.Text(), nullable=True))
    op.add_column("speakers", sa.Column("consent_at", sa.DateTime(), nullable=True))
    op.add_column("speakers", sa.Column("consent_by", sa.String(200), nullable=True))
    op.add_column("speakers", sa.Column("external_id_hash", sa.String(64), nullable=True))
    op.add_column("speakers", sa.Column("last_seen", sa.DateTime(), nullable=True))
    op.create_table(
        "optouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name_hash", sa.String(64), nullable=True),
        sa.Column("external_id_hash", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("gallery_id", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_optouts"),
        sa.ForeignKeyConstraint(["gallery_id"], ["galleries.id"], name="fk_optouts_gallery_id_galleries"),
    )
    op.create_index("ix_optouts_gallery_id", "optouts", ["gallery_id"])
    op.create_index("ix_optouts_name_hash", "optouts", ["name_hash"])
    op.create_index("ix_optouts_external_id_hash", "optouts", ["external_id_hash"])


def downgrade() -> None:
    op.drop_index("ix_optouts_gallery_id", table_name="optouts")
    op.drop_index("ix_optouts_external_id_hash", table_name="optouts")
    op.drop_index("ix_optouts_name_hash", table_name="optouts")
    op.drop_table("optouts")
    keys = ", ".join(f"'{k}'" for k in SETTINGS)
    op.execute(sa.text(f"DELETE FROM settings WHERE key IN ({keys})"))
    for key in SETTINGS:  # other galleries' own: gallery/<id>/<key>
        op.execute(sa.text(f"DELETE FROM settings WHERE key LIKE 'gallery/%/{key}'"))
    # DROP COLUMN: SQLite 3.35+ and PostgreSQL alike; none of these columns is indexed or constrained.
    for column in reversed(SPEAKER_COLUMNS):
        op.drop_column("speakers", column)
