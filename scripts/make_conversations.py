#!/usr/bin/env python
"""Build conversations with a known reference (RTTM) from recordings labelled by speaker.

    python scripts/make_conversations.py ../shared/data/librispeech/test-other convs/ --count 20
    python scripts/make_conversations.py DATA OUT --overlap 0.3 --snr 10 --seed 1

DATA holds one sub-directory per speaker (LibriSpeech's ``test-other/<speaker>/``).
Speakers are split once, with ``--seed``: ``--unenrolled`` speakers are never enrolled
(the unknown voices); every other speaker gives its first ``--enroll-count`` recordings
(after shuffling) for enrollment, and only its *other* recordings are cut into turns, so
no conversation holds audio that was enrolled.

Each conversation has 2-5 speakers (``--speakers MIN MAX``), at least one of them
unenrolled when ``--unknown-per-conversation`` is 1 (the default). Turns go round the
speakers in random order (never the same speaker twice in a row), each 1-15 s of one
speaker's speech (``--turn MIN MAX``), cut from a recording with its leading and
trailing silence trimmed, followed by a pause of 0.2-1.5 s (``--pause MIN MAX``). With
``--overlap P``, a turn starts during the previous one with probability P, 0.3-2 s
before it ends (at most half of it). ``--snr DB`` adds noise (``--noise white`` or
``pink``) at that ratio to the conversation's speech power. Conversations last about
``--minutes`` minutes.

One room, one line (what real calls and meetings do to voices, and what joined
LibriSpeech recordings lack: each arrives with its own microphone and room). ``--room
RT60`` passes the whole mix through one simulated room impulse response (exponentially
decaying noise with that reverberation time in seconds, after a direct path; one per
conversation, the same for every voice); ``--telephone`` then band-limits it to a
telephone line (300-3400 Hz, resampled through 8 kHz, G.711 mu-law). Noise is added in
the room (after the room response, before the line), at ``--snr`` to the reverberant
speech's power. The hard set of docs/timeline.md is
``--room 0.4 --telephone --snr 10 --noise pink --overlap 0.2``.

Reference. One segment per turn, from its first to its last active 10 ms frame, the way
conversations are annotated (a turn's own short pauses belong to it). A frame is active
when it is at least 6 dB above the recording's noise floor (its 10th-percentile frame
energy) and within 30 dB of its loud frames (95th percentile); a piece is trimmed to its
first and last active frame before it is placed. This is measured on the clean source,
so added noise never moves the reference.

Written to OUT: ``conv-NN.wav`` (16 kHz, 16-bit), ``conv-NN.rttm``, ``reference.rttm``
(all of them), and ``manifest.json``: {"enroll": {speaker: [files]}, "unenrolled":
[speakers], "conversations": [{"file", "rttm", "speakers", "duration"}], "settings"}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve

import kit
from speakerdb.audio import decode as audio
from speakerdb.scoring.evaluate import find_recordings

SR = audio.SAMPLE_RATE
# trim() and its constants are tests/builders.py's too (the tests never import scripts).
FRAME = 160  # samples: 10 ms reference frames
ABOVE_FLOOR_DB = 6.0  # dB above a recording's noise floor (10th-percentile frame energy)
BELOW_LOUD_DB = 30.0  # dB below its loud frames (95th percentile)
PEAK = 0.9  # full-scale peak of the written conversation


def active_frames(x: np.ndarray) -> np.ndarray:
    """(n_frames,) bool: 10 ms frames of ``x`` above its noise floor and near its loud frames."""
    n = len(x) // FRAME
    if n == 0:
        return np.zeros(0, bool)
    e = 10 * np.log10(np.mean(x[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2, axis=1) + 1e-12)
    return (e >= np.percentile(e, 10) + ABOVE_FLOOR_DB) & (e >= np.percentile(e, 95) - BELOW_LOUD_DB)


def trim(x: np.ndarray) -> np.ndarray:
    """``x`` without its leading and trailing inactive frames."""
    act = np.flatnonzero(active_frames(x))
    if len(act) == 0:
        return x[:0]
    return x[act[0] * FRAME : (act[-1] + 1) * FRAME]


def split(data: Path, unenrolled: int, enroll_count: int, rng: np.random.Generator):
    """(enroll {spk: [files]}, turn material {spk: [files]}, unenrolled speakers)."""
    recordings = {k: sorted(v) for k, v in sorted(find_recordings(data).items())}
    speakers = list(recordings)
    rng.shuffle(speakers)
    unknown = sorted(speakers[:unenrolled])
    enroll, material = {}, {}
    for spk in sorted(recordings):
        files = list(recordings[spk])
        rng.shuffle(files)
        if spk in unknown:
            material[spk] = files
        else:
            if len(files) <= enroll_count:
                raise SystemExit(
                    f"speaker {spk} has {len(files)} recordings: "
                    f"none left for turns after {enroll_count} for enrollment"
                )
            enroll[spk], material[spk] = files[:enroll_count], files[enroll_count:]
    return enroll, material, unknown


class Pool:
    """A speaker's turn material, cut in order so that one conversation never repeats audio."""

    def __init__(self, files: list[Path], rng: np.random.Generator) -> None:
        self.files = files
        self.rng = rng
        self.cache: dict[Path, np.ndarray] = {}
        self.order = list(rng.permutation(len(files)))
        self.pos = 0.0  # s into the current recording

    def _load(self, f: Path) -> np.ndarray:
        if f not in self.cache:
            self.cache[f] = trim(audio.load(f).samples)
        return self.cache[f]

    def take(self, seconds: float) -> np.ndarray:
        for _ in range(2 * len(self.files) + 1):
            x = self._load(self.files[self.order[0]])
            start = int(self.pos * SR)
            rest = len(x) - start
            if rest >= SR:  # at least 1 s left in this recording
                piece = trim(x[start : start + int(seconds * SR)])
                self.pos += len(x[start : start + int(seconds * SR)]) / SR
                if len(piece) >= SR // 2:
                    return piece
            self.order = self.order[1:] + self.order[:1]
            self.pos = 0.0
        raise SystemExit("not enough speech material for a turn")


