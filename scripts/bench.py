#!/usr/bin/env python
"""Benchmark speakerdb against the plain model card pipeline, on CPU, with no network.

    HF_HUB_OFFLINE=1 python scripts/bench.py                     # full size: ~30 s on 2 idle cores
    HF_HUB_OFFLINE=1 python scripts/bench.py --quick             # 3 repeats instead of 5
    HF_HUB_OFFLINE=1 python scripts/bench.py --checkpoint ./wavlm-random --json bench.json

Run it from the project's virtualenv (the one where ``pip install -e .`` put the
``speakerdb`` command), with nothing else heavy running: every number is wall-clock time.

The model is a RANDOM-weight WavLM x-vector checkpoint with the architecture of
microsoft/wavlm-base-plus-sv, written by scripts/make_random_checkpoint.py (into a
temporary directory, or into --checkpoint DIR, which is reused on the next run). Random
weights cost exactly as much compute as trained ones, so the timings hold for the real
model; the embeddings themselves mean nothing.

What is measured (each timing is the median of --repeats runs, after one warm-up run;
the two sides of a comparison are interleaved so that drift in machine speed hits both):

* model load: ``speakerdb.embed.load_embedder(DIR)`` against the model card's
  ``Wav2Vec2FeatureExtractor.from_pretrained(DIR)`` + ``WavLMForXVector.from_pretrained(DIR)``;
* embedding a synthetic 10 s clip: the model card snippet against
  ``TransformersXVector.embed([wave])``, in seconds of compute per second of audio, and the
  largest per-component difference between the two embeddings (must be below 1e-5);
* whole processes: ``speakerdb --help`` and ``speakerdb list`` on a small database;
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
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # torch, transformers and speakerdb are imported when needed, after setup
    from transformers import Wav2Vec2FeatureExtractor, WavLMForXVector

    from speakerdb.embed import TransformersXVector

SAMPLE_RATE = 16_000  # Hz: what the WavLM x-vector models take
EMBED_TOLERANCE = 1e-5  # largest allowed |reference - speakerdb| per embedding component
# Runs of one measurement on an otherwise idle machine agree within a few percent; a
# slowest run this much slower than the fastest means something else competed for the
# CPU (with 2 cores and 2 torch threads, one busy neighbour can triple a forward pass).
NOISY_SPREAD = 1.5
CLI_TIMEOUT_S = 120  # s: far beyond any command measured here, which take well under 1 s
SEED = 1234  # of the synthetic audio, so every run embeds the same samples
SCRIPTS_DIR = Path(__file__).resolve().parent


# ---- results -------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the results table (and one entry of the JSON file)."""

    name: str  # what was measured, e.g. "embed 10 s: speakerdb TransformersXVector.embed"
    value: float
    unit: str  # "s", "s/s" (seconds of compute per second of audio), "x", "MiB", "abs"
    note: str = ""
    samples: list[float] = field(default_factory=list)  # every timed run, in seconds
    ok: bool = True  # False marks a failed check: the script then exits with status 1


def timing_row(name: str, samples: Sequence[float], note: str = "", per: float = 1.0, unit: str = "s") -> Row:
    """A row holding the median of ``samples`` divided by ``per`` (e.g. seconds of audio)."""
    spread = f"median of {len(samples)}, min {min(samples):.3f} s, max {max(samples):.3f} s"
    if max(samples) > NOISY_SPREAD * min(samples):
        spread += " (NOISY)"
    return Row(name, statistics.median(samples) / per, unit, f"{note}; {spread}" if note else spread, list(samples))


def format_value(row: Row) -> str:
    if row.unit == "abs":
        return f"{row.value:.2e}"
    if row.unit == "MiB":
        return f"{row.value:,.0f} MiB"
    if row.unit == "x":
        return f"{row.value:.3f} ×"
    if row.unit == "threads":
        return f"{row.value:.0f}"
    if row.unit == "s/s":
        return f"{row.value:.4f} s/s"
    return f"{row.value:.3f} {row.unit}"


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| Measurement | Value | Notes |", "|---|---:|---|"]
    for row in rows:
        flag = "" if row.ok else " **FAILED**"
        lines.append(f"| {row.name} | {format_value(row)} | {row.note}{flag} |")
    return "\n".join(lines)


