"""Score normalisation: adaptive symmetric s-norm (AS-norm) against a cohort. numpy only.

A raw score is the cosine between a probe's embedding and an enrolled speaker's centroid.
How high a raw score must be to mean "same voice" varies from voice to voice: some
speakers (and some recordings) sit close to many others. AS-norm measures that against a
*cohort*, embeddings of people who are not enrolled::

    s_norm = ((s - mu_e) / sigma_e + (s - mu_p) / sigma_p) / 2

where ``mu_e``, ``sigma_e`` are the mean and standard deviation of the ``top_n`` highest
scores of the enrolled speaker's centroid against the cohort, and ``mu_p``, ``sigma_p``
the same for the probe (Matejka et al., Interspeech 2017, "adaptive" = top-N only). The
normalised score is on another scale than cosine (roughly a z-score: 0 is "as close as
the nearest cohort voices", target trials land around 3 to 15), so a database records
which scale its threshold is on (:data:`SCALES`).

The enrolled side is a property of the speaker, not of the query: :class:`SpeakerStats`
keeps it for every speaker in memory and brings it up to date by replaying the store's
change records (the same records the search index replays), never per query.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DEFAULT_TOP_N as DEFAULT_TOP_N  # defined in config, which the CLI's help reads too
from ..config import MIN_COHORT as MIN_COHORT  # defined in config, which the client reads too
from ..results import NormSettings  # a result type, shared with the client (results.py)
from ..storage import store

METHOD = "as-norm"
#: Scales a threshold can be on: raw cosine scores, or AS-norm scores.
COSINE, AS_NORM = "cosine", METHOD
SCALES = (COSINE, AS_NORM)
#: Standard deviations below this are raised to it: a degenerate cohort (every cohort
#: score equal) must not divide by zero.
MIN_STD = 1e-6
#: A threshold on the AS-norm scale is a finite number in this range (z-score-like units).
AS_NORM_RANGE = (-20.0, 100.0)
#: A new AS-norm database's starting threshold, until `calibrate` measures one: between the
#: EER thresholds scripts/eval_norm.py measured with GE2E, top-100, on LibriSpeech (3.5 on
#: whole recordings, 2.8 on 2 s probes; see docs/accuracy.md). Other models: calibrate.
DEFAULT_AS_NORM_THRESHOLD = 3.0
#: Rows of embeddings scored against the cohort at once (bounds the (rows, cohort) matrix).
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class CohortVectors:
    """A cohort already embedded: ``vectors`` (m, dim) of model ``model_id``, with each
    recording's source label and decoded-audio sha256 (m each)."""

    model_id: str
    vectors: np.ndarray
    sources: list[str]
    sha256: list[str]


def digest(cohort: np.ndarray) -> str:
    """sha256 of a cohort matrix as little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(cohort, dtype="<f4").tobytes()).hexdigest()


def raw_scores(query: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine scores (k,) float64 of one unit ``query`` (dim,) against unit ``centroids`` (k, dim).

    The one way every decision computes a raw score, verify and identify alike: float64
    products summed along each row by numpy's pairwise sum, so a row's score depends on
    that row alone, never on how many rows are scored with it (a BLAS matrix product may
    block rows differently and differ in the last bit). A trial on the threshold is then
    accepted by both commands or by neither.
    """
    q = np.asarray(query, np.float64)
    c = np.atleast_2d(np.asarray(centroids, np.float64))
    return (c * q).sum(axis=-1)


