"""What the service answers: JSON documents, and errors as ``{"error": {"code", "message"}}``.

Library errors become HTTP statuses here (:data:`ERROR_STATUS`), at the edge: nothing below
the service knows about HTTP. Their codes are their own (:attr:`speakerdb.errors.SpeakerDBError.code`).
"""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse

from .. import errors

#: Library errors as HTTP statuses. Checked in order: subclasses before their bases. The code
#: answered beside the status is the error's own (``errors.SpeakerDBError.code``), the word the
#: command line's --json prints for the same failure.
ERROR_STATUS: list[tuple[type[errors.SpeakerDBError], int]] = [
    (errors.AudioError, 400),
    (errors.GalleryError, 400),
    (errors.EnrollmentRefusedError, 422),
    (errors.ConsentRequiredError, 422),
    (errors.OptedOutError, 409),
    (errors.InvalidInputError, 422),
    (errors.SpeakerNotFoundError, 404),
    (errors.KeyNotFoundError, 404),
    (errors.GalleryNotFoundError, 404),
    (errors.SpeakerExistsError, 409),
    (errors.KeyExistsError, 409),
    (errors.GalleryExistsError, 409),
    (errors.ConflictError, 409),
    (errors.EmptyDatabaseError, 409),
    (errors.ModelMismatchError, 409),
    (errors.ModelLoadError, 503),
    (errors.DatabaseBusyError, 503),  # another writer holds the lock: retry later
    (errors.EncryptionKeyError, 503),  # encrypted or rotated under a running service: restart it with the key
    (errors.DatabaseError, 500),
]


class ApiError(Exception):
    """An answer other than success, raised anywhere in a request."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        super().__init__(message)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error document every failure is answered with."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def from_library(e: errors.SpeakerDBError, names: dict[str, str]) -> ApiError:
    """A library error as an answer; private paths in its message (``names``' keys) become
    what the client may see (their values)."""
    message = e.client_message or str(e)  # a message for the node's operator has one for clients
    for private, given in names.items():
        message = message.replace(private, given)
    status = next((status for kind, status in ERROR_STATUS if isinstance(e, kind)), 400)
    return ApiError(status, e.code, message)


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers (as the CLI's --json)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def ok(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """A successful answer: ``document`` as JSON (non-finite numbers as null)."""
    return JSONResponse(finite(document), status_code=status, headers=headers)
