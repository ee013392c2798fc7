"""Replace a file so that readers, and a crash, see the old file or the new one, never half of one.

Also the one way every command writes a file the user named (an export, an RTTM file, a plot):
:func:`check_output` before any work, :func:`write_output` at the end.
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import (
    InvalidInputError,
    check_output,  # shared with the client, which checks before downloading
    printable_path,
)


@contextmanager
def replace(path: str | Path, *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The temporary file is created 0600 and the rename replaces a link at ``path`` itself,
    never the file it points to. With ``overwrite=False`` the file is put in place only if
    nothing (not even a dangling link) is at ``path`` by then: FileExistsError otherwise.
    If the block raises, the temporary file is zeroed and removed (:func:`erase`: what was
    written may be voiceprints, names or a key) and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    except BaseException:
        erase(tmp)
        raise


ERASE_CHUNK = 1 << 20  # bytes of zeros written at a time


def erase(path: str | Path, aside: Path | None = None) -> None:
    """Delete the file at ``path`` (nothing there: nothing to do), first overwriting it with
    zeros and syncing them when it is a regular file that no other name links to, as SQLite's
    secure_delete zeroes freed cells: what it held does not stay in the freed blocks. A link,
    a file with another name, or anything else is only unlinked, never written through.

    With ``aside``, the file is first renamed to that name and zeroed and deleted there.
    Nothing else may be writing the file; an I/O error while zeroing still deletes it.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return
    except OSError:  # a link (ELOOP), a directory, a FIFO without a reader, no write permission
        path.unlink(missing_ok=True)
        return
    try:
        st = os.fstat(fd)
        try:
            here = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino)):
            path.unlink(missing_ok=True)  # zeroing would change what another name holds
            return
        try:
            if aside is not None:
                os.rename(path, aside)
                path = aside
            zeros = memoryview(bytes(min(st.st_size, ERASE_CHUNK)))
            at = 0
            while at < st.st_size:
                at += os.pwrite(fd, zeros[: st.st_size - at], at)
            os.fsync(fd)
        except OSError:
            pass  # an I/O error while zeroing: it is still deleted, as it was before zeroing existed
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _place_new(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if nothing is there: a hard link fails on any
    existing entry (a file another process made since the check, a planted link)."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename (a narrow race)
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextmanager
def write_output(path: str | os.PathLike[str], *, overwrite: bool = False, what: str = "") -> Iterator[BinaryIO]:
    """Write a file the user named as :func:`replace` does: a 0600 temporary file renamed
    into place, so a link at ``path`` is replaced, never written through, and an
    interrupted write leaves no half file. Without ``overwrite`` an existing ``path``
    (made since :func:`check_output`) is refused. Errors are InvalidInputError naming
    the file; ``what`` ("the RTTM file ") goes before its name."""
    path = check_output(path, overwrite=overwrite)
    shown = printable_path(path)
    try:
        with replace(path, overwrite=overwrite) as f:
            yield f
    except FileExistsError:
        raise InvalidInputError(f"{what}{shown} already exists: use --force to replace it") from None
    except OSError as e:  # a directory such as /proc that refuses new files, a full disk
        raise InvalidInputError(f"cannot write {what}{shown}: {e.strerror or e}") from None
