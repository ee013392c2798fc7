#!/usr/bin/env python
"""Several recordings per speaker: scoring against the centroid against scoring against each utterance.

    python scripts/eval_rescoring.py [--data ../shared/data/librispeech] [--seeds 20] [--json out.json]
    python scripts/eval_rescoring.py --cost-only [--cost-speakers 10000]

Data: LibriSpeech test-other (10 speakers x 10 recordings) and train-clean-100 (251 speakers,
one recording each), embedded once with the GE2E encoder (``--model resemblyzer``), whole and
cropped to the middle 3 s and 1 s of detected speech (``speakerdb evaluate --test-seconds``'s
crop). Enrollment recordings are always whole; probes are whole or cropped.

Protocol, for each of 5 folds (a different pair of test-other speakers held out as impostors)
and each seed (a reshuffle of every speaker's recordings): the 8 other test-other speakers
enroll with their first E recordings (E in --enroll-sizes); their last 5 recordings are the
probes whatever E is, so every E is scored on the same probes. The 126 even-numbered
train-clean-100 speakers (sorted by id) are enrolled too, with their one recording (a gallery
of 8 + 126 speakers, as a real one mixes speakers with one and with many recordings); the
odd-numbered ones and the 2 held-out speakers are impostor probes. Verification trials: a
probe against its own speaker (target), against every other enrolled speaker (non-target),
and every impostor probe against every enrolled speaker (non-target); EER is pooled over
folds and seeds. Top-1: a genuine probe's best speaker after identify's own route: FAISS's
shortlist by centroid (--shortlist, default 50), rescored, the best kept.

Scorings of a probe q against a speaker's unit utterance vectors u_1..u_E:
centroid (cosine to the normalised mean: what speakerdb stores and searches), max (best
utterance), best-k mean (mean of the k best utterance scores), weighted (cosine to the
duration-weighted normalised mean), and mix (mean of centroid and max).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import kit
from speakerdb.audio import decode as audio
from speakerdb.embedding import pipeline
from speakerdb.embedding.models import load_embedder
from speakerdb.scoring import evaluate, metrics

PROBE_SECONDS = {"whole": None, "3 s": 3.0, "1 s": 1.0}
N_PROBES = 5  # the last recordings of each speaker: the probes, whatever the enrollment size
METHODS = ("centroid", "max", "best-2 mean", "best-3 mean", "weighted", "mix")


def unit(v: np.ndarray) -> np.ndarray:
    """Rows (or one vector) scaled to norm 1."""
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def embed_all(files: list[Path], embedder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """condition -> (vectors (n, dim), durations (n,)) of ``files``, whole and cropped."""
    out: dict[str, tuple[list, list]] = {c: ([], []) for c in PROBE_SECONDS}
    for f in files:
        clip = audio.load(f)
        for condition, seconds in PROBE_SECONDS.items():
            cropped = evaluate.crop(clip, seconds)
            e = pipeline.embed_clip(cropped, embedder)
            out[condition][0].append(e.vector)
            out[condition][1].append(e.duration_s)
    return {c: (np.stack(v).astype(np.float64), np.asarray(d)) for c, (v, d) in out.items()}


def speaker_scores(q: np.ndarray, utts: np.ndarray, durations: np.ndarray) -> dict[str, np.ndarray]:
    """Every scoring of probes ``q`` (n, dim) against one speaker's utterances (E, dim): method -> (n,)."""
    per = q @ utts.T  # (n, E)
    best = -np.sort(-per, axis=1)
    centroid = q @ unit(utts.mean(axis=0))
    weighted = q @ unit((utts * durations[:, None]).sum(axis=0))
    k2, k3 = min(2, per.shape[1]), min(3, per.shape[1])
    return {
        "centroid": centroid,
        "max": best[:, 0],
        "best-2 mean": best[:, :k2].mean(axis=1),
        "best-3 mean": best[:, :k3].mean(axis=1),
        "weighted": weighted,
        "mix": 0.5 * (centroid + best[:, 0]),
    }


class _Clip:
    """A synthetic enrollment clip as storage.enrollment.add_clips takes it."""

    def __init__(self, source: str, vector: np.ndarray) -> None:
        self.source, self.vector, self.duration_s = source, vector, 8.0
        self.sha256 = f"{abs(hash(source)):064x}"[-64:]


