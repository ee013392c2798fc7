"""The :class:`SpeakerDB` facade shared by the CLI and Python users.

    >>> from speakerdb import SpeakerDB
    >>> with SpeakerDB("speakers.db", model="./wavlm-base-plus-sv") as db:
    ...     db.enroll("alice", ["alice1.flac", "alice2.flac"])
    ...     [result] = db.identify(["unknown.wav"])
    ...     print(result.speaker, result.score)

Every write is one SQLite transaction, which records its changes to the speakers itself;
the FAISS index catches up from that record, and is rebuilt from SQLite whenever its
file is missing, damaged or belongs to another database (see indexkeeper.py).
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import functools
import json
import logging
import os
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar, cast

import numpy as np
from sqlalchemy.orm import Session

from . import __version__
from . import timeline as timelines
from .audio import decode as audio
from .audio import pcm, vad
from .audio.decoded import Decoded
from .config import NAMES_SOMEONE, check_max_audio_s, db_target, gallery_name, private_dirs
from .embedding import binding, pipeline
from .embedding.models import Embedder, default_threshold_for, load_embedder
from .errors import (
    AudioError,
    ConflictError,
    ConsentRequiredError,
    DatabaseError,
    EmptyDatabaseError,
    EnrollmentRefusedError,
    GalleryNotFoundError,
    InvalidInputError,
    OptedOutError,
    SpeakerExistsError,
    SpeakerNotFoundError,
    printable_path,
)
from .live import LiveSession
from .results import (
    AuditEntry,
    Consent,
    CopySummary,
    DatabaseInfo,
    EncryptionSummary,
    EnrollResult,
    Erasure,
    ExpireSummary,
    ExportSummary,
    GalleryInfo,
    Identification,
    ImportSummary,
    KeyInfo,
    Limits,
    NewKey,
    NormChange,
    OptOutList,
    OptOutResult,
    Params,
    Policy,
    Progress,
    SpeakerInfo,
    Timeline,
    UtteranceInfo,
    Verification,
    check_cohort_count,
)
from .scoring import cohort as cohorts
from .scoring import evaluate, norm, quality, search
from .scoring.thresholds import check_threshold, cosine_threshold
from .storage import atomic, crypto, enrollment, gallery, governance, indexkeeper, keys, migrate, paths, schema, store
from .storage import index as index_files
from .storage import settings as stored
from .storage.gallery import Gallery as GalleryFile  # a file's contents: the name `gallery` is the tenant's here
from .storage.index import DEFAULT_PARAMS as DEFAULT_INDEX_PARAMS
from .storage.index import IndexFileError, SpeakerIndex
from .storage.indexkeeper import IndexKeeper
from .storage.store import validate_name

if TYPE_CHECKING:  # for annotations only
    from .protocol import SpeakerDBProtocol

# Named here to stay importable from the facade (`from speakerdb.api import ...`), for users and for
# the command line, which reaches the library through this module alone (tests/test_layout.py).
# Schema management and copying work on databases the facade may refuse to open (storage/migrate.py).
from .config import DB_FILENAME as DB_FILENAME
from .config import audio_files as audio_files
from .config import default_db_path as default_db_path
from .config import default_home as default_home
from .config import default_index_dir as default_index_dir
from .embedding.hub import CachedModel as CachedModel
from .embedding.hub import cached_models as cached_models
from .embedding.hub import download_model as download_model
from .embedding.hub import model_cache_dir as model_cache_dir
from .embedding.models import DEFAULT_MODEL as DEFAULT_MODEL
from .errors import ModelMismatchError as ModelMismatchError
from .errors import SpeakerDBError as SpeakerDBError
from .errors import check_output as check_output_path
from .results import Candidate as Candidate
from .results import CohortSetAside as CohortSetAside
from .scoring.calibrate import Calibration as Calibration
from .scoring.cohort import COHORT_SHORTLIST as COHORT_SHORTLIST
from .scoring.evaluate import Report as Report
from .scoring.evaluate import check_plotting as check_plotting
from .scoring.evaluate import parse_target as parse_target
from .scoring.norm import AS_NORM as AS_NORM
from .scoring.norm import AS_NORM_RANGE as AS_NORM_RANGE
from .scoring.quality import MIN_SPEECH_S as MIN_SPEECH_S
from .scoring.search import NORM_SHORTLIST as NORM_SHORTLIST
from .storage.crypto import KeySource as KeySource
from .storage.governance import parse_duration as parse_duration
from .storage.keys import local_actor as local_actor
from .storage.migrate import SQLITE_HEADER as SQLITE_HEADER
from .storage.migrate import database_revision as database_revision
from .storage.migrate import downgrade_database as downgrade_database
from .storage.migrate import upgrade_database as upgrade_database
from .storage.paths import INDEX_SUFFIX as INDEX_SUFFIX
from .storage.paths import MIN_FREE_BYTES as MIN_FREE_BYTES
from .storage.settings import DEFAULT_THRESHOLD as DEFAULT_THRESHOLD
from .storage.settings import INDEX_PARAM_MAX as INDEX_PARAM_MAX
from .storage.store import check_name_text as check_name_text

log = logging.getLogger("speakerdb")

DEFAULT_TOP_K = 5
#: Enroll's voice check scores the stored centroids directly, without building an index, in a
#: process that has none and a database of at most this many speakers (a read of 4 MB at 512-d).
VOICE_CHECK_WITHOUT_INDEX_UP_TO = 2_000
#: The most audit records ``show`` gives about one speaker (the newest).
MAX_AUDIT_SHOWN = 1000


def _check_max_audio_s(value: float | None) -> float | None:
    """A longest-recording setting given to the facade: None, or a positive number of seconds."""
    if value is None:
        return None
    try:
        return check_max_audio_s(value)
    except ValueError as e:
        raise InvalidInputError(f"max_audio_s {e}") from None


def _label(f: str | os.PathLike[str] | audio.Audio) -> str:
    """How a file given to identify is named in its answer: the path as given, or the clip's source."""
    return f.source if isinstance(f, audio.Audio) else audio.source_label(f)


class _Rollback(Exception):
    """Raised inside a transaction to undo it (dry runs)."""


#: Whose changes the calls inside :meth:`SpeakerDB.audited_as` make: ``(API key name or None,)``;
#: None outside such a block (the CLI, Python users), whose changes are ``local:<user>``'s.
_AUDITED_AS: ContextVar[tuple[str | None] | None] = ContextVar("speakerdb_audited_as", default=None)
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _audited(
    operation: str, describe: Callable[..., tuple[str | None, dict[str, Any] | None]]
) -> Callable[[_Method], _Method]:
    """Record the decorated change in the audit log, in the change's own transaction (a change
    that fails, or a dry run, records nothing), whoever makes it: inside
    :meth:`SpeakerDB.audited_as` its key, elsewhere :func:`keys.local_actor`. ``describe`` takes
    the method's arguments and returns the speaker concerned (or None) and the details to keep
    (never audio or vectors)."""

    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def audited_method(self: SpeakerDB, *args: Any, **kwargs: Any) -> Any:
            speaker, detail = describe(*args, **kwargs)
            with store.audited(self._acting(), operation, speaker, detail):
                return method(self, *args, **kwargs)

        return cast(_Method, audited_method)

    return decorate


@dataclass
class _Prepared:
    """One file prepared by :class:`_VoiceCheck`: its name in warnings, and the counter's handle."""

    label: str
    pending: timelines.Pending

    @property
    def seconds(self) -> float:
        return self.pending.seconds


class _VoiceCheck:
    """identify's and verify's voice check (:class:`pipeline.VoiceCount`): the timeline's
    counter, warning (naming the file) about each file that holds more than one voice."""

    def __init__(self, counter: timelines.VoiceCounter, operation: str) -> None:
        self.counter = counter
        self.operation = operation

    def prepare(
        self, source: audio.Audio | Decoded, file: pipeline.Source, heard: vad.Heard | None = None
    ) -> _Prepared:
        label = file.source if isinstance(file, audio.Audio) else str(file)
        return _Prepared(label, self.counter.prepare(source, heard))

    def finish(self, prepared: Sequence[_Prepared]) -> list[int]:
        counts = self.counter.finish([p.pending for p in prepared])
        for p, n in zip(prepared, counts, strict=True):
            if n > 1:
                log.warning(
                    "%s holds %d voices: %s embeds them as one blend; `speakerdb timeline` tells who speaks when",
                    p.label,
                    n,
                    self.operation,
                    extra=NAMES_SOMEONE,  # a client's file name: the service's answer says it, not its log
                )
        return counts


