"""idcache.py: a model directory's fingerprint is hashed once, and never outlives a change to its files."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

pytest.importorskip("torch")

from builders import build_random_checkpoint  # noqa: E402
from speakerdb.embedding import idcache
from speakerdb.embedding import models as embed  # noqa: E402
from speakerdb.embedding.models import load_embedder, same_model  # noqa: E402


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint (tests here change its files)."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "model")


@pytest.fixture
def settled(monkeypatch):
    """Files written a moment ago count as settled (by default they must be 2 s old to be remembered)."""
    monkeypatch.setattr(idcache, "RACY_WINDOW_NS", 0)


def no_hashing(monkeypatch):
    def refuse(model):
        raise AssertionError("the weights were hashed again")

    monkeypatch.setattr(embed, "_fingerprint", refuse)


def test_a_second_load_takes_the_fingerprint_from_the_cache(checkpoint, settled, monkeypatch):
    first = load_embedder(str(checkpoint)).model_id
    cache = idcache.cache_dir() / idcache.CACHE_FILENAME
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(idcache.cache_dir().stat().st_mode) == 0o700
    assert str(checkpoint) not in cache.read_text()  # digests only
    no_hashing(monkeypatch)
    assert load_embedder(str(checkpoint)).model_id == first


def test_under_a_umask_of_000_the_cache_directories_made_are_owner_only(checkpoint, settled, tmp_path, monkeypatch):
    monkeypatch.setenv(idcache.ENV_DIR, str(tmp_path / "new" / "cache"))
    old = os.umask(0)
    try:
        load_embedder(str(checkpoint))
    finally:
        os.umask(old)
    made = [tmp_path / "new", tmp_path / "new" / "cache"]
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in made] == ["0o700", "0o700"]
    assert stat.S_IMODE((made[1] / idcache.CACHE_FILENAME).stat().st_mode) == 0o600


@pytest.mark.parametrize("how", ["rewritten in place, mtime set back", "replaced by a new file"])
def test_a_changed_file_never_keeps_the_old_id(checkpoint, settled, tmp_path, how):
    before = load_embedder(str(checkpoint)).model_id
    other = build_random_checkpoint(tmp_path / "seed7", "tiny", seed=7)
    weights, new = checkpoint / "model.safetensors", (other / "model.safetensors").read_bytes()
    assert len(new) == weights.stat().st_size  # same size: only the content differs
    if how.startswith("rewritten"):
        st = weights.stat()
        with open(weights, "r+b") as f:  # same inode
            f.write(new)
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime; the ctime moves regardless
        assert weights.stat().st_ino == st.st_ino and weights.stat().st_mtime_ns == st.st_mtime_ns
    else:
        shutil.copyfile(other / "model.safetensors", checkpoint / "new.tmp")
        os.replace(checkpoint / "new.tmp", weights)
    after = load_embedder(str(checkpoint)).model_id
    assert not same_model(after, before)
    assert same_model(after, load_embedder(str(other)).model_id)


def test_files_changed_a_moment_ago_are_hashed_but_not_remembered(checkpoint, monkeypatch):
    """Timestamps are coarse: a file changed within RACY_WINDOW_NS could change again unseen."""
    first = load_embedder(str(checkpoint)).model_id  # the copy was just written
    assert not (idcache.cache_dir() / idcache.CACHE_FILENAME).exists()
    calls = []
    fingerprint = embed._fingerprint
    monkeypatch.setattr(embed, "_fingerprint", lambda model: calls.append(1) or fingerprint(model))
    assert load_embedder(str(checkpoint)).model_id == first and calls == [1]


def test_the_cache_is_never_written_or_read_through_a_link(checkpoint, settled, tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("not speakerdb's")
    folder = idcache.cache_dir()
    folder.mkdir(parents=True)
    (folder / idcache.CACHE_FILENAME).symlink_to(victim)
    model_id = load_embedder(str(checkpoint)).model_id
    assert victim.read_text() == "not speakerdb's"
    cache = folder / idcache.CACHE_FILENAME
    assert not cache.is_symlink() and stat.S_IMODE(cache.stat().st_mode) == 0o600  # replaced, not followed
    # A cache directory that is a link is not used at all.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = tmp_path / "linked-cache"
    linked.symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.setenv(idcache.ENV_DIR, str(linked))
    assert load_embedder(str(checkpoint)).model_id == model_id
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("content", ["not json", '{"format": 1, "entries": []}', '{"format": 99, "entries": {}}'])
def test_a_damaged_cache_file_means_hashing_not_an_error(checkpoint, settled, content):
    folder = idcache.cache_dir()
    folder.mkdir(parents=True)
    (folder / idcache.CACHE_FILENAME).write_text(content)
    first = load_embedder(str(checkpoint)).model_id
    assert load_embedder(str(checkpoint)).model_id == first
