#!/usr/bin/env python
"""Benchmark speakerdb against the plain model card pipeline, on CPU, with no network.

    HF_HUB_OFFLINE=1 python scripts/bench.py                     # full size: ~12 min on 2 idle cores
    HF_HUB_OFFLINE=1 python scripts/bench.py --quick             # fewer repeats and sizes: ~4 min
    HF_HUB_OFFLINE=1 python scripts/bench.py --checkpoint ./wavlm-random --json bench.json
    HF_HUB_OFFLINE=1 python scripts/bench.py --full-scale        # adds an HNSW graph of 1M speakers (~10 min more)

Run it from the project's virtualenv (the one where ``pip install -e .`` put the
``speakerdb`` command), with nothing else heavy running: every number is wall-clock time.

The model is a RANDOM-weight WavLM x-vector checkpoint with the architecture of
microsoft/wavlm-base-plus-sv, written by scripts/make_random_checkpoint.py (into a
temporary directory, or into --checkpoint DIR, which is reused on the next run). Random
weights cost exactly as much compute as trained ones, so the timings hold for the real
model; the embeddings themselves mean nothing.

What is measured (each timing is the median of --repeats runs, after one warm-up run;
the two sides of a comparison are interleaved so that drift in machine speed hits both):

* model load: ``speakerdb.embedding.models.load_embedder(DIR)`` against the model card's
  ``Wav2Vec2FeatureExtractor.from_pretrained(DIR)`` + ``WavLMForXVector.from_pretrained(DIR)``;
* embedding one synthetic clip of 1, 3, 10 and 30 s: the model card snippet, literally
  (autograd left on, as the card has it), against ``TransformersXVector.embed([wave])``, in
  seconds of compute per second of audio, and the largest per-component difference
  between the two embeddings (must be below 1e-5); at 10 s also the snippet under
  ``torch.no_grad()``; and, where ``TransformersXVector`` takes ``precision="bf16"``,
  speakerdb in bfloat16 at 10 and 30 s with its deviation from float32;
* a folder of 12 clips of 1 to 40 s: ``pipeline.embed_clip`` per file against the snippet
  per file;
* a 10-minute clip against a 30 s clip through ``pipeline.embed_clip`` (30 s windows),
  in a child process: time ratio and peak resident memory growth;
* memory, in a child process per side: what loading the model and embedding a 10 s clip
  twice add to the resident size (and to its peak) of a process with torch imported;
* whole processes: ``speakerdb --help``, ``list``, ``show``, ``info`` and ``identify`` on a
  small database, and whether the first four import torch or transformers;
* one file, one process (``oneshot``): the model card's snippet as a script against
  ``speakerdb identify`` on the same 10 s file, interleaved in one run;
* with ``--librispeech DIR``: ``speakerdb --model resemblyzer evaluate DIR/test-other`` as a
  process with default threads and with ``OMP_NUM_THREADS=1`` (``ge2e``);
* the FAISS index and enrollment without embedding: scripts/bench_search.py's rows (it
  runs as a child process; alone, it needs neither torch nor a checkpoint);
* the peak resident memory of this process, with the torch version and thread count.

The Markdown table goes to stdout, progress to stderr. To add a measurement, write a
function ``(Context) -> list[Row]`` and put it in :data:`BENCHMARKS` (see
:func:`bench_embed` for one taking a parameter, the clip length).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import inspect
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import kit
from kit import Row, interleaved, log, peak_rss_mib, rss_baseline, timing_row

if TYPE_CHECKING:  # torch, transformers and speakerdb are imported when needed, after setup
    from transformers import Wav2Vec2FeatureExtractor, WavLMForXVector

    from speakerdb.embedding.models import TransformersXVector

SAMPLE_RATE = kit.SAMPLE_RATE
EMBED_TOLERANCE = 1e-5  # largest allowed |reference - speakerdb| per embedding component
CLI_TIMEOUT_S = 120  # s: far beyond any command measured here, which take at most a few seconds
SEED = 1234  # of the synthetic audio, so every run embeds the same samples
FOLDER_CLIPS, FOLDER_MIN_S, FOLDER_MAX_S = 12, 1.0, 40.0  # the mixed folder: clips, shortest, longest (s)
SHORT_CLIP_S = 30.0  # s: one pipeline window
LONG_CLIP_S, LONG_CLIP_QUICK_S = 600.0, 300.0  # s: 20 windows; 10 with --quick
IDENTIFY_CLIP_S = 5.0  # s: the query of `speakerdb identify`
ONESHOT_CLIP_S = 10.0  # s: the file of the one-shot comparison (card script vs `speakerdb identify`)
MEMORY_CLIP_S = 10.0  # s: the clip of the memory benchmark
# Modules that `speakerdb list`, `show`, `info` and `--help` must not import: torch and
# transformers alone take seconds to import, which is the whole cost of those commands.
HEAVY_MODULES = ("torch", "transformers")


# ---- helpers -------------------------------------------------------------------------
def synthetic_wave(seconds: float, seed: int = SEED) -> np.ndarray:
    """A synthetic 16 kHz voice (kit.voice at 120 Hz): not silent, not clipped, the same on every run.

    Any signal costs the model the same compute.
    """
    return kit.voice(120.0, seconds, seed)


# ---- shared state --------------------------------------------------------------------
@dataclass
class Context:
    """What the benchmarks share: settings, the checkpoint, a scratch directory, loaded models."""

    checkpoint: Path
    scratch: Path  # deleted at the end
    repeats: int
    env: dict[str, str]  # environment for child processes
    quick: bool = False  # smaller sizes where a measurement would take minutes
    librispeech: Path | None = None  # holds test-other/, for the GE2E rows
    full_scale: bool = False  # also the measurements that take ~10 minutes each (HNSW at 1M)

    @functools.cached_property
    def reference(self) -> tuple[Wav2Vec2FeatureExtractor, WavLMForXVector]:
        """(feature extractor, model) loaded as the model card does."""
        return load_reference(self.checkpoint)

    @functools.cached_property
    def embedder(self) -> TransformersXVector:
        """speakerdb's embedder for the checkpoint, in its steady state (see :func:`steady_embedder`)."""
        return steady_embedder(self.checkpoint)

    @functools.cached_property
    def embedder_bf16(self) -> TransformersXVector | None:
        """speakerdb's embedder in bfloat16, or None where this speakerdb has no such option."""
        if not has_precision_option():
            return None
        from speakerdb.embedding.models import TransformersXVector

        return TransformersXVector(str(self.checkpoint), precision="bf16")  # type: ignore[call-arg]


