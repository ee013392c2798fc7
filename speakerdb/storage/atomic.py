"""Replace a file so that readers, and a crash, see the old file or the new one, never half of one.

Also the one way every command writes a file the user named (an export, an RTTM file, a plot):
:func:`check_output` before any work, :func:`write_output` at the end.
"""

from __future__ import annotations

import os
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
    If the block raises, the temporary file is removed and ``path`` is left as it was.
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
        Path(tmp).unlink(missing_ok=True)
        raise


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
