"""A worker process for tests/test_concurrency.py (run as a script, not collected by pytest).

    python concurrency_worker.py writer|reader DB WORKER_ID N_OPS

Prints one JSON line: {"ops": n, "errors": [...], "checks": n}. Uses the deterministic
fake embedder, so the test measures the database, not the model.
"""

from __future__ import annotations

import json
import sys
import time

# Run as a script: Python puts this file's directory (tests/) first on sys.path.
from conftest import FakeEmbedder, voice  # noqa: E402
from speakerdb import SpeakerDB
from speakerdb.audio import decode as audio
from speakerdb.storage import store  # noqa: E402


def clip(f0: float, seed: int) -> audio.Audio:
    return audio.Audio(f"f0-{f0:.1f}-{seed}", voice(f0, 1.0, seed=seed))


def writer(db: SpeakerDB, worker: int, n_ops: int) -> dict:
    errors, ops = [], 0
    for i in range(n_ops):
        try:
            db.enroll(f"w{worker}-s{i}", [clip(90 + 7 * worker + 0.37 * i, seed=i)])
            ops += 1
        except Exception as e:  # report, never hide: the test asserts there are none
            errors.append(f"{type(e).__name__}: {e}")
    return {"ops": ops, "errors": errors, "checks": 0}


def reader(db: SpeakerDB, worker: int, n_ops: int) -> dict:
    """identify, and check the answer against the store: nothing enrolled before the call is
    missing (the index is not behind), and every score is the query against that speaker's
    centroid in SQLite (the index is not wrong)."""
    errors, ops, checks = [], 0, 0
    probe = clip(150 + worker, seed=1000 + worker)
    query = FakeEmbedder().embed([probe.samples])[0]
    deadline = time.monotonic() + 300  # seconds: a hung reader fails the test instead of hanging it
    while ops < n_ops and time.monotonic() < deadline:
        try:
            before = {s.name for s in db.list()}
            if not before:  # the writers have not committed anything yet
                time.sleep(0.02)
                continue
            [result] = db.identify([probe], top_k=10_000)
            ops += 1
            names = {c.speaker for c in result.candidates}
            missing = before - names
            if missing:
                errors.append(f"index behind the database: {sorted(missing)[:3]} missing")
            with db.store.read() as s:
                for c in result.candidates:
                    sp = store.speaker_by_name(s, c.speaker)
                    if sp is None or abs(float(query @ sp.centroid_vector()) - c.score) > 1e-5:
                        errors.append(f"index out of step with the database for {c.speaker}")
                    checks += 1
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    return {"ops": ops, "errors": errors, "checks": checks}


if __name__ == "__main__":
    role, db_path, worker, n_ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with SpeakerDB(db_path, embedder=FakeEmbedder()) as db:
        result = (writer if role == "writer" else reader)(db, worker, n_ops)
    print(json.dumps(result))
