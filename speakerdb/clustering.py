"""How many voices a recording holds, and which window is whose, from the recording alone.

    window vectors (n, dim) -> cosine affinity -> each row pruned to its p nearest
    neighbours (binary), symmetrised -> graph Laplacian -> the number of voices from the
    largest gap between its smallest eigenvalues -> k-means on the k smallest eigenvectors

This is normalised-maximum-eigengap spectral clustering (NME-SC: Park et al., "Auto-Tuning
Spectral Clustering for Speaker Diarization Using Normalized Maximum Eigengap", IEEE SPL
2019; what NeMo's clustering diarizer uses): p is chosen per recording as the one whose
pruned graph shows the clearest gap relative to p (the ratio p / gap is smallest), so no
similarity threshold is needed. Two people in one room score well above any fixed
"different speaker" line (0.72-0.85 with GE2E) yet each is nearer itself (0.91-0.97):
neighbours, not thresholds, show that split.

The eigengap cannot say "one voice" reliably (a one-voice graph still has a largest gap
somewhere), so every split is checked against the recording itself: two voices are kept
apart only when their windows are clearly nearer their own voice's mean than the other's
(:func:`separation`: ~0.05 for one voice cut in two, 0.2-0.4 for two voices, GE2E on
clean speech; a voice of few windows must show more), or nearly so while their means
stay below ``same_voice`` (a cosine: the database's threshold plus a margin).
Hints (``speakers``, ``min_speakers``, ``max_speakers``) bound or fix the count; a hint
that rules out one voice also turns that check off.

Everything is numpy and LAPACK, and deterministic (k-means++ from a fixed seed). Cost: one
symmetric eigendecomposition per candidate p of at most ``MAX_ITEMS`` items; longer recordings
average runs of consecutive windows into one item first, and every window then joins the
nearest voice. Only the eigenvalues and eigenvectors read are computed where that is cheaper
(:data:`SUBSET_VALUES_FROM`, :data:`SUBSET_VECTORS_FROM`), with the same voices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Spectral clustering works on at most this many items (runs of consecutive windows are
#: averaged above it): the p search costs a few eigendecompositions of this size.
MAX_ITEMS = 1000
#: The largest p tried, as a share of the items (NeMo's max_rp_threshold).
MAX_P_SHARE = 0.07
#: How many p values are tried between 2 and the largest.
P_STEPS = 20
#: Short recordings try p up to this many (or a quarter of the items), whatever the share.
MIN_TOP_P = 6
#: Fewer items than this: too few for a graph; one voice unless a hint says otherwise
#: (then agglomerative clustering with the hinted count).
MIN_ITEMS = 6
#: Without a hint, at most this many voices: council meetings of nine are common
#: (docs/timeline.md, "What speech detection costs, and more than eight voices").
DEFAULT_MAX_SPEAKERS = 12
#: p is judged by the gaps among the first this many eigenvalues, and by all the allowed
#: ones only when every graph holds more voices: on short recordings a wider search let far,
#: spurious gaps pick p.
P_VOICES = 8
#: An eigenvalue of the Laplacian this near 0 is one more piece of a graph that fell apart.
SPLIT_APART = 1e-9
CENTRE = False  # see voices(): centring measured no better on our conversations
#: From this many items the p search takes only the eigenvalues it reads (the few smallest and
#: the largest) from each Laplacian's tridiagonal form, by bisection: the reduction to that form
#: is most of the cost, so this saves 15 % at 1,000 items and nothing below ~500.
SUBSET_VALUES_FROM = 500
#: From this many items the voices' k-means takes only the eigenvectors it uses (LAPACK's
#: syevr on a subset): less than half the cost of all of them from about 100 items on.
SUBSET_VECTORS_FROM = 100
#: Eigenvalues nearer than this are taken as one repeated eigenvalue, whose eigenvectors are any
#: basis of their space: the subset path then gives way to the full decomposition.
DISTINCT = 1e-6


@dataclass(frozen=True)
class Hints:
    """What the user knows about the number of voices: exactly ``speakers``, or between
    ``min_speakers`` and ``max_speakers`` (None: no bound)."""

    speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def bounds(self, n: int) -> tuple[int, int]:
        """(least, most) voices for ``n`` items."""
        if self.speakers is not None:
            k = max(1, min(self.speakers, n))
            return k, k
        lo = max(1, self.min_speakers or 1)
        hi = self.max_speakers if self.max_speakers is not None else max(lo, DEFAULT_MAX_SPEAKERS)
        hi = max(lo, min(hi, n))
        return min(lo, n), hi

    @property
    def forced(self) -> bool:
        """True when the hints rule out one voice (the one-voice check is skipped)."""
        return (self.speakers or 0) > 1 or (self.min_speakers or 0) > 1


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pruned_affinity(sim: np.ndarray, p: int) -> np.ndarray:
    """Each row of ``sim`` (n, n) kept only at its ``p`` largest entries (as 1), symmetrised."""
    n = len(sim)
    idx = np.argpartition(-sim, min(p, n - 1), axis=1)[:, :p]
    return _symmetrised(idx, sim)


def _symmetrised(idx: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """The graph (n, n), of ``sim``'s type, whose row i is 1 at ``idx[i]``, symmetrised: 0.5 (a + a^T)."""
    a = np.zeros_like(sim)
    np.put_along_axis(a, idx, 1.0, axis=1)
    return 0.5 * (a + a.T)


