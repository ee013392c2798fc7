"""Several processes enrolling and identifying against one database at once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import FakeEmbedder, assert_index_agrees_with_store
from speakerdb import SpeakerDB

WORKER = Path(__file__).parent / "concurrency_worker.py"
WRITERS, READERS = 4, 4
ENROLLS_PER_WRITER, IDENTIFIES_PER_READER = 30, 25  # 220 operations in all


def test_four_writers_and_four_readers(tmp_path):
    db_path = tmp_path / "shared.sqlite"
    SpeakerDB(db_path, embedder=FakeEmbedder()).close()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "writer", str(db_path), str(w), str(ENROLLS_PER_WRITER)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WRITERS)
    ] + [
        subprocess.Popen(
            [sys.executable, str(WORKER), "reader", str(db_path), str(r), str(IDENTIFIES_PER_READER)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(READERS)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[:5]
    assert not any("locked" in e for e in errors)
    writes = sum(r["ops"] for r in results[:WRITERS])
    reads = sum(r["ops"] for r in results[WRITERS:])
    assert writes == WRITERS * ENROLLS_PER_WRITER
    assert reads == READERS * IDENTIFIES_PER_READER
    assert writes + reads >= 200 and sum(r["checks"] for r in results) > 0

    # Every enrollment is there, and the index agrees with the database.
    with SpeakerDB(db_path, embedder=FakeEmbedder()) as db:
        names = {s.name for s in db.list()}
        assert names == {f"w{w}-s{i}" for w in range(WRITERS) for i in range(ENROLLS_PER_WRITER)}
        db.identify([__import__("concurrency_worker").clip(120, 0)])
    assert_index_agrees_with_store(db_path, embedder=FakeEmbedder())
    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
