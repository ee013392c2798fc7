"""SQLAlchemy models and queries. SQLite is the source of truth for everything speakerdb knows.

Tables (created only by the Alembic revisions in ``migrations/``):

- ``speakers``: unique name, created/updated times (UTC), free-form JSON metadata, and the
  centroid: the L2-normalised mean of the speaker's utterance embeddings, kept in sync in
  the same transaction as every change to its utterances.
- ``utterances``: speaker, source label (the file name given at enrollment), duration,
  sha256 of the decoded 16 kHz audio, and the embedding.
- ``settings``: key/value pairs (JSON values): the model id and dimension the database is
  bound to, the decision threshold, and a generation counter bumped by every write, which
  tells whether a saved index is stale.

Vectors are stored as little-endian float32 blobs.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from . import schema
from .errors import DatabaseError, InvalidInputError

BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another process's transaction
MAX_NAME_LENGTH = 200  # characters
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a speaker, else raise InvalidInputError saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError("speaker name must not be empty")
    if name != name.strip():
        raise InvalidInputError(f"speaker name {name!r} must not start or end with whitespace")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"speaker name is {len(name)} characters long, at most {MAX_NAME_LENGTH} are allowed")
    if _CONTROL_CHARS.search(name):
        raise InvalidInputError(f"speaker name {name!r} contains control characters")
    if "/" in name or "\\" in name:
        raise InvalidInputError(f"speaker name {name!r} must not contain / or \\")
    return name


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso(t: datetime | None) -> str | None:
    """A naive-UTC datetime as ISO 8601 with Z; microseconds kept so round trips are exact."""
    return None if t is None else t.isoformat() + "Z"


def parse_iso(text: str | None) -> datetime | None:
    """The inverse of :func:`iso` (None for None or unparseable text)."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def to_blob(vector: np.ndarray) -> bytes:
    """A vector as little-endian float32 bytes."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    """Little-endian float32 bytes as a native float32 vector."""
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


class Base(DeclarativeBase):
    pass


class Speaker(Base):
    __tablename__ = "speakers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    centroid: Mapped[bytes] = mapped_column(LargeBinary)

    utterances: Mapped[list["Utterance"]] = relationship(
        back_populates="speaker",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Utterance.id",
    )

    def centroid_vector(self) -> np.ndarray:
        return from_blob(self.centroid)


class Utterance(Base):
    __tablename__ = "utterances"
    __table_args__ = (UniqueConstraint("speaker_id", "audio_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    speaker_id: Mapped[int] = mapped_column(
        ForeignKey("speakers.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(Text)
    duration_s: Mapped[float] = mapped_column(Float)
    audio_sha256: Mapped[str] = mapped_column(String(64))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    speaker: Mapped[Speaker] = relationship(back_populates="utterances")

    def vector(self) -> np.ndarray:
        return from_blob(self.embedding)


class Setting(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)  # JSON


@dataclass(frozen=True)
class SpeakerRow:
    """A speaker as listed: no vectors, just what a person reads."""

    id: int
    name: str
    n_utterances: int
    total_duration_s: float
    created_at: datetime
    updated_at: datetime
    meta: dict[str, Any]


class Store:
    """The SQLite database: opening (schema checked or created), transactions and queries."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.engine = open_engine(self.path)
        try:
            schema.ensure_current(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session: one consistent snapshot, rolled back at the end."""
        with _translate_errors(self.path), Session(self.engine) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction, committed at the end or rolled back on any exception.

        BEGIN IMMEDIATE takes the write lock up front, so a second writer waits for the busy
        timeout instead of failing when its read lock cannot be upgraded.
        """
        engine = self.engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        with _translate_errors(self.path), Session(engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    def settings(self) -> dict[str, Any]:
        with self.read() as s:
            return get_settings(s)

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database file and truncate the log to zero bytes.

        After a deletion this is what removes the old page images (with the deleted
        embeddings) from the -wal file. It waits up to the busy timeout for readers to
        finish; returns False if some were still reading and the log was not truncated.
        """
        with _translate_errors(self.path):
            raw = self.engine.raw_connection()
            try:
                busy, _, _ = raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                raw.close()
        return busy == 0


# ---- queries (take a session, so callers decide the transaction) -------------------------
def get_settings(session: Session) -> dict[str, Any]:
    rows = session.scalars(select(Setting)).all()
    return {row.key: json.loads(row.value) for row in rows}


def set_setting(session: Session, key: str, value: Any) -> None:
    row = session.get(Setting, key)
    if row is None:
        session.add(Setting(key=key, value=json.dumps(value)))
    else:
        row.value = json.dumps(value)


def bump_generation(session: Session) -> int:
    """Count one more change to the speakers; returns the new generation."""
    generation = int(get_settings(session).get("generation", 0)) + 1
    set_setting(session, "generation", generation)
    return generation


def speaker_by_name(session: Session, name: str) -> Speaker | None:
    return session.scalars(select(Speaker).where(Speaker.name == name)).one_or_none()


def speakers_by_name(session: Session, names: list[str] | None = None) -> list[Speaker]:
    """The named speakers (all speakers if ``names`` is None), by name; absent names are left out."""
    stmt = select(Speaker).order_by(Speaker.name)
    if names is not None:
        stmt = stmt.where(Speaker.name.in_(names))
    return list(session.scalars(stmt))


def speakers_by_id(session: Session, ids: list[int]) -> dict[int, Speaker]:
    if not ids:
        return {}
    return {s.id: s for s in session.scalars(select(Speaker).where(Speaker.id.in_(ids)))}


def list_speakers(session: Session) -> list[SpeakerRow]:
    stmt = (
        select(
            Speaker,
            func.count(Utterance.id),
            func.coalesce(func.sum(Utterance.duration_s), 0.0),
        )
        .outerjoin(Utterance)
        .group_by(Speaker.id)
        .order_by(Speaker.name)
    )
    return [
        SpeakerRow(sp.id, sp.name, n, float(total), sp.created_at, sp.updated_at, dict(sp.meta or {}))
        for sp, n, total in session.execute(stmt)
    ]


def has_speakers(session: Session) -> bool:
    """Whether any speaker is enrolled (a LIMIT 1 probe, not a count over a million rows)."""
    return session.scalar(select(Speaker.id).limit(1)) is not None


def counts(session: Session) -> tuple[int, int]:
    """(number of speakers, number of utterances)."""
    n_speakers = session.scalar(select(func.count(Speaker.id))) or 0
    n_utterances = session.scalar(select(func.count(Utterance.id))) or 0
    return int(n_speakers), int(n_utterances)


def centroids(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """All speakers' ids (n,) int64 and centroids (n, dim) float32, in id order."""
    rows = session.execute(select(Speaker.id, Speaker.centroid).order_by(Speaker.id)).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, 0), dtype=np.float32)
    return ids, np.stack([from_blob(r[1]) for r in rows])


def recompute_centroid(speaker: Speaker) -> None:
    """Set the centroid to the L2-normalised mean of the utterance embeddings."""
    vectors = np.stack([u.vector() for u in speaker.utterances])  # (n_utt, dim)
    mean = vectors.mean(axis=0, dtype=np.float64)  # (dim,)
    speaker.centroid = to_blob((mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32))
    speaker.updated_at = utcnow()


def open_engine(path: Path) -> Engine:
    """An engine for the SQLite file at ``path`` with speakerdb's connection settings."""
    engine = create_engine(f"sqlite:///{path}", future=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN itself: the sqlite3 module's own
        # implicit transactions would start too late and never as IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # Deleted speakers' embeddings are overwritten with zeros, not left in free pages.
        cursor.execute("PRAGMA secure_delete = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))

    return engine


@contextmanager
def _translate_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OperationalError as e:
        message = str(e.orig) if e.orig is not None else str(e)
        if "readonly" in message or "read-only" in message:
            raise DatabaseError(f"database {path} is read-only: {message}") from None
        raise DatabaseError(f"database {path}: {message}") from None
    except SADatabaseError as e:
        raise DatabaseError(f"database {path} cannot be used: {e.orig or e}") from None
