"""What a database keeps to govern its voiceprints (issue 27): consent, retention, opt-out.

- The **policy** is two settings of the gallery (tenant), as its threshold is:
  ``require_consent`` (enrolling without a consent record is refused) and
  ``expire_after_s`` (speakers not named by a decision, nor enrolled into, for that long
  are removed by ``expire``; absent: kept for ever).
- **Consent** is recorded with the speaker (``speakers.consent``, ``consent_at``,
  ``consent_by``): the text given (who consented and how, or a reference to a signed form),
  when it was recorded and by which API key.
- **last_seen** is when a decision last named the speaker. Decisions only *note* names in
  memory (:class:`SeenNames`); the facade writes them in one UPDATE at most every
  ``SEEN_FLUSH_S`` and when it closes, so identify does not wait for a write.
- **Opt-outs** keep only keyed hashes (HMAC-SHA256 under ``optout_key``, a random 32-byte
  key made once per database and kept in its settings, so that copies keep matching) of the
  normalised name and of an external id, and the date: never a name. Opt-outs belong to a
  gallery: they refuse enrollments in their own (a tenant learns nothing of another's).

Queries take a session (the caller decides the transaction), as in store.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import unicodedata
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from ..errors import InvalidInputError
from . import store
from .store import AuditRecord, OptOut, Speaker, fold_name, folded_key

#: Longest consent text and external id kept, in characters.
MAX_CONSENT_LENGTH = 4096
MAX_EXTERNAL_ID_LENGTH = 200
#: How often, at most, the names noted by decisions are written as ``last_seen`` (seconds).
#: A day-granular retention (days to years) loses nothing by a minute's delay, and identify
#: pays for one UPDATE a minute instead of one per request.
SEEN_FLUSH_S = 60.0
#: The most names held in memory before a write is due whatever the time (bounded memory).
SEEN_FLUSH_NAMES = 10_000

_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400, "y": 365 * 86_400}
_DURATION = re.compile(r"^\s*(\d{1,7})\s*(s|min|h|d|w|y)\s*$")
MAX_EXPIRE_S = 200 * 365 * 86_400  # 200 years: longer is "never"


# ---- the policy ---------------------------------------------------------------------------------
def require_consent(settings: dict[str, Any]) -> bool:
    """Whether enrolling needs a consent record."""
    return bool(settings.get("require_consent"))


def expire_after_s(settings: dict[str, Any]) -> int | None:
    """The retention period in seconds (None: speakers are kept until removed)."""
    value = settings.get("expire_after_s")
    return int(value) if value is not None else None


def parse_duration(text: str) -> int | None:
    """``3y``, ``180d``, ``12h``, ``2w``, ``30min``, ``90s`` as seconds; ``never`` as None.
    A year is 365 days. InvalidInputError for anything else."""
    if not isinstance(text, str):
        raise InvalidInputError(f"a duration is text such as 3y or 180d, not {text!r}")
    if text.strip().lower() == "never":
        return None
    m = _DURATION.match(text.lower())
    if m is None:
        raise InvalidInputError(
            f"duration {text!r} is not a whole number and a unit (s, min, h, d, w, y), e.g. 3y, 180d, 12h; or 'never'"
        )
    if int(m.group(1)) == 0:
        raise InvalidInputError(
            f"duration {text!r} is zero, which is not allowed: give a positive one, e.g. 3y, 180d, 12h; or 'never'"
        )
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_EXPIRE_S:
        raise InvalidInputError(f"duration {text!r} is over 200 years: use 'never'")
    return seconds


def format_duration(seconds: int | None) -> str:
    """The largest unit that gives a whole number: 94608000 -> ``3y``; None -> ``never``."""
    if seconds is None:
        return "never"
    for unit in ("y", "w", "d", "h", "min", "s"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def write_policy(s: Session, *, consent: bool | None = None, expire_s: int | None | bool = False) -> None:
    """Store the policy: ``consent`` (None: unchanged); ``expire_s`` seconds, None to keep
    speakers for ever, or False: unchanged."""
    if consent is not None:
        store.set_setting(s, "require_consent", bool(consent))
    if expire_s is not False:
        if expire_s is None:
            store.delete_setting(s, "expire_after_s")
        else:
            store.set_setting(s, "expire_after_s", int(expire_s))


# ---- consent and external ids -------------------------------------------------------------------
def _text_field(value: str | None, what: str, limit: int, empty: str) -> str | None:
    """``value`` stripped and in NFC, as stored; None stays None; InvalidInputError if unusable."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be text, not {type(value).__name__}")
    store.check_name_text(value, what)
    value = unicodedata.normalize("NFC", value.strip())
    if not value:
        raise InvalidInputError(f"{what} must not be empty{empty}")
    if len(value) > limit:
        raise InvalidInputError(f"{what} is {len(value)} characters long, at most {limit} are kept")
    return store.check_text(value, what)


