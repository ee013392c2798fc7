"""The weight fingerprints of model directories, cached between processes.

A transformers model's id ends in a sha256 over its weights (``embed._fingerprint``):
about 0.25 s of hashing for WavLM base's 400 MB, on every load, which a one-file
``speakerdb identify`` paid in full. This module remembers the fingerprint of a model
directory under a key made of what identifies its files: for every file in it, the
name, size, inode, device, mtime_ns and ctime_ns (following symbolic links, as the
Hugging Face cache links snapshot files to blobs), plus the versions of this
fingerprint, torch and transformers (the state dict the hash runs over comes from them).

A changed file never keeps the old id: writing a file changes its ctime (which no user
call can set back) and its mtime; replacing it changes its inode. Timestamps are coarse
(a few ms on most file systems), so a file modified within RACY_WINDOW_NS of being hashed
could change again without its timestamps moving: such a directory is hashed but not
remembered (git's "racy clean" rule). The files are also looked at before loading and
after hashing: a directory that changed in between is not remembered either.

The cache is one JSON file, ``model-ids.json``, in ``$SPEAKERDB_CACHE_DIR``, else
``$SPEAKERDB_HOME/cache``, else the platform's per-user cache directory
(``~/.cache/speakerdb`` on Linux). It holds digests only, no paths. It is written as a
new 0600 file renamed into place in a 0700 directory, never through a symbolic link; a
cache directory that is a link, or a cache file that is a link or not the user's own,
is not used. Anything wrong with it means hashing, never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from pathlib import Path

from .. import config

log = logging.getLogger("speakerdb")

ENV_DIR = config.CACHE_DIR_ENV
CACHE_FILENAME = "model-ids.json"
FORMAT = 1  # of the cache file
FINGERPRINT_VERSION = 1  # bump when embed._fingerprint changes what it hashes
MAX_ENTRIES = 64  # directories remembered; the oldest entries go first
RACY_WINDOW_NS = 2_000_000_000  # files changed this recently are not remembered (timestamp granularity)

#: What one directory's files look like: [[name, size, inode, device, mtime_ns, ctime_ns], ...]
Snapshot = list


def snapshot(directory: Path) -> Snapshot | None:
    """The identifying stat of every regular file in ``directory``; None if it cannot be read."""
    try:
        entries = []
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            st = os.stat(entry.path)  # follows links: the hub cache's snapshot files link to blobs
            if stat.S_ISREG(st.st_mode):
                entries.append([entry.name, st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns])
        return entries
    except OSError:
        return None


def lookup(directory: Path, files: Snapshot) -> str | None:
    """The fingerprint remembered for ``directory`` holding exactly ``files``, or None."""
    return _read().get(_key(directory, files))


def remember(directory: Path, files: Snapshot, fingerprint: str) -> bool:
    """Remember ``fingerprint`` for ``directory`` holding ``files`` (taken before the weights were
    loaded); returns whether it was stored. Not when the files changed since ``files`` was
    taken, or so recently that their timestamps might not show the next change."""
    now = time.time_ns()
    if snapshot(directory) != files or any(now - max(f[4], f[5]) < RACY_WINDOW_NS for f in files):
        return False
    folder = cache_dir()
    try:
        config.private_dirs(folder)  # its parents 0700 too, whatever the umask
        if folder.is_symlink() or not folder.is_dir():
            return False
        entries = _read()
        entries.pop(_key(directory, files), None)
        entries[_key(directory, files)] = fingerprint  # newest last
        entries = dict(list(entries.items())[-MAX_ENTRIES:])
        # A new file (mkstemp: O_EXCL, mode 0600) renamed over the old one: a link planted at
        # the cache file's name is replaced, never written through.
        fd, tmp = tempfile.mkstemp(prefix=".model-ids-", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": FORMAT, "entries": entries}, f)
            os.replace(tmp, folder / CACHE_FILENAME)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("model id cache not written in %s: %s", folder, exc)
        return False
    return True


def cache_dir() -> Path:
    """``$SPEAKERDB_CACHE_DIR``, else ``$SPEAKERDB_HOME/cache``, else the platform's user cache directory."""
    return config.default_cache_dir()


def _key(directory: Path, files: Snapshot) -> str:
    import torch  # deferred: torch is heavy to import
    import transformers  # deferred: transformers is heavy to import

    identity = [FINGERPRINT_VERSION, torch.__version__, transformers.__version__, str(Path(directory).resolve()), files]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def _read() -> dict[str, str]:
    """The remembered entries; {} when the file is absent, a link, not ours, or not what we write."""
    folder = cache_dir()
    try:
        if folder.is_symlink():
            return {}
        fd = os.open(folder / CACHE_FILENAME, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return {}
    try:
        with os.fdopen(fd) as f:
            if hasattr(os, "getuid") and os.fstat(f.fileno()).st_uid != os.getuid():
                return {}
            document = json.load(f)
    except (OSError, ValueError):
        return {}
    entries = document.get("entries") if isinstance(document, dict) and document.get("format") == FORMAT else None
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, str) and len(v) == 16}