class _Neighbours:
    """The pruned graphs of one similarity matrix for every p up to ``top``, from one ordering
    of each row's ``top + 1`` largest entries instead of a partition of the whole row per p:
    the same graphs as :func:`pruned_affinity` (a row whose p-th and next entries tie, where
    the choice between them is the partition's, takes that p's graph from it)."""

    def __init__(self, sim: np.ndarray, top: int) -> None:
        self.sim, n = sim, len(sim)
        reach = min(top + 1, n)
        part = np.argpartition(-sim, reach - 1, axis=1)[:, :reach] if reach < n else np.tile(np.arange(n), (n, 1))
        values = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        self.idx = np.take_along_axis(part, order, axis=1)  # (n, reach): each row's largest first
        self.values = np.take_along_axis(values, order, axis=1)

    def graph(self, p: int) -> np.ndarray:
        """:func:`pruned_affinity` (sim, p)."""
        n = len(self.sim)
        if p >= n or p >= self.idx.shape[1] or np.any(self.values[:, p - 1] == self.values[:, p]):
            return pruned_affinity(self.sim, p)
        return _symmetrised(self.idx[:, :p], self.sim)


def laplacian(a: np.ndarray) -> np.ndarray:
    """The symmetric normalised Laplacian I - D^-1/2 A D^-1/2 of the graph ``a`` (n, n)
    (measured better than the unnormalised one NeMo uses, on our conversations)."""
    a = a.copy()
    np.fill_diagonal(a, 0.0)
    return _laplacian_of(a)


def _laplacian_of(a: np.ndarray) -> np.ndarray:
    """:func:`laplacian` of a graph whose diagonal is 0 already, made in ``a`` itself: the same
    numbers without a copy of the graph or an identity matrix."""
    s = 1 / np.sqrt(np.maximum(a.sum(axis=1), 1e-10))
    a *= s[:, None]
    a *= s[None, :]
    np.subtract(0.0, a, out=a)  # 0 - x, as I - x is off the diagonal (never -0.0)
    np.fill_diagonal(a, 1.0)  # 1 - 0
    return a


def spectrum(a: np.ndarray, count: int | None = None) -> np.ndarray:
    """The eigenvalues of the Laplacian of the graph ``a`` (n, n), ascending; ``a`` is used up.

    With ``count``, from SUBSET_VALUES_FROM items on: only the ``count`` smallest and the
    largest (``count + 1`` values, ascending), all that :func:`gap_of` reads for a ``most``
    below ``count``."""
    np.fill_diagonal(a, 0.0)
    lap = _laplacian_of(a)
    if count is None or len(lap) < SUBSET_VALUES_FROM or count + 1 >= len(lap):
        return np.linalg.eigvalsh(lap)
    return _smallest_and_largest(lap, count)


