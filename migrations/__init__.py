"""Alembic revisions of the speakerdb schema (installed as ``speakerdb.migrations``)."""