def steady_embedder(checkpoint: Path) -> TransformersXVector:
    """speakerdb's float32 embedder as it runs after its first minute of audio in a process.

    From 60 s of audio on, ``TransformersXVector.embed`` uses the positional conv by FFT and,
    on AMX CPUs, int8 products (set up once, 0.1-0.8 s: :func:`bench_load` times it).
    Set up front here, so that every timing is of one state; short one-file commands
    never reach it, and the ``identify`` process row measures them as they are.
    """
    from speakerdb.embedding.models import TransformersXVector

    embedder = TransformersXVector(str(checkpoint))
    prepare = getattr(embedder, "prepare_long_run", None) or getattr(embedder, "prepare_int8_products", None)
    if prepare is not None:
        prepare()
    return embedder


def has_precision_option() -> bool:
    """Whether ``TransformersXVector.__init__`` takes ``precision`` (being added in another change)."""
    from speakerdb.embedding.models import TransformersXVector

    return "precision" in inspect.signature(TransformersXVector.__init__).parameters


def load_reference(checkpoint: Path) -> tuple[Wav2Vec2FeatureExtractor, WavLMForXVector]:
    """The model card's two loading lines."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMForXVector

    feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(checkpoint))
    model = WavLMForXVector.from_pretrained(str(checkpoint))
    return feature_extractor, model


# ---- benchmarks ----------------------------------------------------------------------
def bench_load(ctx: Context) -> list[Row]:
    """Model load time, in this process (torch and transformers already imported)."""
    from speakerdb.embedding.models import _fingerprint, load_embedder

    log(f"load: {ctx.repeats} x 2 loads of the checkpoint, interleaved")
    times = interleaved(
        {
            "reference": lambda: load_reference(ctx.checkpoint),
            "speakerdb": lambda: load_embedder(str(ctx.checkpoint)),
        },
        ctx.repeats,
    )
    # speakerdb hashes the weights on load to pin the model id; timed on its own, it
    # tells how much of the difference between the two loads it explains.
    _, model = ctx.reference
    fingerprint = interleaved({"fingerprint": lambda: _fingerprint(model)}, ctx.repeats)["fingerprint"]
    ref, sdb = statistics.median(times["reference"]), statistics.median(times["speakerdb"])
    rows = []
    if hasattr(type(ctx.embedder), "prepare_long_run"):
        prepare = []
        for _ in range(ctx.repeats):
            embedder = load_embedder(str(ctx.checkpoint))
            start = time.perf_counter()
            added = embedder.prepare_long_run()
            prepare.append(time.perf_counter() - start)
        rows.append(
            timing_row(
                "load: speakerdb's long-run kernels, set up once per process after 60 s of audio",
                prepare,
                note=", ".join(added) or "none on this CPU",
            )
        )
    return [
        # The model card load maps model.safetensors into memory without reading it (RSS
        # grows ~50 MiB, not ~400): the first forward pass pages the weights in instead.
        timing_row(
            "load: model card (Wav2Vec2FeatureExtractor + WavLMForXVector .from_pretrained)",
            times["reference"],
            note="weights memory-mapped, read later by the first forward pass",
        ),
        timing_row(
            "load: speakerdb `load_embedder(dir)`",
            times["speakerdb"],
            note="reads every weight: hashes them for the model id",
        ),
        Row("load: ratio model card / speakerdb", ref / sdb, "x", "above 1: speakerdb loads faster"),
        timing_row("load: of which speakerdb's weight fingerprint (`embed._fingerprint`)", fingerprint),
        *rows,
    ]


def card_snippet(feature_extractor: Wav2Vec2FeatureExtractor, model: WavLMForXVector, wave: np.ndarray):
    """The model card's recipe for one clip, literally: autograd stays on, as on the card.

    Returns the (1, dim) tensor detached from its graph, so the graph (every saved
    activation: ~5 GiB for a 30 s clip) is freed on return, as when a loop over files
    rebinds ``emb``. Kept attached, the graphs of a folder's clips would all stay alive
    at once (they reached 19 GiB before this detach was added) and one graph would sit
    in memory during the other side's timed runs.
    """
    import torch

    inputs = feature_extractor(wave, sampling_rate=16000, return_tensors="pt")
    emb = model(**inputs).embeddings
    emb = torch.nn.functional.normalize(emb, dim=-1)
    return emb.detach()


def card_snippet_no_grad(feature_extractor: Wav2Vec2FeatureExtractor, model: WavLMForXVector, wave: np.ndarray):
    """The model card's recipe under ``torch.no_grad()``, as inference code should run it.

    Without a graph for a backward pass, activations are freed layer by layer: this is
    the fair baseline for speakerdb's compute, the literal snippet the one users copy.
    """
    import torch

    with torch.no_grad():
        return card_snippet(feature_extractor, model, wave)


def as_vector(tensor) -> np.ndarray:
    """(1, dim) torch tensor -> (dim,) float32 array."""
    return tensor.float()[0].numpy()


def bench_embed(ctx: Context, seconds: float = 10.0, no_grad: bool = False, bf16: bool = False) -> list[Row]:
    """Compute to embed one clip of ``seconds``: the model card snippet against speakerdb.

    ``no_grad`` adds the snippet under ``torch.no_grad()``; ``bf16`` adds speakerdb in
    bfloat16 (``precision="bf16"``) where speakerdb has that option, else a row saying why not.
    """
    wave = synthetic_wave(seconds)
    feature_extractor, model = ctx.reference
    embedder = ctx.embedder
    results: dict[str, np.ndarray] = {}
    runs: dict[str, Callable[[], None]] = {
        "card": lambda: results.__setitem__("card", card_snippet(feature_extractor, model, wave)),
        "speakerdb": lambda: results.__setitem__("speakerdb", embedder.embed([wave])[0]),
    }
    if no_grad:
        runs["card no_grad"] = lambda: results.__setitem__(
            "card no_grad", card_snippet_no_grad(feature_extractor, model, wave)
        )
    embedder_bf16 = ctx.embedder_bf16 if bf16 else None
    if embedder_bf16 is not None:
        runs["speakerdb bf16"] = lambda: results.__setitem__("speakerdb bf16", embedder_bf16.embed([wave])[0])

    # A 1 s forward pass takes ~0.1 s, where scheduler noise is a larger share: more runs.
    repeats = ctx.repeats * 3 if seconds <= 3 else ctx.repeats
    label = f"embed {seconds:g} s"
    log(f"{label}: {repeats} x {len(runs)} forward passes, interleaved")
    times = interleaved(runs, repeats)
    median = {name: statistics.median(t) for name, t in times.items()}
    card_vector = as_vector(results["card"])
    diff = float(np.max(np.abs(card_vector - results["speakerdb"])))
    rows = [
        timing_row(
            f"{label}: model card snippet (literal: autograd on)",
            times["card"],
            per=seconds,
            unit="s/s",
            note=f"{median['card']:.3f} s per clip",
        ),
        timing_row(
            f"{label}: speakerdb `TransformersXVector.embed([wave])`",
            times["speakerdb"],
            per=seconds,
            unit="s/s",
            note=f"{median['speakerdb']:.3f} s per clip",
        ),
        Row(
            f"{label}: ratio model card (literal) / speakerdb",
            median["card"] / median["speakerdb"],
            "x",
            "above 1: speakerdb is faster",
        ),
        Row(
            f"{label}: max abs difference per component, card vs speakerdb",
            diff,
            "abs",
            f"{len(card_vector)}-d unit vectors; must be < {EMBED_TOLERANCE:g}",
            ok=diff < EMBED_TOLERANCE,
        ),
    ]
    if no_grad:
        diff_ng = float(np.max(np.abs(as_vector(results["card no_grad"]) - results["speakerdb"])))
        rows += [
            timing_row(
                f"{label}: model card snippet under `torch.no_grad()`",
                times["card no_grad"],
                per=seconds,
                unit="s/s",
                note=f"{median['card no_grad']:.3f} s per clip; max abs diff to speakerdb {diff_ng:.1e}",
            ),
            Row(
                f"{label}: ratio model card (no_grad) / speakerdb",
                median["card no_grad"] / median["speakerdb"],
                "x",
                "above 1: speakerdb is faster",
            ),
        ]
    if bf16 and embedder_bf16 is None:
        rows.append(
            Row(
                f"{label}: speakerdb bf16",
                float("nan"),
                "s/s",
                "skipped: `TransformersXVector.__init__` takes no `precision` argument in this speakerdb",
            )
        )
    elif bf16:
        deviation = float(np.max(np.abs(results["speakerdb bf16"] - results["speakerdb"])))
        cosine = float(np.dot(results["speakerdb bf16"], results["speakerdb"]))
        rows += [
            timing_row(
                f'{label}: speakerdb bf16 `TransformersXVector(..., precision="bf16").embed([wave])`',
                times["speakerdb bf16"],
                per=seconds,
                unit="s/s",
                note=f"{median['speakerdb bf16']:.3f} s per clip",
            ),
            Row(
                f"{label}: ratio model card (literal) / speakerdb bf16",
                median["card"] / median["speakerdb bf16"],
                "x",
                f"above 1: bf16 is faster; fp32 speakerdb / bf16: "
                f"{median['speakerdb'] / median['speakerdb bf16']:.3f} ×",
            ),
            Row(
                f"{label}: max abs deviation per component, speakerdb bf16 vs fp32",
                deviation,
                "abs",
                f"cosine bf16 · fp32 = {cosine:.5f}; informative, no tolerance",
            ),
        ]
    return rows


def bench_folder(ctx: Context) -> list[Row]:
    """A folder of mixed-length clips, one file at a time: ``pipeline.embed_clip`` against the snippet.

    All clips are at most 40 s, under the 45 s up to which the pipeline embeds a clip
    whole, so both sides run the same forward passes; what differs is the pipeline's own
    work (sha256, level checks, speech activity) and autograd.
    """
    from speakerdb.audio.decode import Audio
    from speakerdb.embedding import pipeline

    rng = np.random.default_rng(SEED)
    lengths = np.round(rng.uniform(FOLDER_MIN_S, FOLDER_MAX_S, FOLDER_CLIPS), 1)  # seconds
    clips = [Audio(f"clip{i:02d}.wav", synthetic_wave(s, seed=SEED + 100 + i)) for i, s in enumerate(lengths)]
    total_s = float(sum(lengths))
    feature_extractor, model = ctx.reference
    embedder = ctx.embedder
    results: dict[str, list[np.ndarray]] = {}

    def card() -> None:
        results["card"] = [card_snippet(feature_extractor, model, clip.samples) for clip in clips]

    def speakerdb() -> None:
        results["speakerdb"] = [pipeline.embed_clip(clip, embedder).vector for clip in clips]

    # One pass over the folder takes ~20 s; the model is warm from the single clips.
    repeats = min(ctx.repeats, 2 if ctx.quick else 3)
    label = f"folder of {FOLDER_CLIPS} clips, {FOLDER_MIN_S:g}-{FOLDER_MAX_S:g} s ({total_s:.0f} s of audio)"
    log(f"{label}: {repeats} x 2 passes, interleaved, no warm-up")
    times = interleaved({"card": card, "speakerdb": speakerdb}, repeats, warmup=False)
    ref, sdb = statistics.median(times["card"]), statistics.median(times["speakerdb"])
    diff = max(float(np.max(np.abs(as_vector(c) - v))) for c, v in zip(results["card"], results["speakerdb"]))
    return [
        timing_row(
            f"{label}: model card snippet per file (literal)",
            times["card"],
            per=total_s,
            unit="s/s",
            note=f"{ref:.2f} s per folder",
        ),
        timing_row(
            f"{label}: speakerdb `pipeline.embed_clip(Audio(...), embedder)` per file",
            times["speakerdb"],
            per=total_s,
            unit="s/s",
            note=f"{sdb:.2f} s per folder",
        ),
        Row(
            f"{label}: ratio model card / speakerdb",
            ref / sdb,
            "x",
            f"above 1: speakerdb is faster; max abs difference over the clips {diff:.1e}",
            ok=diff < EMBED_TOLERANCE,
        ),
    ]


def bench_long_clip(ctx: Context) -> list[Row]:
    """A long recording against a 30 s one through ``pipeline.embed_clip``, in a child process.

    30 s windows keep compute linear in length and memory bounded by one window: the
    time ratio should be about the length ratio, and the peak memory should not grow
    beyond that of a 30 s clip. A child process gives a clean peak (this one has held two
    models and long clips by now), measured as :func:`rss_baseline` explains.
    """
    long_s = LONG_CLIP_QUICK_S if ctx.quick else LONG_CLIP_S
    repeats = min(ctx.repeats, 3)
    log(f"long clip: a child process embeds a 30 s clip {repeats} times, then a {long_s / 60:g} min clip once")
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "long-clip",
        "--checkpoint",
        str(ctx.checkpoint),
        "--repeats",
        str(repeats),
        "--long-seconds",
        str(long_s),
    ]
    done = subprocess.run(argv, env=ctx.env, capture_output=True, text=True)
    if done.returncode != 0:
        return [Row("long clip", float("nan"), "s", f"child failed: {done.stderr.strip()[-300:]}", ok=False)]
    r = json.loads(done.stdout)
    expected = long_s / SHORT_CLIP_S
    ratio = r["long_s"] / statistics.median(r["short_s"])
    label = f"long clip {long_s / 60:g} min"
    return [
        timing_row(
            f"{label}: 30 s clip through `pipeline.embed_clip`",
            r["short_s"],
            per=SHORT_CLIP_S,
            unit="s/s",
            note=f"{statistics.median(r['short_s']):.2f} s per clip",
        ),
        timing_row(
            f"{label}: {long_s / 60:g} min clip through `pipeline.embed_clip`",
            [r["long_s"]],
            per=long_s,
            unit="s/s",
            note=f"{r['n_windows']} windows of 30 s; one run",
        ),
        Row(
            f"{label}: time ratio {long_s / 60:g} min / 30 s",
            ratio,
            "x",
            f"length ratio {expected:g}: about that means compute is linear in length",
        ),
        Row(
            f"{label}: peak RSS growth, 30 s clip",
            r["short_growth_mib"],
            "MiB",
            f"child process: {r['peak_source']}, over its resident size with the model loaded and both "
            f"clips in memory ({r['baseline_mib']:,.0f} MiB)",
        ),
        Row(
            f"{label}: peak RSS growth, {long_s / 60:g} min clip",
            r["long_growth_mib"],
            "MiB",
            f"same baseline, after the 30 s clips; {r['long_growth_mib'] - r['short_growth_mib']:,.0f} MiB more "
            f"than a 30 s clip (the clip itself is {long_s * SAMPLE_RATE * 4 / 2**20:.0f} MiB, allocated before)",
        ),
    ]


def long_clip_child(checkpoint: Path, repeats: int, long_s: float) -> dict[str, Any]:
    """Run in the child process of :func:`bench_long_clip`; returns its measurements."""
    from speakerdb.audio.decode import Audio
    from speakerdb.embedding import pipeline

    embedder = steady_embedder(checkpoint)
    embedder.embed([synthetic_wave(1.0)])  # first-call costs, outside both measurements
    short = Audio("short.wav", synthetic_wave(SHORT_CLIP_S))
    # Built from 30 s pieces: synthetic_wave's float64 temporaries for the whole length
    # would set a peak of their own, above the one to be measured.
    pieces = [synthetic_wave(SHORT_CLIP_S, seed=SEED + i) for i in range(math.ceil(long_s / SHORT_CLIP_S))]
    long = Audio("long.wav", np.concatenate(pieces)[: int(long_s * SAMPLE_RATE)])
    del pieces
    gc.collect()
    # The model load peaks above the steady state; start the peak afresh from here.
    baseline, peak = rss_baseline()
    short_times = []
    for i in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        pipeline.embed_clip(short, embedder)
        if i:
            short_times.append(time.perf_counter() - start)
    after_short = peak()
    start = time.perf_counter()
    clip = pipeline.embed_clip(long, embedder)
    long_time = time.perf_counter() - start
    return {
        "short_s": short_times,
        "long_s": long_time,
        "n_windows": clip.n_windows,
        "baseline_mib": baseline,
        "short_growth_mib": after_short - baseline,
        "long_growth_mib": peak() - baseline,
        "peak_source": peak.__doc__,
    }


def bench_cli(ctx: Context) -> list[Row]:
    """Whole ``speakerdb`` processes, start to exit, as a user at a shell sees them."""
    import soundfile

    exe = Path(sys.executable).with_name("speakerdb")  # the console script of this environment
    if not exe.is_file():
        return [Row("cli: speakerdb", float("nan"), "s", f"{exe} not found: run `pip install -e .`", ok=False)]
    home = ctx.scratch / "home"
    n_speakers = make_small_database(ctx, home)
    env = {**ctx.env, "SPEAKERDB_HOME": str(home)}
    query = ctx.scratch / "query.wav"
    soundfile.write(query, synthetic_wave(IDENTIFY_CLIP_S, seed=SEED + 50), SAMPLE_RATE)

    commands = {
        # Interpreter start alone, for scale: no command can start faster than this.
        "python -c pass": [sys.executable, "-c", "pass"],
        "speakerdb --help": [str(exe), "--help"],
        "speakerdb list": [str(exe), "list"],
        "speakerdb show alice": [str(exe), "show", "alice"],
        "speakerdb info": [str(exe), "info"],
        # Loads torch, transformers and the model, embeds 5 s, searches.
        "speakerdb identify query.wav": [str(exe), "--model", str(ctx.checkpoint), "identify", str(query)],
    }

    def runner(argv: list[str]) -> Callable[[], None]:
        def run() -> None:
            # The timeout turns a hung command (a deadlock, a network wait) into an error.
            done = subprocess.run(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=CLI_TIMEOUT_S
            )
            if done.returncode != 0:  # a failing command would time its error path, not its work
                raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()[-500:]}")

        return run

    log(f"cli: {ctx.repeats} x {len(commands)} processes, interleaved")
    times = interleaved({name: runner(argv) for name, argv in commands.items()}, ctx.repeats)
    notes = {
        "python -c pass": "interpreter start, for scale",
        "speakerdb list": f"SPEAKERDB_HOME holding {n_speakers} speakers",
        "speakerdb identify query.wav": f"{IDENTIFY_CLIP_S:g} s WAV, `--model` the bench checkpoint; "
        "includes loading torch and the model",
    }
    rows = [timing_row(f"cli: `{name}`", times[name], note=notes.get(name, "")) for name in commands]
    return rows + [heavy_imports_row(ctx, env, args) for args in (["--help"], ["list"], ["show", "alice"], ["info"])]


# The model card's snippet as a user's one-file script: import, load, read the file, embed
# (autograd on, as on the card). soundfile stands in for the card's `datasets` audio column.
CARD_SCRIPT = r"""
import sys

