"""What the tests build that a script in scripts/ also builds: a random-weight checkpoint, trimmed speech.

The tests never import scripts/ (nor scripts tests/), so the two copies are kept apart on
purpose: ``build_random_checkpoint`` and ``CHECKPOINT_SIZES`` are scripts/kit.py's (and
tests/test_scripts.py checks that both write the same files), ``trim`` is
scripts/make_conversations.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_SIZES: dict[str, dict[str, Any]] = {
    # transformers' WavLMConfig defaults are the base architecture, 512-d x-vectors.
    "full": {},
    # Same classes and layer types, a thousandth of the compute: for tests.
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


def build_random_checkpoint(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random WavLMForXVector of ``size`` and its feature extractor to ``out_dir`` (save_pretrained)."""
    import torch  # deferred: torch and transformers take seconds to import, and not every test needs them
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = WavLMConfig(**CHECKPOINT_SIZES[size])
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


FRAME = 160  # samples: 10 ms frames
ABOVE_FLOOR_DB = 6.0  # dB above a recording's noise floor (10th-percentile frame energy)
BELOW_LOUD_DB = 30.0  # dB below its loud frames (95th percentile)


def trim(x: np.ndarray) -> np.ndarray:
    """``x`` without its leading and trailing inactive 10 ms frames (as make_conversations.py cuts turns).

    A frame is active when it is at least 6 dB above the recording's noise floor and within
    30 dB of its loud frames.
    """
    n = len(x) // FRAME
    if n == 0:
        return x[:0]
    e = 10 * np.log10(np.mean(x[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero((e >= np.percentile(e, 10) + ABOVE_FLOOR_DB) & (e >= np.percentile(e, 95) - BELOW_LOUD_DB))
    if len(active) == 0:
        return x[:0]
    return x[active[0] * FRAME : (active[-1] + 1) * FRAME]