def top_stats(vectors: np.ndarray, cohort: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (n,), (n,) float64 of each vector's ``top_n`` highest
    cosine scores against the cohort (vectors (n, dim), cohort (m, dim), both unit rows;
    pass the cohort as float64 to spare a conversion per call)."""
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    cohort_t = np.asarray(cohort, np.float64).T  # (dim, m); no copy when the caller keeps float64
    n_top = min(int(top_n), cohort_t.shape[1])
    m = cohort_t.shape[1]
    means = np.empty(len(vectors), np.float64)
    stds = np.empty(len(vectors), np.float64)
    for start in range(0, len(vectors), CHUNK_ROWS):
        block = vectors[start : start + CHUNK_ROWS].astype(np.float64) @ cohort_t  # (b, m)
        top = np.partition(block, m - n_top, axis=1)[:, m - n_top :]  # (b, n_top)
        means[start : start + len(block)] = top.mean(axis=1)
        stds[start : start + len(block)] = np.maximum(top.std(axis=1), MIN_STD)
    return means, stds


def as_norm(raw: np.ndarray | float, enroll_mean, enroll_std, probe_mean, probe_std) -> np.ndarray:
    """AS-norm of raw scores, given each side's cohort statistics (broadcast elementwise)."""
    raw = np.asarray(raw, np.float64)
    return 0.5 * ((raw - enroll_mean) / enroll_std + (raw - probe_mean) / probe_std)


class SpeakerStats:
    """Every enrolled speaker's cohort statistics, kept in step with the store by replay.

    Keyed like the search index: the database's identity, the generation it reflects and
    that change record's nonce, plus the cohort (digest, top-N) it was computed against.
    :meth:`at` brings it to a read session's generation by replaying the records after its
    own (recomputing only the speakers they name); a gap, another history, a different
    cohort or a session older than the cache rebuilds it from every centroid.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None  # (database_id, digest, top_n)
        self.generation = -1
        self._nonce: int | None = None
        self._ids = np.zeros(0, np.int64)  # sorted speaker ids
        self._mean = np.zeros(0, np.float64)  # (n,) aligned with _ids
        self._std = np.zeros(0, np.float64)
        self.rebuilds = 0  # full recomputations so far (tests and benchmarks read it)
        self.replayed = 0  # speakers recomputed by replay so far

    def at(self, session, settings: dict[str, Any], cohort: np.ndarray, norm: NormSettings) -> "SpeakerStats":
        """Bring the statistics to ``session``'s generation; returns self."""
        key = (settings.get("database_id"), norm.digest, norm.top_n)
        # ``settings`` was read in this session: its generation is the session's (one query less).
        target = int(settings["generation"]) if "generation" in settings else store.generation(session)
        with self._lock:
            if (
                self._key == key
                and self.generation == target
                and (target == 0 or store.change_nonce(session, target) == self._nonce)
            ):
                return self
            records = None
            if (
                self._key == key
                and 0 <= self.generation <= target
                and (self.generation == 0 or store.change_nonce(session, self.generation) == self._nonce)
            ):
                records = store.changes_between(session, self.generation, target)
                if len(records) != target - self.generation:
                    records = None  # pruned past us: rebuild
            if records is None:
                ids, vectors = store.centroids(session)
                self._ids = ids
                if len(ids):
                    self._mean, self._std = top_stats(vectors, cohort, norm.top_n)
                else:
                    self._mean, self._std = np.zeros(0), np.zeros(0)
                self.rebuilds += 1
            else:
                touched = sorted({r[1] for r in records})
                present = store.centroids_of(session, touched)
                self._apply(touched, present, cohort, norm.top_n)
            self._key, self.generation = key, target
            self._nonce = store.change_nonce(session, target) if target else None
        return self

    def _apply(self, touched: list[int], present: dict[int, np.ndarray], cohort: np.ndarray, top_n: int) -> None:
        """Drop the touched speakers, then add back those that still exist with fresh statistics."""
        keep = ~np.isin(self._ids, np.asarray(touched, np.int64))
        ids, mean, std = self._ids[keep], self._mean[keep], self._std[keep]
        if present:
            new_ids = np.fromiter(present, np.int64, len(present))
            new_mean, new_std = top_stats(np.stack(list(present.values())), cohort, top_n)
            ids, mean, std = (
                np.concatenate([ids, new_ids]),
                np.concatenate([mean, new_mean]),
                np.concatenate([std, new_std]),
            )
        order = np.argsort(ids, kind="stable")
        self._ids, self._mean, self._std = ids[order], mean[order], std[order]
        self.replayed += len(touched)

    def lookup(self, ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (k,), (k,) of the speakers ``ids`` (KeyError for one not known)."""
        ids = np.asarray(ids, np.int64)
        pos = np.searchsorted(self._ids, ids)
        if len(ids) and (
            np.any(pos >= len(self._ids)) or np.any(self._ids[np.minimum(pos, len(self._ids) - 1)] != ids)
        ):
            raise KeyError("speaker without cohort statistics")
        return self._mean[pos], self._std[pos]