def cost(n_speakers: int, per_speaker: int, shortlist: int, queries: int) -> dict:
    """What rescoring a shortlist would add to a search, at ``n_speakers`` speakers of
    ``per_speaker`` synthetic 512-d utterances each (SQLite, the flat index): the product's
    search alone (``search.nearest``, top 5) against the same search of ``shortlist``
    candidates followed by reading their utterance embeddings from the store and scoring
    them (max and mix). Medians of interleaved runs over ``queries`` queries."""
    import tempfile

    from sqlalchemy import select

    from speakerdb import SpeakerDB
    from speakerdb.scoring import search
    from speakerdb.storage import enrollment, store

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="eval-rescoring-") as tmp:
        db = SpeakerDB(Path(tmp) / "cost.sqlite", embedder=kit.StubEmbedder())
        with db.store.write() as s:
            db._bind_model(s)
        centres = kit.unit_vectors(rng, n_speakers, 512)
        start = time.perf_counter()
        for first in range(0, n_speakers, 1000):
            with db.store.write() as s:
                for i in range(first, min(first + 1000, n_speakers)):
                    utts = unit(centres[i] + 0.05 * rng.standard_normal((per_speaker, 512))).astype(np.float32)
                    clips = [_Clip(f"s{i}/u{j}.flac", v) for j, v in enumerate(utts)]
                    enrollment.add_clips(s, f"speaker-{i:05d}", None, clips, {})
        kit.log(f"filled {n_speakers:,} speakers x {per_speaker} in {time.perf_counter() - start:.0f} s")
        probes = unit(centres[rng.integers(0, n_speakers, queries)] + 0.05 * rng.standard_normal((queries, 512)))
        probes = probes.astype(np.float32)
        with db.indexer.snapshot():
            pass  # the index is built (and saved) once, before timing

        def plain() -> None:
            for q in probes:
                search.nearest(db.indexer, db._cohorts, q[None], 5)

        def rescored() -> None:
            for q in probes:
                with db.indexer.snapshot() as (s, index):
                    _, ids = index.search(q[None], shortlist)
                    wanted = [int(i) for i in ids[0] if i >= 0]
                    rows = s.scalars(select(store.Utterance).where(store.Utterance.speaker_id.in_(wanted))).all()
                    by_speaker: dict[int, list[np.ndarray]] = {}
                    for u in rows:
                        by_speaker.setdefault(u.speaker_id, []).append(u.vector())
                    for vectors in by_speaker.values():
                        per = np.stack(vectors) @ q
                        _ = 0.5 * (per.max() + float(q @ unit(np.mean(vectors, axis=0))))

        times = kit.interleaved({"search": plain, "search + rescoring": rescored}, repeats=5)
        db.close()
    per_query = {k: 1000 * float(np.median(v)) / queries for k, v in times.items()}
    return {
        "speakers": n_speakers,
        "utterances_per_speaker": per_speaker,
        "shortlist": shortlist,
        "ms_per_query": per_query,
        "spread": {k: kit.spread_note(v) for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/accuracy.md, "Several recordings per speaker"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=kit.REPO.parent / "shared" / "data" / "librispeech")
    parser.add_argument("--seeds", type=int, default=20, help="Reshuffles of every speaker's recordings per fold.")
    parser.add_argument("--enroll-sizes", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--shortlist", type=int, default=50, help="Candidates by centroid that are rescored.")
    parser.add_argument("--json", type=Path, help="Also write every figure to this JSON file.")
    parser.add_argument(
        "--cost-speakers", type=int, default=10_000, help="Speakers of the cost measurement (0: skip it)."
    )
    parser.add_argument("--cost-only", action="store_true", help="Only the cost measurement (no data needed).")
    args = parser.parse_args()
    if args.cost_only:
        print_cost(args)
        return
    if max(args.enroll_sizes) > 10 - N_PROBES:
        parser.error(f"enrollment sizes go up to {10 - N_PROBES} (the last {N_PROBES} recordings are probes)")

    start = time.perf_counter()
    embedder = load_embedder("resemblyzer")
    speakers = evaluate.find_recordings(args.data / "test-other")
    names = sorted(speakers)
    others = sorted((args.data / "train-clean-100").glob("*.flac"), key=lambda p: int(p.name.split("-")[0]))
    kit.log(f"embedding {sum(map(len, speakers.values()))} + {len(others)} recordings, whole and cropped")
    test = {n: embed_all(speakers[n], embedder) for n in names}
    extra = embed_all(others, embedder)
    kit.log(f"embedded in {time.perf_counter() - start:.0f} s")
    distractors = np.arange(0, len(others), 2)  # enrolled with one recording
    outsiders = np.arange(1, len(others), 2)  # impostor probes

    folds = [names[i : i + 2] for i in range(0, len(names), 2)]
    rows = []
    for condition in PROBE_SECONDS:
        for size in args.enroll_sizes:
            target: dict[str, list] = {m: [] for m in METHODS}
            nontarget: dict[str, list] = {m: [] for m in METHODS}
            correct: dict[str, list] = {m: [] for m in METHODS}
            for held_out in folds:
                enrolled = [n for n in names if n not in held_out]
                for seed in range(args.seeds):
                    rng = np.random.default_rng(seed)
                    order = {n: rng.permutation(10) for n in names}
                    probes = np.concatenate([test[n][condition][0][order[n][-N_PROBES:]] for n in enrolled])
                    truth = np.repeat(np.arange(len(enrolled)), N_PROBES)
                    impostors = np.concatenate(
                        [test[n][condition][0][order[n]] for n in held_out] + [extra[condition][0][outsiders]]
                    )
                    queries = np.concatenate([probes, impostors])  # (n_q, dim)
                    # method -> (n_q, n_gallery) scores; the gallery: enrolled test-other speakers, then distractors
                    table: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
                    for n in enrolled:
                        idx = order[n][:size]
                        s = speaker_scores(queries, test[n]["whole"][0][idx], test[n]["whole"][1][idx])
                        for m in METHODS:
                            table[m].append(s[m])
                    single = queries @ extra["whole"][0][distractors].T  # one recording: every method agrees
                    grid = {m: np.concatenate([np.stack(table[m], axis=1), single], axis=1) for m in METHODS}
                    n_p = len(probes)
                    is_own = np.zeros((n_p, grid["centroid"].shape[1]), bool)
                    is_own[np.arange(n_p), truth] = True
                    shortlist = np.argsort(-grid["centroid"][:n_p], axis=1)[:, : args.shortlist]  # FAISS's picks
                    for m in METHODS:
                        g = grid[m]
                        target[m].append(g[:n_p][is_own])
                        nontarget[m].append(np.concatenate([g[:n_p][~is_own], g[n_p:].ravel()]))
                        rescored = np.take_along_axis(g[:n_p], shortlist, axis=1)
                        best = shortlist[np.arange(n_p), np.argmax(rescored, axis=1)]
                        correct[m].append(best == truth)
            for m in METHODS:
                t, nt = np.concatenate(target[m]), np.concatenate(nontarget[m])
                e = metrics.eer(t, nt)
                rows.append(
                    {
                        "probe": condition,
                        "enroll": size,
                        "method": m,
                        "eer": e.eer,
                        "top1": float(np.concatenate(correct[m]).mean()),
                        "n_target": len(t),
                        "n_nontarget": len(nt),
                    }
                )
            kit.log(f"{condition}, {size} enrollment recording(s): scored ({time.perf_counter() - start:.0f} s)")

    print(
        f"GE2E (resemblyzer) on {args.data}: test-other {len(names)} speakers, 5 folds x {args.seeds} seeds, "
        f"{N_PROBES} probes per enrolled speaker; gallery 8 + {len(distractors)} train-clean-100 speakers, "
        f"{len(outsiders)} + 20 impostor recordings; top-1 after rescoring a centroid shortlist of {args.shortlist}"
    )
    print(f"CPU: {kit.cpu_name()}; load {kit.load_average():.2f}; {time.perf_counter() - start:.0f} s in all\n")
    print("| probe | enrolled recordings | " + " | ".join(METHODS) + " |")
    print("|---|---|" + "---|" * len(METHODS))
    for condition in PROBE_SECONDS:
        for size in args.enroll_sizes:
            cells = []
            for m in METHODS:
                [r] = [r for r in rows if r["probe"] == condition and r["enroll"] == size and r["method"] == m]
                cells.append(f"{r['eer']:.2%} / {r['top1']:.1%}")
            print(f"| {condition} | {size} | " + " | ".join(cells) + " |")
    print("\n(each cell: pooled EER / top-1)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.cost_speakers:
        print()
        print_cost(args)


def print_cost(args: argparse.Namespace) -> None:
    """The cost table (see :func:`cost`)."""
    c = cost(args.cost_speakers, 5, args.shortlist, 200)
    print(
        f"Rescoring cost at {c['speakers']:,} speakers x {c['utterances_per_speaker']} synthetic 512-d "
        f"utterances (SQLite, flat index), shortlist {c['shortlist']}; CPU: {kit.cpu_name()}; "
        f"load {kit.load_average():.2f}\n"
    )
    for name, ms in c["ms_per_query"].items():
        print(f"| {name} | {ms:.2f} ms per query | {c['spread'][name]} |")


if __name__ == "__main__":
    main()