def check_consent(text: str | None) -> str | None:
    """The consent text as stored (stripped), or None; InvalidInputError if it cannot be kept."""
    return _text_field(
        text, "consent", MAX_CONSENT_LENGTH, ": say who consented, how and when (or the form's reference)"
    )


def check_external_id(value: str | None) -> str | None:
    """The external id as hashed (stripped), or None; InvalidInputError if it is unusable."""
    return _text_field(value, "external id", MAX_EXTERNAL_ID_LENGTH, "")


# ---- keyed hashes -------------------------------------------------------------------------------
def optout_key(s: Session, create: bool) -> bytes | None:
    """The database's HMAC key (made now if absent and ``create``, inside the caller's write)."""
    value = store.get_settings(s).get("optout_key")
    if value is None and create:
        value = secrets.token_hex(32)
        store.set_setting(s, "optout_key", value)
    return bytes.fromhex(value) if value else None


def name_hash(key: bytes, name: str) -> str:
    """HMAC-SHA256 (hex) of the folded name; a prefix keeps names and external ids apart."""
    return hmac.new(key, b"name\0" + fold_name(name).encode(), hashlib.sha256).hexdigest()


def external_id_hash(key: bytes, external_id: str) -> str:
    """HMAC-SHA256 (hex) of an external id (as :func:`check_external_id` returns it)."""
    return hmac.new(key, b"external-id\0" + external_id.encode(), hashlib.sha256).hexdigest()


# ---- opt-outs -----------------------------------------------------------------------------------
def matching_optouts(s: Session, name: str, external_id: str | None) -> list[OptOut]:
    """The opt-out rows that match ``name`` or ``external_id`` (none while no key exists)."""
    key = optout_key(s, create=False)
    if key is None:
        return []
    clauses = [OptOut.name_hash == name_hash(key, name)]
    if external_id is not None:
        clauses.append(OptOut.external_id_hash == external_id_hash(key, external_id))
    return list(s.scalars(select(OptOut).where(or_(*clauses))))


def names_folding_as(s: Session, name: str) -> list[str]:
    """The enrolled speakers' names that fold as ``name`` does (:func:`fold_name`), ``name`` itself
    included, sorted: one probe of the index on (gallery, ``folded_name``), reading the matching
    rows only (measured in docs/governance.md)."""
    return enrolled_folding_as(s, [name]).get(fold_name(name), [])


#: Names looked up in one statement (SQLite's old limit on bound parameters is 999).
_IN_CHUNK = 900


def enrolled_folding_as(s: Session, names: list[str]) -> dict[str, list[str]]:
    """The enrolled speakers' names that fold as one of ``names`` does, sorted, by folded name
    (folds with none are absent). Reads the rows of those folded names only, by the index on
    (gallery, ``folded_name``), within the session's gallery as every query of the store."""
    wanted = {fold_name(n) for n in names}
    keys = sorted({folded_key(n) for n in names})  # as the column holds them: from the names
    found: dict[str, list[str]] = {}
    for start in range(0, len(keys), _IN_CHUNK):
        stmt = select(Speaker.name).where(Speaker.folded_name.in_(keys[start : start + _IN_CHUNK]))
        for enrolled in s.scalars(stmt):
            folded = fold_name(enrolled)  # the column holds a prefix of the longest folds
            if folded in wanted:
                found.setdefault(folded, []).append(enrolled)
    return {f: sorted(ns) for f, ns in found.items()}


def twin_of(s: Session, name: str, own: str | None = None) -> str | None:
    """The name of an enrolled speaker, other than the one named ``own``, that differs from
    ``name`` only in what :func:`fold_name` leaves out (case, spacing, compatibility forms): the
    spelling ``name`` would be a twin of, or None. Opt-outs cannot tell twins apart, and a twin
    is nearly always a typo that splits one person's voiceprint in two."""
    return next((n for n in names_folding_as(s, name) if n not in (name, own)), None)