def _smallest_and_largest(lap: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` smallest and the largest eigenvalue of the symmetric ``lap`` (used up), by
    bisection on its tridiagonal form: Sturm counts, so a repeated eigenvalue (a graph in pieces)
    is counted as often as it occurs."""
    from scipy.linalg import eigvalsh_tridiagonal, lapack  # deferred: scipy is heavy to import

    n = len(lap)
    # lap.T is the Fortran-ordered view LAPACK reads in place; its upper triangle is lap's lower
    # one, the triangle numpy's eigvalsh reads.
    lwork = int(lapack.dsytrd_lwork(n)[0])
    _, d, e, _, info = lapack.dsytrd(lap.T, lwork=lwork, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dsytrd failed: info {info}")
    try:
        low = eigvalsh_tridiagonal(d, e, select="i", select_range=(0, count - 1), lapack_driver="stebz")
        top = eigvalsh_tridiagonal(d, e, select="i", select_range=(n - 1, n - 1), lapack_driver="stebz")
    except np.linalg.LinAlgError:
        # stebz gives up where rounding makes its counts non-monotonic (2 of 900 graphs of the long
        # recordings in docs/timeline.md): all the values of the same form, as eigvalsh takes them.
        every, info = lapack.dsterf(d, e)
        if info != 0:
            raise np.linalg.LinAlgError(f"dsterf failed: info {info}") from None
        every = np.sort(every)
        return np.concatenate([every[:count], every[-1:]])
    return np.concatenate([low, top])


def eigengap(a: np.ndarray, most: int) -> tuple[int, float, np.ndarray]:
    """(k with the largest gap among the first ``most`` eigenvalues of the Laplacian of
    ``a``, that gap over the largest eigenvalue, the eigenvalues ascending)."""
    return gap_of(np.linalg.eigvalsh(laplacian(a)), most)


def gap_of(lam: np.ndarray, most: int) -> tuple[int, float, np.ndarray]:
    """:func:`eigengap` of a graph whose Laplacian's eigenvalues ``lam`` (ascending) are known:
    all of them, or at least the ``most + 1`` smallest followed by the largest."""
    gaps = np.diff(lam[: most + 1])
    k = int(np.argmax(gaps)) + 1
    return k, float(gaps[k - 1] / max(float(lam[-1]), 1e-10)), lam


def p_candidates(n: int) -> list[int]:
    """The p values tried for ``n`` items, ascending (see :func:`choose_p`)."""
    top = max(2, int(n * MAX_P_SHARE), min(MIN_TOP_P, n // 4))
    return [int(p) for p in np.unique(np.linspace(2, top, P_STEPS).astype(int))]


def choose_p(
    sim: np.ndarray, most: int, spectra: dict[int, np.ndarray] | None = None, count: int | None = None
) -> int | None:
    """NME-SC's p: the one whose pruned graph minimises p / (normalised maximum eigengap).

    Candidates run from 2 to MAX_P_SHARE of the items: a voice with fewer windows than p
    is absorbed by its neighbours, so p stays small (a 2-minute call: up to ~16). A graph
    in more than ``most`` pieces has no gap within ``most`` to judge it by: such a p is
    passed over, and None means every candidate was.

    ``spectra`` (p -> the eigenvalues of its graph's Laplacian) is read for the candidates it
    holds and given the others: the caller that needs the chosen graph's eigenvalues again, or
    searches again with another ``most``, decomposes no graph twice (each is most of the cost).
    ``count``: how many of the smallest eigenvalues those spectra need (more than any ``most``
    they are read with; :func:`spectrum`); None: all."""
    assert count is None or count > most, "gap_of would read the largest eigenvalue as a small one"
    n = len(sim)
    spectra = {} if spectra is None else spectra
    candidates = p_candidates(n)
    graphs = _Neighbours(sim, candidates[-1]) if any(p not in spectra for p in candidates) else None
    best, best_ratio = None, np.inf
    for p in candidates:
        if p not in spectra:
            assert graphs is not None
            spectra[p] = spectrum(graphs.graph(p), count)
        _, gap, lam = gap_of(spectra[p], most)
        if len(lam) > most and lam[most] < SPLIT_APART:
            continue
        ratio = (p / n) / (gap + 1e-10)
        if ratio < best_ratio:
            best, best_ratio = p, ratio
    return best


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50, restarts: int = 5) -> np.ndarray:
    """Plain k-means (k-means++ seeding, several restarts, the lowest inertia): (n,) labels."""
    rng = np.random.default_rng(seed)
    best, best_inertia = np.zeros(len(x), np.int64), np.inf
    for _ in range(restarts):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d = np.min(((x[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
            total = float(d.sum())
            centres.append(x[rng.choice(len(x), p=d / total)] if total > 0 else x[rng.integers(len(x))])
        c = np.array(centres)
        labels = np.zeros(len(x), np.int64)
        for _ in range(iters):
            d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
            new = np.argmin(d, axis=1)
            if _ and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                if np.any(labels == j):
                    c[j] = x[labels == j].mean(axis=0)
        inertia = float(((x - c[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def spectral(a: np.ndarray, k: int) -> np.ndarray:
    """k clusters of the graph ``a`` (n, n): k-means on its Laplacian's k smallest eigenvectors."""
    lap = laplacian(a)
    vec = _smallest_vectors(lap, k) if SUBSET_VECTORS_FROM <= len(lap) and k + 1 < len(lap) else None
    if vec is None:
        _, vec = np.linalg.eigh(lap)
    return kmeans(vec[:, :k], k)


def _smallest_vectors(lap: np.ndarray, k: int) -> np.ndarray | None:
    """The eigenvectors of the ``k`` smallest eigenvalues of the symmetric ``lap`` (n, k), or None
    when those eigenvalues and the next are not all distinct (DISTINCT).

    Distinct eigenvalues have one eigenvector each, up to its sign, which k-means does not see
    (it reads only differences of coordinates): the voices of the full decomposition. A repeated
    one (a graph in pieces has 0 once per piece) has a whole space of them, of which LAPACK's two
    routines pick different bases: the k-means of a space cut by k differs."""
    from scipy.linalg import eigh  # deferred: scipy is heavy to import

    # lower=True: the triangle numpy's eigh reads.
    lam, vec = eigh(lap, lower=True, subset_by_index=[0, k], driver="evr", check_finite=False)
    if np.any(np.diff(lam) <= DISTINCT):
        return None
    return vec[:, :k]


def ahc(x: np.ndarray, k: int) -> np.ndarray:
    """Average-linkage clustering of unit rows ``x`` into ``k`` clusters (for a handful of items)."""
    if k <= 1 or len(x) <= 1:
        return np.zeros(len(x), np.int64)
    from scipy.cluster.hierarchy import fcluster, linkage  # deferred: scipy is heavy to import

    z = linkage(x.astype(np.float64), method="average", metric="cosine")
    return np.asarray(fcluster(z, t=k, criterion="maxclust") - 1, np.int64)


def first_order(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, ... by first appearance."""
    order: dict[int, int] = {}
    for lab in labels:
        order.setdefault(int(lab), len(order))
    return np.array([order[int(lab)] for lab in labels], np.int64)


def voices(
    vectors: np.ndarray,
    *,
    hints: Hints | None = None,
    same_voice: float = 1.0,
    weights: np.ndarray | None = None,
    centre: bool | None = None,
    max_items: int = MAX_ITEMS,
) -> np.ndarray:
    """Which voice each window vector belongs to: (n, dim) -> (n,) int labels 0..k-1,
    numbered by first appearance. The number of voices comes from the vectors themselves
    (see the module doc), within ``hints``.

    ``same_voice``: two voices whose windows are little nearer their own mean than the
    other's are merged when their means reach this cosine (see :func:`_merge_alike`).
    ``centre``: subtract the recording's mean vector before clustering, which removes what
    all windows share (room, line, noise); None: CENTRE.
    """
    hints = hints or Hints()
    x = np.asarray(vectors, np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64)
    x = l2(x)
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    group = np.arange(n) * min(max_items, n) // n  # (n,) run of consecutive windows
    m = int(group[-1]) + 1
    items = np.zeros((m, x.shape[1]))
    np.add.at(items, group, x * w[:, None])
    items = l2(items)
    lo, hi = hints.bounds(m)
    centre = CENTRE if centre is None else centre
    z = l2(items - items.mean(axis=0)) if centre and m > 2 else items
    if m < MIN_ITEMS:
        labels = ahc(z, lo) if lo > 1 else np.zeros(m, np.int64)
    else:
        sim = z @ z.T
        most_connected = p_candidates(m)[-1]  # when no graph shows a gap to choose by
        spectra: dict[int, np.ndarray] = {}  # every candidate's, decomposed once
        count = max(hi, 2) + 1  # the smallest eigenvalues any search below reads
        if lo == hi:
            k, p = lo, choose_p(sim, max(hi, 2), spectra, count) or most_connected
        else:
            chosen = choose_p(sim, min(hi, P_VOICES), spectra, count)
            if chosen is None and hi > P_VOICES:  # within P_VOICES the same search found nothing
                chosen = choose_p(sim, hi, spectra, count)
            p = chosen or most_connected
            k, _, _ = gap_of(spectra[p], hi)
            k = min(max(k, lo), hi)
        labels = spectral(pruned_affinity(sim, p), k) if k > 1 else np.zeros(m, np.int64)
    full = labels[group]
    # Every window joins its nearest voice mean (items averaged runs of windows).
    k = int(full.max()) + 1
    if k > 1 and not hints.forced:
        full = _merge_alike(x, full, same_voice, lo)
    return first_order(full)


#: Two voices are one when their windows are, on average, hardly nearer their own voice
#: than the other (see :func:`separation`): below this, always; below SEPARATED, when their
#: means also reach ``same_voice``.
UNSEPARATED = 0.1
SEPARATED = 0.25
#: A voice of fewer than FEW windows must be separated by SMALL / sqrt(its windows) more:
#: its mean is a noisy estimate (without this, about 1 in 10 single-speaker LibriSpeech
#: files were counted as two voices by identify's check; with it, 2 of 351).
FEW = 8
SMALL = 0.15


def separation(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """How much nearer the windows of voices ``a`` and ``b`` (boolean masks over the unit
    rows ``x``) are to their own voice's mean (leaving themselves out) than to the other's,
    on average: ~0 for one voice split in two, 0.2-0.4 for two voices (GE2E, clean)."""
    out = []
    for own, other in ((a, b), (b, a)):
        rows, total = x[own], x[own].sum(axis=0)
        mine = np.einsum("ij,ij->i", rows, l2(total[None] - rows)) if len(rows) > 1 else np.ones(len(rows))
        out.append(mine - rows @ l2(x[other].sum(axis=0)))
    return float(np.mean(np.concatenate(out)))


def _merge_alike(x: np.ndarray, labels: np.ndarray, same_voice: float, least: int) -> np.ndarray:
    """Merge the two least separated voices while they look like one voice (keeping at
    least ``least`` voices): separation below UNSEPARATED, or below SEPARATED with means
    whose cosine reaches ``same_voice``."""
    labels = labels.copy()
    while True:
        ids = sorted(set(labels.tolist()))
        if len(ids) <= max(1, least):
            return labels
        best = None
        for i, p in enumerate(ids):
            for q in ids[i + 1 :]:
                a, b = labels == p, labels == q
                few = int(min(a.sum(), b.sum()))
                sep = separation(x, a, b) - (SMALL / np.sqrt(few) if few < FEW else 0.0)
                alike = float(l2(x[a].sum(axis=0)) @ l2(x[b].sum(axis=0)))
                if (sep < UNSEPARATED or (sep < SEPARATED and alike >= same_voice)) and (best is None or sep < best[0]):
                    best = (sep, p, q)
        if best is None:
            return labels
        labels[labels == best[2]] = best[1]
