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

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import stat
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar, cast

import numpy as np

from .audio import decode as audio
from .audio.decoded import Decoded
# Defaults and environment variables live in config.py; these stay importable from here.
from .config import DB_FILENAME, default_db_path, default_home, default_index_dir  # noqa: F401
from .config import check_max_audio_s, db_target
from .storage import gallery, schema, store
from .scoring import norm
from .scoring import calibrate as calibration
from .scoring import evaluate
# Named here for the command line, which imports nothing below this facade (tests/test_layout.py).
from .scoring.calibrate import Calibration
from .scoring.evaluate import Report, check_plotting, parse_target  # noqa: F401
from .scoring.norm import AS_NORM, AS_NORM_RANGE  # noqa: F401
from .storage.store import check_name_text  # noqa: F401
from . import timeline as timeline_files
from .embedding import pipeline
from .embedding.models import DEFAULT_MODEL, Embedder, default_threshold_for, load_embedder, same_model
from .errors import (
    AudioError,
    ConflictError,
    DatabaseError,
    EmptyDatabaseError,
    EnrollmentRefusedError,
    InvalidInputError,
    ModelMismatchError,
    SpeakerDBError,
    SpeakerExistsError,
    SpeakerNotFoundError,
)
from .storage.store import validate_name
from .storage.index import DEFAULT_PARAMS as DEFAULT_INDEX_PARAMS
from .storage.index import IndexFileError, SpeakerIndex
from .storage.indexkeeper import IndexKeeper
# The result types live in results.py (shared with the client); imported here so that
# `from speakerdb.api import Identification` and the like keep working.
from .results import (
    AuditEntry,
    Candidate,
    CohortSetAside,
    CopySummary,
    DatabaseInfo,
    EnrollResult,
    ExportSummary,
    FileNote,
    Identification,
    ImportSummary,
    KeyInfo,
    Limits,
    NewKey,
    NormChange,
    Params,
    Progress,
    SpeakerInfo,
    Timeline,
    UtteranceInfo,
    Verification,
)

if TYPE_CHECKING:  # for annotations only: the methods import them where they are used
    from .protocol import SpeakerDBProtocol
    from . import timeline as timelines

log = logging.getLogger("speakerdb")

#: The model card's suggested cosine threshold for microsoft/wavlm-base-plus-sv.
DEFAULT_THRESHOLD = 0.86
DEFAULT_TOP_K = 5
#: With normalisation on, identify re-ranks this many raw-score candidates by AS-norm score
#: (the normalised best is almost always among the raw best few; see docs/accuracy.md).
NORM_SHORTLIST = 50
#: Nearest enrolled speakers (by the index) whose exact scores are checked per cohort recording.
COHORT_SHORTLIST = 5
#: An enrollment clip with less active speech than this is flagged (seconds).
MIN_SPEECH_S = 1.0
INDEX_SUFFIX = ".faiss"

#: Largest index parameters accepted. FAISS keeps them in C ints (a 20-digit ef_search
#: overflowed every later search); beyond these a graph costs memory for no recall: M of
#: 256 links per node is 2 KiB per speaker per level, ef of 100,000 searches most of a
#: million-speaker graph.
INDEX_PARAM_MAX = {
    "hnsw_ef_search": 100_000,  # candidates per search
    "hnsw_ef_construction": 10_000,  # candidates per insertion
    "hnsw_m": 256,  # links per node
    "approximate_above": 2**31 - 1,  # speakers
}


def _check_max_audio_s(value: float | None) -> float | None:
    """A longest-recording setting given to the facade: None, or a positive number of seconds."""
    if value is None:
        return None
    try:
        return check_max_audio_s(value)
    except ValueError as e:
        raise InvalidInputError(f"max_audio_s {e}") from None


def _bind(s, settings: dict[str, Any], model_id: str, dim: int, source: str, own_threshold: float | None) -> None:
    """The one way a database gets its model, whoever calls (enroll, calibrate --apply, import):
    id, dimension and where to load it from, and the model's own starting threshold unless
    someone already chose one. Does nothing for a database that already has a model."""
    if settings.get("model_id") is not None:
        return
    store.set_setting(s, "model_id", model_id)
    store.set_setting(s, "dim", int(dim))
    store.set_setting(s, "model_source", source)
    # A model whose scores live on another scale (GE2E) brings its own starting threshold.
    if own_threshold is not None and not settings.get("threshold_chosen"):
        store.set_setting(s, "threshold", float(own_threshold))


def _label(f: str | os.PathLike[str] | audio.Audio) -> str:
    """How a file given to identify is named in its answer: the path as given, or the clip's source."""
    return f.source if isinstance(f, audio.Audio) else audio.source_label(f)


def _release(source: object) -> None:
    """Free what a :class:`Decoded` file keeps (its temporary file, if any); other sources hold nothing."""
    if isinstance(source, Decoded):
        source.close()


class _Rollback(Exception):
    """Raised inside a transaction to undo it (dry runs)."""


