"""The score-normalisation cohort: embeddings of people who are not enrolled (never audio).

- ``cohort_embeddings``: one row per cohort recording: the source label it was embedded
  from, the sha256 of its decoded 16 kHz audio (unique: the same recording twice would
  weigh its voice double) and the embedding as a little-endian float32 blob. What the
  cohort is for (method, top-N, model) is the ``norm`` setting (see speakerdb/norm.py).

Only portable operations and named constraints (store.NAMING_CONVENTION): the same
revision runs on PostgreSQL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cohort_embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("audio_sha256", sa.String(64), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cohort_embeddings"),
        sa.UniqueConstraint("audio_sha256", name="uq_cohort_embeddings_audio_sha256"),
    )


def downgrade() -> None:
    # The settings that describe the cohort go with it: a database at 0003 has raw scores,
    # so a threshold on the AS-norm scale gives way to the cosine one kept beside it.
    bind = op.get_bind()
    settings = dict(bind.execute(sa.text("SELECT key, value FROM settings")).all())
    if settings.get("threshold_scale") == '"as-norm"':
        cosine = settings.get("cosine_threshold") or "0.86"  # the release default (api.DEFAULT_THRESHOLD)
        bind.execute(sa.text("UPDATE settings SET value = :v WHERE key = 'threshold'"), {"v": cosine})
    op.execute(sa.text("DELETE FROM settings WHERE key IN ('norm', 'threshold_scale', 'cosine_threshold')"))
    op.drop_table("cohort_embeddings")
