#!/usr/bin/env python
"""How identify names noisy calls against clean enrollment, and what it names wrongly.

    python scripts/eval_noisy_naming.py [--data ../shared/data/librispeech] [--snr 10 15] [--noise white pink]

Protocol: ``speakerdb evaluate``'s split (seed 0, 3 clean enrollment recordings per
test-other speaker, a fifth of them held out as impostors) with the odd-numbered
train-clean-100 speakers as extra impostors and the even-numbered ones as the AS-norm
cohort (``eval_norm.py --split-cohort``'s sides). The probes and impostors are scored clean
and again with noise added over each whole recording at SNR dB to its speech (the power of
its active frames, ``audio.active_frames``), through the product's identify (which takes a
noisy window's noise out before embedding it). GE2E (``--model resemblyzer``) unless told.

Prints per condition and scale (raw cosine, AS-norm): top-1, pooled EER, and at the
database's threshold (``--threshold``, default the model's; AS-norm 3.0): the enrolled
speakers' probes named right, named wrongly, left unnamed, and the impostor probes named.
Also the threshold that would accept impostors as often as the clean probes' does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import kit
from make_conversations import noise
from speakerdb.audio import decode as audio
from speakerdb.embedding.models import default_threshold_for, load_embedder
from speakerdb.scoring import evaluate, metrics, norm
from speakerdb.workflows import evaluation_database

NORM_THRESHOLD = 3.0  # the AS-norm threshold a database gets when normalisation is switched on


def noisy(path: Path, snr_db: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The recording with ``kind`` noise over all of it at ``snr_db`` below its speech's power."""
    x = audio.load(path).samples.astype(np.float64)
    frame = int(audio.FRAME_S * audio.SAMPLE_RATE)
    active = np.repeat(audio.active_frames(x.astype(np.float32)), frame)
    speech = x[: len(active)][active] if active.any() else x
    power = float(np.mean(speech**2))
    y = x + noise(kind, len(x), rng) * np.sqrt(power / 10 ** (snr_db / 10))
    return (y / max(1.0, float(np.max(np.abs(y))))).astype(np.float32)


def noisy_split(
    split: evaluate.Split, where: Path, snr_db: float, kind: str, rng: np.random.Generator
) -> evaluate.Split:
    """``split`` with its probes and impostors replaced by noisy copies written below ``where``."""

    def copy(path: Path, speaker: str) -> tuple[Path, str]:
        out = where / speaker / (path.stem + ".wav")
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(out, noisy(path, snr_db, kind, rng), audio.SAMPLE_RATE)
        return out, speaker

    return evaluate.Split(split.enroll, [copy(f, s) for f, s in split.probes], [copy(f, s) for f, s in split.impostors])


def rates(scores: evaluate.Scores, threshold: float) -> dict[str, float]:
    """Shares of the enrolled speakers' probes named right / wrongly / not at all, and of impostors named."""
    named = scores.genuine_top >= threshold
    return {
        "right": float(np.mean(named & scores.genuine_correct)),
        "wrong": float(np.mean(named & ~scores.genuine_correct)),
        "unnamed": float(np.mean(~named)),
        "impostors_named": float(np.mean(scores.impostor_top >= threshold)),
    }


def threshold_for_far(impostor_top: np.ndarray, far: float) -> float:
    """The lowest threshold at which at most ``far`` of the impostor probes are named."""
    ordered = np.sort(impostor_top)[::-1]
    allowed = int(np.floor(far * len(ordered)))
    return float(np.nextafter(ordered[allowed], np.inf)) if allowed < len(ordered) else float(ordered[-1])


