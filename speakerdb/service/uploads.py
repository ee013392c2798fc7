"""Uploads: the audio and gallery files a request sends, kept only while it runs.

Each worker writes them in a private directory of its own (0700, files 0600, never through
links) and removes them on every path; directories left by a worker killed with SIGKILL are
removed at the next start (:func:`sweep_stale`). The client's file name is the label the
facade uses in answers and in the database; the private path never leaves the worker.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from fastapi import UploadFile

UPLOAD_DIR_PREFIX = "speakerdb-upload-"
COPY_CHUNK = 1 << 20  # bytes copied from an upload (or to a download) at a time
MAX_LABEL_CHARS = 255  # characters of a client's file name kept as the label


class UploadedFile(os.PathLike):
    """A file a client sent, kept in a private temporary file for the request.

    ``os.fspath()`` is the private path (what decoders open); ``str()`` is the name the
    client gave, which is how the facade labels the file in answers and in the database
    (the CLI's label is the path as typed, the client sends the same).
    """

    def __init__(self, private: str, given: str) -> None:
        self.private, self.given = private, given

    def __fspath__(self) -> str:
        return self.private

    def __str__(self) -> str:
        return self.given

    def __repr__(self) -> str:
        return f"UploadedFile({self.given!r})"


def client_names(files: list[UploadedFile]) -> dict[str, str]:
    """Private path -> the client's name, to put back in messages about ``files``."""
    return {f.private: f.given for f in files}


def _label(filename: str | None, index: int) -> str:
    """The client's file name as a label: at most MAX_LABEL_CHARS, control characters escaped."""
    if not filename:
        return f"upload-{index + 1}"
    name = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in filename)
    return name[:MAX_LABEL_CHARS]


class UploadDir:
    """This worker's private directory for uploads: ``<tmp>/speakerdb-upload-<pid>-XXXX``, 0700."""

    def __init__(self, parent: str | None) -> None:
        parent_dir = Path(parent or tempfile.gettempdir())
        sweep_stale(parent_dir)
        self.path = Path(tempfile.mkdtemp(prefix=f"{UPLOAD_DIR_PREFIX}{os.getpid()}-", dir=parent_dir))
        self._n = 0
        self._lock = threading.Lock()

    def new_path(self, suffix: str) -> Path:
        """A fresh name in this directory (nothing is created)."""
        with self._lock:
            self._n += 1
            return self.path / f"{self._n}{suffix}"

    async def save(self, uploads: list[UploadFile]) -> list[UploadedFile]:
        """Copy each upload into a new 0600 file (O_EXCL, O_NOFOLLOW); the caller removes them."""
        saved: list[UploadedFile] = []
        try:
            for i, upload in enumerate(uploads):
                path = self.new_path(".upload")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
                saved.append(UploadedFile(str(path), _label(upload.filename, i)))
                with os.fdopen(fd, "wb") as out:
                    while chunk := await upload.read(COPY_CHUNK):
                        out.write(chunk)
        except BaseException:
            self.remove(saved)
            raise
        return saved

    @staticmethod
    def remove(files: list[UploadedFile]) -> None:
        """Delete the private copies of ``files`` (those already gone are skipped)."""
        for f in files:
            try:
                os.unlink(f.private)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Remove the directory and whatever is still in it."""
        shutil.rmtree(self.path, ignore_errors=True)


def sweep_stale(parent: Path, prefix: str = UPLOAD_DIR_PREFIX) -> None:
    """Remove ``<prefix><pid>-*`` directories of processes that no longer run (killed with SIGKILL)."""
    for d in parent.glob(f"{prefix}*"):
        m = re.match(rf"{re.escape(prefix)}(\d+)-", d.name)
        try:
            info = d.lstat()
        except OSError:
            continue
        if not m or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass
