"""The values that cross the interface of :class:`speakerdb.SpeakerDB` and :class:`speakerdb.client.Client`.

What the operations return (an :class:`Identification`, an :class:`EnrollResult`, a
:class:`~speakerdb.results.Timeline`...) and the few argument types both implementations
take (:class:`Params`, :class:`Limits`). Standard library only (and :mod:`speakerdb.errors`
for the checks of arguments), so the library, the service, the CLI and the HTTP client all
share these types without pulling in numpy, SQLAlchemy or a model.

Every type here is a plain frozen dataclass (``ImportSummary`` excepted: an import fills it
in as it goes) with a ``to_dict()`` that is the JSON the CLI prints and the service answers.
Times are naive UTC datetimes, written as ISO 8601 with ``Z`` (:func:`iso`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from .config import MIN_COHORT
from .errors import InvalidInputError

#: What a long operation reports as it goes: (files done, files in all, seconds of audio done).
Progress = Callable[[int, int, float], None]


# ---- times ------------------------------------------------------------------------------------
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


# ---- identify and verify ----------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    speaker: str
    score: float  # what the threshold is compared to: raw_score, or its AS-norm when normalisation is on
    raw_score: float  # cosine similarity to the speaker's centroid, in [-1, 1]


@dataclass(frozen=True)
class Identification:
    """One file's answer: ``speaker`` is None ("unknown") when the best score is below the threshold.

    A file that could not be used (missing, not audio, too short...) has ``error`` set to the
    reason, ``speaker`` and ``score`` None and no candidates: one bad file in a batch does not
    cost the others their answers.
    """

    file: str
    speaker: str | None
    score: float | None
    candidates: list[Candidate]
    error: str | None = None
    raw_score: float | None = None  # the best candidate's cosine score (see Candidate)
    #: Voices the file holds (timeline.count_voices): above 1, the vector is a blend of several
    #: people and `timeline` is the command to use; 0: no speech was found.
    voices: int | None = None

    @property
    def ok(self) -> bool:
        """True when the file was identified (``speaker`` may still be None: unknown)."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """``{"file", "speaker", "score", "candidates"}``, or ``{"file", "error"}`` for a file that failed."""
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        d = asdict(self)
        del d["error"]
        return d


@dataclass(frozen=True)
class Verification:
    file: str
    speaker: str
    score: float  # what the threshold is compared to (AS-norm when normalisation is on)
    threshold: float
    accepted: bool
    raw_score: float | None = None  # the cosine score
    #: Voices the file holds (as identify counts them): above 1, the answer is for a blend of
    #: them; None when not counted (count_voices=False).
    voices: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- speakers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class UtteranceInfo:
    source: str
    duration_s: float
    audio_sha256: str
    created_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = iso(self.created_at)
        return d


@dataclass(frozen=True)
class FileNote:
    """Something to tell the user about one file: why it was skipped, or what looks wrong."""

    source: str
    reason: str


@dataclass(frozen=True)
class EnrollResult:
    speaker: str
    created: bool
    added: list[UtteranceInfo]
    skipped: list[FileNote]
    n_utterances: int  # the speaker's utterances after this enrollment
    warnings: list[FileNote] = field(default_factory=list)
    #: Other enrolled speakers whose voice the new recordings match (score at or above the
    #: threshold, on the database's scale): a typed name that should have been theirs.
    matches: list[Candidate] = field(default_factory=list)
    #: What to tell the user about the whole enrollment, one line each ("this voice matches alice ...").
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "speaker": self.speaker,
            "created": self.created,
            "added": [u.to_dict() for u in self.added],
            "skipped": [asdict(s) for s in self.skipped],
            "n_utterances": self.n_utterances,
            "warnings": [asdict(w) for w in self.warnings],
            "matches": [asdict(m) for m in self.matches],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class SpeakerInfo:
    """What is held about one speaker. ``list`` fills the first fields; ``show`` all of them:
    the utterances, the consent recorded, when a decision last named them, whether an external
    id's keyed hash is held, and the audit records that concern them."""

    name: str
    n_utterances: int
    total_duration_s: float
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any]
    utterances: list[UtteranceInfo] = field(default_factory=list)
    consent: Consent | None = None
    last_seen: datetime | None = None
    external_id_hash: str | None = None  # HMAC-SHA256 of the external id given at enrollment
    audit: list[AuditEntry] = field(default_factory=list)

    #: Keys of ``to_dict()`` that only ``show`` fills: ``list`` leaves them out.
    SHOW_ONLY = ("utterances", "consent", "last_seen", "external_id_hash", "audit")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_utterances": self.n_utterances,
            "total_duration_s": self.total_duration_s,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "metadata": self.metadata,
            "utterances": [u.to_dict() for u in self.utterances],
            "consent": self.consent.to_dict() if self.consent is not None else None,
            "last_seen": iso(self.last_seen),
            "external_id_hash": self.external_id_hash,
            "audit": [a.to_dict() for a in self.audit],
        }


