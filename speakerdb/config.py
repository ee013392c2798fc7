"""Every setting speakerdb takes from the environment, every default path, and the one
decision whether a database target is an SQLite file or a server URL.

Standard library only, so that every room (the stdlib-only client included) can use it.
This is the only module that reads a ``SPEAKERDB_*`` variable: everything else is given
its settings as arguments, with the functions here as the defaults. The one hand-over
through the environment is `serve`'s to its uvicorn worker processes (their factory takes
no arguments): :func:`hand_to_workers` writes it, :func:`serve_config` reads it.

======================== ==========================================================
``SPEAKERDB_HOME``        where speakerdb keeps its files (default: the platform's
                          per-user data directory)
``SPEAKERDB_DB``          the database: an SQLite file or a ``postgresql://`` URL
                          (default: ``speakerdb.sqlite`` in the home)
``SPEAKERDB_GALLERY``     the gallery (tenant) of the database that commands work in
                          (default: ``default``, the one every database has)
``SPEAKERDB_INDEX_DIR``   the index cache of server databases (default: ``index/`` in
                          the home)
``SPEAKERDB_CACHE_DIR``   the model fingerprint cache (default: ``cache/`` in
                          ``$SPEAKERDB_HOME``, else the platform's user cache directory)
``SPEAKERDB_MODEL``       the CLI's ``--model``
``SPEAKERDB_PRECISION``   the CLI's ``--precision``
``SPEAKERDB_SERVER``      the CLI's ``--server``
``SPEAKERDB_API_KEY``     the key the CLI sends to ``--server``
``SPEAKERDB_MAX_AUDIO_S`` the longest recording decoded (default: 4 h)
``SPEAKERDB_THREADS``     torch threads for the transformers models (default: torch's)
``SPEAKERDB_KERNELS``     ``0`` runs the plain transformers model
``SPEAKERDB_INT8_PRODUCTS`` ``0`` turns the integer products off
``SPEAKERDB_SERVE_CONFIG`` set by ``serve`` for its worker processes
``SPEAKERDB_KEY_FILE``    the file holding the key-encryption key of an encrypted
                          database (32 random bytes, or 64 hex digits)
``SPEAKERDB_KEY_COMMAND`` a command whose standard output is that key (a KMS, Vault);
                          run by ``/bin/sh``, used when ``SPEAKERDB_KEY_FILE`` is unset
``SPEAKERDB_SEGMENTATION`` the timeline's speaker segmentation model (pyannote
                          segmentation-3.0: a checkpoint file or a Hugging Face id); the
                          CLI's ``timeline --segmentation`` and the service's timelines
======================== ==========================================================
"""

from __future__ import annotations

import math
import os
from pathlib import Path

HOME_ENV = "SPEAKERDB_HOME"
DB_ENV = "SPEAKERDB_DB"
GALLERY_ENV = "SPEAKERDB_GALLERY"
INDEX_DIR_ENV = "SPEAKERDB_INDEX_DIR"
CACHE_DIR_ENV = "SPEAKERDB_CACHE_DIR"
MODEL_ENV = "SPEAKERDB_MODEL"
PRECISION_ENV = "SPEAKERDB_PRECISION"
SERVER_ENV = "SPEAKERDB_SERVER"
API_KEY_ENV = "SPEAKERDB_API_KEY"
MAX_AUDIO_ENV = "SPEAKERDB_MAX_AUDIO_S"
THREADS_ENV = "SPEAKERDB_THREADS"
KERNELS_ENV = "SPEAKERDB_KERNELS"
INT8_PRODUCTS_ENV = "SPEAKERDB_INT8_PRODUCTS"
SERVE_CONFIG_ENV = "SPEAKERDB_SERVE_CONFIG"
KEY_FILE_ENV = "SPEAKERDB_KEY_FILE"
KEY_COMMAND_ENV = "SPEAKERDB_KEY_COMMAND"
SEGMENTATION_ENV = "SPEAKERDB_SEGMENTATION"

#: Every variable above: a test checks that no other module reads one.
VARIABLES = (
    HOME_ENV,
    DB_ENV,
    GALLERY_ENV,
    INDEX_DIR_ENV,
    CACHE_DIR_ENV,
    MODEL_ENV,
    PRECISION_ENV,
    SERVER_ENV,
    API_KEY_ENV,
    MAX_AUDIO_ENV,
    THREADS_ENV,
    KERNELS_ENV,
    INT8_PRODUCTS_ENV,
    SERVE_CONFIG_ENV,
    KEY_FILE_ENV,
    KEY_COMMAND_ENV,
    SEGMENTATION_ENV,
)

