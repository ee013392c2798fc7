"""A database's AS-norm cohort: choosing it (who may be in it), storing it, and scoring with it.

The arithmetic is in :mod:`.norm`; this module holds what needs the store: a cohort is people
who are not enrolled (an enrolled utterance is refused; a recording that scores at or above
the cosine threshold against an enrolled speaker is set aside), the cohort and its record
are written in the caller's transaction, and :class:`CohortCache` keeps the cohort matrix
and the enrolled speakers' statistics against it between queries.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..config import NAMES_SOMEONE
from ..embedding.models import Embedder, same_model
from ..embedding.pipeline import EmbeddedClip
from ..errors import DatabaseError, InvalidInputError, ModelMismatchError
from ..results import CohortSetAside, NormSettings, check_top_n
from ..storage import settings as stored
from ..storage import store
from ..storage.indexkeeper import IndexKeeper
from . import norm
from .thresholds import cosine_threshold

log = logging.getLogger("speakerdb")

#: Nearest enrolled speakers (by the index) whose exact scores are checked per cohort recording.
COHORT_SHORTLIST = 5

#: A cohort recording: (source label, decoded-audio sha256, embedding).
Row = tuple[str, str, np.ndarray]


class CohortCache:
    """The normalisation in force, read once per cohort, and the enrolled speakers' statistics
    against it, kept up to date by replaying the change records (:class:`norm.SpeakerStats`).

    ``db_name`` names the database in errors.
    """

    def __init__(self, db_name: str | os.PathLike[str]) -> None:
        self.db_name = db_name
        self.stats = norm.SpeakerStats()
        self._cohort: tuple[str, np.ndarray] | None = None  # (digest, matrix) of the cohort last read

    def state(self, s: Session, settings: stored.Settings) -> tuple[NormSettings, np.ndarray] | None:
        """The normalisation in force in session ``s`` and its cohort matrix (None: raw scores)."""
        d = stored.norm(settings)
        if not d:
            return None
        setting = NormSettings.from_dict(d)
        bound = stored.model_id(settings)
        if bound is None or not same_model(bound, setting.model_id) or (stored.dim(settings) or 0) != setting.dim:
            raise ModelMismatchError(
                f"database {self.db_name} holds a normalisation cohort of model {setting.model_id}, but its speakers "
                f"are of model {bound}: run `speakerdb norm --cohort DIR` again or `speakerdb norm --off`"
            )
        if self._cohort is None or self._cohort[0] != setting.digest:
            matrix = store.cohort(s)
            if len(matrix) != setting.count or norm.digest(matrix) != setting.digest:
                raise DatabaseError(
                    f"database {self.db_name}: the stored normalisation cohort does not match its record: "
                    "run `speakerdb norm --cohort DIR` again"
                )
            self._cohort = (setting.digest, matrix.astype(np.float64))  # float64 once, not per query
        return setting, self._cohort[1]

    def normalise(
        self, s: Session, settings: stored.Settings, query: np.ndarray, ids: np.ndarray, raw: np.ndarray
    ) -> np.ndarray:
        """AS-norm of the raw scores of ``query`` against speakers ``ids`` (raw if normalisation is off)."""
        found = self.state(s, settings)
        if found is None:
            return raw
        setting, cohort = found
        stats = self.stats.at(s, settings, cohort, setting)
        enroll_mean, enroll_std = stats.lookup(ids)
        probe_mean, probe_std = norm.top_stats(query[None, :], cohort, setting.top_n)
        return norm.as_norm(raw, enroll_mean, enroll_std, probe_mean[0], probe_std[0])

    def vectors(self, s: Session, settings: stored.Settings) -> norm.CohortVectors | None:
        """The stored cohort with its sources and hashes (None without normalisation)."""
        found = self.state(s, settings)
        if found is None:
            return None
        rows = s.execute(
            select(store.CohortEmbedding.source, store.CohortEmbedding.audio_sha256).order_by(store.CohortEmbedding.id)
        ).all()
        setting, matrix = found
        return norm.CohortVectors(setting.model_id, matrix, [r[0] for r in rows], [r[1] for r in rows])


def check_model(vectors: norm.CohortVectors, embedder: Embedder, db_name: str | os.PathLike[str]) -> None:
    """ModelMismatchError unless ``vectors`` were made by ``embedder``, database ``db_name``'s model."""
    if not same_model(vectors.model_id, embedder.model_id) or vectors.vectors.shape[1] != embedder.dim:
        raise ModelMismatchError(
            f"the cohort was embedded with model {vectors.model_id}, database {db_name} uses "
            f"{embedder.model_id}: embed the cohort with this database's model; nothing stored"
        )


