#!/usr/bin/env python
"""How much of the human-labelled speech the timeline's speech detector hears, and how much it
hears where nobody speaks: the part of a recording's DER floor that is speech detection.

    python scripts/vad_coverage.py ../shared/data/realdiar-dev
    python scripts/vad_coverage.py AMI13/ --threshold 0.5 0.35 0.2 --level-db -20

DIR holds real recordings with human labels, ``NAME.wav`` + ``NAME.rttm`` (as
scripts/eval_timeline.py reads them). Each recording goes through Silero as the timeline runs
it (``vad.probabilities`` then ``vad.regions``, without the denoising pass a noisy recording
gets), at each ``--threshold``, as it is and, with ``--level-db``, first scaled to that RMS
level. Scored on a 10 ms grid against the union of the reference's speakers (overlap counts
once: this is speech detection, not who):

* missed: reference speech the regions leave out, as a share of reference speech;
* false alarm: region time with no reference speech, as a share of reference speech.

Per recording and pooled; prints the CPU and the load.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

import kit
from speakerdb.audio import vad
from speakerdb.timeline import read_rttm

GRID_S = 0.01  # s: the scoring grid


def _mask(spans: list[tuple[float, float]], n: int) -> np.ndarray:
    """(n,) bool: the grid cells that ``spans`` (start s, end s) cover."""
    mask = np.zeros(n, bool)
    for start, end in spans:
        mask[int(start / GRID_S) : int(np.ceil(end / GRID_S))] = True
    return mask


def coverage(
    samples: np.ndarray, sr: int, reference: list[tuple[float, float]], threshold: float
) -> tuple[int, int, int]:
    """(reference cells, missed cells, false-alarm cells) of Silero's regions at ``threshold``."""
    detector = vad.load("silero")
    probs = vad.probabilities([samples], detector)
    duration = len(samples) / sr
    regions = vad.regions(probs, frame_s=vad.frame_seconds(detector), duration_s=duration, threshold=threshold)
    n = int(np.ceil(duration / GRID_S)) + 1
    ref = _mask(reference, n)
    hyp = _mask([(r.start, r.end) for r in regions], n)
    return int(ref.sum()), int((ref & ~hyp).sum()), int((hyp & ~ref).sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(__doc__ or "", 'docs/timeline.md, "Where the held-out AMI error comes from"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", type=Path, help="NAME.wav + NAME.rttm pairs")
    parser.add_argument("--threshold", type=float, nargs="+", default=[vad.DEFAULT_THRESHOLD])
    parser.add_argument(
        "--level-db", type=float, default=None, help="also score each recording scaled to this RMS dBFS"
    )
    args = parser.parse_args()
    wavs = sorted(args.directory.glob("*.wav"))
    pairs = [(w, w.with_suffix(".rttm")) for w in wavs if w.with_suffix(".rttm").exists()]
    if not pairs:
        raise SystemExit(f"{args.directory}: no NAME.wav + NAME.rttm pairs")
    levels: list[float | None] = [None] if args.level_db is None else [None, args.level_db]
    print(f"speech detection on {len(pairs)} recordings, {kit.cpu_name()}, load average {kit.load_average():.1f}\n")
    rows = []
    for level in levels:
        for threshold in args.threshold:
            totals = np.zeros(3, np.int64)
            per = []
            for wav, rttm in pairs:
                samples, sr = sf.read(wav, dtype="float32", always_2d=True)
                samples = samples.mean(axis=1)
                if sr != vad.SAMPLE_RATE:
                    raise SystemExit(f"{wav}: {sr} Hz; this script reads {vad.SAMPLE_RATE} Hz recordings")
                if level is not None:
                    rms = float(np.sqrt(np.mean(samples**2))) or 1e-9
                    samples = np.clip(samples * 10 ** (level / 20) / rms, -1, 1)
                reference = [(a, b) for a, b, _ in read_rttm(rttm).get(wav.stem, [])]
                ref, missed, false_alarm = coverage(samples, sr, reference, threshold)
                totals += (ref, missed, false_alarm)
                per.append(f"{wav.stem} {100 * missed / max(ref, 1):.0f}/{100 * false_alarm / max(ref, 1):.0f}")
            ref, missed, false_alarm = (int(t) for t in totals)
            rows.append(
                [
                    "as recorded" if level is None else f"{level:g} dBFS",
                    f"{threshold:g}",
                    f"{100 * missed / ref:.1f} %",
                    f"{100 * false_alarm / ref:.1f} %",
                    ", ".join(per),
                ]
            )
    header = ["level", "threshold", "missed", "false alarm", "per recording: missed/false alarm %"]
    print(kit.markdown_table(header, rows))


if __name__ == "__main__":
    main()
