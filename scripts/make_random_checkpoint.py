#!/usr/bin/env python
"""Write a random-weight WavLM x-vector checkpoint, for trying speakerdb where the hub is unreachable.

    python scripts/make_random_checkpoint.py ./wavlm-random            # full size (~380 MB)
    python scripts/make_random_checkpoint.py ./wavlm-tiny --size tiny  # a few hundred kB

The architecture is that of microsoft/wavlm-base-plus-sv (WavLMForXVector: conv front
end, 12 transformer layers, TDNN x-vector head, 512-d output), or a much smaller one
with --size tiny, saved with save_pretrained() beside a Wav2Vec2FeatureExtractor config.
The weights are RANDOM (fixed seed): the commands all work, but such a model cannot tell
real speakers apart. Identical audio still scores 1.0, which is what the tests rely on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SIZES = {
    # transformers' WavLMConfig defaults are the base architecture, 512-d x-vectors.
    "full": {},
    # Same classes and layer types, a thousandth of the compute: for tests and quick tries.
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32, 32, 32, 32, 32),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_buckets=32,
        max_bucket_distance=100,
        tdnn_dim=(32, 32, 32, 32, 64),
        xvector_output_dim=24,
        classifier_proj_size=32,
    ),
}


def build(out_dir: str | Path, size: str = "full", seed: int = 0) -> Path:
    """Save a random WavLMForXVector of ``size`` and its feature extractor to ``out_dir``."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = WavLMConfig(**SIZES[size])
    # speakerdb reads this marker and warns on every command that the answers mean nothing.
    config.speakerdb_random_weights = True
    model = WavLMForXVector(config).eval()
    # The preprocessing of microsoft/wavlm-base-plus-sv: raw 16 kHz samples, no
    # per-utterance normalisation, attention mask returned.
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=False, return_attention_mask=True
    )
    model.save_pretrained(out_dir)
    feature_extractor.save_pretrained(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="directory to write (created)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = build(args.out_dir, args.size, args.seed)
    print(f"wrote a RANDOM-weight {args.size} WavLM x-vector checkpoint to {path}")
    print("it runs every speakerdb command but cannot tell real speakers apart")


if __name__ == "__main__":
    main()