def from_clips(model_id: str, clips: list[EmbeddedClip]) -> norm.CohortVectors:
    """A cohort of recordings embedded with model ``model_id``: their vectors, labels and audio hashes."""
    return norm.CohortVectors(
        model_id, np.stack([c.vector for c in clips]), [c.source for c in clips], [c.sha256 for c in clips]
    )


class Reach:
    """Called with each cohort clip as it is embedded (``pipeline.embed_all(each=...)``): fails
    as soon as the recordings set aside so far (repeats, and those that score as enrolled
    speakers, as :func:`screen` decides) leave fewer than ``top_n`` or ``norm.MIN_COHORT``
    possible, instead of after every file is embedded. Nothing is kept: :func:`screen`
    decides on the whole cohort, and this stays silent once the last clip is in, for it to
    say so exactly."""

    def __init__(
        self, st: store.Store, indexer: IndexKeeper, n_files: int, top_n: int | None, screen_enrolled: bool = True
    ) -> None:
        self._st, self._indexer, self._screen_enrolled = st, indexer, screen_enrolled
        self._n_files, self._top_n = n_files, top_n
        self._done = 0
        self._seen: set[str] = set()
        self._set_aside: list[CohortSetAside] = []
        self._repeats: list[str] = []

    def __call__(self, clip: EmbeddedClip) -> None:
        """Screen one embedded clip; InvalidInputError if the cohort can no longer be big enough."""
        self._done += 1
        if clip.sha256 in self._seen:
            self._repeats.append(clip.source)
        else:
            self._seen.add(clip.sha256)
            row = (clip.source, clip.sha256, clip.vector)
            self._set_aside += _enrolled_in_cohort(self._st, self._indexer, [row], self._screen_enrolled).values()
        left = self._n_files - len(self._set_aside) - len(self._repeats)  # at most
        if self._done == self._n_files:
            return  # all known: screen() says exactly what is wrong, if anything
        if left < norm.MIN_COHORT:
            head = f"a cohort needs at least {norm.MIN_COHORT} recordings of people who are not enrolled"
            tail = f"so at most {left} left"
        elif self._top_n is not None and left < self._top_n:
            head = f"top-n {self._top_n} cannot be reached"
            tail = f"so at most {left} left: give at most {left}, or leave it out (at most the cohort's size)"
        else:
            return
        for a in self._set_aside:
            _warn_set_aside(a)
        raise InvalidInputError(
            f"{head}: of the first {self._done} of {self._n_files} cohort recordings, {self._why()}, {tail}; "
            "nothing stored"
        )

    def _why(self) -> str:
        parts = []
        if self._set_aside:
            first = self._set_aside[0]
            parts.append(
                f"{len(self._set_aside)} score at or above the threshold {first.threshold:.3f} against enrolled "
                f"speakers (the first: {first.source}, {first.speaker} {first.score:.3f})"
            )
        if self._repeats:
            parts.append(f"{len(self._repeats)} repeat another recording (the first: {self._repeats[0]})")
        return " and ".join(parts)


def screen(
    st: store.Store, indexer: IndexKeeper, vectors: norm.CohortVectors, top_n: int | None, screen_enrolled: bool = True
) -> tuple[list[Row], int, tuple[CohortSetAside, ...]]:
    """The rows of ``vectors`` that may form a cohort (one per recording), the ``top_n`` to
    use, and those set aside because they score as enrolled speakers (warned about here)."""
    rows = list(
        {sha: (src, sha, vec) for src, sha, vec in zip(vectors.sources, vectors.sha256, vectors.vectors)}.values()
    )
    if len(rows) < norm.MIN_COHORT:
        raise InvalidInputError(f"a cohort needs at least {norm.MIN_COHORT} different recordings, {len(rows)} given")
    near = _enrolled_in_cohort(st, indexer, rows, screen_enrolled)  # {sha256: why}
    set_aside = sorted(near.values(), key=lambda a: -a.score)
    if set_aside:
        rows = [r for r in rows if r[1] not in near]
        for a in set_aside:
            _warn_set_aside(a)
        if len(rows) < norm.MIN_COHORT:
            first = set_aside[0]
            raise InvalidInputError(
                f"a cohort needs at least {norm.MIN_COHORT} recordings of people who are not enrolled: "
                f"{len(set_aside)} of {len(rows) + len(set_aside)} score at or above the threshold "
                f"{first.threshold:.3f} against enrolled speakers (the first: {first.source}, "
                f"{first.speaker} {first.score:.3f}), {len(rows)} left; nothing stored"
            )
    top_n = min(norm.DEFAULT_TOP_N, len(rows)) if top_n is None else check_top_n(top_n, len(rows))
    return rows, top_n, tuple(set_aside)