# ---- governance: consent, retention, opt-out (storage/governance.py) -------------------------
@dataclass(frozen=True)
class Consent:
    """The consent recorded with a speaker: the text given (who consented, how, or a signed
    form's reference), when it was recorded (UTC) and by which API key (None: locally)."""

    text: str
    recorded_at: datetime | None
    recorded_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "recorded_at": iso(self.recorded_at), "recorded_by": self.recorded_by}


@dataclass(frozen=True)
class Policy:
    """A database's governance policy: whether enrolling needs consent, and how long a speaker
    no decision names is kept (``expire_after`` as given, e.g. ``3y``; ``never``: kept)."""

    require_consent: bool
    expire_after: str
    expire_after_s: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Erasure:
    """Where a removal erased a voiceprint, and what no command can reach (docs/governance.md)."""

    erased: list[str]
    not_reachable: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExpireSummary:
    """What ``expire`` removed (or, with ``dry_run``, would remove): speakers that no decision
    named and nobody enrolled into since ``cutoff``."""

    expired: list[str]
    utterances: int
    cutoff: datetime | None  # None: the policy keeps speakers for ever
    dry_run: bool
    erasure: Erasure | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "expired": list(self.expired),
            "utterances": self.utterances,
            "cutoff": iso(self.cutoff),
            "dry_run": self.dry_run,
            "erasure": self.erasure.to_dict() if self.erasure is not None else None,
        }


@dataclass(frozen=True)
class OptOutResult:
    """An opt-out: whether a speaker was removed (one may opt out before ever being enrolled),
    how many utterances went, and where the voiceprint was erased. Never the name."""

    removed: bool
    utterances: int
    external_id: bool  # whether an external id's hash was kept too
    recorded_at: datetime
    erasure: Erasure | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "utterances": self.utterances,
            "external_id": self.external_id,
            "recorded_at": iso(self.recorded_at),
            "erasure": self.erasure.to_dict() if self.erasure is not None else None,
        }


@dataclass(frozen=True)
class OptOutList:
    """The opt-outs kept: how many and when each was recorded; never names or hashes."""

    count: int
    dates: list[datetime]

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "dates": [iso(d) for d in self.dates]}


# ---- the database -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DatabaseInfo:
    db_path: str
    index_path: str | None  # None through the client: the service keeps its paths to itself
    model_id: str | None
    model_source: str | None
    dim: int | None
    threshold: float
    n_speakers: int
    n_utterances: int
    schema_revision: str
    generation: int  # the gallery's count of changes to its speakers' centroids (never another's)
    index_params: dict[str, Any] = field(default_factory=dict)
    threshold_scale: str = "cosine"  # "cosine" or "as-norm" (speakerdb.scoring.norm.SCALES)
    norm: dict[str, Any] | None = None  # the normalisation in force (NormSettings), None for raw scores
    gallery: str = "default"  # the gallery (tenant) these figures are of
    encrypted: bool = False  # vectors sealed at rest (docs/security.md, "Encryption at rest")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServiceLimits:
    """What one request to ``speakerdb serve`` may carry (GET /v1/info's ``limits``): the client
    splits identify and timeline uploads to fit them, and says so when an enrollment cannot."""

    max_files: int  # audio files in one identify, timeline or enroll request (--max-files)
    max_upload_bytes: int  # one request's whole body, multipart framing included (--max-upload-mb)
    max_cohort_files: int  # recordings in one POST /v1/norm

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceLimits:
        return cls(int(d["max_files"]), int(d["max_upload_bytes"]), int(d["max_cohort_files"]))


