#!/usr/bin/env python
"""`--device cuda`: speakerdb's embeddings on a GPU against the model card's own pipeline.

    python scripts/gpu_check.py OUT.json [--checkpoint DIR]   # builds a full-size random one if none

CPU tests cannot see what a GPU does to speakerdb's faster kernels (kernels.py: the conv
encoder as strided products, attention through scaled_dot_product_attention, the
positional convolution by FFT; intgemm.py must stay off). On the GPU this script:

1. embeds 1, 3, 10 and 30 s clips (random weights: the same arithmetic as the real ones)
   with speakerdb in fp32 and bf16, and with the model card's snippet
   (Wav2Vec2FeatureExtractor + WavLMForXVector + L2 normalisation) in fp32 on the GPU and
   on the CPU, and reports the largest per-component differences;
2. times each (median of 10 after 3 warm-ups, CUDA synchronised), seconds of compute per
   second of audio, and the ratio against the card on the same GPU;
3. embeds a 10-minute clip (30 s windows) to show long recordings run in bounded memory,
   and reports the GPU's peak memory.

Needs torch with CUDA and transformers; nothing else of speakerdb's dependencies.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SR = 16_000  # Hz
CLIPS_S = (1, 3, 10, 30)


def voice(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 40 * seed
    x = sum(np.sin(2 * np.pi * h * f0 * t * (1 + 0.01 * np.sin(3 * t))) / h for h in range(1, 8))
    return (0.2 * x * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t) ** 2) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def card(checkpoint: Path, device: str):
    """The model card's snippet, as a function of a waveform."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMForXVector

    fe = Wav2Vec2FeatureExtractor.from_pretrained(checkpoint)
    model = WavLMForXVector.from_pretrained(checkpoint).to(device).eval()

    def embed(w: np.ndarray) -> np.ndarray:
        inputs = fe([w], padding=True, return_tensors="pt", sampling_rate=SR).to(device)
        with torch.no_grad():
            e = model(**inputs).embeddings
        return torch.nn.functional.normalize(e, dim=-1).float().cpu().numpy()[0]

    return embed


def timed(fn, w, sync) -> float:
    for _ in range(3):
        fn(w)
    sync()
    times = []
    for _ in range(10):
        t = time.perf_counter()
        fn(w)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    import torch

    out = Path(sys.argv[1])
    checkpoint = Path(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--checkpoint" else None
    if checkpoint is None:
        import make_random_checkpoint

        checkpoint = make_random_checkpoint.build(Path(tempfile.mkdtemp()) / "wavlm-random", size="full", seed=0)
    from speakerdb.audio import decode as audio
    from speakerdb.embedding import pipeline
    from speakerdb.embedding.models import load_embedder

    assert torch.cuda.is_available(), "no CUDA device"
    sync = torch.cuda.synchronize
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    import transformers

    report["transformers"] = transformers.__version__
    ref_gpu, ref_cpu = card(checkpoint, "cuda"), card(checkpoint, "cpu")
    ours = {p: load_embedder(str(checkpoint), device="cuda", precision=p) for p in ("fp32", "bf16")}
    rows = []
    for seconds in CLIPS_S:
        w = voice(seconds, seed=seconds)
        want_cpu, want_gpu = ref_cpu(w), ref_gpu(w)
        row = {"seconds": seconds, "card_gpu_vs_card_cpu": float(np.abs(want_gpu - want_cpu).max())}
        card_s = timed(ref_gpu, w, sync)
        row["card_gpu_s_per_s"] = card_s / seconds
        for p, emb in ours.items():
            got = emb.embed([w])[0]
            row[f"{p}_vs_card_cpu"] = float(np.abs(got - want_cpu).max())
            row[f"{p}_cosine_to_card"] = float(got @ want_cpu)
            s = timed(lambda x: emb.embed([x]), w, sync)
            row[f"{p}_s_per_s"] = s / seconds
            row[f"{p}_speedup_vs_card_gpu"] = card_s / s
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["clips"] = rows
    torch.cuda.reset_peak_memory_stats()
    long = voice(600, seed=7)
    t = time.perf_counter()
    clip = pipeline.embed_clip(audio.Audio("ten-minutes", long), ours["fp32"])
    sync()
    report["ten_minutes"] = {"seconds": time.perf_counter() - t, "norm": float(np.linalg.norm(clip.vector)),
                             "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}
    print(json.dumps(report["ten_minutes"]), flush=True)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