#: Whose changes the calls inside :meth:`SpeakerDB.audited_as` make: ``(API key name or None,)``;
#: None outside such a block (the CLI, Python users), where only key changes are recorded.
_AUDITED_AS: ContextVar[tuple[str | None] | None] = ContextVar("speakerdb_audited_as", default=None)
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _audited(operation: str,
             describe: Callable[..., tuple[str | None, dict[str, Any] | None]]) -> Callable[[_Method], _Method]:
    """Record the decorated change in the audit log, in the change's own transaction, when it is
    made inside :meth:`SpeakerDB.audited_as`. ``describe`` takes the method's arguments and
    returns the speaker concerned (or None) and the details to keep (never audio or vectors)."""

    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def audited_method(self: SpeakerDB, *args: Any, **kwargs: Any) -> Any:
            acting = _AUDITED_AS.get()
            if acting is None:
                return method(self, *args, **kwargs)
            speaker, detail = describe(*args, **kwargs)
            with store.audited(acting[0], operation, speaker, detail):
                return method(self, *args, **kwargs)

        return cast(_Method, audited_method)

    return decorate


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
    """

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
    ) -> None:
        self._model = model
        self._device = device
        self._precision = precision
        self._embedder = embedder
        #: The longest recording this database decodes; None: the environment's or the default,
        #: read by the decoder when it runs (see config.max_audio_s).
        self.max_audio_s = _check_max_audio_s(max_audio_s)
        target = db_target(db_path)  # file or server URL: config decides, for every caller
        if isinstance(target, str):
            # A PostgreSQL server that several services share: the index is this machine's
            # cache of it, kept in the index directory under the database's identity.
            url = target
            self.db_path = store.display_url(url)  # type: ignore[assignment]  (shown, never a password)
            #: What to open this database with again (another process, a service worker).
            self.target: str | Path = url
            self.created, self._made_dirs = False, []
            self.store = _open_store(url)
            index_dir = default_index_dir()
            _make_parents(index_dir / "x")
            self.index_path = index_dir / f"{self.store.settings()['database_id']}{INDEX_SUFFIX}"
        else:
            self.db_path = target
            #: Whether this object created the database file (see :meth:`discard_if_unused`).
            self.created = not _check_db_path(self.db_path, create)
            self.index_path = self.db_path.with_name(self.db_path.name + INDEX_SUFFIX)
            made_dirs = _make_parents(self.db_path) if self.created else []
            try:
                self.store = _open_store(self.db_path)
            except BaseException:
                if self.created:  # a failed creation leaves neither a file nor the directories it made
                    _remove_database_files(self.db_path, self.index_path, made_dirs)
                raise
            self._made_dirs = made_dirs
            self.target = self.db_path
        self.indexer = IndexKeeper(self.store, self.index_path)
        #: Enrolled speakers' cohort statistics, kept up to date by replaying the change records.
        self._norm_stats = norm.SpeakerStats()
        self._cohort: tuple[str, np.ndarray] | None = None  # (digest, matrix) of the cohort last read
        defaults = {"threshold": DEFAULT_THRESHOLD, "index": DEFAULT_INDEX_PARAMS}
        missing = {k: v for k, v in defaults.items() if k not in self.store.settings()}
        if missing:  # a new database: its settings are written once, then only changed on purpose
            with self.store.write() as s:
                for key, value in missing.items():
                    store.set_setting(s, key, value)

    # ---- lifecycle ------------------------------------------------------------------
    def close(self) -> None:
        self.indexer.maintain()  # a lagging index file is saved after the work, not during it
        self.store.close()

    def maintain_index(self) -> None:
        """Save the index file if it lags this process's index far behind, or is missing (a
        header read when it does not): a long-running process calls it between requests, so
        that no request waits for the save."""
        self.indexer.maintain()

    @contextlib.contextmanager
    def audited_as(self, key_name: str | None) -> Iterator[None]:
        """Record the changes made inside this block (enroll, rename, remove, set_threshold,
        import_gallery) in the audit log, as made with API key ``key_name`` (None: by a caller
        of a service that needs no key). Each record is written in its change's own
        transaction: a change that fails records nothing. The HTTP service runs each change a
        caller asks for in such a block; create_key and revoke_key take their ``actor`` directly."""
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
            unused = not store.has_speakers(s) and store.get_settings(s).get("model_id") is None
        self.close()
        if unused:
            _remove_database_files(self.db_path, self.index_path, self._made_dirs)
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
        return float(self.store.settings().get("threshold", DEFAULT_THRESHOLD))

    @property
    def threshold_scale(self) -> str:
        """``"cosine"`` (raw scores) or ``"as-norm"``: the scale the stored threshold is on."""
        return _scale(self.store.settings())

    @_audited("threshold", lambda value: (None, {"threshold": value}))
    def set_threshold(self, value: float) -> None:
        """Store a new decision threshold for this database, on its scale: a cosine score in
        [0, 1], or an AS-norm score in ``norm.AS_NORM_RANGE`` when normalisation is on.

        A negative cosine threshold would accept nearly every voice as the best candidate;
        per-call overrides (``identify(threshold=...)``) may still go down to -1 for experiments.
        """
        with self.store.write() as s:
            value = _check_threshold(value, least=0.0, scale=_scale(store.get_settings(s)))
            store.set_setting(s, "threshold", value)
            store.set_setting(s, "threshold_chosen", True)

    def apply_threshold(self, value: float | None, scale: str = norm.COSINE) -> None:
        """Store a threshold measured with this database's model on ``scale`` (binding the model
        if the database has none yet, refusing if it has another, or if the database's
        normalisation is not on that scale: calibrate again)."""
        if value is None:
            raise InvalidInputError("no threshold reaches that operating point on these scores: nothing stored")
        value = _check_threshold(value, least=0.0, scale=scale)
        self.embedder  # loads and checks the model
        with self.store.write() as s:
            self._bind_model(s)
            current = _scale(store.get_settings(s))
            if current != scale:
                raise ConflictError(
                    f"the threshold was measured on {scale} scores but database {self.db_path} now uses {current} "
                    "scores: run `speakerdb calibrate` again; nothing stored"
                )
            store.set_setting(s, "threshold", value)
            store.set_setting(s, "threshold_chosen", True)

    # ---- score normalisation ----------------------------------------------------------
    @property
    def norm_settings(self) -> "norm.NormSettings | None":
        """The database's score normalisation (None: raw cosine scores)."""
        d = self.store.settings().get("norm")
        return norm.NormSettings.from_dict(d) if d else None

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
        larger one given explicitly is an error.
        """
        if isinstance(cohort, norm.CohortVectors):
            vectors = cohort
            embedder = self.embedder
            if not same_model(vectors.model_id, embedder.model_id) or vectors.vectors.shape[1] != embedder.dim:
                raise ModelMismatchError(
                    f"the cohort was embedded with model {vectors.model_id}, database {self.db_path} uses "
                    f"{embedder.model_id}: embed the cohort with this database's model; nothing stored"
                )
        else:
            files = evaluate.cohort_files(cohort)
            if top_n is not None:  # a top-n the cohort cannot reach fails before the embedding
                _check_top_n(top_n, len(files) if len(files) >= norm.MIN_COHORT else None)
            if len(files) < norm.MIN_COHORT:
                raise InvalidInputError(
                    f"a cohort needs at least {norm.MIN_COHORT} recordings of people who are not enrolled, "
                    f"{len(files)} given"
                )
            self._check_files(files, stored=True)
            clips = self._embed_files(files, progress)
            vectors = norm.CohortVectors(
                self.embedder.model_id, np.stack([c.vector for c in clips]), [c.source for c in clips],
                [c.sha256 for c in clips],
            )
        rows = list({sha: (src, sha, vec) for src, sha, vec in zip(vectors.sources, vectors.sha256, vectors.vectors)}.values())
        if len(rows) < norm.MIN_COHORT:
            raise InvalidInputError(f"a cohort needs at least {norm.MIN_COHORT} different recordings, {len(rows)} given")
        near = self._enrolled_in_cohort(rows, screen_enrolled)  # {sha256: why}
        set_aside = sorted(near.values(), key=lambda a: -a.score)
        if set_aside:
            rows = [r for r in rows if r[1] not in near]
            for a in set_aside:
                log.warning("cohort recording %s set aside: it scores %.3f against enrolled speaker %s "
                            "(threshold %.3f): a cohort holds people who are not enrolled",
                            a.source, a.score, a.speaker, a.threshold)
            if len(rows) < norm.MIN_COHORT:
                first = set_aside[0]
                raise InvalidInputError(
                    f"a cohort needs at least {norm.MIN_COHORT} recordings of people who are not enrolled: "
                    f"{len(set_aside)} of {len(rows) + len(set_aside)} score at or above the threshold "
                    f"{first.threshold:.3f} against enrolled speakers (the first: {first.source}, "
                    f"{first.speaker} {first.score:.3f}), {len(rows)} left; nothing stored")
        top_n = min(norm.DEFAULT_TOP_N, len(rows)) if top_n is None else _check_top_n(top_n, len(rows))
        matrix = np.stack([r[2] for r in rows]).astype(np.float32)
        with self.store.write() as s:
            self._bind_model(s)
            settings = store.get_settings(s)
            enrolled = _enrolled_hashes(s, [r[1] for r in rows])
            if enrolled:
                raise InvalidInputError(
                    f"{len(enrolled)} cohort recording(s) are enrolled speakers' utterances (the first: "
                    f"{next(r[0] for r in rows if r[1] in enrolled)}): a cohort holds people who are not enrolled"
                )
            store.replace_cohort(s, rows)
            setting = norm.NormSettings(norm.METHOD, top_n, self._embedder.model_id, int(matrix.shape[1]), len(rows),
                                        norm.digest(matrix))
            store.set_setting(s, "norm", setting.to_dict())
            recalibrate = _scale(settings) != norm.AS_NORM
            if recalibrate:
                # Kept for what still compares raw scores (enrollment checks, timelines) and for `--off`.
                store.set_setting(s, "cosine_threshold", float(settings.get("threshold", DEFAULT_THRESHOLD)))
                store.set_setting(s, "threshold_scale", norm.AS_NORM)
                store.set_setting(s, "threshold", norm.DEFAULT_AS_NORM_THRESHOLD)
                store.set_setting(s, "threshold_chosen", False)
            threshold = float(store.get_settings(s)["threshold"])
        return NormChange(setting, recalibrate, threshold, norm.AS_NORM, tuple(set_aside))

    def _enrolled_in_cohort(self, rows: list[tuple[str, str, np.ndarray]], screen: bool = True,
                            ) -> "dict[str, CohortSetAside]":
        """Cohort rows (source, sha256, vector) that are enrolled people: refuse an enrolled
        utterance's audio; return, by sha256, those whose raw score against their nearest
        enrolled speaker reaches the cosine threshold (what identify would name).

        A hash alone misses the same clip with a sample dropped and other recordings of an
        enrolled voice; such a cohort voice scores every probe of that speaker as ordinary.
        """
        with self.store.read() as s:
            enrolled = _enrolled_hashes(s, [r[1] for r in rows])
            if enrolled:
                raise InvalidInputError(
                    f"{len(enrolled)} cohort recording(s) are enrolled speakers' utterances (the first: "
                    f"{next(r[0] for r in rows if r[1] in enrolled)}): a cohort holds people who are not enrolled"
                )
            if not screen or not store.has_speakers(s):
                return {}
        queries = np.stack([r[2] for r in rows]).astype(np.float32)
        found: dict[str, CohortSetAside] = {}
        with self.indexer.snapshot() as (s, index):
            threshold = _cosine_threshold(store.get_settings(s))
            _, ids = index.search(queries, COHORT_SHORTLIST)
            known = store.names_and_centroids(s, sorted({int(i) for i in ids.ravel() if i >= 0}))
            for (source, sha, vector), row_ids in zip(rows, ids):
                present = [int(j) for j in row_ids if int(j) in known]
                if not present:
                    continue
                raw = norm.raw_scores(vector, np.stack([known[j][1] for j in present]))  # as verify scores
                best = int(np.argmax(raw))
                if raw[best] >= threshold:
                    found[sha] = CohortSetAside(source, known[present[best]][0], float(raw[best]), threshold)
        return found

    def set_norm_off(self) -> NormChange:
        """Return to raw cosine scores: the cohort's embeddings are deleted. If the threshold was
        on the AS-norm scale it is reset to the model's starting cosine threshold and
        ``NormChange.recalibrate`` is True."""
        with self.store.write() as s:
            settings = store.get_settings(s)
            store.replace_cohort(s, [])
            for key in ("norm",):
                row = s.get(store.Setting, key)
                if row is not None:
                    s.delete(row)
            recalibrate = _scale(settings) != norm.COSINE
            if recalibrate:
                store.set_setting(s, "threshold_scale", norm.COSINE)
                store.set_setting(s, "threshold", _cosine_threshold(settings))  # the one from before, if any
                store.set_setting(s, "threshold_chosen", False)
            threshold = float(store.get_settings(s).get("threshold", DEFAULT_THRESHOLD))
        if settings.get("norm"):
            self._scrub_log()  # the cohort's embeddings must not linger in the write-ahead log
        return NormChange(None, recalibrate, threshold, norm.COSINE)

    def cohort_vectors(self) -> "norm.CohortVectors | None":
        """The stored cohort as :class:`speakerdb.norm.CohortVectors` (None without normalisation)."""
        from sqlalchemy import select

        with self.store.read() as s:
            settings = store.get_settings(s)
            found = self._norm_state(s, settings)
            if found is None:
                return None
            rows = s.execute(select(store.CohortEmbedding.source, store.CohortEmbedding.audio_sha256)
                             .order_by(store.CohortEmbedding.id)).all()
        setting, matrix = found
        return norm.CohortVectors(setting.model_id, matrix, [r[0] for r in rows], [r[1] for r in rows])

    def _norm_state(self, s, settings: dict[str, Any]) -> tuple[norm.NormSettings, np.ndarray] | None:
        """The normalisation in force in session ``s`` and its cohort matrix (read once per cohort)."""
        d = settings.get("norm")
        if not d:
            return None
        setting = norm.NormSettings.from_dict(d)
        bound = settings.get("model_id")
        if bound is None or not same_model(bound, setting.model_id) or int(settings.get("dim") or 0) != setting.dim:
            raise ModelMismatchError(
                f"database {self.db_path} holds a normalisation cohort of model {setting.model_id}, but its speakers "
                f"are of model {bound}: run `speakerdb norm --cohort DIR` again or `speakerdb norm --off`"
            )
        if self._cohort is None or self._cohort[0] != setting.digest:
            matrix = store.cohort(s)
            if len(matrix) != setting.count or norm.digest(matrix) != setting.digest:
                raise DatabaseError(
                    f"database {self.db_path}: the stored normalisation cohort does not match its record: "
                    "run `speakerdb norm --cohort DIR` again"
                )
            self._cohort = (setting.digest, matrix.astype(np.float64))  # float64 once, not per query
        return setting, self._cohort[1]

    def _normalise(self, s, settings, query: np.ndarray, ids: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """AS-norm of the raw scores of ``query`` against speakers ``ids`` (raw if normalisation is off)."""
        found = self._norm_state(s, settings)
        if found is None:
            return raw
        setting, cohort = found
        stats = self._norm_stats.at(s, settings, cohort, setting)
        enroll_mean, enroll_std = stats.lookup(ids)
        probe_mean, probe_std = norm.top_stats(query[None, :], cohort, setting.top_n)
        return norm.as_norm(raw, enroll_mean, enroll_std, probe_mean[0], probe_std[0])

    @property
    def embedder(self) -> Embedder:
        """The embedding model, loaded on first use and checked against the database."""
        if self._embedder is None:
            settings = self.store.settings()
            source = self._model or settings.get("model_source") or DEFAULT_MODEL
            self._embedder = load_embedder(source, device=self._device, precision=self._precision)
        self._check_model(self.store.settings())
        return self._embedder

    # ---- operations -----------------------------------------------------------------
    @_audited("enroll", lambda name, files, *, new=False, **_: (store.normalize_name(name),
                                                                 {"files": len(files), "new": new}))
    def enroll(
        self,
        name: str,
        files: Sequence[str | os.PathLike[str] | audio.Audio],
        *,
        new: bool = False,
        metadata: dict[str, Any] | None = None,
        strict: bool = False,
        progress: Progress | None = None,
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
        """
        name = validate_name(name)  # NFC: the form names are stored and compared in
        if not files:
            raise InvalidInputError("enroll needs at least one audio file")
        metadata = _check_metadata(metadata)
        self._check_files(files, stored=True)
        if new:
            with self.store.read() as s:
                if store.speaker_by_name(s, name) is not None:
                    raise SpeakerExistsError(f"speaker {name!r} already exists (--new refuses to add to it)")
        embedded = self._embed_files(files, progress)

        with self.store.write() as s:
            self._bind_model(s)
            speaker = store.speaker_by_name(s, name)
            created = speaker is None
            if speaker is not None and new:
                raise SpeakerExistsError(f"speaker {name!r} already exists (--new refuses to add to it)")
            if speaker is None:
                now = store.utcnow()
                speaker = store.Speaker(name=name, created_at=now, updated_at=now, meta={}, centroid=b"")
                s.add(speaker)
            known = {u.audio_sha256 for u in speaker.utterances}
            # A clip against the speaker's other clips: a raw cosine check (see _cosine_threshold).
            warnings = self._quality_warnings(speaker, embedded, threshold=_cosine_threshold(store.get_settings(s)))
            if warnings and strict:
                raise EnrollmentRefusedError(
                    f"enrollment of {name!r} refused (--strict): "
                    + "; ".join(f"{w.source}: {w.reason}" for w in warnings)
                )
            added, skipped = [], []
            for clip in embedded:
                if clip.sha256 in known:
                    skipped.append(FileNote(clip.source, f"same audio already enrolled for {name!r}"))
                    continue
                known.add(clip.sha256)
                utt = store.Utterance(
                    source=clip.source,
                    duration_s=clip.duration_s,
                    audio_sha256=clip.sha256,
                    embedding=store.to_blob(clip.vector),
                    created_at=store.utcnow(),
                )
                speaker.utterances.append(utt)
                added.append(UtteranceInfo(clip.source, clip.duration_s, clip.sha256, utt.created_at))
            if metadata:
                speaker.meta = {**(speaker.meta or {}), **metadata}
            if added or created:
                store.recompute_centroid(speaker)
            n_utterances = len(speaker.utterances)
        return EnrollResult(name, created, added, skipped, n_utterances, warnings)

    def identify(
        self,
        files: Sequence[str | os.PathLike[str] | audio.Audio],
        *,
        top_k: int = DEFAULT_TOP_K,
        threshold: float | None = None,
        progress: Progress | None = None,
        count_voices: bool = True,
    ) -> list[Identification]:
        """Nearest enrolled speakers for each file, and the decision, in the order of ``files``.

        ``speaker`` is the best candidate if its score reaches the threshold (the
        database's, unless ``threshold`` is given), else None: unknown. A file that cannot
        be used gets an :class:`Identification` with ``error`` set (see ``ok``) instead of
        an exception, so one bad file does not lose the batch; errors that concern every
        file (no speakers enrolled, the model cannot be loaded) still raise.

        ``count_voices`` (default on) also counts the voices in each file (``voices``) and
        warns when there are several: one more pass over the speech, which about doubles
        the time with WavLM; turn it off for recordings known to hold one voice.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidInputError(f"top-k must be a whole number of at least 1, not {top_k!r}")
        threshold = self.threshold if threshold is None else _check_threshold(threshold, scale=self.threshold_scale)
        if not files:
            raise InvalidInputError("identify needs at least one audio file")
        errors: dict[int, AudioError] = {}
        for i, f in enumerate(files):  # cheap checks first: all-bad batches never load the model
            try:
                self._check_files([f])
            except AudioError as e:
                errors[i] = e
        embedded: dict[int, pipeline.EmbeddedClip] = {}
        voices: dict[int, int] = {}
        good = [i for i in range(len(files)) if i not in errors]
        if good:
            self._require_speakers()
            embedder = self.embedder
            seconds = 0.0
            # With the voice count on, a file is decoded once: the embedding's read keeps the
            # blocks (in memory, or a temporary file for a long one) and the count replays them.
            kept: dict[int, audio.Audio | Decoded] = {}
            for i in good if count_voices else []:
                f = files[i]
                kept[i] = f if isinstance(f, audio.Audio) else Decoded(f, max_audio_s=self.max_audio_s)
            try:
                # Short files of equal length share a forward pass (pipeline.embed_clips).
                sources = [kept.get(i, files[i]) for i in good]
                clips = pipeline.embed_clips(sources, embedder, max_audio_s=self.max_audio_s)
                for done, (position, clip) in enumerate(clips, 1):
                    i = good[position]
                    try:
                        if isinstance(clip, AudioError):
                            raise clip
                        embedded[i] = clip
                        if count_voices:  # one more pass over the speech (see timeline.count_voices)
                            voices[i] = self._count_voices(kept[i], files[i], embedder)
                        seconds += clip.duration_s
                    except AudioError as e:
                        errors[i] = e
                    finally:
                        _release(kept.pop(i, None))
                    if progress is not None:
                        progress(done + len(files) - len(good), len(files), seconds)
            finally:
                for source in kept.values():  # an error stopped the batch: nothing is kept
                    _release(source)
        searched: dict[int, Identification] = {}
        if embedded:
            order = sorted(embedded)
            queries = np.stack([embedded[i].vector for i in order])  # (n_good, dim)
            # Search and names from one snapshot: an answer never puts one speaker's score on
            # another's name, whatever other processes commit meanwhile (tests/test_cache.py).
            with self.indexer.snapshot() as (s, index):
                settings = store.get_settings(s)
                normalised = settings.get("norm") is not None
                # With normalisation the ranking can change: a shortlist by raw score is re-ranked.
                k = max(top_k, NORM_SHORTLIST) if normalised else top_k
                _, ids = index.search(queries, k)  # (n_good, k): FAISS picks the candidates
                known = store.names_and_centroids(s, sorted({int(i) for i in ids.ravel() if i >= 0}))
                rows = []
                for q, row_ids in zip(queries, ids):
                    found = np.asarray([int(j) for j in row_ids if int(j) in known], np.int64)
                    # Scores as verify computes them (norm.raw_scores): a trial on the threshold
                    # gets the same answer from both commands, whatever FAISS's rounding.
                    raw = norm.raw_scores(q, np.stack([known[int(j)][1] for j in found])) if len(found) else np.zeros(0)
                    final = self._normalise(s, settings, q, found, raw) if len(found) else raw
                    rank = np.argsort(-final, kind="stable")[:top_k]
                    rows.append([Candidate(known[int(found[r])][0], float(final[r]), float(raw[r])) for r in rank])
            for i, candidates in zip(order, rows):
                best = candidates[0] if candidates else None
                decided = best.speaker if best is not None and best.score >= threshold else None
                searched[i] = Identification(embedded[i].source, decided, best.score if best else None, candidates,
                                             raw_score=best.raw_score if best else None, voices=voices.get(i))
        return [
            searched[i] if i in searched else Identification(_label(f), None, None, [], errors[i].reason)
            for i, f in enumerate(files)
        ]

    def _count_voices(self, source: audio.Audio | Decoded, file: str | os.PathLike[str] | audio.Audio,
                      embedder: Embedder) -> int:
        """How many voices ``source`` (``file``, decoded) holds; warns (naming the file) when it is more than one."""
        from . import timeline as timelines

        # Voices are told apart on raw cosine scores, as in timeline().
        n = timelines.count_voices(source, embedder, _cosine_threshold(self.store.settings()))
        if n > 1:
            label = file.source if isinstance(file, audio.Audio) else str(file)
            log.warning("%s holds %d voices: identify embeds them as one blend; `speakerdb timeline` tells who speaks when",
                        label, n)
        return n

    def verify(
        self,
        name: str,
        file: str | os.PathLike[str] | audio.Audio,
        *,
        threshold: float | None = None,
    ) -> Verification:
        """1:1 check: is the voice in ``file`` the enrolled speaker ``name``?"""
        name = store.normalize_name(name)
        threshold = self.threshold if threshold is None else _check_threshold(threshold, scale=self.threshold_scale)
        self._check_files([file])
        with self.store.read() as s:
            self._get_speaker(s, name)  # an unknown name fails before the model loads
        [clip] = self._embed_files([file], None)
        with self.store.read() as s:
            speaker = self._get_speaker(s, name)
            raw = norm.raw_scores(clip.vector, speaker.centroid_vector()[None, :])  # (1,), as identify computes it
            score = float(self._normalise(s, store.get_settings(s), clip.vector, np.asarray([speaker.id]), raw)[0])
        return Verification(clip.source, name, score, threshold, score >= threshold, raw_score=float(raw[0]))

    def timeline(
        self,
        files: Sequence[str | os.PathLike[str] | audio.Audio],
        *,
        threshold: float | None = None,
        params: Params | None = None,
        progress: Progress | None = None,
    ) -> list[Timeline]:
        """Who speaks when in each file: segments of voices, each named from the gallery
        when its voice reaches the threshold, else ``unknown-1``, ``unknown-2``...

        Works with no speakers enrolled (every voice is unknown: plain diarization). A file
        with no speech gives an empty timeline with a note. See :mod:`speakerdb.timeline`.
        """
        from . import timeline as timelines
        from .audio import vad

        # Voices are named on the database's scale (AS-norm when normalisation is on, as identify);
        # windows are clustered by cosine, with the cosine threshold (see _cosine_threshold).
        settings = self.store.settings()
        if threshold is not None:
            threshold = _check_threshold(threshold, scale=_scale(settings))
        params = (params or Params()).check()
        if not files:
            raise InvalidInputError("timeline needs at least one audio file")
        errors: dict[int, AudioError] = {}
        for i, f in enumerate(files):  # cheap checks first, as identify: all-bad batches load no model
            try:
                self._check_files([f])
            except AudioError as e:
                errors[i] = e
        if len(errors) == len(files):
            return [Timeline(_label(f), 0.0, [], [], error=errors[i].reason) for i, f in enumerate(files)]
        detector = vad.load(params.vad_backend)  # before the model: a missing VAD is reported at once
        embedder = self.embedder
        gallery = self._timeline_gallery(embedder.dim, threshold)
        out, seconds = [], 0.0
        for i, f in enumerate(files):  # every file gets its timeline or its error
            try:
                if i in errors:
                    raise errors[i]
                out.append(timelines.build(f, embedder, gallery, params, detector, self.max_audio_s))
                seconds += out[-1].duration
            except AudioError as e:
                out.append(Timeline(_label(f), 0.0, [], [], error=e.reason))
            if progress is not None:
                progress(i + 1, len(files), seconds)
        return out

    def _timeline_gallery(self, dim: int, threshold: float | None) -> "timelines.Gallery":
        """The enrolled speakers, their normalisation and thresholds, from one read of the store."""
        from . import timeline as timelines

        with self.store.read() as s:
            settings = store.get_settings(s)
            ids, centroids = store.centroids(s)  # (k,), (k, dim)
            by_id = store.speakers_by_id(s, ids.tolist())
            names = [by_id[int(i)].name for i in ids]
            found = self._norm_state(s, settings) if names else None
            normaliser = None
            if found is not None:
                setting, cohort = found
                enroll_mean, enroll_std = self._norm_stats.at(s, settings, cohort, setting).lookup(ids)
                normaliser = timelines.Normaliser(enroll_mean, enroll_std, cohort, setting.top_n)
        if threshold is None:
            threshold = float(settings.get("threshold", DEFAULT_THRESHOLD))
        cosine = _cosine_threshold(settings)
        if not names:  # plain diarization: only the cosine threshold matters
            return timelines.Gallery.empty(dim, cosine if _scale(settings) != norm.COSINE else threshold)
        return timelines.Gallery(names, centroids, threshold, cosine, normaliser)

    def list(self) -> list[SpeakerInfo]:
        """Every enrolled speaker, by name (``utterances`` left empty: see :meth:`show`)."""
        with self.store.read() as s:
            rows = store.list_speakers(s)
        return [
            SpeakerInfo(r.name, r.n_utterances, r.total_duration_s, r.created_at, r.updated_at, r.meta)
            for r in rows
        ]

    def show(self, name: str) -> SpeakerInfo:
        """One speaker with its utterances."""
        with self.store.read() as s:
            sp = self._get_speaker(s, name)
            utts = [UtteranceInfo(u.source, u.duration_s, u.audio_sha256, u.created_at) for u in sp.utterances]
            return SpeakerInfo(
                sp.name,
                len(utts),
                sum(u.duration_s for u in utts),
                sp.created_at,
                sp.updated_at,
                dict(sp.meta or {}),
                utts,
            )

    @_audited("rename", lambda old, new: (store.normalize_name(old), {"new": new}))
    def rename(self, old: str, new: str) -> None:
        """Give speaker ``old`` the name ``new`` (which must be free)."""
        new = validate_name(new)
        with self.store.write() as s:
            speaker = self._get_speaker(s, old)
            old = speaker.name
            if old == new:
                return
            if store.speaker_by_name(s, new) is not None:
                raise SpeakerExistsError(f"cannot rename {old!r}: speaker {new!r} already exists")
            speaker.name = new
            speaker.updated_at = store.utcnow()

    @_audited("remove", lambda name: (store.normalize_name(name), None))
    def remove(self, name: str) -> int:
        """Delete a speaker, its utterances and embeddings; returns the number of utterances removed.

        Nothing of the speaker stays recoverable from the files: SQLite's secure_delete
        zeroes the freed cells, the write-ahead log is checkpointed and truncated, and the
        index file is rewritten without the speaker.
        """
        with self.store.write() as s:
            speaker = self._get_speaker(s, name)
            n = len(speaker.utterances)
            s.delete(speaker)
        self._scrub_log()
        if self.store.server:
            log.warning(
                "removed %r; on PostgreSQL its rows' bytes stay in the table files until `speakerdb db vacuum` "
                "(VACUUM FULL) and in WAL segments, replicas and backups until those are recycled", name)
        return n

    def _scrub_log(self) -> None:
        if not self.store.checkpoint():
            log.warning(
                "other processes kept reading %s: its write-ahead log still holds deleted pages "
                "until the next checkpoint (any later remove retries it)",
                self.db_path,
            )

    def info(self) -> DatabaseInfo:
        """What this database is: paths, model, dimension, threshold, counts."""
        with self.store.read() as s:
            settings = store.get_settings(s)
            n_speakers, n_utterances = store.counts(s)
        return DatabaseInfo(
            db_path=str(self.db_path),
            index_path=str(self.index_path),
            model_id=settings.get("model_id"),
            model_source=settings.get("model_source"),
            dim=settings.get("dim"),
            threshold=float(settings.get("threshold", DEFAULT_THRESHOLD)),
            n_speakers=n_speakers,
            n_utterances=n_utterances,
            schema_revision=schema.HEAD_REVISION,
            generation=int(settings.get("generation", 0)),
            index_params=dict(settings.get("index") or {}),
            threshold_scale=_scale(settings),
            norm=settings.get("norm"),
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
        from . import __version__

        path = check_output_path(path, overwrite=overwrite)
        with self.store.read() as s:
            rows = store.speakers_by_name(s) if speakers is None else [
                self._get_speaker(s, name) for name in dict.fromkeys(speakers)
            ]
            if not rows:
                raise EmptyDatabaseError(f"no speakers to export from {self.db_path}")
            g = gallery.from_store(store.get_settings(s), rows)
        try:
            size = gallery.write(path, g, __version__)
        except OSError as e:  # a directory such as /proc that refuses new files, a full disk
            raise InvalidInputError(f"cannot write {path}: {e.strerror or e}") from None
        return ExportSummary(str(path), len(g.speakers), g.n_utterances, size)

    @_audited("import", lambda path, *, on_conflict="fail", **_: (None, {"file": str(path),
                                                                         "on_conflict": on_conflict}))
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
        gallery.check_policy(on_conflict)

        def check_model(model_id: str, dim: int) -> int | None:
            # Before any vector is unpacked: a gallery of another model costs nothing to refuse.
            with self.store.read() as s:
                settings = store.get_settings(s)
            self._check_gallery_model(settings, path, model_id, dim)
            return int(settings["dim"]) if settings.get("model_id") is not None else None

        g = gallery.read(path, limits, check_model=check_model)
        summary = ImportSummary(str(path), dry_run=dry_run)
        try:
            with self.store.write() as s:
                self._bind_gallery_model(s, g, path)
                gallery.into_store(s, g, on_conflict, summary)
                if dry_run:
                    raise _Rollback
        except _Rollback:
            pass
        if summary.replaced and not dry_run:
            self._scrub_log()  # replaced speakers' old embeddings must not linger in the log
        return summary

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
        return {**DEFAULT_INDEX_PARAMS, **(self.store.settings().get("index") or {})}

    def set_index_params(self, **params: int) -> dict[str, Any]:
        """Store new index parameters; returns all of them.

        ``hnsw_ef_search`` (candidates an HNSW search keeps: recall against speed) applies
        to the next search, in every process. The others decide how the index is built:
        ``approximate_above`` (speakers above which it is an HNSW graph rather than exact),
        ``hnsw_m`` and ``hnsw_ef_construction`` (the graph's degree and build effort);
        they apply from the next :meth:`rebuild_index`.
        """
        unknown = sorted(set(params) - set(DEFAULT_INDEX_PARAMS))
        if unknown:
            raise InvalidInputError(
                f"unknown index parameter {', '.join(unknown)}: use {', '.join(DEFAULT_INDEX_PARAMS)}"
            )
        for key, value in params.items():
            least = {"approximate_above": 0, "hnsw_m": 2}.get(key, 1)  # a graph of degree 1 is a list
            most = INDEX_PARAM_MAX[key]
            if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
                raise InvalidInputError(
                    f"index parameter {key} must be a whole number from {least} to {most:,}, not {value!r}"
                )
        with self.store.write() as s:
            merged = {**DEFAULT_INDEX_PARAMS, **(store.get_settings(s).get("index") or {}), **params}
            store.set_setting(s, "index", merged)
        return merged

    def index_file_info(self) -> dict[str, Any] | None:
        """What the index file says of itself (kind, speakers, parameters it was built with), or None."""
        info = SpeakerIndex.file_info(self.index_path)
        if info is None:
            return None
        return {"kind": info["kind"], "speakers": info["speakers"], "generation": info["generation"],
                "built_with": info["params"], "bytes": info["bytes"]}

    # ---- keys of the HTTP service and the audit record (see keys.py) --------------------
    def create_key(self, name: str, scope: str, *, actor: str | None = None) -> NewKey:
        """Create API key ``name`` with ``scope`` (read, write or admin); returns it with its
        secret, which is shown this once: the database keeps only a salted hash."""
        from .storage import keys

        with store.audited(actor, "key-create", detail={"key": name, "scope": scope}), self.store.write() as s:
            return keys.create(s, name, scope)

    def list_keys(self) -> list[KeyInfo]:
        """Every API key, revoked ones included, by name (never their secrets)."""
        from .storage import keys

        with self.store.read() as s:
            return keys.list_keys(s)

    def revoke_key(self, name: str, *, actor: str | None = None) -> KeyInfo:
        """Revoke API key ``name``: every server refuses it from its next request."""
        from .storage import keys

        with store.audited(actor, "key-revoke", detail={"key": name}), self.store.write() as s:
            return keys.revoke(s, name)

    def authenticate(self, key: str) -> KeyInfo | None:
        """The active API key ``key`` is, or None."""
        from .storage import keys

        with self.store.read() as s:
            return keys.authenticate(s, key)

    def has_keys(self, include_revoked: bool = False) -> bool:
        """Whether any API key is active, or with ``include_revoked`` was ever created (then
        ``serve`` requires a key for every request, even once all are revoked)."""
        from .storage import keys

        with self.store.read() as s:
            return keys.has_any_keys(s) if include_revoked else keys.has_active_keys(s)

    def audit(self, limit: int = 100, speaker: str | None = None) -> list[AuditEntry]:
        """The newest ``limit`` changes made through the service or to keys, oldest first."""
        from .storage import keys

        store.check_name_text(speaker)
        with self.store.read() as s:
            return keys.audit_entries(s, limit, speaker)

    # ---- internals ------------------------------------------------------------------
    def _embed_files(self, files, progress: Progress | None) -> list[pipeline.EmbeddedClip]:
        """Decode and embed each file in turn (long ones window by window, see pipeline.py)."""
        embedder = self.embedder
        out: list[pipeline.EmbeddedClip] = []
        seconds = 0.0
        for i, f in enumerate(files):
            clip = pipeline.embed_clip(f, embedder, self.max_audio_s)
            out.append(clip)
            seconds += clip.duration_s
            if progress is not None:
                progress(i + 1, len(files), seconds)
        return out

    @staticmethod
    def _quality_warnings(speaker: store.Speaker, embedded, threshold: float) -> list[FileNote]:
        """Clips with too little speech, or far from the speaker's other clips."""
        notes = []
        existing = [u.vector() for u in speaker.utterances]  # (dim,) each
        new_vectors = [clip.vector for clip in embedded]
        for i, clip in enumerate(embedded):
            vector, speech = clip.vector, clip.speech_s
            if speech < MIN_SPEECH_S:
                notes.append(FileNote(clip.source, f"only {speech:.1f} s of speech (at least {MIN_SPEECH_S:g} s recommended)"))
            others = existing + new_vectors[:i] + new_vectors[i + 1 :]
            if others:
                mean = np.mean(others, axis=0)
                score = float(vector @ (mean / max(np.linalg.norm(mean), 1e-12)))
                if score < threshold:
                    notes.append(
                        FileNote(
                            clip.source,
                            f"far from {speaker.name}'s other clips (score {score:.3f} < threshold {threshold:.3f}): "
                            "a different voice?",
                        )
                    )
        return notes

    @staticmethod
    def _check_files(files, stored: bool = False) -> None:
        """Cheap checks first: a missing file is reported before the model takes seconds to load.
        ``stored``: the files' labels will be stored (enrollment, cohort) and are checked too."""
        for f in files:
            if not isinstance(f, audio.Audio):
                audio.check_file(f)
            elif stored:  # a label the caller chose, stored as the source
                store.check_text(f.source, "source label")

    def _check_model(self, settings: dict[str, Any]) -> None:
        assert self._embedder is not None
        bound = settings.get("model_id")
        if bound is not None and not same_model(bound, self._embedder.model_id):
            raise ModelMismatchError(
                f"database {self.db_path} was built with model {bound}, not {self._embedder.model_id}: "
                f"use --model {settings.get('model_source') or bound} or another database (--db)"
            )
        dim = settings.get("dim")
        if dim is not None and int(dim) != self._embedder.dim:
            raise ModelMismatchError(
                f"database {self.db_path} holds {dim}-d embeddings, model {self._embedder.model_id} makes {self._embedder.dim}-d"
            )

    def _bind_model(self, s) -> None:
        """Record the loaded model in a database that has none; re-check it inside the write transaction."""
        settings = store.get_settings(s)
        self._check_model(settings)
        embedder = self._embedder
        assert embedder is not None
        _bind(s, settings, embedder.model_id, int(embedder.dim),
              getattr(embedder, "name_or_path", None) or self._model or embedder.model_id,
              getattr(embedder, "default_threshold", None))

    def _bind_gallery_model(self, s, g, path) -> None:
        """A gallery must come from this database's model; an empty database takes the gallery's.

        A gallery with no speakers brings no vectors and binds nothing: it cannot decide
        which model a database uses.
        """
        if not g.speakers:
            return
        settings = store.get_settings(s)
        self._check_gallery_model(settings, path, g.model_id, g.dim)  # again: another writer may have bound it
        _bind(s, settings, g.model_id, g.dim, g.model_source or g.model_id, default_threshold_for(g.model_id))

    @staticmethod
    def _check_gallery_model(settings: dict[str, Any], path, model_id: str, dim: int) -> None:
        """ModelMismatchError unless a database with ``settings`` can take vectors of this model.

        The message names no database path: the service sends it to clients.
        """
        bound = settings.get("model_id")
        if bound is not None and (not same_model(bound, model_id) or int(settings["dim"]) != dim):
            raise ModelMismatchError(
                f"gallery {path} holds {dim}-d embeddings of model {model_id}; this database holds "
                f"{settings['dim']}-d embeddings of model {bound}: nothing was imported"
            )

    def _require_speakers(self) -> None:
        with self.store.read() as s:
            if not store.has_speakers(s):
                raise EmptyDatabaseError(f"no speakers are enrolled in {self.db_path}: run `speakerdb enroll` first")

    @staticmethod
    def _get_speaker(s, name: str) -> store.Speaker:
        store.check_name_text(name)  # invalid UTF-8 from a command line: one clear error, not the driver's
        speaker = store.speaker_by_name(s, store.normalize_name(name))
        if speaker is None and store.normalize_name(name) != name:
            # A name stored before names were normalised (an older database) is still found as typed.
            speaker = store.speaker_by_name(s, name)
        if speaker is None:
            raise SpeakerNotFoundError(f"no speaker named {name!r} (see `speakerdb list`)")
        return speaker


def _scale(settings: dict[str, Any]) -> str:
    """The scale a database's threshold is on (databases from before normalisation: cosine)."""
    return settings.get("threshold_scale") or norm.COSINE


def _cosine_threshold(settings: dict[str, Any]) -> float:
    """A threshold on the raw cosine scale: the database's own when it is on that scale, else
    the one it had before normalisation was switched on, else the model's starting one."""
    if _scale(settings) == norm.COSINE:
        return float(settings.get("threshold", DEFAULT_THRESHOLD))
    if settings.get("cosine_threshold") is not None:
        return float(settings["cosine_threshold"])
    own = default_threshold_for(settings.get("model_id") or "")
    return DEFAULT_THRESHOLD if own is None else float(own)


def _check_top_n(top_n: Any, count: int | None) -> int:
    """norm.check_top_n as InvalidInputError, saying what to give instead."""
    try:
        return norm.check_top_n(top_n, count)
    except ValueError as e:
        hint = f": give at most {count}, or leave it out (at most the cohort's size)" if count is not None else ""
        raise InvalidInputError(f"{e}{hint}") from None


def _enrolled_hashes(s, hashes: list[str]) -> set[str]:
    """Those of ``hashes`` that are enrolled utterances' audio."""
    from sqlalchemy import select

    found: set[str] = set()
    for start in range(0, len(hashes), 900):  # SQLite's old limit on bound parameters is 999
        chunk = hashes[start : start + 900]
        found |= set(s.scalars(select(store.Utterance.audio_sha256).where(store.Utterance.audio_sha256.in_(chunk))))
    return found


def _check_threshold(value: float, least: float = -1.0, scale: str = norm.COSINE) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"threshold must be a number, not {value!r}") from None
    if scale == norm.AS_NORM:
        low, high = norm.AS_NORM_RANGE
        if not low <= value <= high:  # NaN fails too
            raise InvalidInputError(f"threshold {value} is not an AS-norm score in [{low:g}, {high:g}]")
        return value
    if not least <= value <= 1.0:  # NaN fails too
        if value < 0 <= least:
            raise InvalidInputError(f"threshold {value} would accept nearly every voice: store one in [0, 1]")
        raise InvalidInputError(f"threshold {value} is not a cosine score in [{least:g}, 1]")
    return value


