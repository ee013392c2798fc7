#!/usr/bin/env python
"""Raw cosine scores against AS-norm on LibriSpeech, whole recordings and short middle crops.

    python scripts/eval_norm.py [--data ../shared/data/librispeech] [--top-n 50 100 200] [--json out.json]

Protocol: ``speakerdb evaluate``'s own (seed 0, 3 enrollment recordings per speaker, a fifth
of the test-other speakers held out as impostors), with the GE2E encoder
(``--model resemblyzer``). The cohort is ``train-clean-100`` (251 speakers, one recording
each), embedded once; it is neither enrolled nor probed. Each condition (whole test
recordings, 1 s and 2 s from the middle of the detected speech) is scored once per N; the
raw figures are the same in every N's run and printed once.

``--split-cohort`` makes the non-target side larger: the even-numbered train-clean-100
speakers (sorted by id) are the cohort, the odd-numbered ones extra impostor probes
(never both), as ``evaluate --impostors`` adds them.

Prints one table: top-1, pooled EER, minDCF at P_target 0.01 and 0.05, and open-set DIR
at 1 % and 10 % FAR, for raw scores and AS-norm at each N.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import kit
from speakerdb.embedding.models import load_embedder
from speakerdb.scoring import evaluate
from speakerdb.workflows import evaluation_database

CONDITIONS = {"whole": None, "2 s": 2.0, "1 s": 1.0}  # test-seconds per condition


def figures(r: dict) -> dict:
    """The table's columns from a report (or its ``normalised`` part)."""
    return {
        "top1": r["top1"],
        "eer": r["eer"],
        "min_dcf_0.01": r["min_dcf"]["0.01"]["min_dcf"],
        "min_dcf_0.05": r["min_dcf"]["0.05"]["min_dcf"],
        "dir_1%": r["dir"]["0.01"]["dir"],
        "dir_10%": r["dir"]["0.1"]["dir"],
        "eer_threshold": r["eer_threshold"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(
            __doc__, 'docs/accuracy.md, "Does normalisation help? Measured on LibriSpeech with GE2E"'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=kit.REPO.parent / "shared" / "data" / "librispeech")
    parser.add_argument("--top-n", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Also write every figure to this JSON file.")
    parser.add_argument(
        "--split-cohort",
        action="store_true",
        help="Half of train-clean-100 as the cohort, the other half as impostors.",
    )
    args = parser.parse_args()

    start = time.perf_counter()
    embedder = load_embedder("resemblyzer")
    impostor_dirs: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="eval-norm-") as tmp:
        cohort_dir = args.data / "train-clean-100"
        if args.split_cohort:
            files = sorted(cohort_dir.glob("*.flac"), key=lambda p: int(p.name.split("-")[0]))
            halves = {"cohort": files[0::2], "impostors": files[1::2]}
            for name, part in halves.items():
                (Path(tmp) / name).mkdir()
                for f in part:
                    (Path(tmp) / name / f.name).symlink_to(f)
            cohort_dir, impostor_dirs = Path(tmp) / "cohort", [Path(tmp) / "impostors"]
        cohort = evaluate.embed_cohort(cohort_dir, embedder)
        rows, counts = table(args, embedder, cohort, impostor_dirs, start)
    print(
        f"GE2E (resemblyzer) on {args.data}/test-other, cohort {len(cohort.vectors)} recordings of "
        f"train-clean-100{' (even half; odd half as impostors)' if args.split_cohort else ''}, "
        f"seed {args.seed}; {counts}"
    )
    print(f"CPU: {kit.cpu_name()}; {time.perf_counter() - start:.0f} s in all\n")
    print(
        "| condition | scores | top-1 | EER (threshold) | minDCF 0.01 | minDCF 0.05 | DIR @ FAR 1 % | DIR @ FAR 10 % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['condition']} | {r['scores']} | {r['top1']:.1%} | {r['eer']:.2%} ({r['eer_threshold']:.3f}) | "
            f"{r['min_dcf_0.01']:.3f} | {r['min_dcf_0.05']:.3f} | {r['dir_1%']:.1%} | {r['dir_10%']:.1%} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "rows": rows}, indent=2))


def table(args, embedder, cohort, impostor_dirs: list[Path], start: float) -> tuple[list[dict], dict]:
    """Every condition at every N: the table's rows and the trial counts."""
    rows: list[dict] = []
    counts = {}
    for condition, seconds in CONDITIONS.items():
        for n in args.top_n:
            report, _, _ = evaluate.run(
                args.data / "test-other",
                embedder=embedder,
                cohort=cohort,
                top_n=n,
                test_seconds=seconds,
                seed=args.seed,
                impostor_dirs=impostor_dirs,
                open_db=evaluation_database,
            )
            d = report.to_dict()
            counts = {
                k: d[k]
                for k in (
                    "n_enrolled_speakers",
                    "n_probes",
                    "n_impostor_probes",
                    "n_target_trials",
                    "n_nontarget_trials",
                )
            }
            if n == args.top_n[0]:
                rows.append({"condition": condition, "scores": "raw", **figures(d)})
            rows.append({"condition": condition, "scores": f"AS-norm N={n}", **figures(d["normalised"])})
            print(f"  {condition}, N={n}: done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return rows, counts


if __name__ == "__main__":
    main()