def room_response(rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A simulated room impulse response: a direct path, then exponentially decaying noise
    (60 dB down after ``rt60`` seconds), starting 2-5 ms later, normalised to unit energy."""
    n = int(max(rt60, 0.05) * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * 10 ** (-3 * t / max(rt60, 1e-3)) * 0.3
    tail[: int(rng.uniform(0.002, 0.005) * SR)] = 0.0
    tail[0] = 1.0
    return tail / np.sqrt(np.sum(tail**2))


def telephone(x: np.ndarray) -> np.ndarray:
    """``x`` (16 kHz) through a telephone line: 300-3400 Hz, 8 kHz, mu-law, back at 16 kHz."""
    from scipy.signal import butter, resample_poly, sosfiltfilt

    y = sosfiltfilt(butter(6, [300, 3400], btype="bandpass", fs=SR, output="sos"), x)
    y = resample_poly(y, 1, 2)
    y = y / max(float(np.max(np.abs(y))), 1e-9)
    mu = 255.0
    coded = np.round((np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu)) * 127) / 127  # 8-bit mu-law
    y = np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu
    return resample_poly(y, 2, 1)[: len(x)]


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``white`` (standard normal) or ``pink`` (1/f power, unit power) noise."""
    w = rng.standard_normal(n)
    if kind == "white":
        return w  # as drawn: the sets made before --noise existed stay the same
    spec = np.fft.rfft(w)
    spec[1:] /= np.sqrt(np.arange(1, len(spec)))
    spec[0] = 0
    w = np.fft.irfft(spec, n)
    return w / max(float(np.sqrt(np.mean(w**2))), 1e-12)


def conversation(pools: dict[str, Pool], speakers: list[str], args, rng: np.random.Generator):
    """(samples, reference [(start, end, speaker)]) of one conversation."""
    placed: list[tuple[int, np.ndarray, str]] = []
    t = 0  # samples: where the next turn may start
    last_end = 0
    previous = None
    total = int(args.minutes * 60 * SR)
    while t < total:
        spk = rng.choice([s for s in speakers if s != previous])
        piece = pools[spk].take(rng.uniform(*args.turn))
        start = t
        if placed and rng.random() < args.overlap:
            prev_len = len(placed[-1][1])
            back = int(min(rng.uniform(0.3, 2.0) * SR, prev_len // 2))
            start = max(placed[-1][0], last_end - back)
        placed.append((start, piece, spk))
        last_end = start + len(piece)
        t = last_end + int(rng.uniform(*args.pause) * SR)
        previous = spk
    n = max(s + len(p) for s, p, _ in placed)
    mix = np.zeros(n, np.float64)
    reference = []
    for s, p, spk in placed:
        mix[s : s + len(p)] += p
        reference.append((s / SR, (s + len(p)) / SR, spk))
    active = np.zeros(n, bool)  # where someone speaks: the speech power after the room
    for s, p, _ in placed:
        active[s : s + len(p)] = True
    power = float(np.mean(np.concatenate([p for _, p, _ in placed]).astype(np.float64) ** 2))
    if args.room is not None:
        mix = fftconvolve(mix, room_response(args.room, rng))[:n]
        power = float(np.mean(mix[active] ** 2))
    if args.snr is not None:  # the room's noise: it goes down the line with the voices
        mix += noise(args.noise, n, rng) * np.sqrt(power / 10 ** (args.snr / 10))
    if args.telephone:
        mix = telephone(mix)
    mix *= PEAK / max(np.max(np.abs(mix)), 1e-9)
    return mix.astype(np.float32), sorted(reference)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=kit.describe(
            __doc__,
            "the conversations that eval_timeline.py scores for docs/timeline.md "
            '("Measured accuracy of the timeline") and bench_timeline.py times',
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", type=Path, help="directory of speaker sub-directories")
    p.add_argument("out", type=Path, help="output directory (created)")
    p.add_argument("--count", type=int, default=10, help="conversations (default 10)")
    p.add_argument("--minutes", type=float, default=2.0, help="length of each, about (default 2)")
    p.add_argument("--speakers", type=int, nargs=2, default=(2, 5), metavar=("MIN", "MAX"))
    p.add_argument("--turn", type=float, nargs=2, default=(1.0, 15.0), metavar=("MIN", "MAX"), help="turn length, s")
    p.add_argument(
        "--pause", type=float, nargs=2, default=(0.2, 1.5), metavar=("MIN", "MAX"), help="pause after a turn, s"
    )
    p.add_argument("--overlap", type=float, default=0.0, help="probability that a turn starts during the previous one")
    p.add_argument("--snr", type=float, default=None, help="add noise at this SNR (dB)")
    p.add_argument("--noise", choices=("white", "pink"), default="white", help="the noise --snr adds (default white)")
    p.add_argument("--room", type=float, default=None, metavar="RT60", help="one simulated room for all voices")
    p.add_argument("--telephone", action="store_true", help="then one telephone line (300-3400 Hz, 8 kHz, mu-law)")
    p.add_argument("--unenrolled", type=int, default=2, help="speakers never enrolled (default 2)")
    p.add_argument("--unknown-per-conversation", type=int, default=1, help="unenrolled speakers in each conversation")
    p.add_argument("--enroll-count", type=int, default=3, help="recordings per enrolled speaker (default 3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 2 <= args.speakers[0] <= args.speakers[1]:
        p.error("--speakers MIN MAX needs 2 <= MIN <= MAX")
    rng = np.random.default_rng(args.seed)
    enroll, material, unknown = split(args.data, args.unenrolled, args.enroll_count, rng)
    known = sorted(enroll)
    args.out.mkdir(parents=True, exist_ok=True)
    convs = []
    all_rttm = []
    for c in range(args.count):
        n = int(rng.integers(args.speakers[0], args.speakers[1] + 1))
        n_unknown = min(args.unknown_per_conversation, len(unknown), n - 1)
        chosen = list(rng.choice(unknown, n_unknown, replace=False)) + list(
            rng.choice(known, n - n_unknown, replace=False)
        )
        pools = {s: Pool(material[s], rng) for s in chosen}
        mix, ref = conversation(pools, [str(s) for s in chosen], args, rng)
        name = f"conv-{c:02d}"
        sf.write(str(args.out / f"{name}.wav"), mix, SR, subtype="PCM_16")
        lines = [f"SPEAKER {name} 1 {a:.3f} {b - a:.3f} <NA> <NA> {s} <NA> <NA>" for a, b, s in ref]
        (args.out / f"{name}.rttm").write_text("".join(x + "\n" for x in lines))
        all_rttm += lines
        convs.append(
            {
                "file": f"{name}.wav",
                "rttm": f"{name}.rttm",
                "speakers": sorted(str(s) for s in chosen),
                "duration": round(len(mix) / SR, 3),
            }
        )
        print(f"{name}: {len(mix) / SR:.0f} s, speakers {', '.join(sorted(map(str, chosen)))}", file=sys.stderr)
    (args.out / "reference.rttm").write_text("".join(x + "\n" for x in all_rttm))
    manifest = {
        "enroll": {s: [str(f.resolve()) for f in fs] for s, fs in enroll.items()},
        "unenrolled": unknown,
        "conversations": convs,
        "settings": {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
