#!/usr/bin/env python
"""Write a random-weight WavLM x-vector checkpoint, for trying speakerdb where the hub is unreachable.

    python scripts/make_random_checkpoint.py ./wavlm-random            # full size (~380 MB)
    python scripts/make_random_checkpoint.py ./wavlm-tiny --size tiny  # a few hundred kB

The architecture is that of microsoft/wavlm-base-plus-sv (WavLMForXVector: conv front
end, 12 transformer layers, TDNN x-vector head, 512-d output), or a much smaller one
with --size tiny, saved with save_pretrained() beside a Wav2Vec2FeatureExtractor config.
The weights are RANDOM (fixed seed): the commands all work, but such a model cannot tell
real speakers apart. Random weights cost exactly the compute of trained ones, which is
why the benchmarks use them.
"""

from __future__ import annotations

import argparse

import kit


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(
            __doc__,
            "no table; the model of bench.py, bench_service.py, bench_timeline.py and "
            'gpu_check.py, and of trying speakerdb offline (docs/embeddings.md, "Models and offline machines")',
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", help="directory to write (created)")
    parser.add_argument("--size", choices=sorted(kit.CHECKPOINT_SIZES), default="full")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = kit.build_random_checkpoint(args.out_dir, args.size, args.seed)
    print(f"wrote a RANDOM-weight {args.size} WavLM x-vector checkpoint to {path}")
    print("it runs every speakerdb command but cannot tell real speakers apart")


if __name__ == "__main__":
    main()