@dataclass(frozen=True)
class GalleryInfo:
    """A gallery (a tenant: a separate set of speakers in one database) as listed."""

    name: str
    created_at: datetime
    n_speakers: int
    n_keys: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": iso(self.created_at),
            "n_speakers": self.n_speakers,
            "n_keys": self.n_keys,
        }


@dataclass(frozen=True)
class CopySummary:
    source: str
    destination: str
    rows: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EncryptionSummary:
    """What ``db encrypt`` or ``key rotate`` did: vectors sealed per table (0 when only the
    data key was wrapped again), the data key's number, and whether it was wrapped anew."""

    database: str
    rows: dict[str, int]
    dek_id: int
    rewrapped: bool
    reencrypted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- score normalisation ----------------------------------------------------------------------
@dataclass(frozen=True)
class NormSettings:
    """What a database stores (setting ``norm``) about its normalisation.

    ``digest`` is the sha256 of the cohort matrix as stored: statistics computed against
    one cohort are never used with another.
    """

    method: str
    top_n: int
    model_id: str
    dim: int
    count: int
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormSettings:
        return cls(
            str(d["method"]), int(d["top_n"]), str(d["model_id"]), int(d["dim"]), int(d["count"]), str(d["digest"])
        )


def check_top_n(top_n: Any, count: int | None = None) -> int:
    """``top_n`` as an int of at least 1 and, with ``count``, at most the cohort's ``count``
    recordings; InvalidInputError otherwise, saying what to give instead."""
    hint = f": give at most {count}, or leave it out (at most the cohort's size)" if count is not None else ""
    # numbers.Integral: numpy's integers too, without importing numpy here.
    if isinstance(top_n, bool) or not isinstance(top_n, numbers.Integral) or int(top_n) < 1:
        raise InvalidInputError(f"top-n must be a whole number of at least 1, not {top_n!r}{hint}")
    if count is not None and int(top_n) > count:
        raise InvalidInputError(f"top-n {top_n} is more than the {count} cohort recordings{hint}")
    return int(top_n)


def check_cohort_count(n_files: int, top_n: int | None) -> None:
    """Before any embedding (and, in the client, any upload): enough recordings for a cohort
    (:data:`~speakerdb.config.MIN_COHORT`), and a ``top_n`` they can reach; InvalidInputError otherwise."""
    if top_n is not None:
        check_top_n(top_n, n_files if n_files >= MIN_COHORT else None)
    if n_files < MIN_COHORT:
        raise InvalidInputError(
            f"a cohort needs at least {MIN_COHORT} recordings of people who are not enrolled, {n_files} given"
        )


@dataclass(frozen=True)
class CohortSetAside:
    """A cohort recording left out because it scores ``score`` (raw cosine) against enrolled
    speaker ``speaker``, at or above the cosine ``threshold``."""

    source: str
    speaker: str
    score: float
    threshold: float


@dataclass(frozen=True)
class NormChange:
    """What ``norm --cohort`` / ``norm --off`` did: the normalisation now in force (None: raw
    scores), whether the threshold was reset because its scale changed (calibrate again),
    and the threshold and scale now stored."""

    norm: NormSettings | None
    recalibrate: bool
    threshold: float
    threshold_scale: str
    set_aside: tuple[CohortSetAside, ...] = ()  # cohort recordings of enrolled people, left out

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm": self.norm.to_dict() if self.norm else None,
            "recalibrate": self.recalibrate,
            "threshold": self.threshold,
            "threshold_scale": self.threshold_scale,
            "set_aside": [asdict(a) for a in self.set_aside],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormChange:
        return cls(
            NormSettings.from_dict(d["norm"]) if d.get("norm") else None,
            bool(d["recalibrate"]),
            float(d["threshold"]),
            str(d["threshold_scale"]),
            tuple(CohortSetAside(**a) for a in d.get("set_aside", ())),
        )