# ---- helpers -------------------------------------------------------------------------
def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the table."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, interleaved, after one untimed warm-up each.

    The order flips every round (A B, B A, A B...) so that neither side always runs
    right after the other, e.g. with the caches the other one just warmed or thrashed.
    Results are dropped at once and the garbage collector runs between runs, untimed: a
    dropped transformers model keeps its (memory-mapped) weights in reference cycles
    until a collection, so without it repeated loads pile up hundreds of MiB each, and
    the automatic collection lands inside some later timed run.
    """
    names = list(runs)
    for name in names:
        runs[name]()  # warm-up: first-call costs (lazy imports, allocator growth, page cache)
        gc.collect()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
            gc.collect()
    return times


def synthetic_wave(seconds: float, seed: int = SEED) -> np.ndarray:
    """A voice-like-enough 16 kHz float32 signal: a wobbling 120 Hz harmonic tone plus noise.

    Any signal costs the model the same compute; this one is merely not silent, not
    clipped, and the same on every run.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 10 * np.sin(2 * np.pi * 3 * t)  # Hz, slow vibrato
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    wave = 0.1 * tone + 0.02 * rng.standard_normal(len(t))
    return (wave / np.max(np.abs(wave)) * 0.5).astype(np.float32)


def import_script(name: str) -> ModuleType:
    """Import scripts/<name>.py (scripts/ is not a package, so not on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# ---- shared state --------------------------------------------------------------------
@dataclass
class Context:
    """What the benchmarks share: settings, the checkpoint, a scratch directory, loaded models."""

    checkpoint: Path
    scratch: Path  # deleted at the end
    repeats: int
    env: dict[str, str]  # environment for child processes

    @functools.cached_property
    def reference(self) -> tuple[Wav2Vec2FeatureExtractor, WavLMForXVector]:
        """(feature extractor, model) loaded as the model card does."""
        return load_reference(self.checkpoint)

    @functools.cached_property
    def embedder(self) -> TransformersXVector:
        """speakerdb's embedder for the checkpoint."""
        from speakerdb.embed import TransformersXVector

        return TransformersXVector(str(self.checkpoint))