import soundfile as sf
import torch
from transformers import Wav2Vec2FeatureExtractor, WavLMForXVector

checkpoint, path = sys.argv[1], sys.argv[2]
feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(checkpoint)
model = WavLMForXVector.from_pretrained(checkpoint)
audio, sr = sf.read(path, dtype="float32")
inputs = feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
embeddings = model(**inputs).embeddings
embeddings = torch.nn.functional.normalize(embeddings, dim=-1).cpu()
print(embeddings[0, :4].tolist())
"""


def bench_oneshot(ctx: Context) -> list[Row]:
    """One file, one process: the card's snippet as a script against `speakerdb identify`, in one run.

    Both read the same 10 s WAV and load the same checkpoint from disk; speakerdb also
    opens its database and index and searches. The model id's fingerprint is cached from
    the first (warm-up) run on, as it is for a user's second command.
    """
    import soundfile

    exe = Path(sys.executable).with_name("speakerdb")
    if not exe.is_file():
        return [Row("one-shot: speakerdb", float("nan"), "s", f"{exe} not found: run `pip install -e .`", ok=False)]
    home = ctx.scratch / "oneshot-home"
    make_small_database(ctx, home)
    env = {**ctx.env, "SPEAKERDB_HOME": str(home)}
    query = ctx.scratch / "oneshot.wav"
    soundfile.write(query, synthetic_wave(ONESHOT_CLIP_S, seed=SEED + 60), SAMPLE_RATE)
    script = ctx.scratch / "card_snippet.py"
    script.write_text(CARD_SCRIPT)
    commands = {
        "card": [sys.executable, str(script), str(ctx.checkpoint), str(query)],
        "speakerdb": [str(exe), "--model", str(ctx.checkpoint), "identify", str(query)],
        # Without the voice count (a second pass over the speech that says whether one or
        # several people speak): the same work as the card's snippet plus the search.
        "speakerdb one voice": [str(exe), "--model", str(ctx.checkpoint), "identify", "--no-voice-check", str(query)],
    }

    def runner(argv: list[str]) -> Callable[[], None]:
        def run() -> None:
            done = subprocess.run(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=CLI_TIMEOUT_S
            )
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()[-500:]}")

        return run

    label = f"one-shot, {ONESHOT_CLIP_S:g} s file, whole process"
    log(f"{label}: {ctx.repeats} x {len(commands)} processes, interleaved")
    times = interleaved({name: runner(argv) for name, argv in commands.items()}, ctx.repeats)
    card, sdb = statistics.median(times["card"]), statistics.median(times["speakerdb"])
    one = statistics.median(times["speakerdb one voice"])
    return [
        timing_row(
            f"{label}: the model card's snippet as a script (`python card_snippet.py DIR FILE`)",
            times["card"],
            note="imports torch and transformers, loads, embeds with autograd on",
        ),
        timing_row(
            f"{label}: `speakerdb identify FILE`",
            times["speakerdb"],
            note="imports, loads (cached model id), probes the kernels, embeds, counts voices, searches",
        ),
        timing_row(
            f"{label}: `speakerdb identify --no-voice-check FILE`",
            times["speakerdb one voice"],
            note="the same without the voice count (a second pass over the speech)",
        ),
        Row(f"{label}: ratio card script / speakerdb identify", card / sdb, "x", "above 1: speakerdb is faster"),
        Row(
            f"{label}: ratio card script / speakerdb identify --no-voice-check",
            card / one,
            "x",
            "above 1: speakerdb is faster",
        ),
    ]


def bench_ge2e(ctx: Context) -> list[Row]:
    """`speakerdb --model resemblyzer evaluate` on LibriSpeech test-other, default threads against OMP_NUM_THREADS=1.

    Needs --librispeech DIR (holding test-other/) and the resemblyzer extra. speakerdb runs
    the GE2E LSTM on one torch thread and BLAS on one while it embeds (threads.py): the
    defaults must be no slower than forcing every pool to one thread.
    """
    if ctx.librispeech is None or not (ctx.librispeech / "test-other").is_dir():
        return [Row("ge2e evaluate", float("nan"), "s", "skipped: pass --librispeech DIR (with test-other/)")]
    if importlib.util.find_spec("resemblyzer") is None:
        return [Row("ge2e evaluate", float("nan"), "s", 'skipped: needs pip install -e ".[resemblyzer]"')]
    exe = Path(sys.executable).with_name("speakerdb")
    argv = [
        str(exe),
        "--db",
        str(ctx.scratch / "ge2e.sqlite"),
        "--model",
        "resemblyzer",
        "evaluate",
        str(ctx.librispeech / "test-other"),
        "--json",
    ]
    envs = {"defaults": ctx.env, "OMP_NUM_THREADS=1": {**ctx.env, "OMP_NUM_THREADS": "1"}}

    def runner(env: dict[str, str]) -> Callable[[], None]:
        def run() -> None:
            done = subprocess.run(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=20 * CLI_TIMEOUT_S
            )
            if done.returncode != 0:
                raise RuntimeError(f"evaluate exited with {done.returncode}: {done.stderr.strip()[-500:]}")

        return run

    repeats = min(ctx.repeats, 3)
    log(f"ge2e evaluate: {repeats} x 2 processes, interleaved")
    times = interleaved({name: runner(env) for name, env in envs.items()}, repeats)
    default, one = statistics.median(times["defaults"]), statistics.median(times["OMP_NUM_THREADS=1"])
    label = "ge2e `speakerdb --model resemblyzer evaluate test-other` (100 files), whole process"
    return [
        timing_row(f"{label}: default threads", times["defaults"]),
        timing_row(f"{label}: OMP_NUM_THREADS=1", times["OMP_NUM_THREADS=1"]),
        Row(
            f"{label}: ratio OMP_NUM_THREADS=1 / defaults",
            one / default,
            "x",
            "at least ~1: the defaults are no slower than one thread everywhere",
            ok=one / default > 0.9,
        ),
    ]


# Runs a speakerdb command inside a child interpreter, then writes which of the heavy
# modules it imported: sys.modules tells directly, where a timing only hints.
IMPORT_CHECK = r"""
import json, sys
out, heavy, sys.argv = sys.argv[1], sys.argv[2].split(","), ["speakerdb", *sys.argv[3:]]
from speakerdb.cli import main
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code or 0
with open(out, "w") as f:
    json.dump({"exit": code, "imported": [m for m in heavy if m in sys.modules]}, f)
