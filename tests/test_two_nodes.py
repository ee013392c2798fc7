"""Two `speakerdb serve` processes on one PostgreSQL database: many services, one truth.

Each node keeps its own index cache (its own SPEAKERDB_INDEX_DIR, as on two machines) and
catches up from the store's change record before it answers. Writers and readers run on
both at once; then the checks of the SQLite concurrency test: no acknowledged write lost,
no answer that misses a write acknowledged before its request began, none that names a
speaker removed before its request began.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import voice, write
from speakerdb import SpeakerDB
from speakerdb.service.client import Client

ROUNDS = 6  # per writer: enroll a new speaker, then remove every other one
READS = 10  # per reader


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(db_url: str, model: Path, index_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "SPEAKERDB_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "speakerdb", "--db", db_url, "--model", str(model), "serve", "--port", str(port)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"node exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"node not ready in 120 s: {log.read_text()[-2000:]}")


@pytest.fixture
def two_nodes(tmp_path, pg_url, tiny_checkpoint):
    SpeakerDB(pg_url, model=str(tiny_checkpoint)).close()  # the schema, created once
    nodes = [_start_node(pg_url, tiny_checkpoint, tmp_path / f"index-{k}", tmp_path / f"node{k}.log") for k in range(2)]
    yield [url for _, url in nodes]
    for proc, _ in nodes:
        proc.terminate()
    for proc, _ in nodes:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_two_services_on_one_postgres_lose_nothing_and_never_lie(tmp_path, two_nodes):
    clip = {k: write(tmp_path / f"v{k}.wav", voice(100.0 + 13 * k, 2.0, seed=k)) for k in range(2 * ROUNDS + 2)}
    a, b = (Client(url) for url in two_nodes)

    # Read your writes across nodes, step by step.
    a.enroll("first", [clip[0]])
    [r] = b.identify([clip[1]], top_k=100)
    assert {c.speaker for c in r.candidates} == {"first"}
    b.enroll("second", [clip[1]])
    a.rename("first", "premier")
    [r] = a.identify([clip[0]], top_k=100)
    assert {c.speaker for c in r.candidates} == {"premier", "second"}
    b.remove("premier")
    [r] = a.identify([clip[0]], top_k=100)
    assert {c.speaker for c in r.candidates} == {"second"}

    # Then writers and readers on both nodes at once.
    lock = threading.Lock()
    acknowledged: dict[str, float] = {"second": 0.0}  # name -> when its enrollment was acknowledged
    removed: dict[str, float] = {}  # name -> when its removal was acknowledged
    removing: dict[str, float] = {}  # name -> when its removal was sent
    problems: list[str] = []

    def writer(node: Client, w: int) -> None:
        for i in range(ROUNDS):
            name = f"n{w}-s{i}"
            node.enroll(name, [clip[2 + (w * ROUNDS + i) % (2 * ROUNDS)]])
            with lock:
                acknowledged[name] = time.monotonic()
            if i % 2:
                with lock:
                    removing[name] = time.monotonic()
                node.remove(name)
                with lock:
                    removed[name] = time.monotonic()

    def reader(node: Client, r: int) -> None:
        for _ in range(READS):
            began = time.monotonic()
            [answer] = node.identify([clip[r]], top_k=100)
            answered = time.monotonic()
            seen = {c.speaker for c in answer.candidates}
            with lock:  # a removal sent while the request ran may or may not be in its answer
                must_see = {n for n, t in acknowledged.items() if t < began and removing.get(n, answered) >= answered}
                must_not_see = {n for n, t in removed.items() if t < began}
            if must_see - seen:
                problems.append(f"missed acknowledged writes {sorted(must_see - seen)}")
            if seen & must_not_see:
                problems.append(f"named removed speakers {sorted(seen & must_not_see)}")

    threads = [threading.Thread(target=writer, args=(node, w)) for w, node in enumerate((a, b))]
    threads += [threading.Thread(target=reader, args=(node, r)) for r, node in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert problems == []
    expected = {n for n in acknowledged if n not in removed}
    assert {s.name for s in a.list()} == {s.name for s in b.list()} == expected
    [ra], [rb] = a.identify([clip[0]], top_k=100), b.identify([clip[0]], top_k=100)
    assert {c.speaker for c in ra.candidates} == {c.speaker for c in rb.candidates} == expected
    a.close()
    b.close()
