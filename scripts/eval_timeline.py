#!/usr/bin/env python
"""Score ``speakerdb timeline`` on conversations from scripts/make_conversations.py.

    python scripts/make_conversations.py ../shared/data/librispeech/test-other convs/ --count 20
    python scripts/eval_timeline.py convs/ --model resemblyzer
    python scripts/eval_timeline.py convs/ --hyp run.rttm          # score an existing run
    python scripts/eval_timeline.py convs/ --baseline              # the 1.5 s / 0.5 s window-matching baseline

Enrolls the manifest's speakers (``enroll``) in a temporary database with ``--model``,
runs ``SpeakerDB.timeline`` on every conversation and scores it against the reference
RTTM with ``pyannote.metrics``:

* diarization error rate (optimal label mapping), split into missed speech, false alarm
  and speaker confusion, at pyannote collars 0, 0.25 and 0.5 s (pyannote's collar is the
  whole width removed around each reference boundary: 0.5 is NIST's +-0.25 s);
* named-time accuracy: of the reference speech time of enrolled speakers, the share the
  timeline gives to that speaker's name (no label mapping: the name must be right);
* unknown share: of the reference speech time of unenrolled speakers, the share the
  timeline labels ``unknown-N``; and the share it gives to an enrolled name (false names).

``--baseline`` replaces the product with the issue's 20-line baseline: 1.5 s windows every
0.5 s over the whole recording, each matched to the nearest enrolled centroid (named if
it reaches the threshold, else "unknown"), each 0.5 s step labelled by its window.

Prints a table (and ``--json`` a document), with the CPU and the run time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import kit

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: models are local

from speakerdb import timeline  # noqa: E402
from speakerdb.api import SpeakerDB  # noqa: E402
from speakerdb.audio import decode as audio  # noqa: E402

COLLARS = (0.0, 0.25, 0.5)  # pyannote collar widths, s
GRID = 0.01  # s: frame grid for the named-time and unknown shares


def annotation(segments, uri: str):
    from pyannote.core import Annotation, Segment

    ann = Annotation(uri=uri)
    for i, (a, b, lab) in enumerate(segments):
        if b > a:
            ann[Segment(a, b), i] = lab
    return ann


def frame_labels(segments, n: int) -> list[set[str]]:
    out: list[set[str]] = [set() for _ in range(n)]
    for a, b, lab in segments:
        for i in range(int(round(a / GRID)), min(n, int(round(b / GRID)))):
            out[i].add(lab)
    return out


def baseline(db: SpeakerDB, path: Path, window_s: float = 1.5, hop_s: float = 0.5):
    """The issue's baseline: fixed windows over everything, each matched to the centroids."""
    from speakerdb.storage import store

    x = audio.load(path).samples
    with db.store.read() as s:
        ids, cents = store.centroids(s)
        names = {i: sp.name for i, sp in store.speakers_by_id(s, ids.tolist()).items()}
    w, h = int(window_s * audio.SAMPLE_RATE), int(hop_s * audio.SAMPLE_RATE)
    starts = list(range(0, max(1, len(x) - w + 1), h))
    vecs = db.embedder.embed([x[s : s + w] for s in starts])
    sims = vecs @ cents.T
    segs = []
    for k, s in enumerate(starts):
        j = int(np.argmax(sims[k]))
        lab = names[int(ids[j])] if sims[k, j] >= db.threshold else "unknown"
        c = (s + w / 2) / audio.SAMPLE_RATE
        segs.append((c - hop_s / 2, c + hop_s / 2, lab))
    return segs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/timeline.md, "Measured accuracy of the timeline"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("conversations", type=Path, help="directory written by make_conversations.py")
    p.add_argument("--model", default="resemblyzer")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    p.add_argument("--hyp", type=Path, help="score this RTTM instead of running the timeline")
    p.add_argument("--write-hyp", type=Path, help="write the timeline's RTTM here")
    p.add_argument("--baseline", action="store_true", help="score the window-matching baseline instead")
    p.add_argument("--limit", type=int, default=None, help="only the first N conversations")
    p.add_argument("--window", type=float, default=timeline.DEFAULT_WINDOW_S)
    p.add_argument("--hop", type=float, default=timeline.DEFAULT_HOP_S)
    p.add_argument("--cluster-threshold", type=float, default=None)
    p.add_argument("--min-segment", type=float, default=timeline.DEFAULT_MIN_SEGMENT_S)
    p.add_argument("--min-voice", type=float, default=timeline.DEFAULT_MIN_VOICE_S)
    p.add_argument("--switch-penalty", type=float, default=timeline.DEFAULT_SWITCH_PENALTY)
    p.add_argument("--merge-gap", type=float, default=timeline.DEFAULT_MERGE_GAP_S)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from pyannote.metrics.diarization import DiarizationErrorRate

    manifest = json.loads((args.conversations / "manifest.json").read_text())
    convs = manifest["conversations"][: args.limit]
    enrolled = set(manifest["enroll"])
    params = timeline.Params(
        window_s=args.window,
        hop_s=args.hop,
        cluster_threshold=args.cluster_threshold,
        min_segment_s=args.min_segment,
        min_voice_s=args.min_voice,
        switch_penalty=args.switch_penalty,
        merge_gap_s=args.merge_gap,
    )
    hyps: dict[str, list] = {}
    started = time.perf_counter()
    audio_s = sum(c["duration"] for c in convs)
    if args.hyp:
        hyps = timeline.read_rttm(args.hyp)
        run_s = None
    else:
        with tempfile.TemporaryDirectory() as tmp, SpeakerDB(Path(tmp) / "db.sqlite", model=args.model) as db:
            for spk, files in manifest["enroll"].items():
                db.enroll(spk, files)
            if args.threshold is not None:
                db.set_threshold(args.threshold)
            started = time.perf_counter()
            for c in convs:
                path = args.conversations / c["file"]
                uri = Path(c["file"]).stem
                if args.baseline:
                    hyps[uri] = baseline(db, path)
                else:
                    [t] = db.timeline([path], params=params)
                    hyps[uri] = [(s.start, s.end, s.label) for s in t.segments]
            run_s = time.perf_counter() - started
        if args.write_hyp:
            args.write_hyp.write_text(
                "".join(
                    f"SPEAKER {u} 1 {a:.3f} {b - a:.3f} <NA> <NA> {lab} <NA> <NA>\n"
                    for u, segs in hyps.items()
                    for a, b, lab in segs
                )
            )

    ders = {c: DiarizationErrorRate(collar=c) for c in COLLARS}
    named = [0.0, 0.0]  # right-name frames, enrolled reference frames
    unknown = [0.0, 0.0, 0.0]  # unknown frames, false-name frames, unenrolled reference frames
    for c in convs:
        uri = Path(c["file"]).stem
        ref = timeline.read_rttm(args.conversations / c["rttm"]).get(uri, [])
        hyp = hyps.get(uri, [])
        for metric in ders.values():
            metric(annotation(ref, uri), annotation(hyp, uri), detailed=True)
        n = int(round(c["duration"] / GRID)) + 1
        ref_f, hyp_f = frame_labels(ref, n), frame_labels(hyp, n)
        for r, h in zip(ref_f, hyp_f):
            for spk in r:
                if spk in enrolled:
                    named[1] += 1
                    named[0] += spk in h
                else:
                    unknown[2] += 1
                    unknown[0] += any(x.startswith("unknown") for x in h)
                    unknown[1] += any(x in enrolled for x in h)

    result = {
        "conversations": len(convs),
        "audio_s": round(audio_s, 1),
        "model": args.model,
        "cpu": kit.cpu_name(),
        "run_s": None if run_s is None else round(run_s, 1),
        "rtf": None if run_s is None else round(run_s / audio_s, 4),
        "system": "baseline" if args.baseline else "hyp-file" if args.hyp else "timeline",
        "settings": manifest.get("settings", {}),
    }
    for col, metric in ders.items():
        d = metric.accumulated_  # components summed over all conversations
        total = d["total"]
        result[f"collar_{col:g}"] = {
            "der": round(100 * abs(metric), 2),
            "miss": round(100 * d["missed detection"] / total, 2),
            "fa": round(100 * d["false alarm"] / total, 2),
            "confusion": round(100 * d["confusion"] / total, 2),
        }
    result["named_accuracy"] = round(100 * named[0] / max(named[1], 1), 2)
    result["unknown_share"] = round(100 * unknown[0] / max(unknown[2], 1), 2)
    result["false_name_share"] = round(100 * unknown[1] / max(unknown[2], 1), 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['system']} on {len(convs)} conversations ({audio_s / 60:.1f} min), "
            f"model {args.model}, {result['cpu']}"
        )
        print("| collar | DER | miss | FA | confusion |\n|---|---|---|---|---|")
        for col in COLLARS:
            r = result[f"collar_{col:g}"]
            print(f"| {col:g} s | {r['der']:.2f} % | {r['miss']:.2f} % | {r['fa']:.2f} % | {r['confusion']:.2f} % |")
        print(
            f"named-time accuracy {result['named_accuracy']:.2f} %, unenrolled time labelled unknown "
            f"{result['unknown_share']:.2f} % (given an enrolled name {result['false_name_share']:.2f} %)"
        )
        if run_s is not None:
            print(f"run time {run_s:.1f} s for {audio_s:.0f} s of audio: RTF {run_s / audio_s:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