APP_NAME = "speakerdb"
DB_FILENAME = "speakerdb.sqlite"
#: The gallery every database has (schema revision 0005): what existed before galleries.
DEFAULT_GALLERY = "default"
INDEX_DIRNAME = "index"
CACHE_DIRNAME = "cache"
# The longest recording decoded: 4 hours covers a long meeting; beyond it a file is more likely
# damaged or hostile (a WAV header followed by a terabyte of zeros) than a recording.
DEFAULT_MAX_AUDIO_S = 4 * 3600.0  # seconds
#: The fewest recordings an AS-norm cohort holds: fewer give a standard deviation that is mostly
#: noise. Here, not in scoring, so that the client refuses a cohort before uploading it.
MIN_COHORT = 10  # recordings
#: Cohort scores averaged per side by AS-norm. Chosen from scripts/eval_norm.py on LibriSpeech
#: test-other with a 251-speaker train-clean-100 cohort (GE2E): see docs/accuracy.md. Here, not
#: in scoring, so that the command line's and the service's help state it without a copy.
DEFAULT_TOP_N = 100  # scores
#: Schemes of a PostgreSQL server URL; anything else given as a database is an SQLite file.
SERVER_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
_OFF = ("0", "false", "no", "off")


def _env(name: str) -> str:
    """The variable's value, "" when unset."""
    return os.environ.get(name, "")


# ---- paths ------------------------------------------------------------------------------------
def private_dirs(path: str | Path) -> list[Path]:
    """Create directory ``path`` and its missing parents, each ``0700``; returns those made,
    deepest first.

    ``Path.mkdir(parents=True)`` gives the parents the umask's mode: under a umask of 000 a
    database's new directory would be world-writable, and another user could plant the next
    ``-wal`` file there and read what SQLite writes into it.
    """
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process: its mode is its maker's
            pass
    return missing


def default_home() -> Path:
    """``$SPEAKERDB_HOME``, else the platform's per-user data directory."""
    env = _env(HOME_ENV)
    if env:
        return Path(env).expanduser()
    # platformdirs is the library's dependency, not the stdlib-only client's: imported when needed.
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_index_dir() -> Path:
    """Where indexes of server databases are cached: ``$SPEAKERDB_INDEX_DIR``, else
    ``index/`` in :func:`default_home`. Files are named by the database's identity."""
    env = _env(INDEX_DIR_ENV)
    return Path(env).expanduser() if env else default_home() / INDEX_DIRNAME


def default_db_path() -> Path:
    """``$SPEAKERDB_DB``, else ``speakerdb.sqlite`` in :func:`default_home`."""
    env = _env(DB_ENV)
    return Path(env).expanduser() if env else default_home() / DB_FILENAME


def default_cache_dir() -> Path:
    """``$SPEAKERDB_CACHE_DIR``, else ``$SPEAKERDB_HOME/cache``, else the platform's user cache directory."""
    if _env(CACHE_DIR_ENV):
        return Path(_env(CACHE_DIR_ENV)).expanduser()
    if _env(HOME_ENV):
        return Path(_env(HOME_ENV)).expanduser() / CACHE_DIRNAME
    # As in default_home: a dependency of the library only.
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


# ---- recordings -------------------------------------------------------------------------------
#: What counts as a recording when a folder is given (enroll DIR, evaluate's speaker-per-folder
#: layout, a cohort folder): by extension, case ignored.
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".webm", ".aiff", ".aif"})


def audio_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every recording below folder ``root`` (:data:`AUDIO_SUFFIXES`, recursively), sorted by path.
    Standard library only: the client lists a folder before uploading it."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


# ---- the database: file or server -------------------------------------------------------------
def model_cache_dir() -> Path:
    """The Hugging Face hub cache that huggingface_hub uses, from the environment as it is now:
    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if _env(name):
            return Path(_env(name)).expanduser()
    cache = _env("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(_env("HF_HOME") or os.path.join(cache, "huggingface")).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether the Hugging Face hub's own ``HF_HUB_OFFLINE`` switch is on (read to word errors)."""
    return _env("HF_HUB_OFFLINE").lower() in ("1", "true", "yes", "on")