class SpeakerDB:
    """A speaker database: SQLite file (the truth) plus a FAISS index file beside it.

    Args:
        db_path: the SQLite file; created (with its directory) at the newest schema if
            absent. Default: :func:`default_db_path`.
        model: hub id or local directory of the embedding model. Default: the model the
            database was built with, else ``microsoft/wavlm-base-plus-sv``. Loaded on the
            first call that embeds audio, not before.
        device: ``cpu`` or ``cuda``.
        precision: ``fp32`` (the model card's embeddings, within ~4e-7 per component) or ``bf16``
            (about 2.7x as fast on CPUs with bf16 matrix units (AMX); embeddings within ~1e-3 per component).
        embedder: any object with ``model_id``, ``dim`` and ``embed()``
            (:class:`speakerdb.embedding.models.Embedder`); overrides ``model``.
        max_audio_s: the longest recording decoded, in seconds. Default:
            ``$SPEAKERDB_MAX_AUDIO_S``, else 4 hours (see :mod:`speakerdb.config`).
        gallery: the gallery (a separate set of speakers, thresholds, normalisation, keys and
            audit in the same database: a tenant) to work in. Default: ``$SPEAKERDB_GALLERY``,
            else ``default``, the gallery every database has. See :meth:`create_gallery`.
        key: where the key of an encrypted database comes from (:class:`KeySource`: a file
            or a command). Default: ``$SPEAKERDB_KEY_FILE``, else ``$SPEAKERDB_KEY_COMMAND``;
            a new database opened with a key is encrypted (docs/security.md).
    """

    #: The SQLite file, or the server URL as shown (with any password as ***).
    db_path: Path | str

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        *,
        model: str | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        embedder: Embedder | None = None,
        create: bool = True,
        max_audio_s: float | None = None,
        gallery: str | None = None,
        key: KeySource | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._model = model
        #: What time it is (naive UTC) for consent records, last_seen and expiry; tests pass a
        #: simulated date. Default: the system clock (``store.utcnow``).
        self._clock = clock

        self._device = device
        self._precision = precision
        self._embedder = embedder
        #: The longest recording this database decodes; None: the environment's or the default,
        #: read by the decoder when it runs (see config.max_audio_s).
        self.max_audio_s = _check_max_audio_s(max_audio_s)
        # file or server URL: config decides; an encrypted database needs its key (default: the environment's)
        try:
            tenant = gallery_name(gallery)
        except ValueError as e:
            raise InvalidInputError(str(e)) from None
        opened = paths.open_database(db_target(db_path), create, tenant, key)
        self.db_path = opened.db_path
        #: What to open this database with again (another process, a service worker).
        self.target: str | Path = opened.target
        #: Whether this object created the database file (see :meth:`discard_if_unused`).
        self.created, self._made_dirs = opened.created, opened.made_dirs
        #: The default gallery's index file, beside which every other gallery's is.
        self._index_base = opened.index_base
        self._attach(opened.store, opened.index_path)

    def _attach(self, db: store.Store, index_path: Path) -> None:
        """Work in ``db``'s gallery, whose index file is ``index_path``."""
        self.store, self.index_path = db, index_path
        #: Names that decisions named in this gallery, written as last_seen in batches
        #: (governance.SeenNames); each gallery's object has its own.
        self._seen = governance.SeenNames()
        self.indexer = IndexKeeper(self.store, self.index_path, lambda: paths.gallery_index_files(self._index_base))
        #: The normalisation cohort and the enrolled speakers' statistics against it.
        self._cohorts = cohorts.CohortCache(self.db_path)
        #: Enrolled speakers' cohort statistics, kept up to date by replaying the change records.
        self._norm_stats = self._cohorts.stats
        stored.write_defaults(self.store)  # a new database's settings, written once

    # ---- galleries (tenants) ----------------------------------------------------------
    @property
    def gallery(self) -> str:
        """The gallery this object works in (``default``: the one every database has)."""
        return self.store.gallery

    def for_gallery(self, name: str) -> SpeakerDB:
        """This database's gallery ``name``, sharing this object's connections and model: what a
        service answering for several galleries holds. GalleryNotFoundError if there is none.
        Closing it saves its index and closes nothing shared."""
        other = copy.copy(self)  # the options and the loaded model; the rest is its own
        other.created, other._made_dirs = False, []
        other._attach(self.store.for_gallery(name), self._gallery_index(name))
        return other

    def list_galleries(self) -> builtins.list[GalleryInfo]:
        """Every gallery of the database (the default first, then by name), whichever this object works in."""
        with self.store.read(every_gallery=True) as s:
            return [GalleryInfo(g.name, g.created_at, g.n_speakers, g.n_keys) for g in store.list_galleries(s)]

    def create_gallery(self, name: str) -> GalleryInfo:
        """Add an empty gallery ``name`` (1-64 letters, digits, ``.``, ``_``, ``-``): its own speakers,
        threshold, normalisation, keys, audit record and index file. It starts with the
        database's model's starting threshold and no normalisation. Recorded for
        :meth:`gallery_audit`, in no gallery's own audit record."""
        operation = keys.GALLERY_OPERATIONS[0]
        with (
            store.audited(self._acting(), operation, detail={"gallery": name}),
            self.store.write(every_gallery=True) as s,
        ):
            gid = store.create_gallery(s, name)
            settings = store.get_settings(s)  # the default gallery's, and the database's model
            threshold = settings.get("threshold", stored.DEFAULT_THRESHOLD)
            bound = stored.model_id(settings)
            if bound is not None and not stored.threshold_chosen(settings):
                threshold = default_threshold_for(bound) or threshold
            stored.write_gallery_defaults(s, gid, threshold if bound is not None else stored.DEFAULT_THRESHOLD)
        # Ids come back after a downgrade below revision 0005 and an upgrade, or in a restored
        # backup: a file left at this id is another gallery's, never to be loaded as this one's.
        indexkeeper.erase_files(paths.gallery_index_path(self._index_base, gid))
        return next(g for g in self.list_galleries() if g.name == name)

    def remove_gallery(self, name: str) -> GalleryInfo:
        """Delete gallery ``name`` and everything in it (speakers with their utterances and
        embeddings, cohort, keys, audit records, settings) and its index file, erased as
        :meth:`remove` erases a speaker. The default gallery cannot be removed. Recorded for
        :meth:`gallery_audit`."""
        if name == self.gallery and name != store.DEFAULT_GALLERY:
            raise InvalidInputError(
                f"gallery {name!r} is the one this database object works in: open another to remove it"
            )
        index_path = self._gallery_index(name) if name != store.DEFAULT_GALLERY else None
        operation = keys.GALLERY_OPERATIONS[1]
        with (
            store.audited(self._acting(), operation, detail={"gallery": name}),
            self.store.write(every_gallery=True) as s,
        ):
            row = store.remove_gallery(s, name)
        if index_path is not None:
            # Under the index lock: a process saving this gallery's index finishes first, and
            # one that saves later finds the gallery gone and writes nothing.
            left = indexkeeper.erase_files(index_path)
            if left:
                log.warning("gallery %r removed, but its index files could not be deleted: %s", name, ", ".join(left))
        self._scrub_log()
        return GalleryInfo(row.name, row.created_at, row.n_speakers, row.n_keys)

    def _gallery_index(self, name: str) -> Path:
        """The index file of gallery ``name`` (GalleryNotFoundError if there is none)."""
        with self.store.read(every_gallery=True) as s:
            gid = store.gallery_id(s, name)
        if gid is None:
            raise GalleryNotFoundError(f"no gallery named {name!r} in {self.db_path} (see `speakerdb galleries list`)")
        return paths.gallery_index_path(self._index_base, gid)

    # ---- lifecycle ------------------------------------------------------------------
    def close(self) -> None:
        self.flush_seen()  # names that decisions named since the last write
        self.indexer.maintain()  # a lagging index file is saved after the work, not during it
        self.store.close()

    def maintain_index(self) -> None:
        """Save the index file if it lags this process's index far behind, or is missing (a
        header read when it does not): a long-running process calls it between requests, so
        that no request waits for the save. Writes the speakers' last_seen when it is due."""
        if self._seen.due():
            self.flush_seen()
        self.indexer.maintain()

    def now(self) -> datetime:
        """The time this database goes by (naive UTC): the ``clock`` it was opened with, else the system's."""
        return self._clock() if self._clock is not None else store.utcnow()

    def note_seen(self, names: Sequence[str]) -> None:
        """Record that a decision named ``names`` now (identify, verify, timeline, a live
        session): kept in memory and written as their ``last_seen`` in one UPDATE at most
        every ``governance.SEEN_FLUSH_S`` seconds, and at :meth:`close`."""
        self._seen.note([n for n in names if n], self.now())
        # A long-running process calls maintain_index between requests, which writes them at
        # the interval, after the answer; here, inline, only when nobody did for twice as long.
        if self._seen.due(late=2.0):
            self.flush_seen()

    def flush_seen(self) -> None:
        """Write the last_seen times noted so far (one transaction). A database that cannot be
        written now (busy, read-only) keeps them for the next try, with a warning."""
        names = self._seen.take()
        if not names:
            return
        try:
            with self.store.write() as s:
                governance.write_seen(s, names)
        except SpeakerDBError as e:
            self._seen.give_back(names)
            log.warning("last_seen of %d speaker(s) not recorded yet: %s", len(names), e)

    @contextlib.contextmanager
    def audited_as(self, key_name: str | None) -> Iterator[None]:
        """Record the changes made inside this block (enroll, rename, remove, the threshold and
        normalisation, import, governance) as made with API key ``key_name`` (None: by a caller
        of a service that needs no key) rather than by ``local:<user>``, as they are recorded
        outside it. Each record is written in its change's own transaction: a change that fails
        records nothing. The HTTP service runs each change a caller asks for in such a block."""
        token = _AUDITED_AS.set((key_name,))
        try:
            yield
        finally:
            _AUDITED_AS.reset(token)

    def discard_if_unused(self) -> bool:
        """Close, and delete the database files if this object created them and nothing was
        stored since (no speakers, no model bound): a failed first enrollment or a dry-run
        import into a new path leaves no empty database behind. Returns True if deleted."""
        if not self.created:
            return False
        with self.store.read() as s:
            unused = not store.has_speakers(s) and stored.model_id(store.get_settings(s)) is None
        self.close()
        if unused:
            paths.remove_database_files(Path(self.db_path), self.index_path, self._made_dirs)  # created: a file
        return unused

    def __enter__(self) -> "SpeakerDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- settings -------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The score at or above which identify names a speaker and verify accepts, on
        :attr:`threshold_scale` (cosine, or AS-norm when normalisation is on)."""
        return stored.threshold(self.store.settings())

    @property
    def threshold_scale(self) -> str:
        """``"cosine"`` (raw scores) or ``"as-norm"``: the scale the stored threshold is on."""
        return stored.scale(self.store.settings())

    @_audited("threshold", lambda value: (None, {"threshold": value}))
    def set_threshold(self, value: float) -> None:
        """Store a new decision threshold for this database, on its scale: a cosine score in
        [0, 1], or an AS-norm score in ``norm.AS_NORM_RANGE`` when normalisation is on.

        A negative cosine threshold would accept nearly every voice as the best candidate: it
        is refused here and for one call (``identify(threshold=...)``) alike.
        """
        with self.store.write() as s:
            value = check_threshold(value, scale=stored.scale(store.get_settings(s)))
            stored.write_threshold(s, value)

    @_audited("threshold", lambda value, scale=norm.COSINE: (None, {"threshold": value}))
    def apply_threshold(self, value: float | None, scale: str = norm.COSINE) -> None:
        """Store a threshold measured with this database's model on ``scale`` (binding the model
        if the database has none yet, refusing if it has another, or if the database's
        normalisation is not on that scale: calibrate again)."""
        if value is None:
            raise InvalidInputError("no threshold reaches that operating point on these scores: nothing stored")
        value = check_threshold(value, scale=scale)
        _ = self.embedder  # loads and checks the model
        with self.store.write() as s:
            self._bind_model(s)
            current = stored.scale(store.get_settings(s))
            if current != scale:
                raise ConflictError(
                    f"the threshold was measured on {scale} scores but database {self.db_path} now uses {current} "
                    "scores: run `speakerdb calibrate` again; nothing stored"
                )
            stored.write_threshold(s, value)

    # ---- score normalisation ----------------------------------------------------------
    @property
    def norm_settings(self) -> "norm.NormSettings | None":
        """The database's score normalisation (None: raw cosine scores)."""
        d = stored.norm(self.store.settings())
        return norm.NormSettings.from_dict(d) if d else None

    @_audited("norm", lambda cohort, top_n=None, **_: (None, {"norm": "as-norm", "top_n": top_n}))
    def set_norm(
        self,
        cohort: str | os.PathLike[str] | Sequence[str | os.PathLike[str] | audio.Audio] | "norm.CohortVectors",
        *,
        top_n: int | None = None,
        progress: Progress | None = None,
        screen_enrolled: bool = True,
    ) -> NormChange:
        """Turn on AS-norm with ``cohort``: a directory (searched recursively for audio), a list
        of recordings of people who are *not* enrolled, or embeddings already made with this
        database's model (:class:`speakerdb.norm.CohortVectors`).

        Every recording is embedded before anything is written; the embeddings (never the
        audio) replace any cohort stored before. A cohort made with another model is refused.
        If the threshold was on the cosine scale it is reset to the AS-norm starting value
        (``norm.DEFAULT_AS_NORM_THRESHOLD``) and ``NormChange.recalibrate`` is True: run
        ``speakerdb calibrate`` to measure one.

        A cohort holds people who are not enrolled: a recording of an enrolled utterance is
        refused, and one whose raw score against an enrolled speaker reaches the database's
        cosine threshold (identify would name it) is set aside with a warning naming the
        file and the speaker (``NormChange.set_aside``); too few left is an error.
        ``screen_enrolled=False`` keeps every recording that is not an enrolled utterance
        (evaluate: a cohort known to be other people, measured whole).
        ``top_n`` defaults to ``norm.DEFAULT_TOP_N`` or the cohort's size if smaller; a
        larger one given explicitly is an error: before any embedding when there are fewer
        files, else as soon as the recordings set aside (repeats included) leave too few,
        without embedding the rest.
        """
        if isinstance(cohort, norm.CohortVectors):
            vectors = cohort
            cohorts.check_model(vectors, self.embedder, self.db_path)
        else:
            files = evaluate.cohort_files(cohort)
            check_cohort_count(len(files), top_n)  # a top-n the cohort cannot reach fails before the embedding
            self._check_files(files, stored=True)
            # What is set aside is known only clip by clip: a top-n it makes unreachable stops the embedding there.
            reach = cohorts.Reach(self.store, self.indexer, len(files), top_n, screen_enrolled)
            clips = pipeline.embed_all(files, self.embedder, self.max_audio_s, progress, each=reach)
            vectors = cohorts.from_clips(self.embedder.model_id, clips)
        rows, top_n, set_aside = cohorts.screen(self.store, self.indexer, vectors, top_n, screen_enrolled)
        with self.store.write() as s:
            self._bind_model(s)
            assert self._embedder is not None  # bound above
            setting, recalibrate, threshold = cohorts.replace(s, rows, top_n, self._embedder.model_id)
        return NormChange(setting, recalibrate, threshold, norm.AS_NORM, set_aside)

    @_audited("norm", lambda: (None, {"norm": "off"}))
    def set_norm_off(self) -> NormChange:
        """Return to raw cosine scores: the cohort's embeddings are deleted. If the threshold was
        on the AS-norm scale, the cosine threshold from before normalisation was switched on
        comes back (the model's starting one if there was none) and ``NormChange.recalibrate``
        is True."""
        with self.store.write() as s:
            had_norm, recalibrate, threshold = cohorts.remove(s)
        if had_norm:
            self._scrub_log()  # the cohort's embeddings must not linger in the write-ahead log
        return NormChange(None, recalibrate, threshold, norm.COSINE)

    def cohort_vectors(self) -> "norm.CohortVectors | None":
        """The stored cohort as :class:`speakerdb.norm.CohortVectors` (None without normalisation)."""
        with self.store.read() as s:
            return self._cohorts.vectors(s, store.get_settings(s))

    @property
    def embedder(self) -> Embedder:
        """The embedding model, loaded on first use and checked against the database."""
        # Every call that decodes asks for the model first: a bad $SPEAKERDB_MAX_AUDIO_S
        # fails here, before the model loads or any file is read.
        audio.max_duration_s(self.max_audio_s)
        if self._embedder is None:
            settings = self.store.settings()
            source = self._model or stored.model_source(settings) or DEFAULT_MODEL
            self._embedder = load_embedder(source, device=self._device, precision=self._precision)
        self._check_model(self.store.settings())
        return self._embedder

    # ---- operations -----------------------------------------------------------------
    @_audited(
        "enroll",
        lambda name, files, *, new=False, consent=None, override_optout=False, **_: (
            store.normalize_name(name),
            {"files": len(files), "new": new, "consent": consent is not None, "override_optout": override_optout},
        ),
    )
    def enroll(
        self,
        name: str,
        files: Sequence[str | os.PathLike[str] | audio.Audio],
        *,
        new: bool = False,
        metadata: dict[str, Any] | None = None,
        strict: bool = False,
        progress: Progress | None = None,
        consent: str | None = None,
        external_id: str | None = None,
        override_optout: bool = False,
    ) -> EnrollResult:
        """Create speaker ``name`` or add utterances to it.

        Every file is decoded and embedded before anything is written; a bad file raises
        AudioError and leaves the database unchanged. Audio already enrolled for this
        speaker (same decoded-audio sha256) is skipped and reported in ``skipped``.

        Clips that look wrong are reported in ``warnings``: less than MIN_SPEECH_S of
        active speech, or an embedding that scores below the database's threshold against
        the speaker's other clips (a different voice slipped in).

        Args:
            new: refuse (SpeakerExistsError) if the speaker already exists.
            metadata: JSON-serialisable key/values merged into the speaker's metadata.
            strict: refuse (EnrollmentRefusedError) instead of warning; nothing is written.
            consent: who consented, how and when (or a signed form's reference), stored with
                the speaker with the time and the API key that recorded it; replaces one
                recorded before. Required (ConsentRequiredError) when the database's policy
                says so and the speaker has none yet (:meth:`set_policy`).
            external_id: an identifier of the person elsewhere (a customer number); only its
                keyed hash is stored, so that an opt-out can match it later.
            override_optout: enroll a person who opted out (:meth:`optout`), an
                administrator's decision: their opt-out records are deleted, and the override
                is an audit record. Without it, OptedOutError.

        Unless ``new``, the recordings are also compared with every other enrolled speaker:
        one whose score reaches the threshold is named in ``matches`` and ``notes`` ("this
        voice matches alice (0.93): a typo? --new creates it anyway"); ``strict`` refuses it.
        """
        name = validate_name(name)  # NFC: the form names are stored and compared in
        if not files:
            raise InvalidInputError("enroll needs at least one audio file")
        metadata = store.validate_metadata(metadata)  # JSON, finite, valid Unicode, bounded depth and size
        consent = governance.check_consent(consent)
        external_id = governance.check_external_id(external_id)
        self._check_files(files, stored=True)
        with self.store.read() as s:  # refusals cost nothing: before the model loads
            speaker = store.speaker_by_name(s, name)
            if speaker is not None and new:
                raise SpeakerExistsError(f"speaker {name!r} already exists (--new refuses to add to it)")
            self._check_twin(s, name, speaker)
            self._check_governance(s, name, speaker, consent, external_id, override_optout)
        embedded = pipeline.embed_all(files, self.embedder, self.max_audio_s, progress)
        return self._write_enrollment(
            name,
            embedded,
            new=new,
            metadata=metadata,
            strict=strict,
            consent=consent,
            external_id=external_id,
            override_optout=override_optout,
        )

    def _write_enrollment(
        self,
        name: str,
        embedded: Sequence[pipeline.EmbeddedClip],
        *,
        new: bool,
        metadata: dict[str, Any],
        strict: bool,
        consent: str | None = None,
        external_id: str | None = None,
        override_optout: bool = False,
    ) -> EnrollResult:
        """Enrollment's writes, for clips already embedded (from files, or a live session's windows),
        with the governance checks again under the write lock (consent, opt-outs)."""
        # Whose voice this is, unless the caller said it is a new person (--new): a typed name
        # that should have been an enrolled speaker's is caught before it is written.
        matches, notes = ([], []) if new else self._voice_matches(name, embedded)
        if matches and strict:
            raise EnrollmentRefusedError(f"enrollment of {name!r} refused (--strict): {notes[0]}; nothing written")
        with self.store.write() as s:
            self._bind_model(s)
            speaker = store.speaker_by_name(s, name)
            if speaker is not None and new:
                raise SpeakerExistsError(f"speaker {name!r} already exists (--new refuses to add to it)")
            self._check_twin(s, name, speaker)
            optouts = self._check_governance(s, name, speaker, consent, external_id, override_optout)
            # A clip against the speaker's other clips: a raw cosine check (see thresholds.cosine_threshold).
            existing = [u.vector() for u in speaker.utterances] if speaker is not None else []
            warnings = quality.review(name, existing, embedded, cosine_threshold(store.get_settings(s)), strict)
            speaker, created, added, skipped = enrollment.add_clips(s, name, speaker, embedded, metadata)
            if consent is not None:
                speaker.consent, speaker.consent_at, speaker.consent_by = consent, self.now(), self._acting()
            if external_id is not None:
                key = governance.optout_key(s, create=True)
                assert key is not None
                speaker.external_id_hash = governance.external_id_hash(key, external_id)
            if optouts:
                governance.remove_optouts(s, optouts)
                self._audit(s, "optout-override", name, {"optouts": len(optouts)})
            n_utterances = len(speaker.utterances)
        return EnrollResult(name, created, added, skipped, n_utterances, warnings, matches, notes)

    def _voice_matches(
        self, name: str, clips: Sequence[pipeline.EmbeddedClip]
    ) -> tuple[builtins.list[Candidate], builtins.list[str]]:
        """The enrolled speaker other than ``name`` whose voice ``clips`` match best, if its score
        (as identify scores it: the database's normalisation and threshold) reaches the
        threshold, and the line that says so; nothing when no one else is that close.

        The clips are taken together (their mean, as the centroid they would make). For a
        speaker that exists, another is named only when it is the best match of all (closer
        than ``name`` itself)."""
        with self.store.read() as s:
            if not store.has_speakers(s):
                return [], []
            exists = store.speaker_by_name(s, name) is not None
            # Past a few thousand speakers, reading every centroid costs more than the index.
            small = not store.more_speakers_than(s, VOICE_CHECK_WITHOUT_INDEX_UP_TO)
        mean = np.asarray(np.mean(np.stack([c.vector for c in clips]), axis=0, dtype=np.float64))  # (dim,)
        query = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)[None, :]  # (1, dim)
        k = 1 if exists else 2
        if self.indexer.available() or not small:
            [candidates] = search.nearest(self.indexer, self._cohorts, query, k)
        else:  # building the index here would save a file that this enrollment makes stale at once
            candidates = search.nearest_without_index(self.store, self._cohorts, query[0], k)
        threshold = self.threshold
        best = next((c for c in candidates if c.speaker != name), None)
        if best is None or best.score < threshold:
            return [], []
        if exists:
            note = f"this voice matches {best.speaker} ({best.score:.2f}) better than {name}: is it {name}'s?"
        else:
            note = f"this voice matches {best.speaker} ({best.score:.2f}): a typo? --new creates it anyway"
        return [best], [note]

    @staticmethod
    def _check_twin(s: Session, name: str, speaker: store.Speaker | None) -> None:
        """Refuse to create ``name`` beside a speaker whose name differs from it only in case or
        spacing (adding to the speaker of the exact name is not creating one), or as ``.`` or ``..``."""
        if speaker is not None:
            return
        store.check_new_name(name)
        twin = governance.twin_of(s, name)
        if twin is not None:
            raise SpeakerExistsError(
                f"{governance.twin_message(name, twin)}; use {twin!r}, or a name that tells another person "
                "apart; nothing written"
            )

    def _check_governance(
        self,
        s: Session,
        name: str,
        speaker: store.Speaker | None,
        consent: str | None,
        external_id: str | None,
        override_optout: bool,
    ) -> builtins.list[store.OptOut]:
        """Refuse an enrollment the policy forbids (no consent where it is required; a person
        who opted out, without the override); returns the opt-outs the override lifts."""
        settings = store.get_settings(s)
        if governance.require_consent(settings) and consent is None and (speaker is None or speaker.consent is None):
            raise ConsentRequiredError(
                f"database {self.db_path} requires consent to enroll {name!r}: give --consent TEXT "
                "(who consented, how and when, or the signed form's reference); nothing written"
            )
        optouts = governance.matching_optouts(s, name, external_id)
        if optouts and not override_optout:
            when = min(o.created_at for o in optouts)
            raise OptedOutError(
                f"{name!r} opted out of this database on {when:%Y-%m-%d}: they may not be "
                "enrolled again unless an administrator overrides it (--override-optout; through the "
                "service, an admin key); nothing written"
            )
        return optouts

    def _acting(self) -> str | None:
        """Who makes the current change: inside :meth:`audited_as` its API key (None: a caller of
        a service that needs no key), elsewhere ``local:<user>`` (a command line or a program)."""
        acting = _AUDITED_AS.get()
        return acting[0] if acting is not None else keys.local_actor()

    def _audit(self, s: Session, operation: str, speaker: str | None, detail: dict[str, Any] | None) -> None:
        """An audit record written in the caller's transaction, by :meth:`_acting` (the records
        that a change writes besides its own: an expiry's, an opt-out's, an override's)."""
        s.add(
            store.AuditRecord(
                time=self.now(),
                key_name=self._acting(),
                operation=operation,
                speaker=speaker,
                detail=None if detail is None else json.dumps(detail, ensure_ascii=False),
            )
        )

    def identify(
        self,
        files: Sequence[str | os.PathLike[str] | audio.Audio],
        *,
        top_k: int = DEFAULT_TOP_K,
        threshold: float | None = None,
        progress: Progress | None = None,
        count_voices: bool = True,
        on_result: Callable[[Identification], None] | None = None,
    ) -> builtins.list[Identification]:
        """Nearest enrolled speakers for each file, and the decision, in the order of ``files``.

        ``speaker`` is the best candidate if its score reaches the threshold (the
        database's, unless ``threshold`` is given), else None: unknown. A file that cannot
        be used gets an :class:`Identification` with ``error`` set (see ``ok``) instead of
        an exception, so one bad file does not lose the batch; errors that concern every
        file (no speakers enrolled, the model cannot be loaded) still raise.

        ``count_voices`` (default on) also counts the voices in each file (``voices``) and
        warns when there are several: one more pass over the speech, which about doubles
        the time with WavLM; turn it off for recordings known to hold one voice.

        ``on_result(identification)`` is called with each file's answer as soon as it is
        known (files that fail the cheap checks first, then in the order they finish, which
        batching of short files may change a little): a caller prints or stores answers while
        the rest are still being embedded. The list returned is still in the order of ``files``.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidInputError(f"top-k must be a whole number of at least 1, not {top_k!r}")
        threshold = self.threshold if threshold is None else check_threshold(threshold, scale=self.threshold_scale)
        if not files:
            raise InvalidInputError("identify needs at least one audio file")
        errors = self._checked_each(files)  # cheap checks first: all-bad batches never load the model
        batch = pipeline.Batch(errors=errors)
        if len(errors) < len(files):
            self._require_speakers()
        streamed: dict[int, Identification] = {}

        def settle(i: int, done: pipeline.Batch) -> None:
            # One file's answer at once (one search per file instead of one for the batch).
            if i in done.clips:
                found = search.identifications(
                    self.indexer, self._cohorts, {i: done.clips[i]}, top_k, threshold, done.voices
                )
                streamed[i] = found[i]
            else:
                streamed[i] = Identification(_label(files[i]), None, None, [], done.errors[i].reason)
            assert on_result is not None
            on_result(streamed[i])

        if on_result is not None:
            for i in sorted(errors):
                settle(i, batch)
        if len(errors) < len(files):
            embedder = self.embedder
            count = self._voice_check(embedder, "identify") if count_voices else None
            batch = pipeline.embed_batch(
                files,
                embedder,
                self.max_audio_s,
                failed=errors,
                count=count,
                progress=progress,
                settled=settle if on_result is not None else None,
            )
        searched = streamed or search.identifications(
            self.indexer, self._cohorts, batch.clips, top_k, threshold, batch.voices
        )
        self.note_seen([r.speaker for r in searched.values() if r.speaker is not None])
        return [
            searched[i] if i in searched else Identification(_label(f), None, None, [], batch.errors[i].reason)
            for i, f in enumerate(files)
        ]

    def verify(
        self,
        name: str,
        file: str | os.PathLike[str] | audio.Audio,
        *,
        threshold: float | None = None,
        count_voices: bool = True,
    ) -> Verification:
        """1:1 check: is the voice in ``file`` the enrolled speaker ``name``?

        ``count_voices`` (default on) also counts the voices in the file (``voices``) and
        warns when there are several, as identify does: the score of a blend of voices says
        little about any of them. Turn it off for recordings known to hold one voice."""
        name = store.normalize_name(name)
        threshold = self.threshold if threshold is None else check_threshold(threshold, scale=self.threshold_scale)
        self._check_files([file])
        with self.store.read() as s:
            self._get_speaker(s, name)  # an unknown name fails before the model loads
        embedder = self.embedder
        count = self._voice_check(embedder, "verify") if count_voices else None
        batch = pipeline.embed_batch([file], embedder, self.max_audio_s, count=count)
        if 0 in batch.errors:
            raise batch.errors[0]
        clip = batch.clips[0]
        with self.store.read() as s:
            speaker = self._get_speaker(s, name)
            raw = norm.raw_scores(clip.vector, speaker.centroid_vector()[None, :])  # (1,), as identify computes it
            normalised = self._cohorts.normalise(s, store.get_settings(s), clip.vector, np.asarray([speaker.id]), raw)
            score = float(normalised[0])
        if score >= threshold:
            self.note_seen([name])
        return Verification(
            clip.source, name, score, threshold, score >= threshold, raw_score=float(raw[0]), voices=batch.voices.get(0)
        )

    def _voice_check(self, embedder: Embedder, operation: str) -> _VoiceCheck:
        """identify's and verify's count of the voices in each file; voices are told apart on
        raw cosine scores, as in :meth:`timeline`."""
        return _VoiceCheck(timelines.VoiceCounter(embedder, cosine_threshold(self.store.settings())), operation)

    def timeline(
        self,
        files: Sequence[str | os.PathLike[str] | audio.Audio],
        *,
        threshold: float | None = None,
        params: Params | None = None,
        progress: Progress | None = None,
        on_result: Callable[[Timeline], None] | None = None,
    ) -> builtins.list[Timeline]:
        """Who speaks when in each file: segments of voices, each named from the gallery
        when its voice reaches the threshold, else ``unknown-1``, ``unknown-2``...

        How many voices each file holds is found from the file itself, unless ``params``
        says (``Params(speakers=2)``, or ``min_speakers`` / ``max_speakers``); the threshold
        decides only which voices get a name. Works with no speakers enrolled (every voice
        is unknown: plain diarization; without any database see
        :func:`speakerdb.workflows.diarize`). A file with no speech gives an empty timeline
        with a note. See :mod:`speakerdb.timeline`.
        ``on_result(timeline)`` is called with each file's timeline as soon as it is done.
        """
        if threshold is not None:
            threshold = check_threshold(threshold, scale=self.threshold_scale)
        params = (params or Params()).check()
        if not files:
            raise InvalidInputError("timeline needs at least one audio file")
        errors = self._checked_each(files)  # cheap checks first, as identify: all-bad batches load no model
        if len(errors) == len(files):
            failed = [Timeline(_label(f), 0.0, [], [], error=errors[i].reason) for i, f in enumerate(files)]
            if on_result is not None:
                for t in failed:
                    on_result(t)
            return failed
        # Before the model: a missing VAD or a bad segmentation file is reported at once.
        detector = timelines.load_detector(params)
        embedder = self.embedder
        gallery = timelines.database_gallery(self.store, self._cohorts, embedder.dim, threshold)
        results = timelines.build_each(
            files,
            embedder,
            gallery,
            params,
            detector,
            self.max_audio_s,
            failed=errors,
            progress=progress,
            on_result=on_result,
        )
        self.note_seen([v.speaker for t in results for v in t.voices if v.speaker is not None])
        return results

    def stream(
        self,
        sample_rate: int = 16000,
        encoding: str = "f32",
        threshold: float | None = None,
        embed_windows: Callable[[builtins.list[np.ndarray]], np.ndarray] | None = None,
    ) -> LiveSession:
        """A live session: feed it audio as it arrives, read who is speaking (see :mod:`speakerdb.live`).

        ``sample_rate`` 8,000-48,000 Hz; ``encoding`` of the bytes given to ``feed``:
        ``pcm_s16le``, ``f32le`` (or ``f32``), ``mulaw`` or ``alaw`` (float32 arrays are taken
        whatever the encoding). Voices are named with ``threshold`` (the database's if None) on
        the database's scale. ``embed_windows`` embeds equal-length 16 kHz windows into unit
        vectors (n, dim); default: this database's model (the service passes one that batches
        windows across callers). Works with no speakers enrolled (every voice unknown).
        """
        if threshold is not None:
            threshold = check_threshold(threshold, scale=self.threshold_scale)
        params = Params()
        rate, encoding = pcm.check_sample_rate(sample_rate), pcm.check_encoding(encoding)
        detector = vad.load(params.vad_backend)  # before the model: a missing VAD is reported at once
        embedder = self.embedder
        if embed_windows is None:

            def embed_windows(windows: builtins.list[np.ndarray]) -> np.ndarray:
                return timelines.embed_windows(windows, embedder)

        read_at = [-1]  # the generation (the database's count of centroid changes) last read
        renamed_at = [0]  # the newest rename record then (store.last_rename): renames move no generation
        held: set[int] = set()  # the ids of the speakers the session's gallery was read with
        # Refreshes run on the session's thread (a service's stream pool), beside the lane that
        # uses this object's cohort cache: they keep a cache of their own.
        own_cohorts = cohorts.CohortCache(self.db_path)

        def gallery(cache: cohorts.CohortCache = self._cohorts) -> timelines.Gallery:
            with self.store.read() as s:  # before the read: a change in between is read again
                read_at[0] = store.generation(s)
                renamed_at[0] = store.last_rename(s)
                held.clear()
                held.update(store.speaker_ids(s))
            return timelines.database_gallery(self.store, cache, embedder.dim, threshold)

        def refreshed() -> timelines.Gallery | None:
            # One small read a second: a speaker removed, expired or opted out while the session
            # runs must not go on being named from the centroids read when it began. The
            # generation is the database's: changes of other galleries' speakers are passed over.
            # A rename moves no generation: one indexed read of the audit says whether a name changed.
            with self.store.read() as s:
                now = store.generation(s)
                renamed = store.last_rename(s) != renamed_at[0]
                if now == read_at[0] and not renamed:
                    return None
                records = store.changes_between(s, read_at[0], now)
                touched = {speaker_id for _, speaker_id, _, _ in records}
                complete = bool(records) and records[0][0] == read_at[0] + 1  # none pruned meanwhile
                if not renamed and complete and not touched & held and not store.centroids_of(s, sorted(touched)):
                    read_at[0] = now
                    return None
            return gallery(own_cohorts)

        def enroll(name: str, clip: pipeline.EmbeddedClip, add: bool) -> EnrollResult:
            return self._enroll_live(name, clip, add=add)

        return LiveSession(
            embed_windows,
            gallery(),
            sample_rate=rate,
            encoding=encoding,
            params=params,
            detector=detector,
            reload_gallery=gallery,
            enroll_clip=enroll,
            seen=self.note_seen,
            refresh_gallery=refreshed,
        )

    @_audited(
        "enroll",
        lambda name, clip, *, add=False: (store.normalize_name(name), {"live_windows": clip.n_windows, "new": not add}),
    )
    def _enroll_live(self, name: str, clip: pipeline.EmbeddedClip, *, add: bool = False) -> EnrollResult:
        """A live session's enrollment (LiveSession.enroll): one clip of window vectors, through
        enroll's own writes and checks. ``add`` False refuses an existing name, as ``new``."""
        name = validate_name(name)
        pipeline.check_vector(clip.vector, clip.source)
        if not add:
            with self.store.read() as s:
                if store.speaker_by_name(s, name) is not None:
                    raise SpeakerExistsError(
                        f"speaker {name!r} already exists (enroll with add to add this voice to it)"
                    )
        return self._write_enrollment(name, [clip], new=not add, metadata={}, strict=False)

    def list(self) -> builtins.list[SpeakerInfo]:
        """Every enrolled speaker, by name (``utterances`` left empty: see :meth:`show`)."""
        with self.store.read() as s:
            rows = store.list_speakers(s)
        return [
            SpeakerInfo(r.name, r.n_utterances, r.total_duration_s, r.created_at, r.updated_at, r.meta) for r in rows
        ]

    def show(self, name: str) -> SpeakerInfo:
        """Everything held about one speaker: metadata, utterances (sources and times), the
        consent recorded, when a decision last named them (last_seen, with what this process
        noted and has not written yet), the keyed hash of an external id, and the audit
        records that concern them. Never a vector."""
        with self.store.read() as s:
            sp = self._get_speaker(s, name)
            utts = [UtteranceInfo(u.source, u.duration_s, u.audio_sha256, u.created_at) for u in sp.utterances]
            consent = Consent(sp.consent, sp.consent_at, sp.consent_by) if sp.consent is not None else None
            noted = self._seen.peek(sp.name)
            last_seen = max((t for t in (sp.last_seen, noted) if t is not None), default=None)
            return SpeakerInfo(
                sp.name,
                len(utts),
                sum(u.duration_s for u in utts),
                sp.created_at,
                sp.updated_at,
                dict(sp.meta or {}),
                utts,
                consent,
                last_seen,
                sp.external_id_hash,
                keys.speaker_audit_entries(governance.records_of_speaker(s, sp.name), MAX_AUDIT_SHOWN),
            )

    # An opt-out follows a person's earlier names back through the rename records.
    @_audited("rename", lambda old, new: (store.normalize_name(old), {"new": new}))
    def rename(self, old: str, new: str) -> None:
        """Give speaker ``old`` the name ``new``, which must be free (SpeakerExistsError), not
        differ from another speaker's only in case or spacing (SpeakerExistsError, as
        :meth:`enroll` refuses it), and not be that of a person who opted out (OptedOutError).

        Every rename is an audit record: inside :meth:`audited_as` under its key, elsewhere
        under ``local:<user>`` (:func:`speakerdb.storage.keys.local_actor`)."""
        new = validate_name(new)
        store.check_new_name(new)
        with self.store.write() as s:
            speaker = self._get_speaker(s, old)
            old = speaker.name
            if old == new:
                return
            if store.speaker_by_name(s, new) is not None:
                raise SpeakerExistsError(f"cannot rename {old!r}: speaker {new!r} already exists")
            twin = governance.twin_of(s, new, old)  # a speaker may change the case of its own name
            if twin is not None:
                raise SpeakerExistsError(
                    f"cannot rename {old!r}: {governance.twin_message(new, twin)}; choose a name that tells "
                    "them apart; nothing written"
                )
            # A rename made a speaker of an opted-out person's name (and wrote the name in the
            # audit record) without the override that enrolling them needs.
            if governance.matching_optouts(s, new, None):
                raise OptedOutError(
                    f"cannot rename {old!r}: {new!r} opted out of this database; an administrator may "
                    "enroll them again (--override-optout); nothing written"
                )
            speaker.name = new
            speaker.updated_at = store.utcnow()

    @_audited("remove", lambda name: (store.normalize_name(name), None))
    def remove(self, name: str) -> int:
        """Delete a speaker, its utterances and embeddings; returns the number of utterances removed.

        Nothing of the speaker stays recoverable from the files: SQLite's secure_delete
        zeroes the freed cells, the write-ahead log is checkpointed and truncated, and the
        speaker's vector in the index file is zeroed in place at once.
        """
        with self.store.write() as s:
            speaker = self._get_speaker(s, name)
            n = len(speaker.utterances)
            s.delete(speaker)
        self._scrub_log()
        if self.store.server:
            log.warning(
                "removed %r; on PostgreSQL its rows' bytes stay in the table files until `speakerdb db vacuum` "
                "(VACUUM FULL) and in WAL segments, replicas and backups until those are recycled",
                name,
                extra=NAMES_SOMEONE,
            )
        return n

    # ---- governance: the policy, expiry, opt-outs (storage/governance.py) ---------------------
    def policy(self) -> Policy:
        """The database's governance policy: consent required or not, the retention period."""
        settings = self.store.settings()
        seconds = governance.expire_after_s(settings)
        return Policy(governance.require_consent(settings), governance.format_duration(seconds), seconds)

    def set_policy(self, *, require_consent: bool | None = None, expire_after: str | None = None) -> Policy:
        """Change the policy: ``require_consent`` (None: unchanged) makes enrolling without a
        consent record an error; ``expire_after`` (``3y``, ``180d``, ``12h``...; ``never``
        clears it; None: unchanged) is how long a speaker that no decision names and nobody
        enrolls into is kept before :meth:`expire` removes it. Returns the policy as stored."""
        if require_consent is not None and not isinstance(require_consent, bool):
            raise InvalidInputError(f"require_consent must be true or false, not {require_consent!r}")
        seconds: int | None | bool = False if expire_after is None else governance.parse_duration(expire_after)
        with self.store.write() as s:
            governance.write_policy(s, consent=require_consent, expire_s=seconds)
            self._audit(s, "policy", None, {"require_consent": require_consent, "expire_after": expire_after})
        return self.policy()

    def expire(self, *, dry_run: bool = False) -> ExpireSummary:
        """Remove every speaker that no decision named and nobody enrolled into for the
        policy's ``expire_after`` (none if the policy keeps speakers for ever), with exactly
        the erasure of :meth:`remove`, in one transaction; each expiry is an audit record.
        ``dry_run`` lists them and removes nothing. Time is :meth:`now`."""
        self.flush_seen()  # what this process saw counts before anything expires
        seconds = governance.expire_after_s(self.store.settings())
        if seconds is None:
            return ExpireSummary([], 0, None, dry_run)
        cutoff = governance.cutoff(self.now(), seconds)
        # A preview only reads: writers (enrollments, a service's requests) need not wait for it.
        with self.store.read() if dry_run else self.store.write() as s:
            seconds = governance.expire_after_s(store.get_settings(s))  # again, in the transaction
            if seconds is None:
                return ExpireSummary([], 0, None, dry_run)
            cutoff = governance.cutoff(self.now(), seconds)
            gone = governance.expired(s, cutoff)
            names = [sp.name for sp in gone]
            n = sum(len(sp.utterances) for sp in gone)
            if dry_run or not gone:
                return ExpireSummary(names, n, cutoff, dry_run)
            for sp in gone:
                last = max(t for t in (sp.last_seen, sp.updated_at) if t is not None)
                self._audit(
                    s,
                    "expire",
                    sp.name,
                    {
                        "utterances": len(sp.utterances),
                        "last_interaction": store.iso(last),
                        "cutoff": store.iso(cutoff),
                    },
                )
                s.delete(sp)
        erasure = self._erase_after_removal(names)
        return ExpireSummary(names, n, cutoff, dry_run, erasure)

    def expire_every_gallery(self) -> dict[str, ExpireSummary]:
        """:meth:`expire` in each gallery of the database, by its own policy (what ``serve``
        runs once a day): the galleries' names and what expired in each."""
        done: dict[str, ExpireSummary] = {}
        for g in self.list_galleries():
            other = self if g.name == self.gallery else self.for_gallery(g.name)
            try:
                done[g.name] = other.expire()
            finally:
                if other is not self:
                    other.close()
        return done

    def optout(self, name: str, *, external_id: str | None = None) -> OptOutResult:
        """Opt a person out: remove speaker ``name`` if enrolled (the erasure of :meth:`remove`;
        the speaker is found as the opt-out will refuse people: a name that folds to the same,
        case and spacing aside, or the external id; ConflictError, nothing written, if that is
        several speakers, ``dave`` and ``Dave`` alike, for the opt-out would refuse each of
        them while leaving the others enrolled) and keep only keyed hashes (HMAC-SHA256 under
        this database's key) of the normalised name and of the external id (``external_id``,
        else the one given at enrollment), so that :meth:`enroll` refuses them later. Their
        names are also replaced in the audit records by a marker; the opt-out's own record
        names no one."""
        name = validate_name(name)
        external_id = governance.check_external_id(external_id)
        with self.store.write() as s:
            # Everyone the opt-out will refuse (the name folded, the external id): removing the
            # exact name alone left 'Alice Smith' or a twin 'Dave' enrolled and named, yet refused.
            found = governance.speakers_of_person(s, name, external_id)
            if len(found) > 1:
                raise ConflictError(
                    f"{name!r} names {len(found)} enrolled speakers: {', '.join(repr(sp.name) for sp in found)}; "
                    "the opt-out would refuse to enroll each of them (names compare without case or spacing, "
                    "and by external id) and none may stay enrolled: rename or remove those who are not "
                    "this person, then opt out again; nothing written"
                )
            speaker: store.Speaker | None = found[0] if found else None  # none: never enrolled, or not here
            now = self.now()
            stored_name = speaker.name if speaker is not None else name
            governance.add_optout(s, stored_name, speaker.external_id_hash if speaker else None, external_id, now)
            n = len(speaker.utterances) if speaker is not None else 0
            kept_external = external_id is not None or (speaker is not None and speaker.external_id_hash is not None)
            if speaker is not None:
                s.delete(speaker)
            key = governance.optout_key(s, create=True)
            assert key is not None
            marker = "opted-out:" + governance.name_hash(key, stored_name)[:16]
            s.flush()
            governance.scrub_audit(s, stored_name, marker)
            self._audit(s, "optout", None, {"removed": speaker is not None, "utterances": n})
        erasure = self._erase_after_removal([stored_name]) if speaker is not None else None
        return OptOutResult(speaker is not None, n, kept_external, now, erasure)

    def optouts(self) -> OptOutList:
        """How many opt-outs are kept, and when each was recorded: never names or hashes."""
        with self.store.read() as s:
            dates = governance.optout_dates(s)
        return OptOutList(len(dates), dates)

    def erasure(self) -> Erasure:
        """Where a removal (remove, expire, optout) erases a voiceprint in this database, and
        what no command can reach (docs/governance.md)."""
        return _erasure(self.store.server)

    def _erase_after_removal(self, names: builtins.list[str]) -> Erasure:
        """What remove does after its transaction (log checkpoint; the PostgreSQL warning),
        for speakers already deleted; returns where they were erased."""
        self._scrub_log()
        if self.store.server:
            log.warning(
                "removed %d speaker(s); on PostgreSQL their rows' bytes stay in the table files until "
                "`speakerdb db vacuum` (VACUUM FULL) and in WAL segments, replicas and backups until recycled",
                len(names),
            )
        return self.erasure()

    def _scrub_log(self) -> None:
        if not self.store.checkpoint():
            log.warning(
                "other processes kept reading %s: its write-ahead log still holds deleted pages "
                "until the next checkpoint (any later remove retries it)",
                self.db_path,
            )

    def info(self) -> DatabaseInfo:
        """What this database is: paths, model, dimension, threshold, counts; ``generation`` is
        this gallery's count of changes to its speakers' centroids (never another gallery's)."""
        with self.store.read() as s:
            settings = store.get_settings(s)
            n_speakers, n_utterances = store.counts(s)
            generation = store.gallery_generation(s)
        return DatabaseInfo(
            db_path=str(self.db_path),
            index_path=str(self.index_path),
            model_id=stored.model_id(settings),
            model_source=stored.model_source(settings),
            dim=stored.dim(settings),
            threshold=stored.threshold(settings),
            n_speakers=n_speakers,
            n_utterances=n_utterances,
            schema_revision=schema.HEAD_REVISION,
            generation=generation,
            index_params=stored.index_params(settings),
            threshold_scale=stored.scale(settings),
            norm=stored.norm(settings),
            gallery=self.gallery,
            encrypted=self.store.encrypted,
        )

    def export(
        self, path: str | os.PathLike[str], speakers: Sequence[str] | None = None, *, overwrite: bool = False
    ) -> ExportSummary:
        """Write a gallery file of all speakers, or of the named ones (see docs/gallery-format.md).

        The file holds metadata and per-utterance embeddings, never audio. It is written
        to a temporary name and renamed, so an interrupted export leaves no half file.
        An existing file is replaced only with ``overwrite``; the output path is checked
        before anything is read.
        """
        return self._export(path, speakers, overwrite, None)

    def export_sealed(
        self,
        path: str | os.PathLike[str],
        recipient_key: str | os.PathLike[str],
        speakers: Sequence[str] | None = None,
        *,
        overwrite: bool = False,
    ) -> ExportSummary:
        """:meth:`export`, sealed to a recipient: the gallery is encrypted to the X25519 public
        key in the PEM file ``recipient_key`` and opens only with its private key
        (:meth:`import_sealed`). Never written in the clear, not even to a temporary file."""
        return self._export(path, speakers, overwrite, crypto.load_public_key(recipient_key))

    def _export(
        self, path: str | os.PathLike[str], speakers: Sequence[str] | None, overwrite: bool, recipient: bytes | None
    ) -> ExportSummary:
        path = check_output_path(path, overwrite=overwrite)
        with self.store.read() as s:
            rows = (
                store.speakers_by_name(s)
                if speakers is None
                else [self._get_speaker(s, name) for name in dict.fromkeys(speakers)]
            )
            if not rows:
                raise EmptyDatabaseError(f"no speakers to export from {self.db_path}")
            g = gallery.from_store(store.get_settings(s), rows)
        try:
            size = gallery.write(path, g, __version__, recipient)
        except OSError as e:  # a directory such as /proc that refuses new files, a full disk
            raise InvalidInputError(f"cannot write {path}: {e.strerror or e}") from None
        return ExportSummary(str(path), len(g.speakers), g.n_utterances, size)

    @_audited(
        "import", lambda path, *, on_conflict="fail", **_: (None, {"file": str(path), "on_conflict": on_conflict})
    )
    def import_gallery(
        self,
        path: str | os.PathLike[str],
        *,
        on_conflict: str = "fail",
        dry_run: bool = False,
        limits: Limits | None = None,
    ) -> ImportSummary:
        """Import a gallery file in one transaction: all of it, or nothing.

        The whole file is validated before anything is written. Speakers that already
        exist are handled by ``on_conflict``: ``fail`` refuses the import and names them,
        ``skip`` keeps the existing ones, ``replace`` swaps them whole, ``merge`` adds
        the incoming utterances (not those with an audio sha256 the speaker already has)
        and recomputes the centroid. ``dry_run`` reports what would happen and writes
        nothing. ``limits`` caps what is read (default :class:`speakerdb.gallery.Limits`:
        a million utterances).
        """
        return self._import_gallery(path, on_conflict, dry_run, limits, None)

    @_audited(
        "import",
        lambda path, private_key, *, on_conflict="fail", **_: (None, {"file": str(path), "on_conflict": on_conflict}),
    )
    def import_sealed(
        self,
        path: str | os.PathLike[str],
        private_key: str | os.PathLike[str],
        *,
        on_conflict: str = "fail",
        dry_run: bool = False,
        limits: Limits | None = None,
    ) -> ImportSummary:
        """:meth:`import_gallery` of a gallery sealed to this recipient (:meth:`export_sealed`),
        opened in memory with the X25519 private key in the PEM file ``private_key``."""
        return self._import_gallery(path, on_conflict, dry_run, limits, private_key)

    def _import_gallery(
        self,
        path: str | os.PathLike[str],
        on_conflict: str,
        dry_run: bool,
        limits: Limits | None,
        private_key: str | os.PathLike[str] | None,
    ) -> ImportSummary:
        gallery.check_policy(on_conflict)

        def check_model(model_id: str, dim: int) -> int | None:
            # Before any vector is unpacked: a gallery of another model costs nothing to refuse.
            with self.store.read() as s:
                settings = store.get_settings(s)
            binding.check_gallery_model(path, stored.model_id(settings), stored.dim(settings), model_id, dim)
            return stored.dim(settings) if stored.model_id(settings) is not None else None

        g = gallery.read(path, limits, check_model=check_model, private_key=private_key)
        summary = ImportSummary(str(path), dry_run=dry_run)
        try:
            with self.store.write() as s:
                self._bind_gallery_model(s, g, path)
                self._check_gallery_governance(s, g, path, on_conflict)
                gallery.into_store(s, g, on_conflict, summary)
                if dry_run:
                    raise _Rollback
        except _Rollback:
            pass
        if summary.replaced and not dry_run:
            self._scrub_log()  # replaced speakers' old embeddings must not linger in the log
        return summary

    def _check_gallery_governance(
        self, s: Session, g: GalleryFile, path: str | os.PathLike[str], on_conflict: str
    ) -> None:
        """An import enrolls too: refuse speakers without consent where the policy requires it
        (unless already enrolled with consent that the import keeps: a merge; a replace deletes
        it with the speaker), and people who opted out (no override here: enroll them one by one
        with the override)."""
        missing, opted = [], []
        required = governance.require_consent(store.get_settings(s))
        for incoming in g.speakers:
            current = store.speaker_by_name(s, incoming.name) if required else None
            kept = current is not None and current.consent is not None and on_conflict != "replace"
            if required and incoming.consent is None and not kept:
                missing.append(incoming.name)
            if governance.matching_optouts(s, incoming.name, None):
                opted.append(incoming.name)
        if opted:
            raise OptedOutError(
                f"{len(opted)} speaker(s) of {path} opted out of this database: {', '.join(opted)}; "
                "nothing was imported (an administrator may enroll them with --override-optout)"
            )
        if missing:
            raise ConsentRequiredError(
                f"database {self.db_path} requires consent to enroll, and {len(missing)} speaker(s) of {path} "
                f"have none: {', '.join(missing)}; nothing was imported"
            )

    def vacuum(self) -> None:
        """Rewrite the database's tables so that no trace of deleted rows stays in them.

        SQLite: VACUUM and a truncating checkpoint (``remove`` already zeroes freed cells).
        PostgreSQL: VACUUM FULL and a CHECKPOINT, the maintenance step after ``remove``
        (which runs a plain VACUUM); it locks the tables while it runs. What no command
        can reach (WAL segments already written, replicas, backups) is in docs/several-machines.md.
        """
        self.store.vacuum_full()

    def rebuild_index(self) -> int:
        """Rebuild the index file from SQLite; returns the number of speakers indexed."""
        try:
            return len(self.indexer.rebuild())
        except IndexFileError as e:
            raise DatabaseError(f"the index was rebuilt in memory but could not be saved: {e}") from None

    @property
    def index_params(self) -> dict[str, Any]:
        """The index parameters stored with this database (keys of ``index.DEFAULT_PARAMS``)."""
        return {**DEFAULT_INDEX_PARAMS, **stored.index_params(self.store.settings())}

    def set_index_params(self, **params: int) -> dict[str, Any]:
        """Store new index parameters; returns all of them.

        ``hnsw_ef_search`` (candidates an HNSW search keeps: recall against speed) applies
        to the next search, in every process. The others decide how the index is built:
        ``approximate_above`` (speakers above which it is an HNSW graph rather than exact),
        ``hnsw_m`` and ``hnsw_ef_construction`` (the graph's degree and build effort);
        they apply from the next :meth:`rebuild_index`.
        """
        stored.check_index_params(params)
        with self.store.write() as s:
            merged = {**DEFAULT_INDEX_PARAMS, **stored.index_params(store.get_settings(s)), **params}
            stored.write_index_params(s, merged)
        return merged

    def index_file_info(self) -> dict[str, Any] | None:
        """What the index file says of itself (kind, speakers, parameters it was built with), or None."""
        info = SpeakerIndex.file_info(self.index_path)
        if info is None:
            return None
        return {
            "kind": info["kind"],
            "speakers": info["speakers"],
            "generation": info["generation"],
            "built_with": info["params"],
            "bytes": info["bytes"],
        }

    # ---- keys of the HTTP service and the audit record (see keys.py) --------------------
    def create_key(self, name: str, scope: str, *, actor: str | None = None) -> NewKey:
        """Create API key ``name`` with ``scope`` (read, write or admin); returns it with its
        secret, which is shown this once: the database keeps only a salted hash. The audit
        record names ``actor``, by default whoever makes the change as for every other change
        (inside :meth:`audited_as` its key, elsewhere ``local:<user>``)."""
        detail = {"key": name, "scope": scope}
        with store.audited(actor or self._acting(), "key-create", detail=detail), self.store.write() as s:
            return keys.create(s, name, scope)

    def list_keys(self) -> builtins.list[KeyInfo]:
        """Every API key, revoked ones included, by name (never their secrets)."""
        with self.store.read() as s:
            return keys.list_keys(s)

    def revoke_key(self, name: str, *, actor: str | None = None) -> KeyInfo:
        """Revoke API key ``name``: every server refuses it from its next request. The audit
        record names ``actor``, by default whoever makes the change (as :meth:`create_key`)."""
        with store.audited(actor or self._acting(), "key-revoke", detail={"key": name}), self.store.write() as s:
            return keys.revoke(s, name)

    def authenticate(self, key: str, *, any_gallery: bool = False) -> KeyInfo | None:
        """The active API key ``key`` is, or None: a key of this gallery, or with ``any_gallery``
        of any (the service, which then answers only for the key's own gallery: ``KeyInfo.gallery``)."""
        with self.store.read(every_gallery=any_gallery) as s:
            return keys.authenticate(s, key)

    def has_keys(self, include_revoked: bool = False, *, any_gallery: bool = False) -> bool:
        """Whether any API key is active, or with ``include_revoked`` was ever created (then
        ``serve`` requires a key for every request, even once all are revoked); in this
        gallery, or with ``any_gallery`` in any (what ``serve`` decides on)."""
        with self.store.read(every_gallery=any_gallery) as s:
            return keys.has_any_keys(s) if include_revoked else keys.has_active_keys(s)

    def audit(self, limit: int = 100, speaker: str | None = None) -> builtins.list[AuditEntry]:
        """The newest ``limit`` changes made in this gallery, oldest first: through the service
        under the caller's key, elsewhere under ``local:<user>``; galleries made and removed are
        :meth:`gallery_audit`'s."""
        store.check_name_text(speaker)
        with self.store.read() as s:
            return keys.audit_entries(s, limit, speaker)

    def gallery_audit(self, limit: int = 100) -> builtins.list[AuditEntry]:
        """The newest ``limit`` records of galleries made and removed, oldest first, whichever
        gallery this object works in: for who administers galleries (``speakerdb galleries``
        on the database's machine), never a gallery's keys."""
        with self.store.read(every_gallery=True) as s:
            return keys.gallery_audit_entries(s, limit)

    # ---- internals ------------------------------------------------------------------
    @staticmethod
    def _check_files(files, stored: bool = False) -> None:
        """Cheap checks first: a missing file is reported before the model takes seconds to load.
        ``stored``: the files' labels will be stored (enrollment, cohort) and are checked too."""
        for f in files:
            if not isinstance(f, audio.Audio):
                audio.check_file(f)
            elif stored:  # a label the caller chose, stored as the source
                store.check_text(f.source, "source label")

    @classmethod
    def _checked_each(cls, files: Sequence[pipeline.Source]) -> dict[int, AudioError]:
        """:meth:`_check_files` for each file: the errors of those that fail, by position."""
        errors: dict[int, AudioError] = {}
        for i, f in enumerate(files):
            try:
                cls._check_files([f])
            except AudioError as e:
                errors[i] = e
        return errors

    def _check_model(self, settings: stored.Settings) -> None:
        assert self._embedder is not None
        binding.check_model(
            self.db_path,
            stored.model_id(settings),
            stored.dim(settings),
            stored.model_source(settings),
            self._embedder.model_id,
            self._embedder.dim,
        )

    def _bind_model(self, s: Session) -> None:
        """Record the loaded model in a database that has none; re-check it inside the write transaction."""
        settings = store.get_settings(s)
        self._check_model(settings)
        embedder = self._embedder
        assert embedder is not None
        stored.bind_model(
            s,
            settings,
            embedder.model_id,
            int(embedder.dim),
            getattr(embedder, "name_or_path", None) or self._model or embedder.model_id,
            getattr(embedder, "default_threshold", None),
        )

    def _bind_gallery_model(self, s: Session, g: GalleryFile, path: str | os.PathLike[str]) -> None:
        """A gallery must come from this database's model; an empty database takes the gallery's.

        A gallery with no speakers brings no vectors and binds nothing: it cannot decide
        which model a database uses.
        """
        if not g.speakers:
            return
        settings = store.get_settings(s)
        # Again, inside the transaction: another writer may have bound a model since the file was read.
        binding.check_gallery_model(path, stored.model_id(settings), stored.dim(settings), g.model_id, g.dim)
        stored.bind_model(
            s, settings, g.model_id, g.dim, g.model_source or g.model_id, default_threshold_for(g.model_id)
        )

    def _require_speakers(self) -> None:
        with self.store.read() as s:
            if not store.has_speakers(s):
                # Another gallery may hold speakers: a message naming the file alone reads as if none did.
                where = (
                    f"gallery {self.gallery!r} of {self.db_path}"
                    if self.gallery != store.DEFAULT_GALLERY
                    else self.db_path
                )
                raise EmptyDatabaseError(f"no speakers are enrolled in {where}: run `speakerdb enroll` first")

    @staticmethod
    def _get_speaker(s, name: str) -> store.Speaker:
        store.check_name_text(name)  # invalid UTF-8 from a command line: one clear error, not the driver's
        speaker = store.speaker_by_name(s, store.normalize_name(name))
        if speaker is None and store.normalize_name(name) != name:
            # A name stored before names were normalised (an older database) is still found as typed.
            speaker = store.speaker_by_name(s, name)
        if speaker is None:
            # The closest names by spelling are looked up only now, on the error path: a name
            # that exists costs nothing more. Whoever may look a name up may list them all.
            close = store.similar_names(s, store.normalize_name(name))
            quoted = [repr(c) for c in close]
            hint = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
            raise SpeakerNotFoundError(
                f"no speaker named {name!r} (did you mean {hint}?)"
                if close
                else f"no speaker named {name!r} (see `speakerdb list`)"
            )
        return speaker


