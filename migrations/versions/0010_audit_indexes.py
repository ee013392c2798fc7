"""Audit records found by index: one speaker's, and the renames, read without scanning the table.

- ``ix_audit_gallery_id_speaker_id`` on (gallery_id, speaker, id): the records that name a
  speaker (``show``'s audit, ``audit --speaker``, the earlier names an opt-out scrubs). ``id``
  is in it so that PostgreSQL reads a name's newest records in order; SQLite keeps the row id
  in every index anyway.
- ``ix_audit_gallery_id_operation`` on (gallery_id, operation): the rename records that ``show``
  and an opt-out follow a speaker's earlier names through, a few among a retention policy's
  removals and expiries.

Without them each of these reads scans the whole audit table, whose size a retention policy
grows by a record per speaker expired (docs/governance.md, "What is held about a person").
Indexes only: no row changes.

Only portable operations: the same revision runs on PostgreSQL.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_audit_gallery_id_speaker_id": ["gallery_id", "speaker", "id"],
    "ix_audit_gallery_id_operation": ["gallery_id", "operation"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "audit", columns)


def downgrade() -> None:
    for name in reversed(INDEXES):
        op.drop_index(name, table_name="audit")