def load_reference(checkpoint: Path) -> tuple[Wav2Vec2FeatureExtractor, WavLMForXVector]:
    """The model card's two loading lines."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMForXVector

    feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(checkpoint))
    model = WavLMForXVector.from_pretrained(str(checkpoint))
    return feature_extractor, model


# ---- benchmarks ----------------------------------------------------------------------
def bench_load(ctx: Context) -> list[Row]:
    """Model load time, in this process (torch and transformers already imported)."""
    from speakerdb.embed import _fingerprint, load_embedder

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
    return [
        # The model card load maps model.safetensors into memory without reading it (RSS
        # grows ~50 MiB, not ~400): the first forward pass pages the weights in instead.
        timing_row("load: model card (Wav2Vec2FeatureExtractor + WavLMForXVector .from_pretrained)",
                   times["reference"], note="weights memory-mapped, read later by the first forward pass"),
        timing_row("load: speakerdb `load_embedder(dir)`", times["speakerdb"],
                   note="reads every weight: hashes them for the model id"),
        Row("load: ratio model card / speakerdb", ref / sdb, "x", "above 1: speakerdb loads faster"),
        timing_row("load: of which speakerdb's weight fingerprint (`embed._fingerprint`)", fingerprint),
    ]


def bench_embed(ctx: Context, seconds: float = 10.0) -> list[Row]:
    """Compute to embed one clip of ``seconds``: the model card snippet against speakerdb."""
    import torch

    wave = synthetic_wave(seconds)
    feature_extractor, model = ctx.reference
    embedder = ctx.embedder
    results: dict[str, np.ndarray] = {}

    def model_card() -> None:
        # The model card's recipe for one clip. The card itself leaves autograd on; under
        # no_grad, as inference code should run, no graph is recorded for a backward pass.
        with torch.no_grad():
            inputs = feature_extractor(wave, sampling_rate=16000, return_tensors="pt")
            emb = model(**inputs).embeddings
            emb = torch.nn.functional.normalize(emb, dim=-1)
        results["reference"] = emb[0].numpy()

    def speakerdb() -> None:
        results["speakerdb"] = embedder.embed([wave])[0]

    label = f"embed {seconds:g} s"
    log(f"{label}: {ctx.repeats} x 2 forward passes, interleaved")
    times = interleaved({"reference": model_card, "speakerdb": speakerdb}, ctx.repeats)
    ref, sdb = statistics.median(times["reference"]), statistics.median(times["speakerdb"])
    diff = float(np.max(np.abs(results["reference"] - results["speakerdb"])))
    return [
        timing_row(f"{label}: model card snippet", times["reference"], per=seconds, unit="s/s",
                   note=f"{ref:.3f} s per clip"),
        timing_row(f"{label}: speakerdb `TransformersXVector.embed([wave])`", times["speakerdb"], per=seconds,
                   unit="s/s", note=f"{sdb:.3f} s per clip"),
        Row(f"{label}: ratio model card / speakerdb", ref / sdb, "x", "above 1: speakerdb is faster"),
        Row(f"{label}: max abs difference per component", diff, "abs",
            f"{len(results['speakerdb'])}-d unit vectors; must be < {EMBED_TOLERANCE:g}", ok=diff < EMBED_TOLERANCE),
    ]


def bench_cli(ctx: Context) -> list[Row]:
    """Whole ``speakerdb`` processes, start to exit, as a user at a shell sees them."""
    exe = Path(sys.executable).with_name("speakerdb")  # the console script of this environment
    if not exe.is_file():
        return [Row("cli: speakerdb", float("nan"), "s", f"{exe} not found: run `pip install -e .`", ok=False)]
    home = ctx.scratch / "home"
    n_speakers = make_small_database(ctx, home)
    env = {**ctx.env, "SPEAKERDB_HOME": str(home)}

    commands = {
        # Interpreter start alone, for scale: no command can start faster than this.
        "python -c pass": [sys.executable, "-c", "pass"],
        "speakerdb --help": [str(exe), "--help"],
        "speakerdb list": [str(exe), "list"],
    }

    def runner(argv: list[str]) -> Callable[[], None]:
        def run() -> None:
            # The timeout turns a hung command (a deadlock, a network wait) into an error.
            done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  timeout=CLI_TIMEOUT_S)
            if done.returncode != 0:  # a failing command would time its error path, not its work
                raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
        return run

    log(f"cli: {ctx.repeats} x {len(commands)} processes, interleaved")
    times = interleaved({name: runner(argv) for name, argv in commands.items()}, ctx.repeats)
    notes = {
        "python -c pass": "interpreter start, for scale",
        "speakerdb list": f"SPEAKERDB_HOME holding {n_speakers} speakers",
    }
    return [timing_row(f"cli: `{name}`", times[name], note=notes.get(name, "")) for name in commands]


def make_small_database(ctx: Context, home: Path) -> int:
    """Enroll a few speakers from 1 s synthetic clips into $SPEAKERDB_HOME's default database."""
    from speakerdb.api import DB_FILENAME, SpeakerDB
    from speakerdb.audio import Audio

    names = ["alice", "bob", "carol"]
    with SpeakerDB(home / DB_FILENAME, embedder=ctx.embedder) as db:
        for i, name in enumerate(names):
            db.enroll(name, [Audio(f"{name}.wav", synthetic_wave(1.0, seed=SEED + i + 1))])
    return len(names)


