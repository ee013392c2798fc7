"""The file-system side of a database file: can this path be one, making and removing its
directories and files, and opening its store with the failures said in one way.

Whether ``--db`` is a file or a server URL is decided once, in :func:`speakerdb.config.db_target`.
"""

from __future__ import annotations

import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from ..config import DEFAULT_GALLERY, default_index_dir, private_dirs
from ..errors import DatabaseError, SpeakerDBError
from . import crypto, store
from . import settings as stored

#: Free space a new database needs: the schema and a first speaker take ~200 KiB; SQLite
#: fails mid-creation with "database or disk is full" below that.
MIN_FREE_BYTES = 1 << 20  # 1 MiB
#: The index file's name is the database file's with this added (a server's: its identity's).
INDEX_SUFFIX = ".faiss"


@dataclass
class Opened:
    """A database opened by :func:`open_database`, and where its index file lives."""

    store: store.Store
    #: The SQLite file, or the server URL as shown (with any password as ***).
    db_path: Path | str
    #: What to open this database with again (another process, a service worker).
    target: Path | str
    index_path: Path
    #: Whether the database file was created now; the directories made for it, deepest first.
    created: bool = False
    made_dirs: list[Path] = field(default_factory=list)
    #: The default gallery's index file (``index_path`` is the opened gallery's own).
    index_base: Path = field(default_factory=Path)


def open_database(
    target: Path | str, create: bool, gallery: str = DEFAULT_GALLERY, key: crypto.KeySource | None = None
) -> Opened:
    """Open a database file (created with its directories if absent and ``create``) or a server URL,
    seen as gallery ``gallery`` (GalleryNotFoundError if it has none of that name), with the
    key of an encrypted database (default: the environment's).

    A failed creation leaves neither a file nor the directories it made. A PostgreSQL server
    that several services share has its index as this machine's cache of it, in the index
    directory under the database's identity. Each gallery has its own index file
    (:func:`gallery_index_path`).
    """
    if isinstance(target, str):
        opened = open_store(target, gallery, key)
        index_dir = default_index_dir()
        make_parents(index_dir / "x")
        base = index_dir / f"{stored.database_id(opened.settings())}{INDEX_SUFFIX}"
        index_path = gallery_index_path(base, opened.gallery_id)
        # shown, never with a password
        return Opened(opened, store.display_url(target), target, index_path, index_base=base)
    created = not check_db_path(target, create)
    index_path = target.with_name(target.name + INDEX_SUFFIX)
    made_dirs = make_parents(target) if created else []
    try:
        opened = open_store(target, gallery, key)
    except BaseException:
        if created:
            remove_database_files(target, index_path, made_dirs)
        raise
    own_index = gallery_index_path(index_path, opened.gallery_id)
    return Opened(opened, target, target, own_index, created, made_dirs, index_path)


def gallery_index_path(index_path: Path, gallery_id: int) -> Path:
    """The index file of gallery ``gallery_id`` of the database whose default gallery's index is
    ``index_path``: that path for the default gallery (as before galleries existed), else
    ``<name>.gallery-<id>.faiss`` beside it. By id, not name: ids are never reused, and a
    name may be renamed or reused after a removal."""
    if gallery_id == store.DEFAULT_GALLERY_ID:
        return index_path
    return index_path.with_name(f"{index_path.name.removesuffix(INDEX_SUFFIX)}.gallery-{gallery_id}{INDEX_SUFFIX}")


def gallery_index_files(index_path: Path) -> list[Path]:
    """The index files of every gallery of the database whose default gallery's index is
    ``index_path`` that are in its directory now (:func:`gallery_index_path` names them)."""
    stem = index_path.name.removesuffix(INDEX_SUFFIX)
    others = sorted(
        p
        for p in index_path.parent.glob(f"{stem}.gallery-*{INDEX_SUFFIX}")
        if p.name.removeprefix(f"{stem}.gallery-").removesuffix(INDEX_SUFFIX).isdigit()
    )
    return [index_path, *others]


def check_db_path(path: Path, create: bool) -> bool:
    """Whether a database file exists at ``path``; raise DatabaseError for a path that cannot
    be one (a directory, a device such as /dev/null, a parent that is a file) or, unless
    ``create``, for a missing one."""
    try:
        info = path.stat()
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        raise DatabaseError(f"cannot use database {path}: {file_ancestor(path)} is a file, not a directory") from None
    except OSError as e:
        raise DatabaseError(f"cannot use database {path}: {e.strerror or e}") from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise DatabaseError(f"database {path} is a directory, not an SQLite file")
        if not stat.S_ISREG(info.st_mode):
            raise DatabaseError(f"database {path} is not a regular file (a device, pipe or socket)")
        return True
    if not create:
        raise DatabaseError(
            f"no database at {path}: check --db (or SPEAKERDB_DB / SPEAKERDB_HOME); "
            "`speakerdb enroll` or `speakerdb import` creates one"
        )
    ancestor = file_ancestor(path)
    if ancestor is not None:
        raise DatabaseError(f"cannot create database {path}: {ancestor} is a file, not a directory")
    existing = next(p for p in path.parents if p.exists())
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise DatabaseError(
            f"cannot create database {path}: only {free // 1024} KiB free on its disk, "
            f"at least {MIN_FREE_BYTES // 1024} KiB needed"
        )
    return False


def file_ancestor(path: Path) -> Path | None:
    """The first parent of ``path`` that exists and is not a directory, if any."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
        if not parent.exists():
            return None
    return None


def make_parents(path: Path) -> list[Path]:
    """Create the missing directories above ``path``, 0700 whatever the umask; returns those
    made, deepest first."""
    try:
        return private_dirs(path.parent)
    except OSError as e:
        raise DatabaseError(f"cannot create the directory of database {path}: {e.strerror or e}") from None


def open_store(path: Path | str, gallery: str = DEFAULT_GALLERY, key: crypto.KeySource | None = None) -> store.Store:
    """store.Store, with the errors raised while creating or reaching it (disk full, I/O, a
    server that does not answer) as DatabaseError."""
    try:
        return store.Store(path, gallery, key)
    except SpeakerDBError:
        raise
    except (SQLAlchemyError, OSError) as e:
        url = path if isinstance(path, str) else None
        name = store.display_url(url) if url else path
        raise DatabaseError(f"cannot open database {name}: {store.redact(e, url)}") from None


def remove_database_files(db_path: Path, index_path: Path, made_dirs: list[Path]) -> None:
    """Delete a database file, its journal files and its index file, then the directories made
    for it (``made_dirs``, deepest first) that are still empty. A link at any of those names is
    left: speakerdb never makes one, so it is the user's (the refusal to open a database
    through a link ends here)."""
    for p in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"), Path(f"{db_path}-journal"), index_path):
        if p.is_symlink():
            continue
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    for d in made_dirs:  # deepest first; only if still empty
        try:
            d.rmdir()
        except OSError:
            break