"""


def heavy_imports_row(ctx: Context, env: dict[str, str], args: list[str]) -> Row:
    """Whether ``speakerdb ARGS`` imports torch or transformers (it must not: it embeds nothing)."""
    out = ctx.scratch / "imports.json"
    argv = [sys.executable, "-c", IMPORT_CHECK, str(out), ",".join(HEAVY_MODULES), *args]
    done = subprocess.run(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=CLI_TIMEOUT_S
    )
    name = f"cli: `speakerdb {' '.join(args)}` imports {' / '.join(HEAVY_MODULES)}"
    if done.returncode != 0 or not out.is_file():
        return Row(name, float("nan"), "modules", f"check failed: {done.stderr.strip()[-300:]}", ok=False)
    result = json.loads(out.read_text())
    out.unlink()
    imported = result["imported"]
    note = f"imported: {', '.join(imported)}" if imported else "neither imported (sys.modules in a child process)"
    if result["exit"] != 0:
        note += f"; the command exited with {result['exit']}"
    return Row(name, len(imported), "modules", note, ok=not imported and result["exit"] == 0)


def make_small_database(ctx: Context, home: Path) -> int:
    """Enroll a few speakers from 1 s synthetic clips into $SPEAKERDB_HOME's default database."""
    from speakerdb.api import DB_FILENAME, SpeakerDB
    from speakerdb.audio.decode import Audio

    names = ["alice", "bob", "carol"]
    with SpeakerDB(home / DB_FILENAME, embedder=ctx.embedder) as db:
        for i, name in enumerate(names):
            db.enroll(name, [Audio(f"{name}.wav", synthetic_wave(1.0, seed=SEED + i + 1))])
    return len(names)