def _warn_set_aside(a: CohortSetAside) -> None:
    log.warning(
        "cohort recording %s set aside: it scores %.3f against enrolled speaker %s "
        "(threshold %.3f): a cohort holds people who are not enrolled",
        a.source,
        a.score,
        a.speaker,
        a.threshold,
        extra=NAMES_SOMEONE,  # an enrolled speaker and a cohort file: in the answer (set_aside), not a service's log
    )


def replace(s: Session, rows: list[Row], top_n: int, model_id: str) -> tuple[NormSettings, bool, float]:
    """Store ``rows`` as the cohort in the write transaction ``s``, replacing any before, and
    turn AS-norm on; a cosine threshold moves to the AS-norm starting value. Returns the
    normalisation, whether the threshold must be measured again, and the threshold now."""
    settings = store.get_settings(s)
    _refuse_enrolled(s, rows)
    store.replace_cohort(s, rows)
    matrix = np.stack([r[2] for r in rows]).astype(np.float32)
    setting = NormSettings(norm.METHOD, top_n, model_id, int(matrix.shape[1]), len(rows), norm.digest(matrix))
    stored.write_norm(s, setting.to_dict())
    recalibrate = stored.scale(settings) != norm.AS_NORM
    if recalibrate:
        # The cosine one is kept for what still compares raw scores (enrollment checks, timelines) and for `--off`.
        stored.write_scale(s, norm.AS_NORM, norm.DEFAULT_AS_NORM_THRESHOLD, cosine_threshold=stored.threshold(settings))
    return setting, recalibrate, stored.threshold(store.get_settings(s))


def remove(s: Session) -> tuple[bool, bool, float]:
    """Delete the cohort in the write transaction ``s`` and return to raw cosine scores (an
    AS-norm threshold goes back to the cosine one from before). Returns whether there was a
    normalisation, whether the threshold must be measured again, and the threshold now."""
    settings = store.get_settings(s)
    store.replace_cohort(s, [])
    stored.delete_norm(s)
    recalibrate = stored.scale(settings) != norm.COSINE
    if recalibrate:
        stored.write_scale(s, norm.COSINE, cosine_threshold(settings))  # the one from before, if any
    return stored.norm(settings) is not None, recalibrate, stored.threshold(store.get_settings(s))


def _enrolled_hashes(s: Session, hashes: list[str]) -> set[str]:
    """Those of ``hashes`` that are enrolled utterances' audio."""
    found: set[str] = set()
    for start in range(0, len(hashes), 900):  # SQLite's old limit on bound parameters is 999
        chunk = hashes[start : start + 900]
        found |= set(s.scalars(select(store.Utterance.audio_sha256).where(store.Utterance.audio_sha256.in_(chunk))))
    return found


def _refuse_enrolled(s: Session, rows: list[Row]) -> None:
    """InvalidInputError if any cohort row is an enrolled utterance's audio."""
    enrolled = _enrolled_hashes(s, [r[1] for r in rows])
    if enrolled:
        raise InvalidInputError(
            f"{len(enrolled)} cohort recording(s) are enrolled speakers' utterances (the first: "
            f"{next(r[0] for r in rows if r[1] in enrolled)}): a cohort holds people who are not enrolled"
        )


def _enrolled_in_cohort(
    st: store.Store, indexer: IndexKeeper, rows: list[Row], screen_enrolled: bool = True
) -> dict[str, CohortSetAside]:
    """Cohort rows that are enrolled people: refuse an enrolled utterance's audio; return, by
    sha256, those whose raw score against their nearest enrolled speaker reaches the cosine
    threshold (what identify would name).

    A hash alone misses the same clip with a sample dropped and other recordings of an
    enrolled voice; such a cohort voice scores every probe of that speaker as ordinary.
    """
    with st.read() as s:
        _refuse_enrolled(s, rows)
        if not screen_enrolled or not store.has_speakers(s):
            return {}
    queries = np.stack([r[2] for r in rows]).astype(np.float32)
    found: dict[str, CohortSetAside] = {}
    with indexer.snapshot() as (s, index):
        threshold = cosine_threshold(store.get_settings(s))
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