def twin_message(name: str, existing: str) -> str:
    """The words that say ``name`` would be a twin of ``existing``."""
    return f"speaker {name!r} would be a twin of existing {existing!r} (names differ only in case or spacing)"


def speakers_of_person(s: Session, name: str, external_id: str | None) -> list[Speaker]:
    """The enrolled speakers an opt-out of ``name`` (and ``external_id``) would refuse to enroll,
    by name: every speaker whose name folds to ``name``'s (``dave`` and ``Dave`` alike, as the
    opt-out compares names), those enrolled with ``external_id``, and, when none is given, those
    that share the external id of a speaker found by name (the opt-out keeps that one's hash)."""
    # Every name that folds as it does: the exact one alone left a case twin enrolled that the
    # opt-out refused.
    folded = fold_name(name)
    by_fold = select(Speaker).where(Speaker.folded_name == folded_key(name))
    found = {sp.id: sp for sp in s.scalars(by_fold) if fold_name(sp.name) == folded}
    hashes = {sp.external_id_hash for sp in found.values() if sp.external_id_hash is not None}
    key = optout_key(s, create=False)
    if external_id is not None:
        hashes = {external_id_hash(key, external_id)} if key is not None else set()
    if hashes:
        found.update({sp.id: sp for sp in s.scalars(select(Speaker).where(Speaker.external_id_hash.in_(hashes)))})
    return sorted(found.values(), key=lambda sp: sp.name)


def add_optout(
    s: Session, name: str, speaker_external_hash: str | None, external_id: str | None, now: datetime
) -> None:
    """Record that the person named ``name`` opted out, with the external id's hash (the one
    stored with the speaker, or made from ``external_id``)."""
    key = optout_key(s, create=True)
    assert key is not None
    ext = external_id_hash(key, external_id) if external_id is not None else speaker_external_hash
    s.add(OptOut(name_hash=name_hash(key, name), external_id_hash=ext, created_at=now))


def remove_optouts(s: Session, rows: list[OptOut]) -> None:
    """Delete opt-out rows (an administrator's override: the person enrolled again)."""
    if rows:
        s.execute(delete(OptOut).where(OptOut.id.in_([r.id for r in rows])))


def optout_dates(s: Session) -> list[datetime]:
    """When each opt-out was recorded, oldest first (never anything else)."""
    return list(s.scalars(select(OptOut.created_at).order_by(OptOut.created_at)))


#: Audit operations after which a speaker's name is free for another speaker: records naming it
#: before one of these (or before a rename away from it) are an earlier holder's.
_NAME_FREED = ("remove", "expire")
_NAMES_PER_QUERY = 500  # names bound in one IN (...): far below SQLite's limit of bound parameters


def _rename_names(record: AuditRecord) -> tuple[str, str] | None:
    """A rename record's old and new names as names are stored (NFC), or None if it has none."""
    detail = json.loads(record.detail) if record.detail else None
    new = detail.get("new") if isinstance(detail, dict) else None
    if record.speaker is None or not isinstance(new, str):
        return None
    return store.normalize_name(record.speaker), store.normalize_name(new)


def _renames(s: Session) -> list[tuple[int, str, str]]:
    """The renames, as (record id, old name, new name) oldest first: the gallery's rename records
    only, by the index on the operation (revision 0010)."""
    renames: list[tuple[int, str, str]] = []
    for record in s.scalars(select(AuditRecord).where(AuditRecord.operation == "rename").order_by(AuditRecord.id)):
        pair = _rename_names(record)
        if pair is not None and pair[0] != pair[1]:
            renames.append((record.id, *pair))
    return renames


def _reachable(renames: list[tuple[int, str, str]], names: set[str]) -> list[str]:
    """``names`` and every name a rename left: the names a history can reach, as stored (NFC)."""
    return sorted({store.normalize_name(n) for n in names} | {old for _, old, _ in renames})


def _names_before(renames: list[tuple[int, str, str]], name: str) -> list[str]:
    """``name`` and each name that a rename to it, or to one of these, left: the only names whose
    records can be those of the speaker named ``name`` now (:func:`_follow_back` narrows them
    to the spans that were its own)."""
    olds: dict[str, set[str]] = {}
    for _, old, new in renames:
        olds.setdefault(new, set()).add(old)
    names, todo = {name}, [name]
    while todo:
        for old in olds.get(todo.pop(), ()):
            if old not in names:
                names.add(old)
                todo.append(old)
    return sorted(names)