def search_rows(ctx: Context, part: str) -> list[Row]:
    """Rows of scripts/bench_search.py's ``part`` (no model needed), run in a child process.

    A child of its own, so that its gigabytes of vectors neither stay in this process nor
    mix with the model benchmarks' memory figures.
    """
    out = ctx.scratch / "search.json"
    argv = [
        sys.executable,
        str(kit.SCRIPTS / "bench_search.py"),
        "--repeats",
        str(ctx.repeats),
        "--json",
        str(out),
        "--only",
        part,
    ]
    argv += ["--quick"] if ctx.quick else []
    argv += ["--full-scale"] if ctx.full_scale else []
    log(f"search: {' '.join(argv[1:])}")
    done = subprocess.run(argv, env=ctx.env, stdout=subprocess.DEVNULL)
    if not out.is_file():
        return [
            Row("search and enrollment", float("nan"), "s", f"bench_search.py exited with {done.returncode}", ok=False)
        ]
    return [Row(**row) for row in json.loads(out.read_text())["rows"]]


def bench_faiss(ctx: Context) -> list[Row]:
    """The FAISS index by size: exact and HNSW search latency, recall@1, save and load (bench_search.py)."""
    return search_rows(ctx, "faiss")


def bench_enroll(ctx: Context) -> list[Row]:
    """Enrollment with a stub model: enroll() calls per second, a gallery import (bench_search.py)."""
    return search_rows(ctx, "enroll")


