#!/usr/bin/env python
"""How often identify's "several voices" warning fires on single-speaker recordings.

    python scripts/eval_voice_count.py ../shared/data/librispeech/test-other ../shared/data/librispeech/train-clean-100

Runs ``timeline.count_voices`` (what ``identify`` runs on each file) with the GE2E encoder
and its starting threshold (0.80) on every audio file below the given directories, each
file being one speaker; prints the files where it found other than one voice and the
false-fire rate (two voices or more), with the CPU and the time taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import kit
from speakerdb import timeline
from speakerdb.audio import vad
from speakerdb.config import AUDIO_SUFFIXES
from speakerdb.embedding.models import load_embedder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=kit.describe(
            __doc__, 'docs/timeline.md, "identify says when a file holds several voices" (its false-fire rate)'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--threshold", type=float, default=None, help="default: the GE2E encoder's starting threshold")
    args = p.parse_args(argv)
    embedder = load_embedder("resemblyzer")
    threshold = args.threshold if args.threshold is not None else embedder.default_threshold
    detector = vad.SileroVAD()
    files = sorted(f for d in args.dirs for f in d.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
    started = time.perf_counter()
    fired = silent = 0
    for f in files:
        n = timeline.count_voices(f, embedder, threshold, detector)
        fired += n >= 2
        silent += n == 0
        if n != 1:
            print(f"{f}: {n} voices", flush=True)
    print(
        f"{len(files)} single-speaker files: several voices found in {fired} "
        f"({100 * fired / max(len(files), 1):.1f} %), "
        f"none in {silent}; {time.perf_counter() - started:.0f} s on {kit.cpu_name()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