def bench_process(ctx: Context) -> list[Row]:
    """Facts about this process at the end: peak memory, torch threads."""
    import torch

    return [
        Row("process: peak RSS (ru_maxrss) of this benchmark", peak_rss_mib(), "MiB",
            "highest of the run: both models loaded at once, while embedding"),
        Row("process: torch.get_num_threads()", torch.get_num_threads(), "threads", f"torch {torch.__version__}"),
    ]


#: The benchmarks, in the order they run and are printed. Each takes the Context and
#: returns rows; bind parameters with functools.partial, e.g. more clip lengths:
#: ``functools.partial(bench_embed, seconds=30.0)``.
BENCHMARKS: list[Callable[[Context], list[Row]]] = [
    bench_load,
    functools.partial(bench_embed, seconds=10.0),
    bench_cli,
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
    """Reuse ``directory`` if it holds a checkpoint, else build one there (or in ``scratch``)."""
    target = directory or scratch / f"wavlm-random-{size}"
    if (target / "config.json").is_file() and (target / "preprocessor_config.json").is_file():
        log(f"reusing the checkpoint in {target}")
        return target
    log(f"building a random-weight {size} WavLM x-vector checkpoint in {target}")
    start = time.perf_counter()
    # In a child process: after building (initialising) the full-size model in this
    # process, every later forward pass here ran 5x slower (0.45 instead of 0.083 s per
    # second of audio, for both pipelines alike), which measured nothing but that.
    subprocess.run([sys.executable, str(SCRIPTS_DIR / "make_random_checkpoint.py"), str(target), "--size", size],
                   check=True, stdout=subprocess.DEVNULL)
    log(f"built in {time.perf_counter() - start:.1f} s")
    return target


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, metavar="DIR",
                        help="checkpoint directory to reuse, or to build into if it holds none "
                        "(default: a temporary directory, deleted afterwards)")
    parser.add_argument("--size", choices=["full", "tiny"], default="full",
                        help="architecture when building a checkpoint; tiny only checks that this script "
                        "runs, its timings mean nothing (default: full)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default: 5, or 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="3 timed runs per measurement instead of 5")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The checkpoint is local: nothing here needs the hub, and a silent network call
    # would distort the load timings. Set before transformers is imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    child_env = {k: v for k, v in os.environ.items() if k not in ("SPEAKERDB_DB", "SPEAKERDB_MODEL")}
    quiet_libraries()

    env = environment()
    log(f"torch {env['torch']} with {env['torch_threads']} threads, transformers {env['transformers']}, "
        f"{env['cpu_count']} CPUs")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="speakerdb-bench-") as tmp:
        scratch = Path(tmp)
        ctx = Context(prepare_checkpoint(args.checkpoint, scratch, args.size), scratch, args.repeats, child_env)
        for bench in BENCHMARKS:
            rows.extend(bench(ctx))
            log(f"peak RSS so far: {peak_rss_mib():,.0f} MiB")  # tells which step set the peak
        # Counted, not taken from --size: a reused --checkpoint may be of either size.
        env["model_parameters"] = sum(p.numel() for p in ctx.reference[1].parameters())

    print(f"speakerdb benchmark: random-weight WavLM x-vector, {env['model_parameters'] / 1e6:.1f} M parameters; "
          f"torch {env['torch']} ({env['torch_threads']} threads), transformers {env['transformers']}, "
          f"Python {env['python']}, {env['cpu_count']} CPUs\n")
    print(markdown_table(rows))
    if any("(NOISY)" in r.note for r in rows):
        print(f"\nNOISY: the slowest run of a measurement took over {NOISY_SPREAD:g} x the fastest; another "
              f"process probably competed for the CPU (1-min load average at start: "
              f"{env['loadavg_1min_at_start']}). Rerun on a quiet machine.")
    if args.json:
        document = {"environment": env, "checkpoint": str(ctx.checkpoint), "repeats": args.repeats,
                    "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        log(f"wrote {args.json}")
    failed = [r.name for r in rows if not r.ok]
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