def is_server_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than an SQLite file.

    Only a string can be a URL (a ``Path`` is always a file); the scheme decides, so a
    Windows path (``C:\\db.sqlite``) or a relative path holding a colon is a file."""
    return isinstance(target, str) and target.startswith(SERVER_SCHEMES)


def db_from_env() -> str:
    """``$SPEAKERDB_DB`` as given ("" when unset): a path or a server URL."""
    return _env(DB_ENV)


def db_target(db: str | os.PathLike[str] | None = None) -> str | Path:
    """What a database argument names: the server URL (a ``str``, as given) or the SQLite
    file (an absolute ``Path``). ``None`` or "" means ``$SPEAKERDB_DB``, else the default file.

    The one place where "file or URL" is decided: the facade, the store, migrations and
    the CLI all ask here."""
    given = os.fspath(db) if db else db_from_env()
    if is_server_url(given):
        return given
    return (Path(given).expanduser() if given else default_home() / DB_FILENAME).absolute()


def gallery_name(gallery: str | None = None) -> str:
    """The gallery to work in: ``gallery`` if given, else ``$SPEAKERDB_GALLERY``, else ``default``.

    An empty name given is refused (ValueError): ``--gallery "$TENANT"`` with the variable
    unset must not work in the default gallery, another tenant's data."""
    if gallery == "":
        raise ValueError('an empty gallery name: give one, or leave the gallery out for "default"')
    return gallery or _env(GALLERY_ENV) or DEFAULT_GALLERY


# ---- settings ---------------------------------------------------------------------------------
def max_audio_s() -> float:
    """The longest recording decoded: ``$SPEAKERDB_MAX_AUDIO_S`` if set, else DEFAULT_MAX_AUDIO_S.

    Raises ValueError (its text names no variable) for a value that is not a positive number."""
    raw = _env(MAX_AUDIO_ENV)
    if not raw:
        return DEFAULT_MAX_AUDIO_S
    return check_max_audio_s(raw)


def check_max_audio_s(value: object) -> float:
    """``value`` as a positive, finite number of seconds; ValueError otherwise."""
    try:
        seconds = float(value)  # type: ignore[arg-type]  # anything float() takes
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"must be a positive number of seconds, not {value!r}")
    return seconds


def threads() -> int | None:
    """torch threads asked for with ``$SPEAKERDB_THREADS``, or None (torch's default).

    Raises ValueError for a value that is not a whole number of at least 1."""
    value = _env(THREADS_ENV).strip()
    if not value:
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{THREADS_ENV}={value!r}: use a whole number of threads, 1 or more")
    return count


def kernels_enabled() -> bool:
    """False when ``SPEAKERDB_KERNELS=0`` (or false/no/off): the plain transformers model runs."""
    return _env(KERNELS_ENV).strip().lower() not in _OFF


def int8_products_enabled() -> bool:
    """False when ``SPEAKERDB_INT8_PRODUCTS=0`` (or false/no/off)."""
    return _env(INT8_PRODUCTS_ENV).strip().lower() not in _OFF


def segmentation_model() -> str | None:
    """``$SPEAKERDB_SEGMENTATION``: the timeline's segmentation model, None when unset."""
    return _env(SEGMENTATION_ENV).strip() or None


def api_key() -> str | None:
    """The key the CLI sends to a ``--server``: ``$SPEAKERDB_API_KEY``, None when unset."""
    return os.environ.get(API_KEY_ENV)


def key_file() -> str:
    """``$SPEAKERDB_KEY_FILE``: the path of the key-encryption key ("" when unset)."""
    return _env(KEY_FILE_ENV)


def key_command() -> str:
    """``$SPEAKERDB_KEY_COMMAND``: a shell command printing the key-encryption key ("" when unset)."""
    return _env(KEY_COMMAND_ENV)


# ---- the log ----------------------------------------------------------------------------------
#: The attribute set (``log.warning(..., extra=NAMES_SOMEONE)``) on a library log record that
#: names a speaker or a client's file: ``serve`` leaves such records out of its log, where a
#: name would outlive an opt-out; the CLI prints them to the user who gave the names.
NAMES_SOMEONE_ATTR = "speakerdb_names_someone"
NAMES_SOMEONE = {NAMES_SOMEONE_ATTR: True}


# ---- serve's hand-over to its worker processes -----------------------------------------------
def hand_to_workers(serve_config: str, threads_per_worker: int | None = None) -> None:
    """Leave ``serve_config`` (ServeConfig's JSON) for uvicorn's worker processes, which
    inherit this environment: uvicorn's app factory takes no arguments. With
    ``threads_per_worker``, each worker's torch gets that many threads unless
    ``$SPEAKERDB_THREADS`` already says how many."""
    if threads_per_worker is not None:
        os.environ.setdefault(THREADS_ENV, str(threads_per_worker))
    os.environ[SERVE_CONFIG_ENV] = serve_config


def serve_config() -> str:
    """What :func:`hand_to_workers` left ("" outside a worker of ``serve``)."""
    return _env(SERVE_CONFIG_ENV)
