"""One small exception hierarchy. Only ``cli.py`` turns these into messages and exit codes.

Every message is written for the person at the terminal: it names the file, speaker or
database concerned and, where there is one, the command that fixes it. Every class also has
a ``code``, the word that names the failure in JSON, ``{"error": {"code", "message"}}``: the
service answers with it, and so does the command line with ``--json``, the same word for the
same failure either way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, without its final full stop (its type's name
    when it has none): a library's error, quoted in one line of ours."""
    text = str(e).strip().splitlines()
    return text[0].rstrip(".") if text else type(e).__name__


def printable_path(path: object) -> str:
    """``str(path)`` with lone surrogates escaped: bytes of a file name that are not UTF-8
    (which Python decodes to U+DC80..U+DCFF) as ``\\xNN``, any other surrogate as ``\\uNNNN``,
    so that the text can be printed, stored and written as UTF-8."""
    text = str(path)
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    return "".join(
        f"\\x{ord(ch) - 0xDC00:02x}"
        if "\udc80" <= ch <= "\udcff"
        else f"\\u{ord(ch):04x}"
        if "\ud800" <= ch <= "\udfff"
        else ch
        for ch in text
    )


class SpeakerDBError(Exception):
    """Base class: a failed operation the user can understand and act on."""

    #: The failure's name in JSON errors (the service's answers, the command line's --json);
    #: each subclass has its own, and a subclass without one answers its base's.
    code: str = "failed"
    #: What a remote client is told instead of the message, where the message speaks to
    #: whoever runs this process (None: the message itself). The service answers with it.
    client_message: str | None = None


class InvalidInputError(SpeakerDBError):
    """A value given by the caller is not acceptable (a name, a threshold, a top-k)."""

    code = "invalid_input"


class AudioError(SpeakerDBError):
    """An audio file could not be used; the message names the file and the reason."""

    code = "bad_audio"

    def __init__(self, path: object, reason: str) -> None:
        self.path = printable_path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelLoadError(SpeakerDBError):
    """The embedding model could not be loaded."""

    code = "model_unavailable"


class ModelMismatchError(SpeakerDBError):
    """The database was built with a different embedding model."""

    code = "model_mismatch"


class EnrollmentRefusedError(SpeakerDBError):
    """An enrollment clip looks wrong and ``--strict`` asked to refuse rather than warn."""

    code = "enrollment_refused"


class SpeakerNotFoundError(SpeakerDBError):
    """No enrolled speaker has that name."""

    code = "speaker_not_found"


class SpeakerExistsError(SpeakerDBError):
    """A speaker with that name is already enrolled."""

    code = "speaker_exists"


class ConsentRequiredError(SpeakerDBError):
    """The database's policy requires a consent record to enroll, and none was given."""

    code = "consent_required"


class OptedOutError(SpeakerDBError):
    """The person opted out (``speakerdb optout``): enrolling them again needs an administrator's override."""

    code = "opted_out"


class EmptyDatabaseError(SpeakerDBError):
    """The operation needs at least one enrolled speaker."""

    code = "no_speakers"


class GalleryError(SpeakerDBError):
    """A gallery file cannot be imported (damaged, altered, another format or model, unsafe)."""

    code = "bad_gallery"


class GalleryNotFoundError(SpeakerDBError):
    """No gallery (tenant: a separate set of speakers in the database) has that name. Not
    :class:`GalleryError`, which is about gallery *files* (export and import)."""

    code = "gallery_not_found"


class GalleryExistsError(SpeakerDBError):
    """A gallery (tenant) with that name already exists."""

    code = "gallery_exists"


class ConflictError(SpeakerDBError):
    """Speakers in a gallery already exist and the conflict policy is ``fail``."""

    code = "conflict"


class DatabaseError(SpeakerDBError):
    """The database file cannot be used (corrupt, read-only, not a speakerdb database)."""

    code = "database_error"


class DatabaseBusyError(DatabaseError):
    """Another process held the database's write lock for longer than speakerdb waits; the
    message names it where the database can tell."""

    code = "database_busy"