#: Free space a new database needs: the schema and a first speaker take ~200 KiB; SQLite
#: fails mid-creation with "database or disk is full" below that.
MIN_FREE_BYTES = 1 << 20  # 1 MiB


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Raise InvalidInputError now, before any work, for an output file that cannot be written:
    its directory is missing or not writable, it is a directory, or it exists and not
    ``overwrite`` (see :func:`speakerdb.atomic.check_output`, the one check every output has)."""
    from .storage.atomic import check_output

    return check_output(path, overwrite=overwrite)


def _check_db_path(path: Path, create: bool) -> bool:
    """Whether a database file exists at ``path``; raise DatabaseError for a path that cannot
    be one (a directory, a device such as /dev/null, a parent that is a file) or, unless
    ``create``, for a missing one."""
    try:
        info = path.stat()
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        raise DatabaseError(f"cannot use database {path}: {_file_ancestor(path)} is a file, not a directory") from None
    except OSError as e:
        raise DatabaseError(f"cannot use database {path}: {e.strerror or e}") from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise DatabaseError(f"database {path} is a directory, not an SQLite file")
        if not stat.S_ISREG(info.st_mode):
            raise DatabaseError(f"database {path} is not a regular file (a device, pipe or socket)")
        return True
    if not create:
        raise DatabaseError(
            f"no database at {path}: check --db (or SPEAKERDB_DB / SPEAKERDB_HOME); "
            "`speakerdb enroll` or `speakerdb import` creates one"
        )
    ancestor = _file_ancestor(path)
    if ancestor is not None:
        raise DatabaseError(f"cannot create database {path}: {ancestor} is a file, not a directory")
    existing = next(p for p in path.parents if p.exists())
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise DatabaseError(f"cannot create database {path}: only {free // 1024} KiB free on its disk, at least {MIN_FREE_BYTES // 1024} KiB needed")
    return False


def _file_ancestor(path: Path) -> Path | None:
    """The first parent of ``path`` that exists and is not a directory, if any."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
        if not parent.exists():
            return None
    return None