# ---- galleries --------------------------------------------------------------------------------
# Caps on what an import reads, checked against the manifest before any member is unpacked,
# so a small file that honestly declares gigabytes is refused in constant memory. The
# defaults hold about a million utterances of 512-d vectors; Limits (import --max-utterances)
# raises them.
MAX_UTTERANCES = 1_000_000  # utterances in one gallery
MAX_DIM = 8192  # embedding dimension (WavLM x-vectors: 512, GE2E: 256)
# The vectors' bytes are capped at max_utterances vectors of the database's dimension; a
# database with no model yet (which takes the gallery's) counts them as this many floats,
# so a wide dimension cannot multiply the cap.
REFERENCE_DIM = 512
SPEAKERS_JSON_BYTES_PER_UTTERANCE = 2048  # bytes of speakers.json allowed per utterance...
SPEAKERS_JSON_BASE_BYTES = 64 << 20  # ...plus this much (64 MiB) for metadata and names


@dataclass(frozen=True)
class Limits:
    """How much one import may read (see MAX_UTTERANCES; memory grows with these)."""

    max_utterances: int = MAX_UTTERANCES
    max_dim: int = MAX_DIM

    @property
    def max_speakers_json_bytes(self) -> int:
        return SPEAKERS_JSON_BASE_BYTES + self.max_utterances * SPEAKERS_JSON_BYTES_PER_UTTERANCE

    def max_embedding_bytes(self, db_dim: int | None) -> int:
        """Bytes of vectors one import may unpack into a database of dimension ``db_dim``
        (None: a database with no model yet, counted as REFERENCE_DIM)."""
        return self.max_utterances * (db_dim or REFERENCE_DIM) * 4


@dataclass(frozen=True)
class ExportSummary:
    path: str
    n_speakers: int
    n_utterances: int
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportSummary:
    """What an import did (or, with dry_run, would do): speaker names per outcome."""

    path: str
    created: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    utterances_added: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- keys of the service and the audit record -------------------------------------------------
SCOPES = ("read", "write", "admin")  # each includes the ones before it


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: never its secret."""

    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None = None
    #: The gallery the key belongs to, and the only one it reaches (not in to_dict: listed per gallery).
    gallery: str = "default"

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        """Whether this key's scope includes ``scope``."""
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "created_at": iso(self.created_at),
            "revoked_at": iso(self.revoked_at),
            "active": self.active,
        }


@dataclass(frozen=True)
class NewKey:
    """A key just created: the only time its secret exists outside the caller's hands."""

    name: str
    scope: str
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "scope": self.scope}


@dataclass(frozen=True)
class AuditEntry:
    """One change: when (UTC), by which key (None: a local command), what, to which speaker."""

    time: datetime
    key_name: str | None
    operation: str
    speaker: str | None
    detail: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": iso(self.time),
            "key_name": self.key_name,
            "operation": self.operation,
            "speaker": self.speaker,
            "detail": self.detail,
        }


# ---- timelines (see speakerdb.timeline for what the knobs do) ---------------------------------
DEFAULT_WINDOW_S = 1.5  # s: long enough for a stable voice vector, short enough for turns
DEFAULT_HOP_S = 0.5  # s: each frame is seen by up to 3 windows
MIN_WINDOW_S = 0.5  # s: below this a region is too short to embed (audio.MIN_DURATION_S)
DEFAULT_MIN_VOICE_S = 3.0  # s of windows a voice needs to stand on its own
MAX_SPEAKERS = 20  # the largest number of voices a hint may ask for
DEFAULT_MIN_SEGMENT_S = 1.0  # s: a shorter segment joins its neighbour in the region
#: Two segments of one voice with only a pause shorter than this between them are one
#: segment: a speaker's breath or hesitation inside a turn is part of the turn, the way
#: conversations are annotated. A pause between two different voices is never filled.
DEFAULT_MERGE_GAP_S = 1.0  # s
#: Viterbi cost of changing voice between two frames, in units of cosine similarity:
#: a frame sequence changes voice only where the new voice leads by this much, summed over frames.
DEFAULT_SWITCH_PENALTY = 0.5


