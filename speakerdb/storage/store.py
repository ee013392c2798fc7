"""SQLAlchemy models and queries. SQLite is the source of truth for everything speakerdb knows.

Tables (created only by the Alembic revisions in ``migrations/``):

- ``speakers``: unique name, created/updated times (UTC), free-form JSON metadata, and the
  centroid: the L2-normalised mean of the speaker's utterance embeddings, kept in sync in
  the same transaction as every change to its utterances.
- ``utterances``: speaker, source label (the file name given at enrollment), duration,
  sha256 of the decoded 16 kHz audio, and the embedding.
- ``settings``: key/value pairs (JSON values): the model id and dimension the database is
  bound to, the decision threshold, the database's identity (``database_id``, random,
  made with the database) and its ``generation``.
- ``optouts`` and the governance columns of ``speakers`` (consent, external id hash,
  last_seen): see governance.py (revision 0007).
- ``speaker_changes``: the record of every change to the speakers' centroids, written by
  the schema itself (triggers made by migration 0002): each inserted, deleted or
  re-centred speaker bumps ``generation`` and leaves one row (generation, speaker id,
  ``upsert`` or ``remove``, a random nonce), in the same transaction as the write. Ids
  only, never vectors. No write path can bypass it, not even SQL run behind speakerdb's
  back; the search index catches up by replaying it (see indexkeeper.py).
- ``galleries`` (revision 0005): separate sets of speakers in one database (tenants). Speakers,
  the normalisation cohort, API keys and audit records carry a ``gallery_id``; a gallery's
  own settings (:data:`GALLERY_SETTINGS`) are rows named ``gallery/<id>/<key>``. A
  :class:`Store` is opened on one gallery (``default`` unless told), and every session it
  hands out sees that gallery only: the ORM adds ``gallery_id = <its id>`` to every query
  of those tables and sets it on every row added (:func:`_scope_query`, :func:`_scope_new_rows`),
  so the queries below and the modules above need not say it. Speaker names are unique
  within a gallery; ids, the change record and the generation are the database's. Each
  gallery also counts its own speakers' changes (``galleries.generation``, triggers of
  revision 0008): what ``info`` shows a gallery's caller.

- ``data_keys``: the data key of an encrypted database, wrapped by the operator's key
  (revision 0006). In an encrypted database every vector is a sealed blob bound to its row
  (see crypto.py): the functions here seal and open them through the session's codec
  (``session.info["codec"]``), so no other module handles ciphertext.

Speaker ids are never reused (``AUTOINCREMENT``): an id in an answer names one speaker
for ever. Vectors are stored as little-endian float32 blobs, sealed if the database is encrypted.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import unicodedata
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    exists,
    func,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    ORMExecuteState,
    Session,
    aliased,
    mapped_column,
    object_session,
    relationship,
    validates,
    with_loader_criteria,
)

from ..config import DEFAULT_GALLERY, SERVER_SCHEMES, is_server_url  # noqa: F401  (kept importable from here)
from ..errors import (
    DatabaseBusyError,
    DatabaseError,
    EncryptedSinceOpenedError,
    EncryptionKeyMissingError,
    EncryptionKeyWrongError,
    GalleryExistsError,
    GalleryNotFoundError,
    InvalidInputError,
    printable_path,
)
from ..results import iso, parse_iso  # noqa: F401  (times as the results write them; kept here)
from . import crypto, schema
from .urls import MASK, SECRET_URL_PARAMS, display_url, redact, remember_typed  # noqa: F401  (kept importable from here)

BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another process's transaction
MAX_NAME_LENGTH = 200  # characters
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ends a wait


# Characters no name may hold, by Unicode general category: controls (Cc), invisible format
# characters such as zero-width spaces, the byte-order mark and bidirectional overrides (Cf),
# lone surrogates left by invalid UTF-8 (Cs), private-use and unassigned code points (Co, Cn),
# and line and paragraph separators (Zl, Zp). Each can make two names look alike or forge lines.
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Cs": "a lone surrogate (invalid UTF-8?)",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
#: Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt), as ranges:
#: code points a renderer draws as nothing. Many are Mn or Lo, not Cf (Hangul fillers,
#: variation selectors, the combining grapheme joiner), so the categories above miss them.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
#: Symbols that draw as blank space though Unicode does not call them whitespace: a name of
#: only these (and whitespace and combining marks) would look empty.
_BLANK_SYMBOLS = frozenset("\u2800")  # BRAILLE PATTERN BLANK
MAX_METADATA_DEPTH = 32  # levels of nested lists/objects in a speaker's metadata
MAX_METADATA_BYTES = 64 * 1024  # the metadata as compact JSON, in bytes


def is_default_ignorable(ch: str) -> bool:
    """Whether the character ``ch`` has Unicode's Default_Ignorable_Code_Point property."""
    code = ord(ch)
    return any(low <= code <= high for low, high in _DEFAULT_IGNORABLE)


def check_name_text(name: Any, what: str = "speaker name") -> Any:
    """Return ``name`` unchanged unless it is text that cannot be stored or sent: a lone
    surrogate, which is what Python makes of invalid UTF-8 on a command line. Then raise
    InvalidInputError with the name written printably (the bytes as \\xNN)."""
    if isinstance(name, str) and _has_surrogates(name):
        first = next(ch for ch in name if "\ud800" <= ch <= "\udfff")
        raise InvalidInputError(
            f"{what} '{printable_path(name)}' is not valid UTF-8: it holds a lone surrogate (U+{ord(first):04X})"
        )
    return name


def normalize_name(name: str) -> str:
    """The form names are stored and compared in: Unicode NFC (precomposed), so that "José"
    typed with a combining accent and with a precomposed é are one name. Case is kept."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) and not _has_surrogates(name) else name


def fold_name(name: str) -> str:
    """A name as twins and opt-outs compare it: NFKC, case folded, inner whitespace as one
    space, so that ``Alice  Smith`` and ``alice smith`` are one person."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def folded_key(name: str) -> str:
    """What ``speakers.folded_name`` holds for ``name`` (revision 0009): :func:`fold_name`'s
    first :data:`MAX_NAME_LENGTH` characters. NFKC can make a name 18 times longer (U+FDFA),
    past what an index entry may hold on PostgreSQL; a lookup compares the whole fold of the
    few rows it finds. Changing :func:`fold_name` needs a revision that fills the column again."""
    return fold_name(name)[:MAX_NAME_LENGTH]


def validate_name(name: str) -> str:
    """Return ``name`` in NFC if it can name a speaker, else raise InvalidInputError saying why.

    Callers must store and look up the returned value: names compare after NFC
    normalisation and are otherwise exact (case-sensitive).
    """
    if not isinstance(name, str) or not name:
        raise InvalidInputError("speaker name must not be empty")
    name = normalize_name(check_name_text(name))
    for ch in name:
        category = unicodedata.category(ch)
        if category in _REFUSED_CATEGORIES:
            raise InvalidInputError(f"speaker name {name!r} contains {_REFUSED_CATEGORIES[category]} (U+{ord(ch):04X})")
        if is_default_ignorable(ch):
            raise InvalidInputError(f"speaker name {name!r} contains an invisible character (U+{ord(ch):04X})")
    if all(ch.isspace() or ch in _BLANK_SYMBOLS or unicodedata.category(ch) in ("Mn", "Me") for ch in name):
        raise InvalidInputError(f"speaker name {name!r} has no visible character")
    if name != name.strip():
        raise InvalidInputError(f"speaker name {name!r} must not start or end with whitespace")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"speaker name is {len(name)} characters long, at most {MAX_NAME_LENGTH} are allowed")
    if _CONTROL_CHARS.search(name):
        raise InvalidInputError(f"speaker name {name!r} contains control characters")
    if "/" in name or "\\" in name:
        raise InvalidInputError(f"speaker name {name!r} must not contain / or \\")
    return name


def check_new_name(name: str) -> None:
    """Refuse ``name`` (as :func:`validate_name` returns it) for a speaker about to be created or
    renamed: ``.`` and ``..`` are valid text, but URLs read them as path steps, so the service
    and the web page could never reach such a speaker. Names already held stay usable."""
    if name in (".", ".."):
        raise InvalidInputError(
            f"speaker name {name!r} cannot be used: a URL reads it as a path step, so the service "
            "could not reach that speaker"
        )


def _has_surrogates(text: str) -> bool:
    """Lone surrogates: what Python makes of invalid UTF-8 in file names and command lines."""
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def check_text(value: str, what: str) -> str:
    """Return ``value`` unless it holds U+0000 (NUL), else raise InvalidInputError saying so.

    PostgreSQL's text cannot hold NUL: refusing it at the input check, on SQLite as well,
    keeps one gallery, request or copy meaning the same on both kinds of database."""
    if "\x00" in value:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidInputError(f"{what} holds U+0000 (NUL), which speakerdb does not store in text: {shown!r}")
    return value