def _make_parents(path: Path) -> list[Path]:
    """Create the missing directories above ``path``; returns those made, deepest first."""
    missing = [p for p in path.parents if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatabaseError(f"cannot create the directory of database {path}: {e.strerror or e}") from None
    return missing


def _open_store(path: Path | str) -> store.Store:
    """store.Store, with the errors raised while creating or reaching it (disk full, I/O, a
    server that does not answer) as DatabaseError."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return store.Store(path)
    except SpeakerDBError:
        raise
    except (SQLAlchemyError, OSError) as e:
        url = path if isinstance(path, str) else None
        name = store.display_url(path) if url else path
        raise DatabaseError(f"cannot open database {name}: {store.redact(e, url)}") from None


def _remove_database_files(db_path: Path, index_path: Path, made_dirs: list[Path]) -> None:
    for p in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"), Path(f"{db_path}-journal"), index_path):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    for d in made_dirs:  # deepest first; only if still empty
        try:
            d.rmdir()
        except OSError:
            break


def _check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata as stored: JSON, finite, valid Unicode, bounded depth and size (see store.validate_metadata)."""
    return store.validate_metadata(metadata)


# ---- schema management (works on databases that SpeakerDB refuses to open) ----------------
#: The first 16 bytes of every SQLite database file (an empty file is an empty database too).
SQLITE_HEADER = b"SQLite format 3\x00"


def database_revision(db_path: str | os.PathLike[str] | None = None) -> tuple[str | None, str]:
    """(revision stamped in the database, revision this speakerdb needs); DatabaseError for a
    file that is not a database, or a database with tables but none of speakerdb's record.
    None: an empty database (such as one downgraded to "base")."""
    engine, name = _engine_for(db_path)
    try:
        # A text file must not read as "revision none" (SQLite reports nothing until it reads a page).
        if engine.dialect.name == "sqlite":
            try:
                with open(engine.url.database, "rb") as f:
                    head = f.read(len(SQLITE_HEADER))
            except OSError as e:
                raise DatabaseError(f"cannot read database {name}: {e.strerror or e}") from None
            if head and head != SQLITE_HEADER:
                raise DatabaseError(f"{name} is not a speakerdb database: not an SQLite file")
        tables = schema._tables(engine)
        if tables and "alembic_version" not in tables:
            raise DatabaseError(f"{name} is a database but not a speakerdb database (no schema revision in it)")
        return schema.current_revision(engine), schema.HEAD_REVISION
    finally:
        engine.dispose()


def upgrade_database(db_path: str | os.PathLike[str] | None = None, revision: str = "head") -> str | None:
    """Migrate a database to ``revision`` (default: newest); returns the new revision."""
    return _migrate(db_path, schema.upgrade, revision)


def downgrade_database(db_path: str | os.PathLike[str] | None, revision: str) -> str | None:
    """Migrate a database down to ``revision`` ("base": no tables). For developers and rollbacks."""
    return _migrate(db_path, schema.downgrade, revision)


def copy_database(source: str | os.PathLike[str], destination: str | os.PathLike[str],
                  progress: Callable[[str, int], None] | None = None) -> CopySummary:
    """Copy a whole database, SQLite to PostgreSQL or back: every speaker, utterance,
    embedding, setting, key, audit record and cohort embedding, ids kept.

    Every row is checked as a gallery import checks it (names, metadata, finite unit
    vectors of the database's dimension), and the destination is written in one
    transaction: all of it or nothing. The destination must be new or empty (created at
    the newest schema); it keeps its own identity, and its change record starts afresh.
    The source is read in one snapshot and never written.
    """
    # A source is always named: "" is a path (the working directory), not the default database.
    source_target = db_target(source or Path())
    if isinstance(source_target, str):
        src_name = store.display_url(source_target)
    else:
        src_name = str(source_target)
        _check_db_path(source_target, create=False)
    src = _open_store(source_target)
    target = SpeakerDB(destination)
    dst_name = str(target.db_path)
    try:
        with src.read() as rs, target.store.write() as ws:
            if store.has_speakers(ws) or ws.scalar(store.select(store.ApiKey.id).limit(1)) is not None:
                raise DatabaseError(f"database {dst_name} is not empty: copy into a new or empty database")
            settings = store.get_settings(rs)
            dim = settings.get("dim")
            try:
                rows = store.copy_rows(rs, ws, int(dim) if dim is not None else None, progress)
            except InvalidInputError as e:
                raise DatabaseError(f"{src_name} cannot be copied: {e}; nothing was written to {dst_name}") from None
            for key, value in settings.items():
                if key not in store.OWN_SETTINGS:
                    store.set_setting(ws, key, value)
            store.reset_sequences(ws)
    except BaseException:
        target.discard_if_unused()  # a new destination file that got nothing leaves nothing
        target.close()
        raise
    finally:
        src.close()
    target.close()
    return CopySummary(src_name, dst_name, rows)


def _engine_for(db_path) -> tuple[Any, str]:
    """An engine for a database that must exist (a file is never created here), and its name."""
    target = db_target(db_path)
    if isinstance(target, str):  # a server URL
        return store.open_server_engine(target), store.display_url(target)
    path = target
    _check_db_path(path, create=False)  # reading a revision or migrating must not create a file
    return store.open_engine(path), str(path)


def _migrate(db_path, step, revision: str) -> str | None:
    engine, name = _engine_for(db_path)
    try:
        step(engine, revision)
        return schema.current_revision(engine)
    except SpeakerDBError:
        raise
    except Exception as e:  # Alembic's CommandError (unknown revision), SQLAlchemy errors
        reason = store.redact(e, engine.url.render_as_string(hide_password=False))
        raise DatabaseError(f"migration of {name} to {revision} failed: {reason}") from None
    finally:
        engine.dispose()


# ---- workflows on the user's recordings: speakerdb evaluate, calibrate, timeline's files ----------
def evaluate_recordings(
    data_dir: str | os.PathLike[str],
    *,
    db: str | os.PathLike[str] | None = None,
    model: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    cohort: str | os.PathLike[str] | None = None,
    top_n: int = norm.DEFAULT_TOP_N,
    plot: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    **split: Any,
) -> Report:
    """Measure accuracy on labelled recordings, ``DATA_DIR/<speaker>/<files>``
    (:func:`speakerdb.scoring.evaluate.run`, with ``split``'s enroll_count, impostor_speakers,
    impostor_dirs, seed, test_seconds), in a temporary database: ``db`` is never changed.

    Without ``model``, the model of ``db`` if it exists (else the default). ``plot`` draws the
    scores and a DET curve there, marking the threshold ``db`` would use; it is checked
    before any scoring.
    """
    if plot is not None:
        check_output_path(plot, overwrite=overwrite)
        evaluate.check_plotting()
    mine = _existing_database(db, model, device, precision)
    try:
        # The database's model, like every other command (a GE2E database is evaluated with GE2E).
        bound = model if model is not None or mine is None else mine.info().model_source
        report, scores, embedder = evaluate.run(Path(data_dir), model=bound, device=device, precision=precision,
                                                cohort=Path(cohort) if cohort is not None else None, top_n=top_n, progress=progress,
                                                open_db=evaluation_database, **split)
        if plot is not None:
            evaluate.plot(scores, report, Path(plot), threshold=_plotted_threshold(mine, embedder), overwrite=overwrite)
    finally:
        if mine is not None:
            mine.close()
    return report


def calibrate_threshold(
    data_dir: str | os.PathLike[str],
    target: str = "eer",
    *,
    db: str | os.PathLike[str] | None = None,
    model: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    apply: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    **split: Any,
) -> Calibration:
    """Choose the threshold for ``target`` ("eer" or "far=RATE") from labelled recordings
    (:func:`speakerdb.scoring.calibrate.measure`), on the scale ``db`` decides on: its
    AS-norm cohort when normalisation is on, else raw cosine scores.

    ``apply`` stores it in ``db`` (created if absent, binding the model; refused if ``db``
    uses another model). Without ``model``, the model of ``db`` if it exists.
    """
    evaluate.parse_target(target)  # a typo fails before the model loads
    mine = _existing_database(db, model, device, precision)
    try:
        bound = model if model is not None or mine is None else mine.info().model_source
        settings = mine.norm_settings if mine is not None else None
        cohort = mine.cohort_vectors() if mine is not None and settings is not None else None
        result, embedder = calibration.measure(Path(data_dir), target, cohort=cohort,
                                               top_n=settings.top_n if settings is not None else None,
                                               model=bound, device=device, precision=precision, progress=progress,
                                               open_db=evaluation_database, **split)
        if not apply:
            return result
        if mine is None:
            mine = SpeakerDB(db, model=model, device=device, precision=precision, embedder=embedder, create=True)
        try:
            mine.apply_threshold(result.threshold, scale=result.threshold_scale)
        except BaseException:
            if mine.created:  # a new database that the refusal left empty is not kept
                mine.discard_if_unused()
                mine = None
            raise
        return dataclasses.replace(result, applied=True, database=str(mine.db_path))
    finally:
        if mine is not None:
            mine.close()


def write_timeline_files(results: Sequence[Timeline], *, rttm: str | os.PathLike[str] | None = None,
                         plot: str | os.PathLike[str] | None = None, overwrite: bool = False) -> None:
    """Write timelines as RTTM and/or draw them into a PNG (each replaced only with ``overwrite``)."""
    if rttm:
        timeline_files.write_rttm(Path(rttm), results, overwrite=overwrite)
    if plot:
        timeline_files.plot(results, Path(plot), overwrite=overwrite)


def _existing_database(db: str | os.PathLike[str] | None, model: str | None, device: str,
                       precision: str) -> SpeakerDB | None:
    """``db`` opened if it exists (a server URL always does), else None: never created here."""
    target = db_target(db)
    if isinstance(target, Path) and not target.exists():
        return None
    return SpeakerDB(db, model=model, device=device, precision=precision, create=False)


def evaluation_database(path: Path, embedder: Embedder) -> SpeakerDB:
    """The temporary database an evaluation enrolls in (the product's own enroll and identify):
    what :func:`speakerdb.scoring.evaluate.run` takes as ``open_db``."""
    return SpeakerDB(path, embedder=embedder)


def _plotted_threshold(db: SpeakerDB | None, embedder: Embedder) -> float | None:
    """The cosine threshold identify would use now: the database's, else the model's starting
    one; None when the database's threshold is on the AS-norm scale (not the plot's axis)."""
    if db is not None:
        return db.threshold if db.threshold_scale == norm.COSINE else None
    own = getattr(embedder, "default_threshold", None)
    return DEFAULT_THRESHOLD if own is None else float(own)


if TYPE_CHECKING:  # mypy checks here that a SpeakerDB is a SpeakerDBProtocol (tests/test_protocol.py compares signatures)
    def _satisfies_the_protocol(db: SpeakerDB) -> SpeakerDBProtocol:
        return db