@dataclass(frozen=True)
class Params:
    """The timeline's knobs (see :mod:`speakerdb.timeline`); defaults suit both GE2E and WavLM."""

    window_s: float = DEFAULT_WINDOW_S
    hop_s: float = DEFAULT_HOP_S
    #: Two voices the recording barely separates are one when their means reach this cosine
    #: (None: the gallery's cosine threshold; see clustering.voices).
    cluster_threshold: float | None = None
    min_voice_s: float = DEFAULT_MIN_VOICE_S
    min_segment_s: float = DEFAULT_MIN_SEGMENT_S
    switch_penalty: float = DEFAULT_SWITCH_PENALTY
    merge_gap_s: float = DEFAULT_MERGE_GAP_S
    vad_backend: str = "silero"
    #: A speaker segmentation model (pyannote segmentation-3.0: a checkpoint path or a Hugging
    #: Face id) that finds the speech, the speaker changes and the overlapped speech instead of
    #: the VAD (None: the VAD, one voice at a time).
    segmentation: str | None = None
    #: What the user knows about the number of voices (None: found from the recording).
    speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    @property
    def hinted(self) -> bool:
        """True when the user gave any hint on the number of voices."""
        return (self.speakers, self.min_speakers, self.max_speakers) != (None, None, None)

    def check(self) -> Params:
        """These knobs, or InvalidInputError naming the first one out of range."""
        if not MIN_WINDOW_S <= self.window_s <= 30:
            raise InvalidInputError(f"window must be {MIN_WINDOW_S:g}-30 s, not {self.window_s:g}")
        if not 0.05 <= self.hop_s <= self.window_s:
            raise InvalidInputError(f"hop must be 0.05 s to the window length, not {self.hop_s:g}")
        if self.min_segment_s < 0 or self.min_voice_s < 0 or self.merge_gap_s < 0:
            raise InvalidInputError("minimum segment and voice lengths must not be negative")
        if self.cluster_threshold is not None and not -1 <= self.cluster_threshold <= 1:
            raise InvalidInputError(f"cluster threshold {self.cluster_threshold} is not a cosine in [-1, 1]")
        for name, value in (
            ("speakers", self.speakers),
            ("min_speakers", self.min_speakers),
            ("max_speakers", self.max_speakers),
        ):
            if value is not None and not 1 <= value <= MAX_SPEAKERS:
                raise InvalidInputError(f"{name} must be 1-{MAX_SPEAKERS}, not {value}")
        if self.speakers is not None and (self.min_speakers is not None or self.max_speakers is not None):
            raise InvalidInputError("give either speakers or min_speakers/max_speakers, not both")
        if self.min_speakers is not None and self.max_speakers is not None and self.min_speakers > self.max_speakers:
            raise InvalidInputError(f"min_speakers ({self.min_speakers}) exceeds max_speakers ({self.max_speakers})")
        return self


def _round(score: float | None) -> float | None:
    return None if score is None else round(score, 4)


@dataclass(frozen=True)
class Segment:
    """One voice speaking from ``start`` to ``end`` (seconds)."""

    start: float
    end: float
    label: str  # the speaker's name, or unknown-N
    speaker: str | None  # the enrolled speaker, None for an unknown voice
    #: What the threshold is compared to for this segment's mean window vector against the
    #: named (or nearest) centroid: its cosine, or that cosine's AS-norm when normalisation is on.
    score: float | None
    raw_score: float | None = None  # the cosine itself

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"], d["end"] = round(self.start, 3), round(self.end, 3)
        d["score"], d["raw_score"] = _round(self.score), _round(self.raw_score)
        return d