def _naming(s: Session, names: list[str], *what: Any) -> list[Any]:
    """The rows of ``what`` (columns, or the whole AuditRecord) of the records whose speaker is
    one of ``names``: one query on the index on the speaker (revision 0010) for each
    :data:`_NAMES_PER_QUERY` names. Their operation is left out of the query: with it, SQLite
    (which has no statistics) may take the index on the operation and read every removal."""
    rows: list[Any] = []
    for start in range(0, len(names), _NAMES_PER_QUERY):
        stmt = select(*what).where(AuditRecord.speaker.in_(names[start : start + _NAMES_PER_QUERY]))
        rows.extend(s.execute(stmt).all())
    return rows


def _freed(renames: list[tuple[int, str, str]], records: list[Any]) -> dict[str, list[int]]:
    """For each name, the ids of the records after which it was free for another speaker: the
    renames away from it, and the removals and expiries among ``records`` (rows with an id,
    a speaker and an operation)."""
    freed: dict[str, list[int]] = {}
    for record_id, old, _ in renames:
        freed.setdefault(old, []).append(record_id)
    for r in records:
        if r.operation in _NAME_FREED:
            freed.setdefault(str(r.speaker), []).append(r.id)
    return freed


def _name_history(s: Session, names: set[str]) -> tuple[list[tuple[int, str, str]], dict[str, list[int]]]:
    """The renames, as (record id, old name, new name) oldest first, and for each name the ids
    of the records after which it was free for another speaker (a remove, an expiry, a rename
    away from it): for ``names`` and every name a rename left, the names a history can reach.

    Only those names' records are read: a gallery with a long retention history holds one
    record per speaker removed or expired, and reading them all made every ``show`` take
    seconds at 100,000 (docs/governance.md, "What is held about a person")."""
    renames = _renames(s)
    columns = (AuditRecord.id, AuditRecord.speaker, AuditRecord.operation)
    return renames, _freed(renames, _naming(s, _reachable(renames, names), *columns))


#: A span of audit records made while one speaker held a name: (name, after record id, up to
#: record id or None for "still").
_Span = tuple[str, int, int | None]


def _follow_back(spans: set[_Span], renames: list[tuple[int, str, str]], freed: dict[str, list[int]]) -> set[_Span]:
    """``spans`` with the spans of each earlier name their speakers had, followed back through
    the rename records (an earlier name only while it was theirs)."""
    spans = set(spans)
    todo = list(spans)
    while todo:
        held, after, upto = todo.pop()
        for rid, old, new in renames:
            if new == held and after < rid and (upto is None or rid < upto):
                began = max((i for i in freed.get(old, ()) if i < rid), default=-1)
                span = (old, began, rid)
                if span not in spans:
                    spans.add(span)
                    todo.append(span)
    return spans


def records_of_speaker(s: Session, name: str) -> list[AuditRecord]:
    """The audit records that concern the speaker enrolled now as ``name``, oldest first: those
    naming it since the name was last free (an earlier speaker of that name, removed, expired
    or renamed away, keeps theirs), and those of each earlier name this speaker had, followed
    back through the rename records as an opt-out follows them (:func:`scrub_audit`).

    Two queries, each on an index (revision 0010) whatever the size of the audit table: the
    renames, then every record naming this speaker's name or one it may have had before. The
    removals and expiries that end an earlier holder's span, and the records given, are among
    them."""
    name = store.normalize_name(name)
    renames = _renames(s)
    records = sorted((r for (r,) in _naming(s, _names_before(renames, name), AuditRecord)), key=lambda r: r.id)
    freed = _freed(renames, records)
    spans = _follow_back({(name, max(freed.get(name, ()), default=-1), None)}, renames, freed)
    held: dict[str, list[tuple[int, int | None]]] = {}
    for n, after, upto in spans:
        held.setdefault(n, []).append((after, upto))
    return [
        r
        for r in records
        if any(after < r.id and (upto is None or r.id <= upto) for after, upto in held.get(str(r.speaker), ()))
    ]


