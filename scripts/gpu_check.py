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

Needs torch with CUDA and transformers beside speakerdb. Writes its figures to OUT.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import kit

SR = kit.SAMPLE_RATE
CLIPS_S = (1, 3, 10, 30)


def voice(seconds: float, seed: int) -> np.ndarray:
    """A synthetic voice of ``seconds``, its pitch set by ``seed``."""
    return kit.voice(120 + 10 * (seed % 8), seconds, seed)


def card(checkpoint: Path, device: str):
    """The model card's snippet, as a function of a waveform."""
    import torch  # deferred: torch and transformers take seconds to import; --help stays quick
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
    """Median seconds of 10 calls ``fn(w)`` after 3 warm-ups, the device synchronised."""
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
    parser = argparse.ArgumentParser(
        description=kit.describe(
            __doc__,
            "no documented table yet: OUT.json, the check behind --device cuda "
            "(docs/usage.md; listed in docs/development.md)",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="the JSON report to write")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: a full-size random one)")
    args = parser.parse_args()
    import torch  # deferred: torch takes seconds to import; --help stays quick

    out = args.out
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = kit.build_random_checkpoint(Path(tempfile.mkdtemp()) / "wavlm-random", size="full", seed=0)
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
            s = timed(lambda x, emb=emb: emb.embed([x]), w, sync)
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
    report["ten_minutes"] = {
        "seconds": time.perf_counter() - t,
        "norm": float(np.linalg.norm(clip.vector)),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
    }
    print(json.dumps(report["ten_minutes"]), flush=True)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