@dataclass(frozen=True)
class Voice:
    """A voice of the recording: its label, enrolled name (or None), speaking time and gallery score."""

    label: str
    speaker: str | None
    seconds: float
    score: float | None  # the voice's mean window vector against the named (or nearest) centroid, as Segment.score
    nearest: str | None = None  # the best-scoring enrolled speaker, even below the threshold
    raw_score: float | None = None  # the cosine behind ``score``

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "speaker": self.speaker,
            "seconds": round(self.seconds, 3),
            "score": _round(self.score),
            "raw_score": _round(self.raw_score),
        }


@dataclass(frozen=True)
class Timeline:
    """The segments of one recording, in time order, and its voices by speaking time."""

    file: str
    duration: float
    segments: list[Segment]
    voices: list[Voice]
    speech_s: float = 0.0  # seconds the VAD found speech in
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why this file could not be used (then nothing else is set)

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:  # as identify answers a bad file: its name and the reason
            return {"file": self.file, "error": self.error}
        return {
            "file": self.file,
            "duration": round(self.duration, 3),
            "segments": [s.to_dict() for s in self.segments],
            "voices": [v.to_dict() for v in self.voices],
            "notes": list(self.notes),
        }


# ---- live sessions (see speakerdb.live) -------------------------------------------------------
# What a live session reports while the audio arrives. Every event has ``at``: the seconds of
# audio the session had been fed when it was emitted (the error event has it when known).
# ``to_dict()`` is the JSON the service sends on /v1/stream and `listen --json` prints.
@dataclass(frozen=True)
class SpeechEvent:
    """Speech began at ``start`` (seconds from the start of the stream)."""

    start: float
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"type": "speech", "start": round(self.start, 3), "at": round(self.at, 3)}


@dataclass(frozen=True)
class VoiceEvent:
    """One voice speaking from ``start`` to ``end``: ``final`` False while the session may still
    revise it (a later event over the same span replaces it), True once it will not change.

    ``label`` is the enrolled name or ``unknown-N`` (one unknown voice keeps its N for the
    whole session); ``speaker`` is the enrolled name or None; ``score`` as Segment.score.
    """

    start: float
    end: float
    label: str
    speaker: str | None
    score: float | None
    final: bool
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "voice",
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "label": self.label,
            "speaker": self.speaker,
            "score": _round(self.score),
            "final": self.final,
            "at": round(self.at, 3),
        }


@dataclass(frozen=True)
class EnrolledEvent:
    """The voice heard under ``label`` was enrolled as speaker ``name``."""

    label: str
    name: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"type": "enrolled", "label": self.label, "name": self.name, "at": round(self.at, 3)}


@dataclass(frozen=True)
class ErrorEvent:
    """A request of the session failed (``code`` as speakerdb.errors, or the service's own)."""

    code: str
    message: str
    at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.at is not None:
            d["at"] = round(self.at, 3)
        return d


LiveEvent = SpeechEvent | VoiceEvent | EnrolledEvent | ErrorEvent


def event_from_dict(d: dict[str, Any]) -> LiveEvent:
    """The event a ``to_dict()`` describes (the client reads the service's JSON with it);
    InvalidInputError for anything else."""
    try:
        kind = d["type"]
        if kind == "speech":
            return SpeechEvent(float(d["start"]), float(d["at"]))
        if kind == "voice":
            score = d["score"]
            return VoiceEvent(
                float(d["start"]),
                float(d["end"]),
                str(d["label"]),
                None if d["speaker"] is None else str(d["speaker"]),
                None if score is None else float(score),
                bool(d["final"]),
                float(d["at"]),
            )
        if kind == "enrolled":
            return EnrolledEvent(str(d["label"]), str(d["name"]), float(d["at"]))
        if kind == "error":
            at = d.get("at")
            return ErrorEvent(str(d["code"]), str(d["message"]), None if at is None else float(at))
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidInputError(f"not a live event: {d!r} ({e})") from None
    raise InvalidInputError(f"not a live event: {d!r}")
