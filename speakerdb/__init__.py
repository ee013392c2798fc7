"""speakerdb: a speaker enrollment and identification database.

The Python API lives in :mod:`speakerdb.api`; the names most people need are here::

    from speakerdb import SpeakerDB, SpeakerNotFoundError

They are imported on first use, so ``import speakerdb`` (and ``speakerdb --help``) does not
pay for numpy or SQLAlchemy. The HTTP client is :class:`speakerdb.client.Client`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: The one place the version is written: pyproject.toml, the CLI's --version, galleries and
#: the service's OpenAPI page all read it from here.
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import SpeakerDB
    from .errors import (
        AudioError,
        AuthenticationError,
        ConflictError,
        ConsentRequiredError,
        DatabaseBusyError,
        DatabaseError,
        EmptyDatabaseError,
        EnrollmentRefusedError,
        GalleryError,
        GalleryExistsError,
        GalleryNotFoundError,
        InvalidInputError,
        KeyExistsError,
        KeyNotFoundError,
        ModelLoadError,
        ModelMismatchError,
        OptedOutError,
        PermissionDeniedError,
        SchemaOutdatedError,
        SchemaTooNewError,
        ServiceError,
        SpeakerDBError,
        SpeakerExistsError,
        SpeakerNotFoundError,
    )

__all__ = [
    "AudioError",
    "AuthenticationError",
    "ConflictError",
    "ConsentRequiredError",
    "DatabaseBusyError",
    "DatabaseError",
    "EmptyDatabaseError",
    "EncryptedSinceOpenedError",
    "EncryptionKeyError",
    "EncryptionKeyMissingError",
    "EncryptionKeyWrongError",
    "EnrollmentRefusedError",
    "GalleryError",
    "GalleryExistsError",
    "GalleryNotFoundError",
    "InvalidInputError",
    "KeyExistsError",
    "KeyNotFoundError",
    "ModelLoadError",
    "ModelMismatchError",
    "OptedOutError",
    "PermissionDeniedError",
    "SchemaOutdatedError",
    "SchemaTooNewError",
    "ServiceError",
    "SpeakerDB",
    "SpeakerDBError",
    "SpeakerExistsError",
    "SpeakerNotFoundError",
    "__version__",
]

# Public name -> the module that defines it, imported when the name is first used.
_LAZY: dict[str, str] = {"SpeakerDB": ".api"} | {name: ".errors" for name in __all__ if name.endswith("Error")}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'speakerdb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
