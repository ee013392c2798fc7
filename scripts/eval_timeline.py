#!/usr/bin/env python
"""Score ``speakerdb timeline`` on conversations from scripts/make_conversations.py, or on
real recordings with human speaker labels.

    python scripts/make_conversations.py ../shared/data/librispeech/test-other convs/ --count 20
    python scripts/eval_timeline.py convs/ --model resemblyzer
    python scripts/eval_timeline.py convs/ --hyp run.rttm          # score an existing run
    python scripts/eval_timeline.py convs/ --baseline              # the 1.5 s / 0.5 s window-matching baseline
    python scripts/eval_timeline.py ../shared/data/realdiar-dev --model resemblyzer   # real recordings
    python scripts/eval_timeline.py DIR --oracle-count             # told each recording's number of speakers
    python scripts/eval_timeline.py DIR --segmentation segmentation-3.0/pytorch_model.bin   # turns, overlap

A directory without ``manifest.json`` holds real recordings: every audio file with an RTTM
of the same name beside it (``NAME.wav`` + ``NAME.rttm``). They are diarized without a
database (``speakerdb.workflows.diarize``, as ``speakerdb timeline FILE`` without one), so
only the diarization is scored.

Conversations: enrolls the manifest's speakers (``enroll``) in a temporary database with
``--model``, runs ``SpeakerDB.timeline`` on every conversation and scores it against the
reference RTTM with ``pyannote.metrics``:

* diarization error rate (optimal label mapping), split into missed speech, false alarm
  and speaker confusion, at pyannote collars 0, 0.25 and 0.5 s (pyannote's collar is the
  whole width removed around each reference boundary: 0.5 is NIST's +-0.25 s);
* named-time accuracy: of the reference speech time of enrolled speakers, the share the
  timeline gives to that speaker's name (no label mapping: the name must be right);
* unknown share: of the reference speech time of unenrolled speakers, the share the
  timeline labels ``unknown-N``; and the share it gives to an enrolled name (false names).

Both, per recording and pooled: DER at collars 0 and 0.25 s with overlapping speech
counted (a second voice the timeline misses is missed speech), JER (Jaccard error rate,
every speaker weighs the same), and the voice-count error (voices found - speakers in the
reference); the median and the largest DER at pyannote collar 0.25 and how many
recordings got the count exact. And the *floor*: the DER (collar 0.25) of the timeline's
own speech relabelled with the reference's speakers, frame by frame, as many voices as the
timeline gives there. No clustering could do better with that speech: the floor is what
speech detection and overlap cost, DER minus floor is what the voices cost.

``--baseline`` replaces the product with the issue's 20-line baseline: 1.5 s windows every
0.5 s over the whole recording, each matched to the nearest enrolled centroid (named if
it reaches the threshold, else "unknown"), each 0.5 s step labelled by its window.

Prints tables (and ``--json`` a document), with the CPU, the load and the run time.
"""

from __future__ import annotations

import argparse
import dataclasses
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
AUDIO = {".wav", ".flac", ".mp3", ".ogg", ".m4a"}


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


def detection_floor(ref_f: list[set[str]], hyp_f: list[set[str]]) -> list[tuple[float, float, str]]:
    """The hypothesis relabelled with the reference's own speakers, from both as
    :func:`frame_labels`: at every 10 ms frame, as many of the reference's voices as the
    hypothesis has voices there (the rest false alarms). Its DER is the least any labelling
    of the hypothesis's speech could score: what speech detection and overlap cost, whatever
    the clustering does."""
    n = len(ref_f)
    out: list[tuple[float, float, str]] = []
    started: dict[str, int] = {}
    for i in range(n + 1):
        if i < n:
            truth, k = sorted(ref_f[i]), len(hyp_f[i])
            now = set(truth[:k]) | {f"false-alarm-{j}" for j in range(k - len(truth))}
        else:
            now = set()
        for lab in [lab for lab in started if lab not in now]:
            out.append((started.pop(lab) * GRID, i * GRID, lab))
        for lab in now:
            started.setdefault(lab, i)
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


