#!/usr/bin/env python
"""What the fast mode (--precision bf16) costs in accuracy: evaluate twice, compare.

    python scripts/precision_eer.py ../shared/data/librispeech/test-other \\
        --model ./wavlm-base-plus-sv --impostors ../shared/data/librispeech/train-clean-100

Runs speakerdb's evaluation (same split, same seed) with the model in float32 and in
bfloat16 and prints EER, minDCF, top-1 and DIR side by side, plus how far the bf16
scores moved from the float32 ones. Only trained weights make the EER comparison mean
anything; with a random-weight checkpoint the score deviations still do.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import kit

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: the model is local

from speakerdb.scoring import evaluate  # noqa: E402
from speakerdb.workflows import evaluation_database


def main() -> None:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__, "docs/performance.md, what the fast mode (bf16) costs in accuracy"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data_dir")
    p.add_argument("--model", required=True, help="a transformers x-vector checkpoint directory or hub id")
    p.add_argument("--impostors", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-seconds", type=float)
    args = p.parse_args()

    runs = {}
    for precision in ("fp32", "bf16"):
        report, scores, _ = evaluate.run(
            args.data_dir,
            model=args.model,
            precision=precision,
            impostor_dirs=args.impostors,
            seed=args.seed,
            test_seconds=args.test_seconds,
            open_db=evaluation_database,
        )
        runs[precision] = (report, scores)
    print(f"CPU: {kit.cpu_name()}")
    print("| figure | fp32 | bf16 |\n|---|---|---|")
    (r32, s32), (r16, s16) = runs["fp32"], runs["bf16"]
    print(f"| EER | {r32.eer:.2%} | {r16.eer:.2%} |")
    for p_target in r32.min_dcf:
        print(
            f"| minDCF {p_target} | {r32.min_dcf[p_target]['min_dcf']:.4f} | {r16.min_dcf[p_target]['min_dcf']:.4f} |"
        )
    print(f"| top-1 | {r32.top1:.1%} | {r16.top1:.1%} |")
    for far in r32.dir:
        print(f"| DIR @ FAR {far} | {r32.dir[far]['dir']:.1%} | {r16.dir[far]['dir']:.1%} |")
    moved = np.abs(np.concatenate([s32.target - s16.target, s32.nontarget - s16.nontarget]))
    print(
        f"\nscore deviation bf16 vs fp32 over {len(moved)} trials: median {np.median(moved):.2e}, max {moved.max():.2e}"
    )


if __name__ == "__main__":
    main()