class SchemaOutdatedError(DatabaseError):
    """The database schema is older than this speakerdb: run ``speakerdb db upgrade``."""


class SchemaTooNewError(DatabaseError):
    """The database was written by a newer speakerdb than this one."""


class EncryptionKeyError(SpeakerDBError):
    """The key-encryption key of an encrypted database is missing, unreadable or not its key.

    Raised before anything is read or written: the database and its index are untouched."""

    code = "encryption_key"


class EncryptionKeyMissingError(EncryptionKeyError):
    """An encrypted database was opened without ``SPEAKERDB_KEY_FILE``/``SPEAKERDB_KEY_COMMAND``,
    or the key they name cannot be read."""

    code = "encryption_key_missing"


class EncryptedSinceOpenedError(EncryptionKeyMissingError):
    """Another process encrypted the database (``db encrypt``) after this one opened it without
    its key: only a restart with the key helps. The message names the database and the
    variables for the operator; a service's client is told :attr:`client_message`."""

    client_message = (
        "this database is encrypted and this server was started without its key: "
        "an operator must restart it with the key (see docs/security.md)"
    )


class EncryptionKeyWrongError(EncryptionKeyError):
    """The key given does not unwrap the database's data key (another database's key, or an old one)."""

    code = "encryption_key_wrong"


class KeyNotFoundError(SpeakerDBError):
    """No API key has that name."""

    code = "key_not_found"


class KeyExistsError(SpeakerDBError):
    """An API key with that name already exists."""

    code = "key_exists"


class ServiceError(SpeakerDBError):
    """The speakerdb service could not answer (unreachable, busy, or it failed); ``status``
    is the HTTP status (None: no answer), ``retry_after`` the seconds it asked to wait."""

    def __init__(
        self, message: str, status: int | None = None, code: str | None = None, retry_after: float | None = None
    ) -> None:
        self.status, self.retry_after = status, retry_after
        #: The service's own code for its refusal (``database_busy``, ``unauthorized``...), or
        #: ``service_error`` when there was no answer to read one from.
        self.code = code or "service_error"
        super().__init__(message)


class AuthenticationError(ServiceError):
    """The service wants a valid API key (HTTP 401)."""


class PermissionDeniedError(ServiceError):
    """The API key's scope does not allow that operation (HTTP 403)."""


# ---- the paths a user names, checked before any work ------------------------------------------
# Here, beside the errors they raise, because the library and the standard-library-only client
# (which checks a file before uploading it) make the same checks with the same messages.
def check_input_file(path: str | os.PathLike[str]) -> Path:
    """Cheap checks before any decoding or model loading: exists, a file, readable, not empty
    (AudioError naming the file otherwise). Also :func:`speakerdb.audio.decode.check_file`."""
    path = Path(path)
    try:
        info = path.stat()  # stat never blocks; opening a FIFO would wait for a writer forever
    except FileNotFoundError:
        raise AudioError(path, "no such file") from None
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except OSError as e:
        raise AudioError(path, f"cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioError(path, "is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise AudioError(path, "is not a regular file (a pipe, device or socket): save the audio to a file first")
    try:
        size = info.st_size
        with open(path, "rb"):
            pass
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except OSError as e:
        raise AudioError(path, f"cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    return path


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Raise InvalidInputError now, before any work, for an output file that cannot be written:
    its directory is missing or not writable, it is a directory, or it exists (a link, even a
    dangling one, counts) and not ``overwrite``. Returns the path, ``~`` expanded.
    Also :func:`speakerdb.storage.atomic.check_output`."""
    path = Path(path).expanduser()
    shown = printable_path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir() and not path.is_symlink():
        raise InvalidInputError(f"{shown} is a directory: give a file name")
    if not parent.is_dir():
        raise InvalidInputError(f"cannot write {shown}: directory {printable_path(parent)} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInputError(f"cannot write {shown}: directory {printable_path(parent)} is not writable")
    if os.path.lexists(path) and not overwrite:
        raise InvalidInputError(f"{shown} already exists: use --force to replace it")
    return path