def recordings(directory: Path) -> list[dict]:
    """Real recordings in ``directory``: every audio file with a same-named RTTM beside it."""
    out = []
    for rttm in sorted(directory.glob("*.rttm")):
        audio_files = [f for f in sorted(directory.glob(rttm.stem + ".*")) if f.suffix.lower() in AUDIO]
        if audio_files:
            info = audio.load(audio_files[0])
            out.append({"file": audio_files[0].name, "rttm": rttm.name, "duration": info.duration_s})
    if not out:
        raise SystemExit(f"{directory}: no manifest.json and no NAME.wav + NAME.rttm pairs")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/timeline.md, "Measured accuracy of the timeline"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "conversations", type=Path, help="directory written by make_conversations.py, or of NAME.wav + NAME.rttm"
    )
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
    p.add_argument("--oracle-count", action="store_true", help="tell the timeline each recording's number of speakers")
    p.add_argument(
        "--segmentation",
        help="segmentation model (pyannote segmentation-3.0 checkpoint) instead of the VAD: turns and overlap",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

    manifest_path = args.conversations / "manifest.json"
    real = not manifest_path.exists()
    if real and args.baseline:
        p.error("--baseline needs enrolled speakers: a make_conversations.py directory")
    manifest = (
        {"conversations": recordings(args.conversations), "enroll": {}}
        if real
        else json.loads(manifest_path.read_text())
    )
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
        segmentation=args.segmentation,
    )
    references = {
        Path(c["file"]).stem: timeline.read_rttm(args.conversations / c["rttm"]).get(Path(c["file"]).stem, [])
        for c in convs
    }

    def params_for(uri: str) -> timeline.Params:
        if not args.oracle_count:
            return params
        return dataclasses.replace(params, speakers=max(1, len({lab for _, _, lab in references[uri]})))

    hyps: dict[str, list] = {}
    started = time.perf_counter()
    audio_s = sum(c["duration"] for c in convs)
    load = kit.load_average()
    if args.hyp:
        hyps = timeline.read_rttm(args.hyp)
        run_s = None
    elif real:
        from speakerdb.workflows import diarize

        diarize(  # load the model before the clock starts
            [args.conversations / convs[0]["file"]], model=args.model, threshold=args.threshold, params=params
        )
        started = time.perf_counter()
        for c in convs:
            uri = Path(c["file"]).stem
            [t] = diarize(
                [args.conversations / c["file"]], model=args.model, threshold=args.threshold, params=params_for(uri)
            )
            hyps[uri] = [(s.start, s.end, s.label) for s in t.segments]
        run_s = time.perf_counter() - started
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
                    [t] = db.timeline([path], params=params_for(uri))
                    hyps[uri] = [(s.start, s.end, s.label) for s in t.segments]
            run_s = time.perf_counter() - started
    load = max(load, kit.load_average())
    if args.write_hyp:
        args.write_hyp.write_text(
            "".join(
                f"SPEAKER {u} 1 {a:.3f} {b - a:.3f} <NA> <NA> {lab} <NA> <NA>\n"
                for u, segs in hyps.items()
                for a, b, lab in segs
            )
        )

    ders = {c: DiarizationErrorRate(collar=c) for c in COLLARS}
    jer = JaccardErrorRate()
    floor = DiarizationErrorRate(collar=0.25)
    named = [0.0, 0.0]  # right-name frames, enrolled reference frames
    unknown = [0.0, 0.0, 0.0]  # unknown frames, false-name frames, unenrolled reference frames
    per: list[dict] = []
    for c in convs:
        uri = Path(c["file"]).stem
        ref = references[uri]
        hyp = hyps.get(uri, [])
        r_ann, h_ann = annotation(ref, uri), annotation(hyp, uri)
        row = {"recording": uri, "duration": round(c["duration"], 1)}
        for col, metric in ders.items():
            row[f"der_{col:g}"] = round(100 * metric(r_ann, h_ann), 2)
        row["jer"] = round(100 * jer(r_ann, h_ann), 2)
        n = int(round(c["duration"] / GRID)) + 1
        ref_f, hyp_f = frame_labels(ref, n), frame_labels(hyp, n)
        row["floor_0.25"] = round(100 * floor(r_ann, annotation(detection_floor(ref_f, hyp_f), uri)), 2)
        row["speakers"] = len({lab for _, _, lab in ref})
        row["voices"] = len({lab for _, _, lab in hyp})
        row["count_error"] = row["voices"] - row["speakers"]
        per.append(row)
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
        "kind": "real recordings" if real else "conversations",
        "audio_s": round(audio_s, 1),
        "model": args.model,
        "cpu": kit.cpu_name(),
        "load_average": round(load, 1),
        "run_s": None if run_s is None else round(run_s, 1),
        "rtf": None if run_s is None else round(run_s / audio_s, 4),
        "system": "baseline" if args.baseline else "hyp-file" if args.hyp else "timeline",
        "oracle_count": args.oracle_count,
        "segmentation": args.segmentation,
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
    result["jer"] = round(100 * abs(jer), 2)
    result["floor_0.25"] = round(100 * abs(floor), 2)
    result["median_floor_0.25"] = round(float(np.median([r["floor_0.25"] for r in per])), 2)
    result["median_der_0.25"] = round(float(np.median([r["der_0.25"] for r in per])), 2)
    result["max_der_0.25"] = max(r["der_0.25"] for r in per)
    result["count_exact"] = sum(r["count_error"] == 0 for r in per)
    result["per_recording"] = per
    if not real:
        result["named_accuracy"] = round(100 * named[0] / max(named[1], 1), 2)
        result["unknown_share"] = round(100 * unknown[0] / max(unknown[2], 1), 2)
        result["false_name_share"] = round(100 * unknown[1] / max(unknown[2], 1), 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['system']} on {len(convs)} {result['kind']} ({audio_s / 60:.1f} min), "
            f"model {args.model}, {result['cpu']}, load average {result['load_average']}"
            + (", told the number of speakers" if args.oracle_count else "")
            + (f", segmentation {args.segmentation}" if args.segmentation else "")
        )
        print(
            "| recording | s | DER c=0 | DER c=0.25 | floor c=0.25 | JER | speakers | voices |\n"
            "|---|---|---|---|---|---|---|---|"
        )
        for r in per:
            print(
                f"| {r['recording']} | {r['duration']:g} | {r['der_0']:.1f} % | {r['der_0.25']:.1f} % | "
                f"{r['floor_0.25']:.1f} % | {r['jer']:.1f} % | {r['speakers']} | {r['voices']} |"
            )
        print("\npooled:\n| collar | DER | miss | FA | confusion |\n|---|---|---|---|---|")
        for col in COLLARS:
            r = result[f"collar_{col:g}"]
            print(f"| {col:g} s | {r['der']:.2f} % | {r['miss']:.2f} % | {r['fa']:.2f} % | {r['confusion']:.2f} % |")
        print(
            f"JER {result['jer']:.2f} %; DER c=0.25 per recording: median {result['median_der_0.25']:.2f} %, "
            f"largest {result['max_der_0.25']:.2f} %; voice count exact in {result['count_exact']} of {len(per)}"
        )
        print(
            f"floor (every voice right where the timeline hears speech), c=0.25: pooled {result['floor_0.25']:.2f} %, "
            f"median {result['median_floor_0.25']:.2f} %"
        )
        if not real:
            print(
                f"named-time accuracy {result['named_accuracy']:.2f} %, unenrolled time labelled unknown "
                f"{result['unknown_share']:.2f} % (given an enrolled name {result['false_name_share']:.2f} %)"
            )
        if run_s is not None:
            print(f"run time {run_s:.1f} s for {audio_s:.0f} s of audio: RTF {run_s / audio_s:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