def scrub_audit(s: Session, name: str, marker: str) -> int:
    """Replace every name of the person opting out as ``name`` with ``marker`` in the audit
    records (as the speaker, or as a rename's new name): an opted-out person's name is kept
    nowhere. That is ``name`` and the names that fold to it (as the opt-out compares names),
    wherever they appear, and each earlier name of a speaker renamed to one of them, followed
    back through the rename records, in the records made while that speaker held it (not those
    of an earlier speaker of that name, removed, expired or renamed before). Returns how many."""
    renames, freed = _name_history(s, set())
    # (name, after record id, up to record id or None): the spans of records to scrub. The name
    # opted out is scrubbed in every record, as before; an earlier name only while it was theirs.
    folded = fold_name(name)
    named = {n for n in s.scalars(select(AuditRecord.speaker).distinct()) if n is not None}
    named |= {new for _, _, new in renames} | {name}
    spans = _follow_back({(n, -1, None) for n in named if fold_name(n) == folded}, renames, freed)
    changed: set[int] = set()
    for held, after, upto in spans:
        stmt = select(AuditRecord).where(
            AuditRecord.id > after, or_(AuditRecord.speaker == held, AuditRecord.operation == "rename")
        )
        if upto is not None:
            stmt = stmt.where(AuditRecord.id <= upto)
        for record in s.scalars(stmt):
            if record.speaker is not None and store.normalize_name(record.speaker) == held:
                record.speaker = marker
                changed.add(record.id)
            detail = json.loads(record.detail) if record.operation == "rename" and record.detail else None
            if isinstance(detail, dict) and isinstance(detail.get("new"), str):
                if store.normalize_name(detail["new"]) == held:
                    record.detail = json.dumps({**detail, "new": marker}, ensure_ascii=False)
                    changed.add(record.id)
    return len(changed)


# ---- retention ----------------------------------------------------------------------------------
def expired(s: Session, cutoff: datetime) -> list[Speaker]:
    """Speakers neither named by a decision nor enrolled into since ``cutoff``, by name."""
    stmt = (
        select(Speaker)
        .where(Speaker.updated_at < cutoff, or_(Speaker.last_seen.is_(None), Speaker.last_seen < cutoff))
        .order_by(Speaker.name)
    )
    return list(s.scalars(stmt))


def cutoff(now: datetime, seconds: int) -> datetime:
    """The time before which a speaker's last interaction makes it expired."""
    return now - timedelta(seconds=seconds)


def write_seen(s: Session, names: dict[str, datetime]) -> None:
    """Set ``last_seen`` of the named speakers (absent names are ignored), never backwards.
    One UPDATE per distinct time: the names of one flush share a few."""
    by_time: dict[datetime, list[str]] = {}
    for name, when in names.items():
        by_time.setdefault(when, []).append(name)
    for when, group in by_time.items():
        for start in range(0, len(group), 900):  # SQLite's old limit on bound parameters is 999
            chunk = group[start : start + 900]
            s.execute(
                update(Speaker)
                .where(Speaker.name.in_(chunk), or_(Speaker.last_seen.is_(None), Speaker.last_seen < when))
                .values(last_seen=when)
                .execution_options(synchronize_session=False)
            )


class SeenNames:
    """Names that decisions named since the last write, with when (thread-safe: a service's
    lanes share nothing, but a Python user may call identify from threads)."""

    def __init__(self, flush_s: float = SEEN_FLUSH_S) -> None:
        self.flush_s = flush_s
        self._names: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._last_write = time.monotonic()

    def note(self, names: list[str], when: datetime) -> None:
        """Remember that a decision named ``names`` at ``when``."""
        if not names:
            return
        with self._lock:
            for name in names:
                self._names[name] = when

    def due(self, late: float = 1.0) -> bool:
        """Whether names wait and ``late`` times the interval has passed (or too many wait)."""
        with self._lock:
            if not self._names:
                return False
            waited = time.monotonic() - self._last_write
            return len(self._names) >= SEEN_FLUSH_NAMES or waited >= self.flush_s * late

    def peek(self, name: str) -> datetime | None:
        """When a decision last named ``name``, if that is not written yet."""
        with self._lock:
            return self._names.get(name)

    def take(self) -> dict[str, datetime]:
        """The names waiting, handed over and forgotten."""
        with self._lock:
            names, self._names = self._names, {}
            self._last_write = time.monotonic()
            return names

    def give_back(self, names: dict[str, datetime]) -> None:
        """Names whose write failed (a busy database): kept for the next try."""
        with self._lock:
            for name, when in names.items():
                if name not in self._names or self._names[name] < when:
                    self._names[name] = when
