"""Encryption at rest: the wrapped data key.

- ``data_keys``: at most one row in use: the data key that seals the database's vectors
  (``dek_id``, its number, appears in every sealed blob), wrapped by the operator's
  key-encryption key (see speakerdb/storage/crypto.py), and when it was made and last
  wrapped again. A database without a row is not encrypted; with one, every centroid,
  utterance embedding and cohort embedding is a sealed blob (the vector columns stay
  LargeBinary: sealed blobs are 33 bytes longer than the float32 vectors).

Only portable operations and named constraints: the same revision runs on PostgreSQL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dek_id", sa.Integer(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("wrapped_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_data_keys"),
        sa.UniqueConstraint("dek_id", name="uq_data_keys_dek_id"),
    )


def downgrade() -> None:
    # An encrypted database's vectors cannot go back to a schema that knows no encryption.
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM data_keys")).scalar():
        raise RuntimeError(
            "this database is encrypted: a schema before 0006 cannot read its vectors "
            "(export its speakers with the key, then import them into a new database)"
        )
    op.drop_table("data_keys")