def summary(scores: evaluate.Scores, threshold: float, clean_far: float | None) -> dict[str, object]:
    """One condition's figures on one scale."""
    eer, _ = metrics.eer(scores.target, scores.nontarget)
    out: dict[str, object] = {
        "top1": float(np.mean(scores.genuine_rank == 1)),
        "eer": float(eer),
        "target_median": float(np.median(scores.genuine_top[scores.genuine_correct])),
        "impostor_top_median": float(np.median(scores.impostor_top)),
        "at_threshold": rates(scores, threshold),
    }
    if clean_far is not None:
        same = threshold_for_far(scores.impostor_top, clean_far)
        out["threshold_for_clean_far"] = same
        out["at_that_threshold"] = rates(scores, same)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/timeline.md, "identify, verify and enroll take the noise out too"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=Path("../shared/data/librispeech"))
    p.add_argument("--model", default="resemblyzer")
    p.add_argument("--snr", type=float, nargs="+", default=[10.0, 15.0])
    p.add_argument("--noise", nargs="+", choices=("white", "pink"), default=["white", "pink"])
    p.add_argument("--threshold", type=float, default=None, help="the raw cosine threshold (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    test_other, train = args.data / "test-other", args.data / "train-clean-100"
    for d in (test_other, train):
        if not d.is_dir():
            print(f"error: {d} is not a directory", file=sys.stderr)
            return 1
    started = time.monotonic()
    kit.log(f"{kit.cpu_name()}, load {kit.load_average():.1f}")
    embedder = load_embedder(args.model)
    raw_threshold = args.threshold if args.threshold is not None else default_threshold_for(embedder.model_id)
    assert raw_threshold is not None, "give --threshold for a model without a default"
    with tempfile.TemporaryDirectory(prefix="noisy-naming-") as tmp_name:
        tmp = Path(tmp_name)
        files = sorted(train.glob("*.flac"), key=lambda f: int(f.name.split("-")[0]))  # one per speaker
        cohort_dir, impostor_dir = tmp / "cohort", tmp / "impostors"
        for i, f in enumerate(files):
            target = (cohort_dir if i % 2 == 0 else impostor_dir) / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f.resolve())
        split = evaluate.make_split(test_other, impostor_dirs=[impostor_dir], seed=args.seed)
        cohort = evaluate.embed_cohort(cohort_dir, embedder)
        kit.log(f"{len(split.probes)} probes, {len(split.impostors)} impostor probes, cohort {len(cohort.vectors)}")
        conditions: list[tuple[str, float | None, str]] = [("clean", None, "")]
        conditions += [(f"{kind} {snr:g} dB", snr, kind) for kind in args.noise for snr in args.snr]
        results: dict[str, dict[str, object]] = {}
        clean_far: dict[str, float] = {}
        for label, snr, kind in conditions:
            if snr is None:
                run_split = split
            else:
                rng = np.random.default_rng(args.seed)
                run_split = noisy_split(split, tmp / label.replace(" ", "-"), snr, kind, rng)
            t0 = time.monotonic()
            scores = evaluate.score(
                run_split, embedder, cohort=cohort, top_n=norm.DEFAULT_TOP_N, open_db=evaluation_database
            )
            assert scores.norm is not None
            row = {}
            for scale, s, threshold in (("raw", scores, raw_threshold), ("as-norm", scores.norm, NORM_THRESHOLD)):
                if snr is None:
                    clean_far[scale] = float(np.mean(s.impostor_top >= threshold))
                row[scale] = summary(s, threshold, clean_far[scale] if snr is not None else None)
            results[label] = row
            kit.log(f"{label}: {time.monotonic() - t0:.0f} s")
    header = ["condition", "scale", "top-1", "EER", "right", "wrong", "unnamed", "impostors named"]
    header += ["threshold at clean FAR", "right there", "wrong there"]
    rows = []
    for label, row in results.items():
        for scale, r in row.items():
            at = r["at_threshold"]
            there = r.get("at_that_threshold")
            rows.append(
                [label, scale, f"{r['top1']:.1%}", f"{r['eer']:.2%}"]
                + [f"{at[k]:.1%}" for k in ("right", "wrong", "unnamed", "impostors_named")]
                + (
                    [f"{r['threshold_for_clean_far']:.3f}", f"{there['right']:.1%}", f"{there['wrong']:.1%}"]
                    if there
                    else ["-", "-", "-"]
                )
            )
    print(f"{len(split.probes)} target probes, {len(split.impostors)} impostor probes; raw threshold {raw_threshold}")
    print(kit.markdown_table(header, rows))
    print(f"{kit.cpu_name()}, {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
