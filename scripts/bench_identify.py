#!/usr/bin/env python
"""identify's and verify's time per batch with the GE2E encoder, against another checkout.

    python scripts/bench_identify.py ../shared/data/librispeech/test-other --against ../before

Enrolls the first speakers of the directory (two files each) into a fresh database, then
times ``identify`` of files of the other speakers (one call for the set) and ``verify`` of
each against the first enrolled speaker, with the voice check on (the defaults). Three sets:
LibriSpeech files as they are, noisy copies of some (white noise 10 dB below the speech:
each is denoised before it is embedded) and long recordings (files of one speaker joined to
about 60 s: two 30 s windows). Every run is a process of its own on one checkout, the
checkouts taking turns; each process times each set ``--repeats`` times after a warm-up.

Besides the times it prints how many frames Silero's model ran on per file (the voice
activity detection that the noise judgement and the voice count use) and whether both
checkouts gave the same answers, bit for bit (every field of every result).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

import kit

ENROLLED = 5  # speakers enrolled, two files each
LONG_S = 60.0  # seconds of each long recording
NOISE_DB = 10.0  # the noisy copies' speech over their noise


def _speakers(root: Path) -> list[tuple[str, list[Path]]]:
    """(speaker, its files) for each speaker directory below ``root``, in name order."""
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in (".flac", ".wav"))
        if files:
            out.append((d.name, files))
    return out


def make_sets(root: Path, scratch: Path, n_files: int, n_noisy: int, n_long: int) -> dict[str, Any]:
    """The enrollment and the three sets of queries, written under ``scratch`` where made."""
    speakers = _speakers(root)
    enroll = {name: [str(f) for f in files[:2]] for name, files in speakers[:ENROLLED]}
    others = speakers[ENROLLED:]
    if not others:
        raise SystemExit(f"{root} holds {len(speakers)} speakers: at least {ENROLLED + 1} needed")
    queries: list[Path] = []
    for k in range(max(len(files) for _, files in others)):  # one file of each speaker in turn
        queries += [files[k] for _, files in others if k < len(files)]
    files = [str(f) for f in queries[:n_files]]
    rng = np.random.default_rng(0)
    noisy = []
    for f in queries[:n_noisy]:
        x, sr = sf.read(f, dtype="float32")
        noise = np.sqrt(float(np.mean(x.astype(np.float64) ** 2)) / 10 ** (NOISE_DB / 10))
        path = scratch / f"noisy-{f.stem}.wav"
        sf.write(path, (x + noise * rng.standard_normal(len(x))).astype(np.float32), sr)
        noisy.append(str(path))
    long = []
    for name, speaker_files in others[:n_long]:
        parts, total = [], 0.0
        for f in speaker_files:
            x, sr = sf.read(f, dtype="float32")
            parts.append(x)
            total += len(x) / sr
            if total >= LONG_S:
                break
        path = scratch / f"long-{name}.wav"
        sf.write(path, np.concatenate(parts)[: int(LONG_S * sr)], sr)
        long.append(str(path))
    sets = {"LibriSpeech": files, "noisy": noisy, "long": long}
    return {"enroll": enroll, "sets": {k: v for k, v in sets.items() if v}}


def child(plan_path: Path, db_path: Path, repeats: int) -> None:
    """One process on one checkout: enroll, warm up, time each set; JSON on stdout."""
    import speakerdb
    from speakerdb import SpeakerDB
    from speakerdb.audio import vad

    plan = json.loads(plan_path.read_text())
    frames = [0]
    real_run = vad.SileroVAD._run

    def counting(self: Any, block: np.ndarray) -> np.ndarray:
        frames[0] += len(block)
        return real_run(self, block)

    vad.SileroVAD._run = counting  # type: ignore[method-assign]
    out: dict[str, Any] = {"speakerdb": str(Path(speakerdb.__file__).parent), "sets": {}}
    with SpeakerDB(db_path, model="resemblyzer") as db:
        for name, files in plan["enroll"].items():
            db.enroll(name, files)
        claimed = next(iter(plan["enroll"]))
        db.identify(plan["sets"]["LibriSpeech"][:2])  # first-call costs: Silero's session, allocators
        db.verify(claimed, plan["sets"]["LibriSpeech"][0])
        for set_name, files in plan["sets"].items():
            timings: dict[str, list[float]] = {"identify": [], "verify": []}
            for _ in range(repeats):
                frames[0] = 0
                start = time.perf_counter()
                found = db.identify(files)
                timings["identify"].append(time.perf_counter() - start)
                identify_frames = frames[0]
                start = time.perf_counter()
                checked = [db.verify(claimed, f) for f in files]
                timings["verify"].append(time.perf_counter() - start)
            out["sets"][set_name] = {
                "times": timings,
                "frames": identify_frames,
                "answers": [r.to_dict() for r in found] + [v.to_dict() for v in checked],
            }
    json.dump(out, sys.stdout)


def run_child(tree: Path, plan_path: Path, db_path: Path, repeats: int) -> dict[str, Any]:
    """This script's child mode in a process that imports speakerdb from ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    argv = [sys.executable, __file__, "--child", str(plan_path), "--db", str(db_path), "--repeats", str(repeats)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run on {tree} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    if Path(result["speakerdb"]).resolve() != (tree / "speakerdb").resolve():
        raise SystemExit(f"the run meant for {tree} imported {result['speakerdb']}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/performance.md, "identify and verify hear each file once"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="?", type=Path, help="a directory of speaker directories (LibriSpeech test-other)")
    p.add_argument("--against", type=Path, help="another checkout of speakerdb (its repository root) to compare with")
    p.add_argument("--files", type=int, default=20, help="LibriSpeech files identified in one call (default 20)")
    p.add_argument("--noisy", type=int, default=10, help="noisy copies (default 10; 0: none)")
    p.add_argument("--long", type=int, default=4, help="60 s recordings (default 4; 0: none)")
    p.add_argument("--rounds", type=int, default=3, help="processes per checkout, taking turns (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each set per process (default 3)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        child(args.child, args.db, args.repeats)
        return 0
    if args.data is None:
        p.error("give the directory of speakers")
    trees = {"this checkout": kit.REPO}
    if args.against is not None:
        trees = {"against": args.against.resolve(), **trees}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        plan = make_sets(args.data, scratch, args.files, args.noisy, args.long)
        plan_path = scratch / "plan.json"
        plan_path.write_text(json.dumps(plan))
        load_before = kit.load_average()
        kit.log(f"{kit.cpu_name()}; load {load_before:.2f}")
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for r in range(args.rounds):
            for name in list(trees) if r % 2 == 0 else reversed(list(trees)):
                kit.log(f"round {r + 1}/{args.rounds}: {name} ({trees[name]})")
                db_path = scratch / f"{name.replace(' ', '-')}-{r}.sqlite"
                results[name].append(run_child(trees[name], plan_path, db_path, args.repeats))
        load_after = kit.load_average()
    rows = []
    for set_name, files in plan["sets"].items():
        for call in ("identify", "verify"):
            times = {
                name: [t for run in runs for t in run["sets"][set_name]["times"][call]]
                for name, runs in results.items()
            }
            medians = {name: statistics.median(t) for name, t in times.items()}
            frames = {name: runs[0]["sets"][set_name]["frames"] / len(files) for name, runs in results.items()}
            row = [f"{call} {len(files)} {set_name} files"]
            row += [
                f"{medians[name]:.3f} s ({min(times[name]):.3f}-{max(times[name]):.3f}); "
                f"{frames[name]:.0f} VAD frames a file"
                for name in trees
            ]
            if args.against is not None:
                row.append(f"{medians['against'] / medians['this checkout']:.3f} x")
            rows.append(row)
    header = ["", *(f"{name} ({trees[name]})" for name in trees)] + (["ratio"] if args.against is not None else [])
    title = f"{kit.cpu_name()}; load {load_before:.2f} at the start, {load_after:.2f} at the end"
    kit.print_table(f"{title}; medians of {args.rounds} processes x {args.repeats} runs (min-max)", header, rows)
    if args.against is not None:
        for set_name in plan["sets"]:
            answers = {json.dumps(run["sets"][set_name]["answers"]) for runs in results.values() for run in runs}
            print(f"{set_name}: {'the same answers, bit for bit' if len(answers) == 1 else 'ANSWERS DIFFER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
