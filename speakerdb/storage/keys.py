"""API keys of the HTTP service and the audit record (tables of revision 0003).

A key reads ``sdb_<key_id>_<secret>``: ``key_id`` (16 hex digits, stored as is) finds the
key's row in one indexed query; the secret (43 characters, 256 random bits) is stored only
as a salted PBKDF2-HMAC-SHA256 hash and compared in constant time. A key is shown once,
when it is created; nothing in the database can give it back.

Scopes nest: ``read`` (identify, verify, list, show, info), ``write`` (also enroll, rename,
remove, import), ``admin`` (also the threshold, gallery export, keys and the audit record).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session

from ..errors import InvalidInputError, KeyExistsError, KeyNotFoundError

# The scopes and what key operations return are shared with the client (results.py);
# they stay importable from here.
from ..results import SCOPES, AuditEntry, KeyInfo, NewKey
from . import store

KEY_PREFIX = "sdb"
KEY_ID_BYTES = 8  # 16 hex digits: finds the row, not secret
SECRET_BYTES = 32  # 256 bits of secret
SALT_BYTES = 16
#: PBKDF2 rounds. The secret is 256 random bits, so the hash need not slow guessing (nobody
#: can guess it); the rounds are a margin, and a server checks each key once per process
#: (see :data:`_VERIFIED`), not on every request.
HASH_ITERATIONS = 100_000
HASH_NAME = "pbkdf2_sha256"
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_KEY = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{{2 * KEY_ID_BYTES}}})_([A-Za-z0-9_-]{{20,100}})$")

#: Secrets this process has already checked against a stored hash: (key_id, sha256 of the
#: secret) -> the stored hash it matched. A revoked or replaced key no longer matches its row.
_VERIFIED: dict[tuple[str, str], str] = {}
_VERIFIED_LOCK = threading.Lock()
#: Keys this process has refused: (gallery id, key_id, sha256 of the secret), newest last, at
#: most MAX_FAILED. A client that repeats a wrong key costs no second PBKDF2; the outcome is
#: final (a revoked key stays revoked, and no key id or secret is ever reused), in that
#: gallery: a key of another gallery is refused here and accepted there.
_FAILED: OrderedDict[tuple[int | None, str, str], None] = OrderedDict()
MAX_FAILED = 4096
#: What a key id that has no active row is checked against: the same PBKDF2 as a real key,
#: so that a 401 takes as long whether the id exists or not (no oracle for key ids).
_DUMMY_SALT = secrets.token_hex(SALT_BYTES)
_DUMMY_HASH = f"{HASH_NAME}${HASH_ITERATIONS}${secrets.token_hex(32)}"


def local_actor() -> str:
    """Who makes a change on this machine outside the service (a command, a Python program), as
    audit records name them: ``local:<user>`` (``local:uid<n>`` without a user name). A key's
    name cannot hold ``:``, so no key is ever taken for it."""
    try:
        return f"local:{getpass.getuser()}"
    except Exception:  # noqa: BLE001  (no user name: a container without an /etc/passwd entry)
        return f"local:uid{os.getuid()}"


def check_name(name: str) -> str:
    """A key name: 1-64 characters, letters, digits and ``. _ @ -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _KEY_NAME.match(name):
        raise InvalidInputError(
            f"key name {name!r} must be 1-64 characters of letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidInputError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    return scope


def _hash(secret: str, salt: bytes, iterations: int = HASH_ITERATIONS) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return f"{HASH_NAME}${iterations}${digest.hex()}"


def _matches(secret: str, salt_hex: str, stored: str) -> bool:
    try:
        kind, iterations, _ = stored.split("$")
        if kind != HASH_NAME:
            return False
        computed = _hash(secret, bytes.fromhex(salt_hex), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(computed.encode(), stored.encode())


def create(session: Session, name: str, scope: str) -> NewKey:
    """Add a key named ``name`` with ``scope``; returns it with its secret (shown once)."""
    name, scope = check_name(name), check_scope(scope)
    if session.scalars(select(store.ApiKey).where(store.ApiKey.name == name)).one_or_none() is not None:
        raise KeyExistsError(
            f"a key named {name!r} already exists (revoked keys keep their names): choose another name"
        )
    key_id = secrets.token_hex(KEY_ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    salt = secrets.token_bytes(SALT_BYTES)
    session.add(
        store.ApiKey(
            name=name, key_id=key_id, scope=scope, salt=salt.hex(), hash=_hash(secret, salt), created_at=store.utcnow()
        )
    )
    return NewKey(name, scope, f"{KEY_PREFIX}_{key_id}_{secret}")


def list_keys(session: Session) -> list[KeyInfo]:
    rows = session.scalars(select(store.ApiKey).order_by(store.ApiKey.name))
    return [KeyInfo(r.name, r.scope, r.created_at, r.revoked_at) for r in rows]


def revoke(session: Session, name: str) -> KeyInfo:
    """Revoke key ``name`` (at once, in every server process); revoking twice is harmless."""
    row = session.scalars(select(store.ApiKey).where(store.ApiKey.name == name)).one_or_none()
    if row is None:
        raise KeyNotFoundError(f"no key named {name!r} (see `speakerdb keys list`)")
    if row.revoked_at is None:
        row.revoked_at = store.utcnow()
    return KeyInfo(row.name, row.scope, row.created_at, row.revoked_at)


def has_active_keys(session: Session) -> bool:
    return session.scalar(select(store.ApiKey.id).where(store.ApiKey.revoked_at.is_(None)).limit(1)) is not None


def has_any_keys(session: Session) -> bool:
    """Whether a key was ever created here, revoked ones included (rows are never deleted)."""
    return session.scalar(select(store.ApiKey.id).limit(1)) is not None


def authenticate(session: Session, key: str) -> KeyInfo | None:
    """The active key ``key`` is, or None (malformed, unknown, revoked or wrong secret).

    A well-formed key that is refused costs one PBKDF2 whether its id exists or not, and
    nothing the second time it is tried (:data:`_FAILED`).
    """
    m = _KEY.match(key or "")
    if m is None:
        return None
    key_id, secret = m.groups()
    seen = (key_id, hashlib.sha256(secret.encode()).hexdigest())
    failed = (store.gallery_of(session), *seen)
    with _VERIFIED_LOCK:
        if failed in _FAILED:
            _FAILED.move_to_end(failed)
            return None
    row = session.scalars(select(store.ApiKey).where(store.ApiKey.key_id == key_id)).one_or_none()
    if row is None or row.revoked_at is not None:
        _matches(secret, _DUMMY_SALT, _DUMMY_HASH)  # the time a wrong secret of a real key takes
        _remember_failure(failed)
        return None
    with _VERIFIED_LOCK:
        known = _VERIFIED.get(seen)
    if known is None or not hmac.compare_digest(known.encode(), row.hash.encode()):
        if not _matches(secret, row.salt, row.hash):
            _remember_failure(failed)
            return None
        with _VERIFIED_LOCK:
            _VERIFIED[seen] = row.hash
    gallery = session.scalar(select(store.Gallery.name).where(store.Gallery.id == row.gallery_id))
    return KeyInfo(row.name, row.scope, row.created_at, row.revoked_at, gallery or store.DEFAULT_GALLERY)


def _remember_failure(seen: tuple[int | None, str, str]) -> None:
    with _VERIFIED_LOCK:
        _FAILED[seen] = None
        _FAILED.move_to_end(seen)
        while len(_FAILED) > MAX_FAILED:
            _FAILED.popitem(last=False)


#: The records of galleries made and removed (``SpeakerDB.create_gallery``, ``remove_gallery``).
#: Stored with the default gallery's rows (a removed gallery's go with it), they name other
#: galleries: only who may make and remove galleries reads them (:func:`gallery_audit_entries`),
#: never a gallery's own audit, which the default gallery's admin keys read too.
GALLERY_OPERATIONS = ("gallery-create", "gallery-remove")


def audit_entries(session: Session, limit: int = 100, speaker: str | None = None) -> list[AuditEntry]:
    """The newest ``limit`` audit records of the session's gallery, oldest first (of one
    speaker, if given); never the records of galleries made and removed."""
    stmt = _newest(store.AuditRecord.operation.not_in(GALLERY_OPERATIONS), limit)
    if speaker is not None:
        stmt = stmt.where(store.AuditRecord.speaker == store.normalize_name(speaker))
    return _entries(session, stmt)


def speaker_audit_entries(records: Sequence[store.AuditRecord], limit: int) -> list[AuditEntry]:
    """The newest ``limit`` of ``records`` (oldest first, as :func:`.governance.records_of_speaker`
    gives one speaker's), oldest first; never the records of galleries made and removed."""
    _check_limit(limit)
    kept = [r for r in records if r.operation not in GALLERY_OPERATIONS][-limit:]
    return [_entry(r) for r in kept]


def gallery_audit_entries(session: Session, limit: int = 100) -> list[AuditEntry]:
    """The newest ``limit`` records of galleries made and removed, oldest first."""
    return _entries(session, _newest(store.AuditRecord.operation.in_(GALLERY_OPERATIONS), limit))


def _newest(which: ColumnElement[bool], limit: int) -> Select[store.AuditRecord]:
    """The newest ``limit`` audit records that ``which`` selects, newest first."""
    _check_limit(limit)
    return select(store.AuditRecord).where(which).order_by(store.AuditRecord.id.desc()).limit(limit)


def _check_limit(limit: object) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(f"limit must be a whole number of at least 1, not {limit!r}")


def _entries(session: Session, stmt) -> list[AuditEntry]:
    return [_entry(r) for r in list(session.scalars(stmt))[::-1]]


def _entry(r: store.AuditRecord) -> AuditEntry:
    return AuditEntry(r.time, r.key_name, r.operation, r.speaker, json.loads(r.detail) if r.detail else None)