def bench_memory(ctx: Context) -> list[Row]:
    """Memory of each side with its model, in a child process each: what loading the model and
    embedding a 10 s clip (twice) add to a process that has imported torch and transformers."""
    rows = []
    for side in ("card", "speakerdb"):
        log(f"memory: a child process loads the model ({side}) and embeds a {MEMORY_CLIP_S:g} s clip twice")
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            "memory",
            "--side",
            side,
            "--checkpoint",
            str(ctx.checkpoint),
        ]
        done = subprocess.run(argv, env=ctx.env, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append(
                Row(f"memory: {side}", float("nan"), "MiB", f"child failed: {done.stderr.strip()[-300:]}", ok=False)
            )
            continue
        r = json.loads(done.stdout)
        label = "model card snippet" if side == "card" else "speakerdb `TransformersXVector`"
        rows += [
            Row(
                f"memory: {label}, resident after load + two {MEMORY_CLIP_S:g} s embeddings",
                r["resident_mib"],
                "MiB",
                f"over the process with torch and transformers imported ({r['baseline_mib']:,.0f} MiB)",
            ),
            Row(f"memory: {label}, peak over the same baseline", r["peak_mib"], "MiB", r["peak_source"]),
        ]
    return rows


def memory_child(checkpoint: Path, side: str) -> dict[str, Any]:
    """Run in a child process of :func:`bench_memory`; returns its measurements."""
    # Imported before the baseline, as in any user's process; deferred to the child.
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import speakerdb.embedding.models  # noqa: F401

    wave = synthetic_wave(MEMORY_CLIP_S)
    gc.collect()
    baseline, peak = rss_baseline()
    if side == "card":
        feature_extractor, model = load_reference(checkpoint)

        def run() -> None:
            card_snippet(feature_extractor, model, wave)
    else:
        embedder = steady_embedder(checkpoint)

        def run() -> None:
            embedder.embed([wave])

    for _ in range(2):
        run()
    gc.collect()
    return {
        "baseline_mib": baseline,
        "resident_mib": kit.status_mib("VmRSS") - baseline,
        "peak_mib": peak() - baseline,
        "peak_source": peak.__doc__,
    }


def bench_model_memory(ctx: Context) -> list[Row]:
    """Peak memory after the model benchmarks, before the FAISS ones dwarf it."""
    return [
        Row(
            "process: peak RSS (ru_maxrss) after the model benchmarks",
            peak_rss_mib(),
            "MiB",
            "two or three models loaded, 30-40 s clips embedded with autograd on (the literal card)",
        )
    ]


def bench_process(ctx: Context) -> list[Row]:
    """Facts about this process at the end: peak memory, torch threads."""
    import torch

    return [
        Row(
            "process: peak RSS (ru_maxrss) of this benchmark",
            peak_rss_mib(),
            "MiB",
            "highest of the run (the FAISS and enrollment rows ran in a child process: its own peak is in its row)",
        ),
        Row("process: torch.get_num_threads()", torch.get_num_threads(), "threads", f"torch {torch.__version__}"),
    ]


#: The benchmarks, in the order they run and are printed. Each takes the Context and
#: returns rows; bind parameters with functools.partial, e.g. more clip lengths:
#: ``functools.partial(bench_embed, seconds=30.0)``.
BENCHMARKS: list[Callable[[Context], list[Row]]] = [
    bench_load,
    functools.partial(bench_embed, seconds=1.0),
    functools.partial(bench_embed, seconds=3.0),
    functools.partial(bench_embed, seconds=10.0, no_grad=True, bf16=True),
    functools.partial(bench_embed, seconds=30.0, bf16=True),
    bench_folder,
    bench_long_clip,
    bench_memory,
    bench_model_memory,  # before FAISS allocates gigabytes
    bench_cli,
    bench_oneshot,
    bench_ge2e,
    bench_faiss,
    bench_enroll,
    bench_process,  # last: the peak memory is that of the whole run
]


# ---- main ----------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        # Load average of the other processes, roughly: nothing heavy of ours has run yet.
        "loadavg_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def quiet_libraries() -> None:
    """Silence the chatter that speakerdb silences, for both sides of every comparison.

    speakerdb's first model load turns transformers' logging down to errors and its
    progress bars off, for the whole process; doing it up front makes the model card
    loads skip the same work (and keeps stderr readable). WavLM warns on every forward
    pass about its mixed mask types; speakerdb ignores that warning inside embed(), and
    its catch_warnings() makes Python forget it was shown, so the model card snippet
    would print it again after every speakerdb call. And speakerdb warns on each load
    that a random-weight checkpoint cannot tell speakers apart: known, and beside the
    point here.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
    logging.getLogger("speakerdb").setLevel(logging.ERROR)


def prepare_checkpoint(directory: Path | None, scratch: Path, size: str) -> Path:
    """Reuse ``directory`` if it holds a checkpoint, else build one there (or in ``scratch``).

    The build runs in a child process, so that the benchmark process holds nothing of it.
    """
    start = time.perf_counter()
    checkpoint = kit.checkpoint_in(directory or scratch / f"wavlm-random-{size}", size)
    log(f"checkpoint ready in {time.perf_counter() - start:.1f} s")
    return checkpoint


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=kit.describe(
            __doc__,
            'docs/performance.md, "Performance" and "On a CPU without AMX (AMD EPYC Zen 4), and what start-up costs"',
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="DIR",
        help="checkpoint directory to reuse, or to build into if it holds none "
        "(default: a temporary directory, deleted afterwards)",
    )
    parser.add_argument(
        "--size",
        choices=["full", "tiny"],
        default="full",
        help="architecture when building a checkpoint; tiny only checks that this script "
        "runs, its timings mean nothing (default: full)",
    )
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default: 5, or 3 with --quick)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few minutes: 3 timed runs per measurement instead of 5, a 5 min long clip, FAISS at "
        "1k and 100k speakers only (unless --full-scale), 2,000 enrollments instead of 10,000",
    )
    parser.add_argument(
        "--full-scale",
        action="store_true",
        help="also build and measure an HNSW index of 1M speakers (~10 min on 2 cores)",
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated benchmarks to run, of: " + ", ".join(sorted(set(benchmark_names()))),
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers to this JSON file")
    parser.add_argument(
        "--librispeech",
        type=Path,
        metavar="DIR",
        help="LibriSpeech excerpts with test-other/ (e.g. ../shared/data/librispeech), for the GE2E "
        "evaluate rows (skipped without it)",
    )
    # Internal: the child processes of bench_long_clip and bench_memory (print their measurements as JSON).
    parser.add_argument("--child", choices=["long-clip", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=["card", "speakerdb"], help=argparse.SUPPRESS)
    parser.add_argument("--long-seconds", type=float, default=LONG_CLIP_S, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.only:
        unknown = set(args.only.split(",")) - set(benchmark_names())
        if unknown:
            parser.error(
                f"unknown benchmark(s) {', '.join(sorted(unknown))}: use {', '.join(sorted(set(benchmark_names())))}"
            )
    return args


def benchmark_name(bench: Callable[[Context], list[Row]]) -> str:
    """``embed`` for bench_embed and its partials, ``faiss`` for bench_faiss..."""
    return getattr(bench, "func", bench).__name__.removeprefix("bench_")


def benchmark_names() -> list[str]:
    return [benchmark_name(b) for b in BENCHMARKS]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The checkpoint is local: nothing here needs the hub, and a silent network call
    # would distort the load timings. Set before transformers is imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    child_env = {k: v for k, v in os.environ.items() if k not in ("SPEAKERDB_DB", "SPEAKERDB_MODEL")}
    quiet_libraries()
    if args.child == "long-clip":
        print(json.dumps(long_clip_child(args.checkpoint, args.repeats, args.long_seconds)))
        return 0
    if args.child == "memory":
        print(json.dumps(memory_child(args.checkpoint, args.side)))
        return 0

    env = environment()
    log(
        f"torch {env['torch']} with {env['torch_threads']} threads, transformers {env['transformers']}, "
        f"{env['cpu_count']} CPUs"
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="speakerdb-bench-") as tmp:
        scratch = Path(tmp)
        ctx = Context(
            prepare_checkpoint(args.checkpoint, scratch, args.size),
            scratch,
            args.repeats,
            child_env,
            quick=args.quick,
            full_scale=args.full_scale,
            librispeech=args.librispeech,
        )
        if not has_precision_option():
            log("TransformersXVector has no precision option: the bf16 rows are skipped")
        for bench in BENCHMARKS:
            if args.only and benchmark_name(bench) not in args.only.split(","):
                continue
            rows.extend(bench(ctx))
            log(f"peak RSS so far: {peak_rss_mib():,.0f} MiB")  # tells which step set the peak
        # Counted, not taken from --size: a reused --checkpoint may be of either size.
        env["model_parameters"] = sum(p.numel() for p in ctx.reference[1].parameters())

    print(
        f"speakerdb benchmark: random-weight WavLM x-vector, {env['model_parameters'] / 1e6:.1f} M parameters; "
        f"torch {env['torch']} ({env['torch_threads']} threads), transformers {env['transformers']}, "
        f"Python {env['python']}, {env['cpu_count']} CPUs\n"
    )
    print(kit.rows_table(rows))
    if any("(NOISY)" in r.note for r in rows):
        print(
            f"\nNOISY: the slowest run of a measurement took over {kit.NOISY_SPREAD:g} x the fastest; another "
            f"process probably competed for the CPU (1-min load average at start: "
            f"{env['loadavg_1min_at_start']}). Rerun on a quiet machine."
        )
    if args.json:
        document = {
            "environment": env,
            "checkpoint": str(ctx.checkpoint),
            "repeats": args.repeats,
            "quick": args.quick,
            "full_scale": args.full_scale,
            "rows": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        log(f"wrote {args.json}")
    failed = [r.name for r in rows if not r.ok]
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
