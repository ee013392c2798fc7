"""Crash safety: `speakerdb enroll`, `remove` and `import` killed with SIGKILL at many points.

After every kill: the database passes PRAGMA integrity_check, no speaker is half there
(each has all the utterances of its command or none, and a centroid equal to the mean of
its utterances), the next command works, and then the index agrees with the database.

SPEAKERDB_KILLS sets the number of kill points per command (default 6); the
reliability report (docs/reliability.md) was made with SPEAKERDB_KILLS=25.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_index_agrees_with_store, voice, write
from speakerdb import SpeakerDB

KILLS = int(os.environ.get("SPEAKERDB_KILLS", "6"))
FILES_PER_ENROLL = 6


def _cli(db: Path, model: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "speakerdb", "--db", str(db), "--model", str(model), *args]


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


class KillPoints:
    """Where to kill the runs of a command: KILLS points spread over its whole run (start-up,
    model load, decoding, embedding, commit, index write), aimed by a timing run. A run that
    finishes before its kill says the machine is now faster than when it was timed (load
    varies): the later points are aimed by that run instead, so most runs are still killed."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.killed = 0

    def __iter__(self):
        for k in range(KILLS):
            yield k, self.duration * (0.05 + 0.95 * k / max(KILLS - 1, 1))

    def run(self, cmd: list[str], delay: float) -> bool:
        """Run cmd, SIGKILL it after ``delay`` seconds; True if it had finished by then."""
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.killed += 1
            return False
        self.duration = min(self.duration, time.perf_counter() - t0)
        return True


def _check_consistent(db_path: Path, model: Path, expected_sizes: dict[str, int]) -> dict[str, int]:
    """The invariants after a kill; returns speaker -> number of utterances."""
    con = sqlite3.connect(db_path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = con.execute(
            "SELECT s.name, s.centroid, u.embedding FROM speakers s LEFT JOIN utterances u ON u.speaker_id = s.id"
        ).fetchall()
    finally:
        con.close()
    by_speaker: dict[str, list] = {}
    centroids = {}
    for name, centroid, embedding in rows:
        assert embedding is not None, f"speaker {name} has no utterances"
        by_speaker.setdefault(name, []).append(np.frombuffer(embedding, "<f4"))
        centroids[name] = np.frombuffer(centroid, "<f4")
    for name, vectors in by_speaker.items():
        mean = np.mean(vectors, axis=0)
        np.testing.assert_allclose(centroids[name], mean / np.linalg.norm(mean), atol=1e-5)
        if name in expected_sizes:
            assert len(vectors) == expected_sizes[name], f"{name} is half there: {len(vectors)} utterances"
    # The next command works, and afterwards the index agrees with the database.
    listed = subprocess.run(_cli(db_path, model, "list", "--json"), capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert {s["name"] for s in json.loads(listed.stdout)} == set(by_speaker)
    assert_index_agrees_with_store(db_path, model=str(model))
    return {name: len(v) for name, v in by_speaker.items()}


@pytest.fixture
def setup(tmp_path, tiny_checkpoint):
    files = [write(tmp_path / f"u{i}.wav", voice(100 + 23 * i, 2.0, seed=i)) for i in range(FILES_PER_ENROLL * 2)]
    db_path = tmp_path / "crash.sqlite"
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        db.enroll("base", files[:2])
    return db_path, tiny_checkpoint, files


def test_kill_enroll(setup):
    db_path, model, files = setup
    enroll_files = [str(f) for f in files[:FILES_PER_ENROLL]]
    duration = _timed(_cli(db_path, model, "enroll", "timing", *enroll_files))
    subprocess.run(_cli(db_path, model, "remove", "timing", "--yes"), check=True, capture_output=True)
    points = KillPoints(duration)
    for k, delay in points:
        points.run(_cli(db_path, model, "enroll", f"new{k}", *enroll_files), delay)
        sizes = _check_consistent(db_path, model, {f"new{k}": FILES_PER_ENROLL})
        assert sizes.get(f"new{k}", FILES_PER_ENROLL) == FILES_PER_ENROLL
    print(f"\nenroll: {points.killed} of {KILLS} runs killed before they finished")  # pytest -s shows it
    assert points.killed >= KILLS // 2, "most runs finished before the kill: the test proved little"


def test_kill_remove(setup):
    db_path, model, files = setup
    with SpeakerDB(db_path, model=str(model)) as db:
        for k in range(KILLS + 1):
            db.enroll(f"victim{k}", files[k % len(files) : k % len(files) + 3])
    expected = {f"victim{k}": len(files[k % len(files) : k % len(files) + 3]) for k in range(KILLS + 1)}
    duration = _timed(_cli(db_path, model, "remove", f"victim{KILLS}", "--yes"))
    points = KillPoints(duration)
    for k, delay in points:
        finished = points.run(_cli(db_path, model, "remove", f"victim{k}", "--yes"), delay)
        sizes = _check_consistent(db_path, model, expected)
        if finished:
            assert f"victim{k}" not in sizes
    print(f"\nremove: {points.killed} of {KILLS} runs killed before they finished")
    assert points.killed >= KILLS // 2


def test_kill_import(setup, tmp_path):
    db_path, model, files = setup
    gallery = tmp_path / "many.gallery"
    with SpeakerDB(tmp_path / "source.sqlite", model=str(model)) as source:
        for i in range(40):
            source.enroll(f"imported{i}", files[i % len(files) : i % len(files) + 2])
        # Bulk up the gallery through its own format so the import transaction takes a while.
        source.export(gallery)
    duration = _timed(_cli(tmp_path / "timing.sqlite", model, "import", str(gallery)))
    points = KillPoints(duration)
    for _, delay in points:
        before = _check_consistent(db_path, model, {})
        points.run(_cli(db_path, model, "import", str(gallery), "--on-conflict", "replace"), delay)
        after = _check_consistent(db_path, model, {})
        imported = {n for n in after if n.startswith("imported")}
        assert imported in (set(), {f"imported{i}" for i in range(40)}), f"{len(imported)} of 40 imported"
        assert after["base"] == before["base"]
    print(f"\nimport: {points.killed} of {KILLS} runs killed before they finished")
    assert points.killed >= KILLS // 2