def validate_metadata(metadata: Any, what: str = "metadata") -> dict[str, Any]:
    """Return a copy of ``metadata`` if it is storable, else raise InvalidInputError saying why.

    Storable: a dict with string keys whose values are JSON (null, booleans, numbers,
    strings, lists, objects), finite numbers only, strings of valid Unicode (no lone
    surrogates), at most MAX_METADATA_DEPTH levels deep and MAX_METADATA_BYTES as JSON.
    Checked without recursion, so a hostile nesting cannot exhaust the stack.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"{what} must be a dict (JSON object), not {type(metadata).__name__}")
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > MAX_METADATA_DEPTH:
                raise InvalidInputError(f"{what} is nested more than {MAX_METADATA_DEPTH} levels deep")
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidInputError(f"{what} keys must be strings, not {type(key).__name__}")
                if _has_surrogates(key):
                    raise InvalidInputError(f"{what} key {key!r} is not valid Unicode (invalid UTF-8?)")
                check_text(key, f"{what} key")
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > MAX_METADATA_DEPTH:
                raise InvalidInputError(f"{what} is nested more than {MAX_METADATA_DEPTH} levels deep")
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            if _has_surrogates(value):
                raise InvalidInputError(f"{what} value {value!r} is not valid Unicode (invalid UTF-8?)")
            check_text(value, f"{what} value")
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise InvalidInputError(f"{what} holds {value}, which is not a JSON number")
        elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise InvalidInputError(f"{what} holds an integer beyond 64 bits")
        elif value is not None and not isinstance(value, (bool, int)):
            raise InvalidInputError(f"{what} holds a {type(value).__name__}, which is not JSON")
    size = len(json.dumps(metadata, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidInputError(f"{what} is {size:,} bytes as JSON, at most {MAX_METADATA_BYTES:,} are allowed")
    return json.loads(json.dumps(metadata))  # a deep copy the caller cannot change afterwards


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def to_blob(vector: np.ndarray) -> bytes:
    """A vector as little-endian float32 bytes."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    """Little-endian float32 bytes as a native float32 vector."""
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


#: Every constraint has a name, so that migrations can address it (batch operations on
#: SQLite recreate tables and must know what to carry over).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


#: The gallery every database has (config.DEFAULT_GALLERY), made by revision 0005 with this
#: id: all rows from before it are its.
DEFAULT_GALLERY_ID = 1
MAX_GALLERY_NAME = 64  # characters
_GALLERY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Settings that each gallery has its own of (the others, such as the model and the
#: database's identity, belong to the database). The default gallery's keep their plain names.
GALLERY_SETTINGS = frozenset(
    {
        "threshold",
        "threshold_chosen",
        "threshold_scale",
        "cosine_threshold",
        "norm",
        "index",
        "require_consent",  # the governance policy (governance.py, revision 0007)
        "expire_after_s",
    }
)
_GALLERY_SETTING_PREFIX = "gallery/"


class Gallery(Base):
    """A separate set of speakers in the database (revision 0005): a tenant."""

    __tablename__ = "galleries"
    __table_args__ = {"sqlite_autoincrement": True}  # a removed gallery's id never names a new one

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_GALLERY_NAME), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    #: Changes to this gallery's speakers' centroids (revision 0008), counted by the schema's
    #: triggers as the database's generation counts every gallery's: what ``info`` shows.
    generation: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


def _gallery_column() -> Mapped[int]:
    # The server default is what rows from before revision 0005 were given; speakerdb
    # itself always sets the column (_scope_new_rows).
    return mapped_column(ForeignKey("galleries.id"), server_default=text(str(DEFAULT_GALLERY_ID)))


def _folded_on_insert(context: Any) -> str | None:
    """``folded_name`` for an INSERT that does not give it (Core and bulk inserts, which skip
    the ORM's validator), from the row's own name."""
    name = context.get_current_parameters().get("name")
    return folded_key(name) if isinstance(name, str) else None


class Speaker(Base):
    __tablename__ = "speakers"
    # AUTOINCREMENT: SQLite would otherwise hand a removed newest speaker's id to the next
    # one, and an answer computed before the removal could name the newcomer.
    __table_args__ = (
        UniqueConstraint("gallery_id", "name"),
        # Not unique: a database may hold twins made before they were refused (revision 0009).
        Index("ix_speakers_gallery_id_folded_name", "gallery_id", "folded_name"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # folded_key(name) (revision 0009): how twins and opt-outs find a name's speakers by index.
    # Set with the name (_fold below) and, by an INSERT that leaves it out (a bulk fill), from
    # the row's name; NULL only in a row written behind speakerdb's back.
    folded_name: Mapped[str | None] = mapped_column(String(MAX_NAME_LENGTH), nullable=True, default=_folded_on_insert)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    centroid: Mapped[bytes] = mapped_column(LargeBinary)
    gallery_id: Mapped[int] = _gallery_column()
    # Governance (revision 0007, storage/governance.py): the consent recorded at enrollment, the
    # keyed hash of an external id (never the id), and when a decision last named the speaker.
    consent: Mapped[str | None] = mapped_column(Text, nullable=True)
    consent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    consent_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    external_id_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    utterances: Mapped[list["Utterance"]] = relationship(
        back_populates="speaker",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Utterance.id",
    )

    @validates("name")
    def _fold(self, _key: str, name: str) -> str:
        """Every path that names a speaker (creating it, renaming it) keeps its folded name."""
        self.folded_name = folded_key(name) if isinstance(name, str) else None
        return name

    def centroid_vector(self) -> np.ndarray:
        return from_blob(
            _codec_of(self).open(self.centroid, centroid_aad(self.id), f"the centroid of speaker {self.id}")
        )


class Utterance(Base):
    __tablename__ = "utterances"
    __table_args__ = (UniqueConstraint("speaker_id", "audio_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    speaker_id: Mapped[int] = mapped_column(ForeignKey("speakers.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(Text)
    duration_s: Mapped[float] = mapped_column(Float)
    audio_sha256: Mapped[str] = mapped_column(String(64))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    speaker: Mapped[Speaker] = relationship(back_populates="utterances")

    def vector(self) -> np.ndarray:
        # A new utterance has no speaker_id until its insert: its speaker has one (_ensure_id).
        speaker_id = self.speaker_id if self.speaker_id is not None else self.speaker.id
        return from_blob(
            _codec_of(self).open(
                self.embedding,
                utterance_aad(speaker_id, self.audio_sha256),
                f"an utterance embedding of speaker {self.speaker_id}",
            )
        )


class SpeakerChange(Base):
    """One change to one speaker's centroid, written by the schema's triggers (never by hand)."""

    __tablename__ = "speaker_changes"

    generation: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    speaker_id: Mapped[int] = mapped_column(Integer)
    op: Mapped[str] = mapped_column(String(8))  # "upsert" or "remove"
    nonce: Mapped[int] = mapped_column(BigInteger)  # random: tells one history from another


class Setting(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)  # JSON


class ApiKey(Base):
    """A key of the HTTP service (revision 0003): only the salted hash of its secret is kept.

    A key reads ``sdb_<key_id>_<secret>``: ``key_id`` finds the row, the secret is checked
    against ``hash`` (see keys.py)."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("scope IN ('read', 'write', 'admin')", name="scope"),
        UniqueConstraint("gallery_id", "name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    salt: Mapped[str] = mapped_column(String(64))  # hex
    hash: Mapped[str] = mapped_column(String(256))  # "pbkdf2_sha256$<iterations>$<hex digest>"
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    gallery_id: Mapped[int] = _gallery_column()


class AuditRecord(Base):
    """One change made through the service or to its keys (revision 0003): who, what, when."""

    __tablename__ = "audit"
    # Revision 0010: a speaker's records and the renames are found without reading the table
    # (governance.records_of_speaker, which is show's audit).
    __table_args__ = (
        Index("ix_audit_gallery_id_speaker_id", "gallery_id", "speaker", "id"),
        Index("ix_audit_gallery_id_operation", "gallery_id", "operation"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime, index=True)
    key_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    operation: Mapped[str] = mapped_column(String(32))
    speaker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    gallery_id: Mapped[int] = mapped_column(
        ForeignKey("galleries.id"), index=True, server_default=text(str(DEFAULT_GALLERY_ID))
    )


class CohortEmbedding(Base):
    """One recording of the score-normalisation cohort (revision 0004): its embedding, never
    its audio. People in the cohort are not enrolled; see norm.py."""

    __tablename__ = "cohort_embeddings"
    __table_args__ = (UniqueConstraint("gallery_id", "audio_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    audio_sha256: Mapped[str] = mapped_column(String(64))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    gallery_id: Mapped[int] = _gallery_column()


class OptOut(Base):
    """A person who opted out of a gallery (revision 0007): keyed hashes of their name and
    external id, never the name itself (see governance.py)."""

    __tablename__ = "optouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    external_id_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    gallery_id: Mapped[int] = mapped_column(
        ForeignKey("galleries.id"), index=True, server_default=text(str(DEFAULT_GALLERY_ID))
    )


#: The tables whose rows belong to one gallery (utterances belong to their speaker's).
GALLERY_SCOPED = (Speaker, CohortEmbedding, ApiKey, AuditRecord, OptOut)


def gallery_of(session: Session) -> int | None:
    """The gallery id the session is scoped to (None: a session that sees every gallery)."""
    return session.info.get("gallery_id")


@event.listens_for(Session, "do_orm_execute")
def _scope_query(state: ORMExecuteState) -> None:
    """Every SELECT, UPDATE and DELETE of a scoped session sees its gallery's rows only."""
    gid = gallery_of(state.session)
    if gid is None or not (state.is_select or state.is_update or state.is_delete):
        return
    criteria = _CRITERIA.get(gid)
    if criteria is None:  # made once per gallery, not per query (docs/storage.md, "Tenants")
        owner = aliased(Speaker)  # its own alias: never correlated with a speakers table of the query
        criteria = _CRITERIA[gid] = (
            *(with_loader_criteria(model, model.gallery_id == gid, include_aliases=True) for model in GALLERY_SCOPED),
            # Utterances have no gallery column: they are their speaker's. Without this a query of
            # utterances alone (no speaker joined) read every gallery's (one primary-key probe a row).
            with_loader_criteria(
                Utterance,
                exists().where(owner.id == Utterance.speaker_id, owner.gallery_id == gid),
                include_aliases=True,
                propagate_to_loaders=False,  # a lazy load passes here itself: once is enough
            ),
        )
    state.statement = state.statement.options(*criteria)


_CRITERIA: dict[int, tuple[Any, ...]] = {}  # gallery id -> its loader criteria


@event.listens_for(Session, "before_flush")
def _scope_new_rows(session: Session, _context: Any, _instances: Any) -> None:
    """Rows added in a scoped session belong to its gallery."""
    gid = gallery_of(session)
    if gid is None:
        return
    for obj in session.new:
        if isinstance(obj, GALLERY_SCOPED) and obj.gallery_id is None:
            obj.gallery_id = gid


class DataKey(Base):
    """The data key of an encrypted database, wrapped by the key-encryption key (revision 0006)."""

    __tablename__ = "data_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    dek_id: Mapped[int] = mapped_column(Integer, unique=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    wrapped_at: Mapped[datetime] = mapped_column(DateTime)


# ---- sealed vectors: what each blob is bound to -----------------------------------------------
def centroid_aad(speaker_id: int) -> bytes:
    return f"speakerdb|speakers.centroid|{speaker_id}".encode()


def utterance_aad(speaker_id: int, audio_sha256: str) -> bytes:
    return f"speakerdb|utterances.embedding|{speaker_id}|{audio_sha256}".encode()


def cohort_aad(audio_sha256: str) -> bytes:
    return f"speakerdb|cohort_embeddings.embedding|{audio_sha256}".encode()


def codec_of(session: Session) -> crypto.Codec:
    """The codec of the store that opened ``session`` (no encryption for a bare session)."""
    codec = session.info.get("codec", crypto.PLAIN)
    return codec if isinstance(codec, crypto.Codec) else crypto.PLAIN


def _codec_of(row: Any) -> crypto.Codec:
    session = object_session(row)
    return codec_of(session) if session is not None else crypto.PLAIN


def _ensure_id(session: Session, speaker: "Speaker") -> int:
    """The id of ``speaker``, given it now if it is new: a sealed vector is bound to its
    speaker's id, which must be known before the row is inserted.

    PostgreSQL hands out the next value of the id sequence; SQLite's writer holds the
    write lock (BEGIN IMMEDIATE), so the next id is AUTOINCREMENT's: one above every id
    ever used, and above those already given to rows not yet inserted."""
    if speaker.id is not None:
        return int(speaker.id)
    with session.no_autoflush:
        if session.get_bind().dialect.name == "postgresql":
            new_id = int(session.scalar(text("SELECT nextval(pg_get_serial_sequence('speakers', 'id'))")))
        else:
            used = session.scalar(text("SELECT seq FROM sqlite_sequence WHERE name = 'speakers'")) or 0
            # Every gallery's ids, and read from the primary key: the ORM's query would be
            # scoped to one gallery and scan all of its rows.
            top = session.scalar(text("SELECT max(id) FROM speakers")) or 0
            pending = max((o.id or 0 for o in session.new if isinstance(o, Speaker)), default=0)
            new_id = max(int(used), int(top), int(pending)) + 1
    speaker.id = new_id
    return new_id


def embedding_blob(speaker: "Speaker", audio_sha256: str, vector: np.ndarray) -> bytes:
    """An utterance embedding of ``speaker`` (in a session) as stored: sealed if the database is encrypted."""
    session = object_session(speaker)
    codec = codec_of(session) if session is not None else crypto.PLAIN
    if not codec.encrypted or session is None:
        return to_blob(vector)
    return codec.seal(to_blob(vector), utterance_aad(_ensure_id(session, speaker), audio_sha256))


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
    """The database, SQLite file or PostgreSQL server: opening (schema checked or created),
    transactions and queries.

    ``target`` is a path (SQLite) or a ``postgresql://user@host:port/dbname`` URL.
    ``gallery``: the gallery (tenant) every session of this store sees, by name; another
    gallery of the same database is :meth:`for_gallery`. ``on_commit`` holds callables
    ``f(before, after)`` run after every write transaction that changed centroids, with the
    generations before and after it: how the search index learns of a commit, whichever
    code path made it (changes in other galleries too: the generation is the database's).
    ``on_encrypted`` holds callables ``f()`` run when this process, which opened the
    database unencrypted, finds that another encrypted it since (:meth:`encrypted_since_opened`):
    how the index erases its file, which holds the vectors in the clear.

    ``key`` is where the key-encryption key comes from (default: the environment's,
    :func:`crypto.configured`). An encrypted database needs it: without it, or with
    another, opening fails with one line (EncryptionKeyError) and nothing is written. A
    new, empty database opened with a key is encrypted from its start. The data key is the
    database's: every gallery's vectors are sealed under it.
    """

    def __init__(self, target: str | Path, gallery: str = DEFAULT_GALLERY, key: crypto.KeySource | None = None) -> None:
        self.server = is_server_url(target)
        #: The server URL as given, secrets and all: only to keep them out of error messages.
        self._url = str(target) if self.server else None
        if self.server:
            self.path = None
            self.name = display_url(str(target))
            self.engine = open_server_engine(str(target))
        else:
            self.path = Path(target)
            self.name = str(self.path)
            create_private(self.path)
            self.engine = open_engine(self.path)
        self.on_commit: list[Callable[[int, int], None]] = []
        self.on_encrypted: list[Callable[[], None]] = []
        self._owns_engine = True
        self.gallery, self.gallery_id = DEFAULT_GALLERY, DEFAULT_GALLERY_ID
        self.key = key if key is not None else crypto.configured()
        self._kek: bytes | None = None  # read once, kept to unwrap a data key made by a rotation
        self.codec: crypto.Codec = crypto.PLAIN
        #: Whether opening encrypted this (empty) database: its first data key was made now.
        self.began_encrypted = False
        try:
            with _translate_errors(self.name, self._url):
                schema.ensure_current(self.engine)
            self._open_codec()
            if gallery != DEFAULT_GALLERY:
                self.gallery, self.gallery_id = gallery, self._gallery_id(gallery)
        except BaseException:
            self.engine.dispose()
            raise

    def for_gallery(self, gallery: str) -> Store:
        """This database seen as gallery ``gallery``: the same engine (closing it closes
        nothing), its own ``on_commit`` listeners. GalleryNotFoundError if there is none."""
        other = object.__new__(Store)
        other.__dict__.update(self.__dict__)
        other.on_commit, other.on_encrypted, other._owns_engine = [], [], False
        other.gallery, other.gallery_id = gallery, self._gallery_id(gallery)
        return other

    def find_gallery(self, name: str) -> int | None:
        """The id of gallery ``name`` in this database, or None if there is none."""
        if name == DEFAULT_GALLERY:
            return DEFAULT_GALLERY_ID
        with self.read(every_gallery=True) as s:
            return gallery_id(s, name)

    def _gallery_id(self, name: str) -> int:
        gid = self.find_gallery(name)
        if gid is None:
            raise GalleryNotFoundError(
                f"no gallery named {printable_path(name)!r} in {self.name} (see `speakerdb galleries list`)"
            )
        return gid

    # ---- encryption -------------------------------------------------------------------------
    @property
    def encrypted(self) -> bool:
        return self.codec.encrypted

    def _open_codec(self) -> None:
        """Unwrap the data key of an encrypted database; encrypt a new, empty one if a key is given."""
        with self.read(every_gallery=True) as s:  # empty: no vector in any gallery
            row = s.scalars(select(DataKey)).first()
            empty = row is None and self.key is not None and is_empty(s)
        if row is not None:
            self.codec = self._sealer(row.dek_id, row.wrapped)
        elif empty:
            # checks again under the write lock: another process may have begun
            with self.write(every_gallery=True) as s:
                if s.scalars(select(DataKey)).first() is None and is_empty(s):
                    self.codec = start_encryption(s, self.read_kek(), get_settings(s)["database_id"])
                    self.began_encrypted = True

    def read_kek(self) -> bytes:
        """The key-encryption key (read once); EncryptionKeyMissingError without one."""
        if self._kek is None:
            if self.key is None:
                raise EncryptionKeyMissingError(
                    f"database {self.name} is encrypted: give its key with SPEAKERDB_KEY_FILE or SPEAKERDB_KEY_COMMAND"
                )
            self._kek = self.key.read()
        return self._kek

    def _sealer(self, dek_id: int, wrapped: bytes) -> crypto.Sealer:
        return crypto.Sealer(dek_id, self._unwrap(wrapped, self.settings()["database_id"], dek_id), self._newer_key)

    def _unwrap(self, wrapped: bytes, database_id: str, dek_id: int, rotated: bool = False) -> bytes:
        """The data key ``dek_id`` unwrapped with this store's key; ``rotated``: a key this
        process did not open the database with (then a wrong key means a rotation)."""
        what = f"the {self.key.describe()}" if self.key is not None else "the key"
        try:
            return crypto.unwrap(self.read_kek(), wrapped, database_id, dek_id, what, f"database {self.name}")
        except EncryptionKeyWrongError:
            if not rotated:
                raise
            raise EncryptionKeyWrongError(
                f"the key of database {self.name} was rotated since this process opened it: restart it with the new key"
            ) from None

    def _newer_key(self, dek_id: int) -> bytes:
        """The data key numbered ``dek_id`` (made by a rotation since this store opened)."""
        with self.read() as s:
            row = s.scalars(select(DataKey).where(DataKey.dek_id == dek_id)).first()
            database_id = get_settings(s)["database_id"]
        if row is None:
            raise DatabaseError(
                f"database {self.name}: a vector is sealed under a data key it does not hold ({dek_id})"
            )
        return self._unwrap(row.wrapped, database_id, dek_id, rotated=True)

    def adopt(self, codec: crypto.Codec, key: crypto.KeySource | None, kek: bytes | None) -> None:
        """Seal with ``codec`` from now on (after ``db encrypt`` or ``key rotate`` committed)."""
        self.codec, self.key, self._kek = codec, key, kek

    def data_key_current(self) -> bool:
        """Whether this process seals with the database's data key (no rotation or
        encryption happened elsewhere since): what may be written to the index file."""
        with self.read() as s:
            return data_key_id(s) == self.codec.dek_id

    def encrypted_since_opened(self) -> EncryptedSinceOpenedError:
        """This process opened the database unencrypted and another has encrypted it since:
        the ``on_encrypted`` listeners erase what this process keeps in the clear (its index
        files), then the refusal to raise, in one line for the operator (the service tells
        its client :attr:`EncryptedSinceOpenedError.client_message`). Called outside any
        transaction of this store's: the listeners wait for the index lock."""
        for listener in self.on_encrypted:
            listener()
        return EncryptedSinceOpenedError(
            f"database {self.name} was encrypted by another process after this one opened it without its key: "
            "restart this process with the key (SPEAKERDB_KEY_FILE or SPEAKERDB_KEY_COMMAND)"
        )

    def _check_data_key(self, session: Session) -> None:
        """In a write transaction: the data key this process seals with is still the
        database's (a ``key rotate --reencrypt`` or ``db encrypt`` elsewhere changes it)."""
        current = session.scalar(select(DataKey.dek_id))
        if current == self.codec.dek_id:
            return
        if current is None:
            raise DatabaseError(
                f"database {self.name} lost its data key (data_keys is empty): restore it from a backup"
            )
        if not self.codec.encrypted and self.key is None:
            raise EncryptedSinceOpenedError("the database was encrypted since this process opened it")  # read() says it
        row = session.scalars(select(DataKey)).one()
        database_id = json.loads(session.scalar(select(Setting.value).where(Setting.key == "database_id")) or '""')
        dek = self._unwrap(row.wrapped, database_id, row.dek_id, rotated=True)
        self.codec = crypto.Sealer(row.dek_id, dek, self._newer_key)
        session.info["codec"] = self.codec

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def _info(self, every_gallery: bool) -> dict[str, Any]:
        info: dict[str, Any] = {"codec": self.codec}  # how vectors are sealed (codec_of)
        if not every_gallery:
            info["gallery_id"] = self.gallery_id
        return info

    @contextmanager
    def read(self, every_gallery: bool = False) -> Iterator[Session]:
        """A read-only session: one consistent snapshot, rolled back at the end.

        SQLite's WAL gives every read transaction one snapshot; PostgreSQL needs
        REPEATABLE READ for that (READ COMMITTED takes a new one per statement).
        It sees this store's gallery only, unless ``every_gallery`` (the galleries' own
        administration, copies of a whole database).
        """
        engine = (
            self.engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            if self.server
            else self.engine
        )
        try:
            with _translate_errors(self.name, self._url), Session(engine, info=self._info(every_gallery)) as session:
                yield session
        except EncryptedSinceOpenedError:
            raise self.encrypted_since_opened() from None  # the session is closed: no lock held

    @contextmanager
    def write(self, every_gallery: bool = False) -> Iterator[Session]:
        """One write transaction, committed at the end or rolled back on any exception.

        Writers are serialised, on both kinds of database: SQLite's BEGIN IMMEDIATE takes
        the write lock up front (a second writer waits for the busy timeout instead of
        failing when its read lock cannot be upgraded); on PostgreSQL the transaction
        first locks the generation row (SELECT ... FOR UPDATE), so that two services
        enrolling the same new name make one speaker, and generations commit in order.
        After the commit the ``on_commit`` listeners hear of the centroid changes it made.
        Like :meth:`read`, it sees this store's gallery only unless ``every_gallery``.
        """
        engine = self.engine if self.server else self.engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        info = self._info(every_gallery)
        try:
            with self._write_session(engine, info) as session:
                yield session
        except EncryptedSinceOpenedError:
            # Rolled back: the listeners take the index lock with no database lock held.
            raise self.encrypted_since_opened() from None

    @contextmanager
    def _write_session(self, engine: Engine, info: dict[str, Any]) -> Iterator[Session]:
        """:meth:`write`'s transaction; the commit's listeners run after it."""
        with _translate_errors(self.name, self._url), Session(engine, expire_on_commit=False, info=info) as session:
            with session.begin():
                if self.server:
                    try:
                        session.execute(select(Setting.value).where(Setting.key == "generation").with_for_update())
                    except OperationalError as e:
                        if getattr(e.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                            raise
                        holder, pid = self._lock_holder()
                        raise DatabaseBusyError(
                            f"database {self.name}: the write lock is held for over {LOCK_TIMEOUT_S:g} s by {holder}: "
                            "try again when it is done, or end that session on the server "
                            f"(SELECT pg_terminate_backend({pid or 'pid'}))"
                        ) from None
                before = generation(session)
                self._check_data_key(session)
                yield session
                _add_audit_record(session)
                session.flush()  # the triggers record what the pending writes change
                after = generation(session)
        if after != before:
            for listener in self.on_commit:
                listener(before, after)

    def _lock_holder(self) -> tuple[str, int | None]:
        """Who holds the generation row's lock on PostgreSQL, in words: the server process, its
        ``application_name`` and address, and since when its transaction runs.

        The row's ``xmax`` is the locking transaction, whose pid pg_locks gives; where several
        share the row (a multixact), the oldest transaction that holds a row lock on
        ``settings`` is named instead."""
        activity = (
            "SELECT a.pid, a.application_name, host(a.client_addr), a.state, "
            "to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), "
            "extract(epoch FROM clock_timestamp() - a.xact_start) "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        )
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                row = conn.exec_driver_sql(
                    activity + "WHERE l.locktype = 'transactionid' AND l.granted AND l.transactionid = "
                    "(SELECT xmax FROM settings WHERE key = 'generation') LIMIT 1"
                ).first()
                if row is None:
                    row = conn.exec_driver_sql(
                        activity + "WHERE l.locktype = 'relation' AND l.granted AND l.relation = 'settings'::regclass "
                        "AND l.mode IN ('RowShareLock', 'RowExclusiveLock') AND a.pid <> pg_backend_pid() "
                        "ORDER BY a.xact_start LIMIT 1"
                    ).first()
        except Exception:  # the holder's name is a courtesy: the error stands without it
            row = None
        if row is None:
            return "another session (it could not be named)", None
        pid, app, addr, state, since, age = row
        who = ", ".join(x for x in (app and repr(app), addr and f"from {addr}") if x)
        when = f", in a transaction since {since} UTC ({float(age):.0f} s ago)" if since else ""
        return f"server process {pid}" + (f" ({who})" if who else "") + when + (f", {state}" if state else ""), pid

    def settings(self) -> dict[str, Any]:
        with self.read() as s:
            return get_settings(s)

    def checkpoint(self) -> bool:
        """Make deleted rows unreadable in the files the database keeps, as far as it can.

        SQLite: copy the write-ahead log into the database file and truncate the log to
        zero bytes (secure_delete has already zeroed the freed cells); waits up to the busy
        timeout for readers, and returns False if some were still reading.
        PostgreSQL: VACUUM the tables that hold vectors, so their dead tuples' space is
        reclaimed (see :meth:`vacuum_full` and docs/several-machines.md for what stays: WAL, replicas,
        backups).
        """
        if self.server:
            self._autocommit("VACUUM speakers, utterances")
            return True
        with _translate_errors(self.name, self._url):
            raw = self.engine.raw_connection()
            try:
                driver: Any = raw.driver_connection  # sqlite3's own connection
                busy, _, _ = driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                raw.close()
        return busy == 0

    def vacuum_full(self) -> None:
        """Rewrite the tables without any trace of deleted rows (a maintenance step).

        SQLite: VACUUM, then a truncating checkpoint. PostgreSQL: VACUUM FULL (rewrites
        each table into new files and drops the old ones; takes an exclusive lock while it
        runs) and a CHECKPOINT.
        """
        if self.server:
            self._autocommit("VACUUM FULL speakers, utterances, speaker_changes, cohort_embeddings")
            self._autocommit("CHECKPOINT")
        else:
            self._autocommit("VACUUM")
            self.checkpoint()

    def _autocommit(self, sql: str) -> None:
        with _translate_errors(self.name, self._url), self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(sql)


#: Set by :func:`audited` around one change: the first write transaction inside it also adds
#: the audit record, so that a change and its record commit, or vanish, together.
_AUDIT: ContextVar[dict[str, Any] | None] = ContextVar("speakerdb_audit", default=None)


@contextmanager
def audited(
    key_name: str | None, operation: str, speaker: str | None = None, detail: dict[str, Any] | None = None
) -> Iterator[None]:
    """Record the change made inside this block in ``audit``, in the change's own transaction.

    The record joins the first write transaction begun inside the block (the change's); a
    block whose operation fails writes nothing.
    """
    token = _AUDIT.set(
        {
            "key_name": key_name,
            "operation": operation,
            "speaker": speaker,
            "detail": None if detail is None else json.dumps(detail, ensure_ascii=False),
            "done": False,
        }
    )
    try:
        yield
    finally:
        _AUDIT.reset(token)


@contextmanager
def unaudited() -> Iterator[None]:
    """A block whose writes take no pending audit record: housekeeping that runs inside a change
    (the prune after an index save) is not the change, and may commit while the change fails."""
    token = _AUDIT.set(None)
    try:
        yield
    finally:
        _AUDIT.reset(token)


def _add_audit_record(session: Session) -> None:
    pending = _AUDIT.get()
    if pending is None or pending["done"]:
        return
    pending["done"] = True
    session.add(
        AuditRecord(
            time=utcnow(),
            key_name=pending["key_name"],
            operation=pending["operation"],
            speaker=pending["speaker"],
            detail=pending["detail"],
        )
    )


# ---- copying a whole database -------------------------------------------------------------
#: Tables a copy writes rows into itself. speaker_changes is not among them: the
#: destination's triggers record its own history as the speakers arrive.
#: galleries first (the others refer to it), all but the default, which every database has.
COPIED_TABLES = ("galleries", "speakers", "utterances", "api_keys", "audit", "cohort_embeddings", "optouts")
#: Settings that belong to one database and are never copied: it has its own identity.
OWN_SETTINGS = ("database_id", "generation")
_COPY_BATCH = 2_000  # rows read, checked and written at a time


def check_vector(blob: bytes, dim: int, what: str) -> None:
    """Refuse a stored vector that is not ``dim`` finite float32 values of norm 1."""
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) != 4 * dim:
        raise InvalidInputError(f"{what}: not a {dim}-d float32 vector")
    v = np.frombuffer(bytes(blob), dtype="<f4")
    if not np.isfinite(v).all() or abs(float(np.linalg.norm(v.astype(np.float64))) - 1.0) > 1e-3:
        raise InvalidInputError(f"{what}: not a finite unit vector")


def copy_rows(
    src: Session, dst: Session, dim: int | None, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy every row of :data:`COPIED_TABLES` from ``src`` into ``dst``, checking each.

    Ids are kept (answers, audit records and keys keep meaning the same speakers); names,
    metadata and every vector are checked as a gallery import checks them. Streams in
    batches: memory stays bounded at a million speakers. Vectors are opened with the
    source's codec and sealed with the destination's (either may be encrypted, under its
    own data key). Returns rows copied per table.
    """
    from sqlalchemy import insert, update  # deferred: sqlalchemy is heavy to import

    tables = {t.name: t for t in Base.metadata.sorted_tables}
    counts = {}
    for name in COPIED_TABLES:
        table = tables[name]
        pk = list(table.primary_key.columns)[0]
        done, last = 0, None
        while True:
            stmt = select(table).order_by(pk).limit(_COPY_BATCH)
            if name == "galleries":
                stmt = stmt.where(pk != DEFAULT_GALLERY_ID)
            if last is not None:
                stmt = stmt.where(pk > last)
            rows = [dict(r._mapping) for r in src.execute(stmt)]
            if not rows:
                break
            for row in rows:
                _open_row(codec_of(src), name, row)
                _check_row(name, row, dim)
                _seal_row(codec_of(dst), name, row)
                if name == "speakers":  # derived from the name: made here, never taken on trust
                    row["folded_name"] = folded_key(row["name"])
            dst.execute(insert(table), rows)
            done += len(rows)
            last = rows[-1][pk.name]
            if progress is not None:
                progress(name, done)
        if name == "galleries":
            # The default gallery is the destination's own row: it takes the source's date, and
            # counts, so that a copy of two galleries says two.
            made = src.scalar(select(table.c.created_at).where(pk == DEFAULT_GALLERY_ID))
            if made is not None:
                dst.execute(update(table).where(pk == DEFAULT_GALLERY_ID).values(created_at=made))
                done += 1
        counts[name] = done
    return counts


def vector_aad(table: str, row: dict[str, Any]) -> bytes:
    """What the vector of ``row`` (a row of ``table`` as a dict of columns) is bound to."""
    if table == "speakers":
        return centroid_aad(int(row["id"]))
    if table == "utterances":
        return utterance_aad(int(row["speaker_id"]), str(row["audio_sha256"]))
    return cohort_aad(str(row["audio_sha256"]))


VECTOR_COLUMNS = {"speakers": "centroid", "utterances": "embedding", "cohort_embeddings": "embedding"}


def _open_row(codec: crypto.Codec, table: str, row: dict[str, Any]) -> None:
    column = VECTOR_COLUMNS.get(table)
    if column is not None and column in row:
        row[column] = codec.open(row[column], vector_aad(table, row), f"{table} row {row.get('id')} {column}")


def _seal_row(codec: crypto.Codec, table: str, row: dict[str, Any]) -> None:
    column = VECTOR_COLUMNS.get(table)
    if column is not None and column in row and codec.encrypted:
        row[column] = codec.seal(row[column], vector_aad(table, row))


def is_empty(session: Session) -> bool:
    """Whether the database holds no vector at all (no speaker, no cohort embedding)."""
    return not has_speakers(session) and session.scalar(select(CohortEmbedding.id).limit(1)) is None


def start_encryption(session: Session, kek: bytes, database_id: str, dek_id: int = 1) -> crypto.Sealer:
    """Make a data key, store it wrapped under ``kek`` in the write transaction ``session``
    and return its codec. The caller seals the vectors (:func:`reseal`) in the same transaction."""
    from sqlalchemy import delete  # deferred: sqlalchemy is heavy to import

    dek = crypto.new_data_key()
    now = utcnow()
    session.execute(delete(DataKey))
    session.add(
        DataKey(dek_id=dek_id, wrapped=crypto.wrap(kek, dek, database_id, dek_id), created_at=now, wrapped_at=now)
    )
    codec = crypto.Sealer(dek_id, dek)
    session.info["codec"] = codec
    return codec


def rewrap(session: Session, old_kek: bytes, new_kek: bytes, database_id: str, what: str) -> int:
    """Wrap the data key again under ``new_kek`` (unwrapped with ``old_kek``); returns its number."""
    row = session.scalars(select(DataKey)).one()
    dek = crypto.unwrap(old_kek, row.wrapped, database_id, row.dek_id, what)
    row.wrapped = crypto.wrap(new_kek, dek, database_id, row.dek_id)
    row.wrapped_at = utcnow()
    return int(row.dek_id)


def reseal(
    session: Session, old: crypto.Codec, new: crypto.Codec, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Open every vector of the database with ``old`` and seal it with ``new``, in the write
    transaction ``session``, by batches of rows (memory stays bounded); returns rows per table.

    Re-centred speakers are recorded by the triggers as changes (the index replays them or
    is rebuilt by the caller)."""
    from sqlalchemy import bindparam, update  # deferred: sqlalchemy is heavy to import

    tables = {t.name: t for t in Base.metadata.sorted_tables}
    done: dict[str, int] = {}
    for name, column in VECTOR_COLUMNS.items():
        table = tables[name]
        keys = [c for c in ("id", "speaker_id", "audio_sha256") if c in table.c]
        last, count = 0, 0
        while True:
            rows = [
                dict(r._mapping)
                for r in session.execute(
                    select(*[table.c[k] for k in keys], table.c[column])
                    .where(table.c.id > last)
                    .order_by(table.c.id)
                    .limit(_COPY_BATCH)
                )
            ]
            if not rows:
                break
            for row in rows:
                _open_row(old, name, row)
                row[column] = new.seal(row[column], vector_aad(name, row)) if new.encrypted else row[column]
            session.connection().execute(
                update(table).where(table.c.id == bindparam("row_id")).values({column: bindparam("blob")}),
                [{"row_id": r["id"], "blob": r[column]} for r in rows],
            )
            last = rows[-1]["id"]
            count += len(rows)
            if progress is not None:
                progress(name, count)
        done[name] = count
    session.info["codec"] = new
    return done


def _check_row(table: str, row: dict[str, Any], dim: int | None) -> None:
    if table == "speakers":
        validate_name(row["name"])
        validate_metadata(row["metadata"], f"metadata of {row['name']!r}")
    if isinstance(row.get("source"), str):  # utterances and cohort_embeddings
        check_text(row["source"], f"{table} row {row.get('id')} source")
    for column in ("centroid", "embedding"):
        if column in row and dim is not None:
            check_vector(row[column], dim, f"{table} row {row.get('id')} {column}")


def reset_sequences(session: Session) -> None:
    """After rows were inserted with their ids: make PostgreSQL's id sequences continue
    after them (SQLite's AUTOINCREMENT follows inserted ids by itself)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for name in COPIED_TABLES:
        session.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), COALESCE(MAX(id), 1), "
                f"MAX(id) IS NOT NULL) FROM {name}"
            )
        )


# ---- queries (take a session, so callers decide the transaction) -------------------------
def setting_key(session: Session, key: str) -> str:
    """The row that holds setting ``key`` for the session's gallery: a gallery's own
    settings (:data:`GALLERY_SETTINGS`) of a gallery other than the default are
    ``gallery/<id>/<key>``; everything else is the key itself."""
    return gallery_setting_key(gallery_of(session), key)


def gallery_setting_key(gid: int | None, key: str) -> str:
    """The row that holds setting ``key`` for gallery ``gid`` (None: the row named ``key``)."""
    if gid is None or gid == DEFAULT_GALLERY_ID or key not in GALLERY_SETTINGS:
        return key
    return f"{_GALLERY_SETTING_PREFIX}{gid}/{key}"


def get_settings(session: Session) -> dict[str, Any]:
    """The settings as the session's gallery sees them: the database's, and its own under their
    plain names (a session that sees every gallery: every row as it is stored)."""
    gid = gallery_of(session)
    own = f"{_GALLERY_SETTING_PREFIX}{gid}/"
    out: dict[str, Any] = {}
    for row in session.scalars(select(Setting)).all():
        if gid is None:
            out[row.key] = json.loads(row.value)
        elif not row.key.startswith(_GALLERY_SETTING_PREFIX):
            if gid == DEFAULT_GALLERY_ID or row.key not in GALLERY_SETTINGS:
                out[row.key] = json.loads(row.value)
        elif gid != DEFAULT_GALLERY_ID and row.key.startswith(own):
            out[row.key.removeprefix(own)] = json.loads(row.value)
    return out


def set_setting(session: Session, key: str, value: Any, gallery_id: int | None = None) -> None:
    """Store setting ``key`` for the session's gallery (for gallery ``gallery_id`` if given)."""
    key = setting_key(session, key) if gallery_id is None else gallery_setting_key(gallery_id, key)
    row = session.get(Setting, key)
    if row is None:
        session.add(Setting(key=key, value=json.dumps(value)))
    else:
        row.value = json.dumps(value)


def setting_of(session: Session, gallery_id: int, key: str) -> Any:
    """Setting ``key`` of gallery ``gallery_id`` (None if unset), from a session of any gallery."""
    value = session.scalar(select(Setting.value).where(Setting.key == gallery_setting_key(gallery_id, key)))
    return None if value is None else json.loads(value)


def gallery_ids(session: Session) -> list[int]:
    """The ids of every gallery of the database, in order."""
    return list(session.scalars(select(Gallery.id).order_by(Gallery.id)))


def delete_setting(session: Session, key: str) -> None:
    """Remove setting ``key`` (of the session's gallery, if it is one of a gallery's own)."""
    row = session.get(Setting, setting_key(session, key))
    if row is not None:
        session.delete(row)


# ---- galleries (tenants): sessions opened with every_gallery=True --------------------------
def check_gallery_name(name: Any) -> str:
    """A gallery name: 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or
    digit (it is a path segment of the service's URLs)."""
    if not isinstance(name, str) or not _GALLERY_NAME.match(name):
        shown = printable_path(name) if isinstance(name, str) else name
        raise InvalidInputError(
            f"gallery name {shown!r} must be 1-{MAX_GALLERY_NAME} characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def gallery_id(session: Session, name: str) -> int | None:
    """The id of gallery ``name``, or None if there is none."""
    return session.scalar(select(Gallery.id).where(Gallery.name == name))


@dataclass(frozen=True)
class GalleryRow:
    """A gallery as listed: its name, when it was made, and how many speakers and keys it holds."""

    id: int
    name: str
    created_at: datetime
    n_speakers: int
    n_keys: int


def list_galleries(session: Session) -> list[GalleryRow]:
    """Every gallery, the default first, then by name (a session that sees every gallery)."""
    speakers = dict(
        session.execute(select(Speaker.gallery_id, func.count(Speaker.id)).group_by(Speaker.gallery_id)).all()
    )
    keys = dict(session.execute(select(ApiKey.gallery_id, func.count(ApiKey.id)).group_by(ApiKey.gallery_id)).all())
    rows = session.scalars(select(Gallery).order_by(Gallery.id != DEFAULT_GALLERY_ID, Gallery.name)).all()
    return [GalleryRow(g.id, g.name, g.created_at, int(speakers.get(g.id, 0)), int(keys.get(g.id, 0))) for g in rows]


def create_gallery(session: Session, name: str) -> int:
    """Add an empty gallery named ``name``; returns its id (GalleryExistsError if taken)."""
    name = check_gallery_name(name)
    if gallery_id(session, name) is not None:
        raise GalleryExistsError(f"a gallery named {name!r} already exists (see `speakerdb galleries list`)")
    # Tenants whose names differ only in case are one slip of a key apart in every --gallery
    # and every service URL: refused, as the same name is.
    twin = next((g.name for g in list_galleries(session) if g.name.casefold() == name.casefold()), None)
    if twin is not None:
        raise GalleryExistsError(
            f"a gallery named {twin!r} already exists, and {name!r} differs from it only in case: choose another name"
        )
    row = Gallery(name=name, created_at=utcnow())
    session.add(row)
    session.flush()
    return row.id


def remove_gallery(session: Session, name: str) -> GalleryRow:
    """Delete gallery ``name`` and everything that is its: speakers (their utterances go with
    them), cohort, keys, audit records, opt-outs and settings. The default gallery cannot go."""
    if name == DEFAULT_GALLERY:
        raise InvalidInputError("the default gallery cannot be removed (remove its speakers instead)")
    found = next((g for g in list_galleries(session) if g.name == name), None)
    if found is None:
        raise GalleryNotFoundError(f"no gallery named {printable_path(name)!r} (see `speakerdb galleries list`)")
    gid = found.id
    # One statement per table; the triggers record each speaker's removal for the indexes.
    session.execute(delete(Speaker).where(Speaker.gallery_id == gid))
    for model in (CohortEmbedding, ApiKey, AuditRecord, OptOut):
        session.execute(delete(model).where(model.gallery_id == gid))
    session.execute(delete(Setting).where(Setting.key.startswith(f"{_GALLERY_SETTING_PREFIX}{gid}/")))
    session.execute(delete(Gallery).where(Gallery.id == gid))
    return found


def generation(session: Session) -> int:
    """The number of centroid changes ever recorded (the generation of the newest record)."""
    # A column query, not session.get(): the identity map would return the value read
    # before this transaction's triggers bumped it.
    value = session.scalar(select(Setting.value).where(Setting.key == "generation"))
    return int(json.loads(value)) if value is not None else 0


def gallery_generation(session: Session) -> int:
    """The number of centroid changes ever recorded for the session's gallery's speakers (the
    default gallery's for a session that sees every gallery): it moves with that gallery's
    changes only, where :func:`generation` moves with every gallery's."""
    gid = gallery_of(session)
    value = session.scalar(select(Gallery.generation).where(Gallery.id == (DEFAULT_GALLERY_ID if gid is None else gid)))
    return int(value or 0)


def add_gallery_generation(session: Session, gallery_id: int, changes: int) -> None:
    """Count ``changes`` more for gallery ``gallery_id`` (a copy carries on the source's count)."""
    from sqlalchemy import update  # deferred: sqlalchemy is heavy to import

    session.execute(
        update(Gallery).where(Gallery.id == gallery_id).values(generation=Gallery.generation + int(changes))
    )


def change_nonce(session: Session, at: int) -> int | None:
    """The nonce of the change record at generation ``at`` (None: no such record)."""
    return session.scalar(select(SpeakerChange.nonce).where(SpeakerChange.generation == at))


def changes_between(session: Session, after: int, upto: int) -> list[tuple[int, int, str, int]]:
    """Change records (generation, speaker id, op, nonce) with ``after < generation <= upto``, in order."""
    stmt = (
        select(SpeakerChange.generation, SpeakerChange.speaker_id, SpeakerChange.op, SpeakerChange.nonce)
        .where(SpeakerChange.generation > after, SpeakerChange.generation <= upto)
        .order_by(SpeakerChange.generation)
    )
    return [(int(g), int(i), str(op), int(n)) for g, i, op, n in session.execute(stmt)]


def data_key_id(session: Session) -> int | None:
    """The number of the database's data key; None while it is not encrypted."""
    return session.scalar(select(DataKey.dek_id))


def prune_changes(session: Session, below: int) -> int:
    """Delete change records older than generation ``below``; returns how many went."""
    result: Any = session.execute(delete(SpeakerChange).where(SpeakerChange.generation < below))
    return int(result.rowcount or 0)  # a DELETE's CursorResult


def _centroid(codec: crypto.Codec, speaker_id: int, blob: bytes) -> np.ndarray:
    if not codec.encrypted:
        return from_blob(codec.open(blob, b"", f"the centroid of speaker {speaker_id}"))
    return from_blob(codec.open(blob, centroid_aad(speaker_id), f"the centroid of speaker {speaker_id}"))


def centroids_of(session: Session, ids: list[int]) -> dict[int, np.ndarray]:
    """The centroids of the speakers ``ids`` that exist (absent ids are left out)."""
    out: dict[int, np.ndarray] = {}
    codec = codec_of(session)
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        for sid, blob in session.execute(select(Speaker.id, Speaker.centroid).where(Speaker.id.in_(chunk))):
            out[int(sid)] = _centroid(codec, int(sid), blob)
    return out


def names_and_centroids(session: Session, ids: list[int]) -> dict[int, tuple[str, np.ndarray]]:
    """Name and centroid of the speakers ``ids`` that exist, in one light query (no ORM rows)."""
    out: dict[int, tuple[str, np.ndarray]] = {}
    codec = codec_of(session)
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        for sid, name, blob in session.execute(
            select(Speaker.id, Speaker.name, Speaker.centroid).where(Speaker.id.in_(chunk))
        ):
            out[int(sid)] = (name, _centroid(codec, int(sid), blob))
    return out


_IN_CHUNK = 900  # ids per IN (...) list: SQLite's old limit on bound parameters is 999


def speaker_by_name(session: Session, name: str) -> Speaker | None:
    return session.scalars(select(Speaker).where(Speaker.name == name)).one_or_none()


def similar_names(session: Session, name: str, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` enrolled names closest to ``name`` by spelling (difflib), best first.

    Only for the error path of an unknown name: it reads every name. That is one scan of
    the unique index on ``speakers.name`` (no other column, no embeddings), so even past
    100,000 speakers it costs one indexed column read and difflib's pass over the names,
    paid only by a lookup that has already failed.
    """
    if not isinstance(name, str) or not name:
        return []
    return difflib.get_close_matches(name, speaker_names(session), n=n, cutoff=cutoff)


def speaker_names(session: Session) -> list[str]:
    """Every enrolled speaker's name (one scan of the unique index on ``speakers.name``)."""
    return list(session.scalars(select(Speaker.name)))


def speakers_by_name(session: Session, names: list[str] | None = None) -> list[Speaker]:
    """The named speakers (all speakers if ``names`` is None), by name; absent names are left out."""
    stmt = select(Speaker).order_by(Speaker.name)
    if names is not None:
        stmt = stmt.where(Speaker.name.in_(names))
    return list(session.scalars(stmt))


def last_rename(session: Session) -> int:
    """The id of the newest rename record of the session's gallery (0 if none): a rename moves
    no generation, so a live session compares this to learn that a name it holds changed."""
    return session.scalar(select(func.max(AuditRecord.id)).where(AuditRecord.operation == "rename")) or 0


def speaker_ids(session: Session) -> list[int]:
    """The ids of every speaker (of the session's gallery)."""
    return list(session.scalars(select(Speaker.id)))


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


def more_speakers_than(session: Session, n: int) -> bool:
    """Whether more than ``n`` speakers are enrolled (an OFFSET probe: no count over a million rows).
    In no order: ordered by id, the gallery's rows would all be sorted first (the gallery's
    index is on (gallery_id, name))."""
    return session.scalar(select(Speaker.id).offset(n).limit(1)) is not None


def counts(session: Session) -> tuple[int, int]:
    """(number of speakers, number of utterances)."""
    n_speakers = session.scalar(select(func.count(Speaker.id))) or 0
    # A scoped session counts its gallery's utterances only (_scope_query): no join needed.
    n_utterances = session.scalar(select(func.count(Utterance.id))) or 0
    return int(n_speakers), int(n_utterances)


def cohort(session: Session) -> np.ndarray:
    """The normalisation cohort's embeddings (m, dim) float32 in id order; (0, 0) if none."""
    codec = codec_of(session)
    rows = session.execute(
        select(CohortEmbedding.audio_sha256, CohortEmbedding.embedding).order_by(CohortEmbedding.id)
    ).all()
    vectors = [from_blob(codec.open(blob, cohort_aad(sha), "a cohort embedding")) for sha, blob in rows]
    return np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)


def replace_cohort(session: Session, rows: list[tuple[str, str, np.ndarray]]) -> None:
    """Replace the whole cohort with ``rows`` of (source, audio sha256, embedding)."""
    codec = codec_of(session)
    session.execute(delete(CohortEmbedding))
    session.add_all(
        CohortEmbedding(source=src, audio_sha256=sha, embedding=codec.seal(to_blob(vec), cohort_aad(sha)))
        for src, sha, vec in rows
    )


def centroids(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """All speakers' ids (n,) int64 and centroids (n, dim) float32, in id order."""
    rows = session.execute(select(Speaker.id, Speaker.centroid).order_by(Speaker.id)).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, 0), dtype=np.float32)
    codec = codec_of(session)
    # A blob of odd length is sealed (the database was encrypted under this process): the codec refuses it.
    if codec.encrypted or any(len(r[1]) % 4 for r in rows):
        return ids, np.stack([_centroid(codec, int(r[0]), r[1]) for r in rows])
    return ids, np.stack([from_blob(r[1]) for r in rows])


_ID_HASH_PRIME = 2**31 - 1  # a Lehmer (MINSTD) step mod this prime mixes ids; sums stay far below 2**63
_ID_HASH_MULTIPLIER = 48_271


def speaker_id_digest(session: Session) -> tuple[int, int, int]:
    """(number of speakers, sum of their ids, sum of a hash of their ids): what an index's
    live labels must give in :func:`id_digest`. Computed by the database over its smallest
    index, without fetching the ids."""
    from sqlalchemy import cast  # deferred: sqlalchemy is heavy to import

    mixed = cast(Speaker.id, BigInteger) % _ID_HASH_PRIME * _ID_HASH_MULTIPLIER % _ID_HASH_PRIME
    n, total, hashed = session.execute(select(func.count(Speaker.id), func.sum(Speaker.id), func.sum(mixed))).one()
    return int(n), int(total or 0), int(hashed or 0)


def id_digest(ids: np.ndarray) -> tuple[int, int, int]:
    """:func:`speaker_id_digest` of the ids ``ids`` (n,), in numpy."""
    ids = np.asarray(ids, np.int64)
    mixed = ids % _ID_HASH_PRIME * _ID_HASH_MULTIPLIER % _ID_HASH_PRIME
    return len(ids), int(ids.sum()), int(mixed.sum())


def recompute_centroid(speaker: Speaker) -> None:
    """Set the centroid to the L2-normalised mean of the utterance embeddings."""
    vectors = np.stack([u.vector() for u in speaker.utterances])  # (n_utt, dim)
    mean = vectors.mean(axis=0, dtype=np.float64)  # (dim,)
    blob = to_blob((mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32))
    session = object_session(speaker)
    if session is not None and codec_of(session).encrypted:
        blob = codec_of(session).seal(blob, centroid_aad(_ensure_id(session, speaker)))
    speaker.centroid = blob
    speaker.updated_at = utcnow()


def create_private(path: Path) -> None:
    """Make sure the database file is not reached through a link, creating it 0600 if absent.

    SQLite gives the -wal and -shm files the mode of the database file, so creating the
    file ourselves, owner-only and exclusively (``O_EXCL`` never follows a link), keeps all
    three private: embeddings are biometric data.
    """
    companions = [Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")]
    for p in (path, *companions):
        if p.is_symlink():
            raise DatabaseError(f"{p} is a symbolic link: speakerdb does not write its files through links")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        _check_companions(path, companions)
        return
    except OSError as e:
        raise DatabaseError(f"database {path} cannot be created: {e.strerror or e}") from None
    os.close(fd)
    _check_companions(path, companions)


def _check_companions(path: Path, companions: list[Path]) -> None:
    """Refuse a private database's -wal, -shm or -journal file that another user owns.

    Nobody but its owner can open a database file that is owner-only, so such a file was
    planted (in a directory others may write to): SQLite would write the vectors into it,
    and as anyone but root it keeps the file's owner, who can read them.
    """
    try:
        db = os.stat(path)
    except OSError:
        return  # SQLite reports it in its words
    if db.st_mode & 0o077:
        return  # shared on purpose: another user's processes make these files too
    for p in companions:
        try:
            owner = os.lstat(p).st_uid
        except FileNotFoundError:
            continue
        if owner != db.st_uid:
            raise DatabaseError(
                f"{p} belongs to another user (uid {owner}) than the database {path} (uid {db.st_uid}): "
                "speakerdb does not let SQLite write a private database's vectors into it; remove it "
                "if no speakerdb is using the database"
            )


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
        options = connection.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # VACUUM (`db vacuum`) cannot run inside a transaction: SQLite refuses it
        connection.exec_driver_sql(options.get("sqlite_begin", "BEGIN"))

    return engine


CONNECT_TIMEOUT_S = 10  # a server that does not answer is reported, not waited for
#: How long a PostgreSQL writer waits for a lock (the generation row's, held by the writer
#: before it), as long as an SQLite writer waits for the file's: then it fails, naming the holder.
LOCK_TIMEOUT_S = BUSY_TIMEOUT_MS / 1000
#: The server ends a session left idle inside a transaction this long (a stopped or hung
#: process), so that the locks it holds are not held for ever.
IDLE_IN_TRANSACTION_TIMEOUT_S = 120
#: How speakerdb's PostgreSQL sessions name themselves (``application_name``, ``pid N`` added);
#: None: the running command (``speakerdb enroll``), else ``speakerdb``. See :func:`application_name`.
APPLICATION: str | None = None


def application_name() -> str:
    """What a PostgreSQL session of this process calls itself: the command and the pid
    (``speakerdb enroll pid 4242``), so that whoever holds a lock can be named and found.

    The command comes from :data:`APPLICATION`, else from the running click command (read
    only if click is loaded: the library does not import it), else ``speakerdb``."""
    label = APPLICATION
    click = sys.modules.get("click")
    if label is None and click is not None:
        ctx = click.get_current_context(silent=True)
        label = ctx.command_path if ctx is not None else None
    # PostgreSQL keeps 63 bytes of ASCII; anything else would arrive as "?".
    return f"{label or 'speakerdb'} pid {os.getpid()}".encode("ascii", "replace").decode()[:63]


def open_server_engine(url: str) -> Engine:
    """An engine for a PostgreSQL URL, through psycopg 3 (the scheme is normalised to it)."""
    from sqlalchemy.engine import make_url  # deferred: sqlalchemy is heavy to import

    try:
        parsed = make_url(url).set(drivername="postgresql+psycopg")
    except Exception:
        raise InvalidInputError(
            f"{display_url(url)} is not a database URL (postgresql://user@host:port/dbname)"
        ) from None
    if parsed.host and "@" in parsed.host:
        raise InvalidInputError(
            f'{display_url(url)} is not a database URL: an "@" in a user name or password must be written %40'
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise DatabaseError("PostgreSQL needs psycopg 3: pip install 'psycopg[binary]'") from None
    engine = create_engine(parsed, future=True, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    remember_typed(engine, url)  # messages name it as typed, not by the driver's scheme
    given = {k.lower(): v for k, v in parsed.query.items()}
    # Settings the URL already makes (options=-c lock_timeout=...) are the operator's: kept.
    chosen = str(given.get("options", ""))
    timeouts = {
        name: ms
        for name, ms in (
            ("lock_timeout", round(LOCK_TIMEOUT_S * 1000)),
            ("idle_in_transaction_session_timeout", round(IDLE_IN_TRANSACTION_TIMEOUT_S * 1000)),
        )
        if name not in chosen
    }

    @event.listens_for(engine, "do_connect")
    def _name_session(_dialect, _record, _cargs, cparams) -> None:
        # At each connection, not once: a service's worker processes each have their own pid.
        if "application_name" not in given:
            cparams["application_name"] = application_name()

    @event.listens_for(engine, "connect")
    def _set_timeouts(dbapi_connection, _record) -> None:
        with dbapi_connection.cursor() as cursor:
            for name, ms in timeouts.items():
                cursor.execute(f"SET {name} = {int(ms)}")
        dbapi_connection.commit()  # a rollback of this first transaction would undo the SETs

    return engine


@contextmanager
def _translate_errors(path: Path | str, url: str | None = None) -> Iterator[None]:
    """SQLAlchemy's errors as one-line DatabaseErrors; ``url``: the server URL whose secrets
    must not appear in them (``path`` is already fit to be shown)."""
    try:
        yield
    except OperationalError as e:
        message = redact(e, url)
        if "readonly" in message or "read-only" in message:
            raise DatabaseError(f"database {path} is read-only: {message}") from None
        server_lock = getattr(e.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE
        if server_lock or message == "database is locked":
            # Busy, not broken: the service answers 503 and the command can be run again.
            waited = LOCK_TIMEOUT_S if server_lock else BUSY_TIMEOUT_MS / 1000
            raise DatabaseBusyError(
                f"database {path}: {message} (another process kept it locked for over {waited:g} s)"
            ) from None
        raise DatabaseError(f"database {path}: {message}") from None
    except SADatabaseError as e:
        raise DatabaseError(f"database {path} cannot be used: {redact(e, url)}") from None
