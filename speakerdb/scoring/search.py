"""The nearest enrolled speakers of each query, scored as verify scores them.

FAISS picks the candidates; their scores are recomputed exactly (:func:`.norm.raw_scores`)
and, with normalisation on, re-ranked by AS-norm score (:class:`.cohort.CohortCache`).
"""

from __future__ import annotations

import numpy as np

from ..embedding.pipeline import EmbeddedClip
from ..results import Candidate, Identification
from ..storage import settings as stored
from ..storage import store
from ..storage.indexkeeper import IndexKeeper
from . import norm
from .cohort import CohortCache

#: With normalisation on, identify re-ranks this many raw-score candidates by AS-norm score
#: (the normalised best is almost always among the raw best few; see docs/accuracy.md).
NORM_SHORTLIST = 50


def nearest(indexer: IndexKeeper, cohorts: CohortCache, queries: np.ndarray, top_k: int) -> list[list[Candidate]]:
    """The ``top_k`` best candidates of each row of ``queries`` (n, dim), best first."""
    # Search and names from one snapshot: an answer never puts one speaker's score on
    # another's name, whatever other processes commit meanwhile (tests/test_cache.py).
    with indexer.snapshot() as (s, index):
        settings = store.get_settings(s)
        normalised = stored.norm(settings) is not None
        # With normalisation the ranking can change: a shortlist by raw score is re-ranked.
        k = max(top_k, NORM_SHORTLIST) if normalised else top_k
        _, ids = index.search(queries, k)  # (n, k): FAISS picks the candidates
        known = store.names_and_centroids(s, sorted({int(i) for i in ids.ravel() if i >= 0}))
        rows = []
        for q, row_ids in zip(queries, ids):
            found = np.asarray([int(j) for j in row_ids if int(j) in known], np.int64)
            # Scores as verify computes them (norm.raw_scores): a trial on the threshold
            # gets the same answer from both commands, whatever FAISS's rounding.
            raw = norm.raw_scores(q, np.stack([known[int(j)][1] for j in found])) if len(found) else np.zeros(0)
            final = cohorts.normalise(s, settings, q, found, raw) if len(found) else raw
            rank = np.argsort(-final, kind="stable")[:top_k]
            rows.append([Candidate(known[int(found[r])][0], float(final[r]), float(raw[r])) for r in rank])
    return rows


def nearest_without_index(db: store.Store, cohorts: CohortCache, query: np.ndarray, top_k: int) -> list[Candidate]:
    """:func:`nearest` for one query (dim,), computed on the store's centroids instead of the
    index: for a process that has no index and must not build (and save) one for one search
    (enroll's voice check, before its own commit would leave that file behind at once)."""
    with db.read() as s:
        settings = store.get_settings(s)
        ids, vectors = store.centroids(s)
        if not len(ids):
            return []
        raw = norm.raw_scores(query, vectors)  # (n,)
        k = max(top_k, NORM_SHORTLIST) if stored.norm(settings) is not None else top_k
        shortlist = np.argsort(-raw, kind="stable")[:k]
        found = ids[shortlist]
        final = cohorts.normalise(s, settings, query, found, raw[shortlist])
        rank = np.argsort(-final, kind="stable")[:top_k]
        names = store.names_and_centroids(s, [int(found[r]) for r in rank])
        return [Candidate(names[int(found[r])][0], float(final[r]), float(raw[shortlist][r])) for r in rank]


def identifications(
    indexer: IndexKeeper,
    cohorts: CohortCache,
    clips: dict[int, EmbeddedClip],
    top_k: int,
    threshold: float,
    voices: dict[int, int] | None = None,
) -> dict[int, Identification]:
    """identify's answer for each embedded clip (by position): its :func:`nearest` candidates,
    and the best one's name when its score reaches ``threshold`` (else None: unknown)."""
    if not clips:
        return {}
    order = sorted(clips)
    rows = nearest(indexer, cohorts, np.stack([clips[i].vector for i in order]), top_k)  # queries: (n, dim)
    out = {}
    for i, candidates in zip(order, rows):
        best = candidates[0] if candidates else None
        out[i] = Identification(
            clips[i].source,
            best.speaker if best is not None and best.score >= threshold else None,
            best.score if best else None,
            candidates,
            raw_score=best.raw_score if best else None,
            voices=(voices or {}).get(i),
        )
    return out