def copy_database(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    progress: Callable[[str, int], None] | None = None,
) -> CopySummary:
    """Copy a whole database, SQLite to PostgreSQL or back: every speaker, utterance,
    embedding, setting, key, audit record and cohort embedding, ids kept.

    Every row is checked as a gallery import checks it (names, metadata, finite unit
    vectors of the database's dimension), and the destination is written in one
    transaction: all of it or nothing. The destination must be new or empty (created at
    the newest schema); it keeps its own identity, and its change record starts afresh.
    The source is read in one snapshot and never written.
    """
    src, src_name = migrate.open_source(source)
    target = SpeakerDB(destination)  # created as every database is (its directories, its first settings)
    dst_name = str(target.db_path)
    try:
        rows = migrate.copy(src, src_name, target.store, dst_name, progress)
    except BaseException:
        target.discard_if_unused()  # a new destination file that got nothing leaves nothing
        target.close()
        raise
    finally:
        src.close()
    target.close()
    return CopySummary(src_name, dst_name, rows)


def encrypt_database(
    db_path: str | os.PathLike[str] | None = None,
    key: KeySource | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> EncryptionSummary:
    """Encrypt an existing database's vectors under a new data key wrapped by ``key``
    (default: SPEAKERDB_KEY_FILE / SPEAKERDB_KEY_COMMAND), in one transaction.

    The index file is deleted first and written again sealed; no page then keeps a vector
    in the clear (SQLite's secure_delete zeroed the old cells, a truncating checkpoint
    empties the log; PostgreSQL: VACUUM FULL). A missing key, or a database already
    encrypted, is refused before anything is written (an empty database is encrypted by
    opening it with the key). Other processes that have the database open must be
    restarted with the key.
    """
    key = crypto.require(key if key is not None else crypto.configured())
    kek = key.read()  # a key that cannot be read is refused before the database is touched
    with SpeakerDB(db_path, create=False, key=key) as db:
        if db.store.began_encrypted:  # empty: opening it with the key encrypted it
            return EncryptionSummary(str(db.db_path), {}, int(db.store.codec.dek_id or 0), True, True)
        if db.store.encrypted:
            raise InvalidInputError(
                f"database {db.db_path} is already encrypted (`speakerdb key rotate` changes its key)"
            )
        left = _drop_index_files(db)
        if left:
            raise DatabaseError(f"the index file cannot be deleted ({', '.join(left)}): nothing was encrypted")
        with db.store.write(every_gallery=True) as s:  # every gallery's vectors
            codec = store.start_encryption(s, kek, store.get_settings(s)["database_id"])
            rows = store.reseal(s, crypto.PLAIN, codec, progress)
        db.store.adopt(codec, key, kek)
        _after_sealing(db)
    return EncryptionSummary(str(db.db_path), rows, int(codec.dek_id or 0), rewrapped=True, reencrypted=True)


def rotate_key(
    db_path: str | os.PathLike[str] | None = None,
    new_key: KeySource | None = None,
    *,
    reencrypt: bool = False,
    key: KeySource | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> EncryptionSummary:
    """Wrap the data key of an encrypted database under ``new_key`` and, with
    ``reencrypt``, seal every vector again under a new data key, in one transaction.

    The database is opened with its current ``key`` (default: the environment's), which
    must unwrap its data key; ``new_key`` is read before anything is written. Processes
    that have the database open keep working (they hold the data key; after
    ``reencrypt`` they fetch the new one with the key they were started with, so restart
    them with ``new_key`` if it differs).
    """
    if new_key is None and not reencrypt:
        raise InvalidInputError(
            "nothing to rotate: give a new key (--new-key-file or --new-key-command), --reencrypt, or both"
        )
    new_kek = new_key.read() if new_key is not None else None  # unreadable: refused before any change
    with SpeakerDB(db_path, create=False, key=key) as db:
        if not db.store.encrypted:
            raise InvalidInputError(f"database {db.db_path} is not encrypted: `speakerdb db encrypt` encrypts it")
        old_kek = db.store.read_kek()
        kek = new_kek if new_kek is not None else old_kek
        database_id = stored.database_id(db.store.settings())
        what = f"the {db.store.key.describe()}" if db.store.key is not None else "the key"
        if not reencrypt:
            with db.store.write() as s:
                dek_id = store.rewrap(s, old_kek, kek, database_id, what)
            db.store.adopt(db.store.codec, new_key or db.store.key, kek)
            return EncryptionSummary(str(db.db_path), {}, dek_id, rewrapped=True, reencrypted=False)
        old_codec = db.store.codec
        left = _drop_index_files(db)
        if left:
            raise DatabaseError(f"the index file cannot be deleted ({', '.join(left)}): nothing was changed")
        with db.store.write(every_gallery=True) as s:  # every gallery's vectors
            dek_id = int(s.scalar(store.select(store.func.max(store.DataKey.dek_id))) or 0) + 1
            codec = store.start_encryption(s, kek, database_id, dek_id)
            rows = store.reseal(s, old_codec, codec, progress)
        db.store.adopt(codec, new_key or db.store.key, kek)
        _after_sealing(db)
    return EncryptionSummary(str(db.db_path), rows, dek_id, rewrapped=new_key is not None, reencrypted=True)


def new_key_pair(path: str | os.PathLike[str], *, overwrite: bool = False) -> tuple[str, str]:
    """Write a new X25519 key pair for sealed galleries: the private key to ``path`` (0600)
    and the public key to ``path.pub``, both PEM; missing directories are made, 0700. Returns
    both paths."""
    private, public = crypto.new_key_pair()
    public_path = f"{os.fspath(path)}.pub"
    _make_key_directory(path)
    check_output_path(public_path, overwrite=overwrite)
    with atomic.write_output(path, overwrite=overwrite, what="the private key file ") as f:
        f.write(private)
    with atomic.write_output(public_path, overwrite=overwrite, what="the public key file ") as f:
        f.write(public)
    return str(path), public_path


def new_key_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> str:
    """Write a new random key-encryption key (64 hex digits) to ``path``, 0600, never through
    a link; an existing file is replaced only with ``overwrite``; its missing directories are
    made, 0700. Returns the path written."""
    _make_key_directory(path)
    with atomic.write_output(path, overwrite=overwrite, what="the key file ") as f:
        f.write(crypto.new_key_text())
    return str(path)


def _make_key_directory(path: str | os.PathLike[str]) -> None:
    """Make a key file's missing directories, owner-only: the place the docs suggest,
    ``~/.config/speakerdb``, often does not exist yet, and a key's folder is nobody else's."""
    parent = Path(os.fspath(path)).parent
    if parent.exists():
        return
    try:
        private_dirs(parent)
    except OSError as e:
        raise InvalidInputError(f"cannot create the directory {printable_path(parent)}: {e.strerror or e}") from None


def _drop_index_files(db: SpeakerDB) -> list[str]:
    """Delete every gallery's index file (each under its lock) before the vectors are sealed
    anew: none sealed otherwise, or not at all, outlives the change. This gallery's is written
    again by :func:`_after_sealing`, the others' when next needed. Returns what stayed."""
    with db.store.read(every_gallery=True) as s:
        ids = [g.id for g in store.list_galleries(s) if g.id != db.store.gallery_id]
    try:
        left = db.indexer.drop_files()
        for gid in ids:
            path = paths.gallery_index_path(db._index_base, gid)
            with index_files.write_lock(path):
                left += index_files.remove_files(path)
    except IndexFileError as e:  # another process holds an index lock for long
        left = [str(e)]
    return left


def _after_sealing(db: SpeakerDB) -> None:
    """After every vector was sealed anew: no page of the tables keeps an older copy, and the
    index file is written sealed."""
    # SQLite's secure_delete has zeroed every overwritten cell: a truncating checkpoint moves
    # the pages from the log into the file. PostgreSQL keeps the old row versions in its
    # table files until VACUUM FULL rewrites them.
    if db.store.server:
        db.store.vacuum_full()
    else:
        db.store.checkpoint()
    try:
        db.indexer.rebuild()
    except IndexFileError as e:
        raise DatabaseError(
            f"the vectors were sealed and committed, but the index file could not be written ({e}): "
            "it is rebuilt when next needed"
        ) from None


#: What zeroing in place cannot reach on any store: it overwrites the blocks the file system
#: shows, not earlier copies that it or the disk kept.
_OLD_BLOCKS = (
    "earlier copies of overwritten blocks that a copy-on-write file system (btrfs, ZFS) or its "
    "snapshots, or an SSD's wear levelling, keeps"
)


def _erasure(server: bool) -> Erasure:
    """Where a removal erases a voiceprint, and what no command can reach (docs/governance.md)."""
    if server:
        return Erasure(
            erased=[
                "speakers and utterances rows: deleted in one transaction, then VACUUM; "
                "the bytes leave the table files at `speakerdb db vacuum` (VACUUM FULL)",
                "the index file: the speaker's position zeroed in place",
            ],
            not_reachable=[
                "PostgreSQL WAL segments already written, until the server recycles them",
                "replicas, until they replay the deletion",
                "backups and base backups made before the removal",
                "galleries exported before the removal",
                _OLD_BLOCKS,
            ],
        )
    return Erasure(
        erased=[
            "speakers and utterances rows: deleted, their cells zeroed (SQLite secure_delete)",
            "the write-ahead log: checkpointed and truncated to zero bytes",
            "the index file: the speaker's position zeroed in place",
        ],
        not_reachable=[
            "backups and copies of the database file made before the removal",
            "galleries exported before the removal",
            "replicas or synced copies of the file (rsync, Litestream, cloud drives)",
            _OLD_BLOCKS,
        ],
    )


# mypy checks here that a SpeakerDB is a SpeakerDBProtocol (tests/test_protocol.py compares signatures).
if TYPE_CHECKING:

    def _satisfies_the_protocol(db: SpeakerDB) -> SpeakerDBProtocol:
        return db
