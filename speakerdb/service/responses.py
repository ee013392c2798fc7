"""What the service answers: JSON documents, and errors as ``{"error": {"code", "message"}}``.

Library errors become HTTP statuses here (:data:`ERROR_STATUS`), at the edge: nothing below
the service knows about HTTP.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse

from .. import errors

#: Library errors as (HTTP status, code). Checked in order: subclasses before their bases.
ERROR_STATUS: list[tuple[type[BaseException], int, str]] = [
    (errors.AudioError, 400, "bad_audio"),
    (errors.GalleryError, 400, "bad_gallery"),
    (errors.EnrollmentRefusedError, 422, "enrollment_refused"),
    (errors.InvalidInputError, 422, "invalid_input"),
    (errors.SpeakerNotFoundError, 404, "speaker_not_found"),
    (errors.KeyNotFoundError, 404, "key_not_found"),
    (errors.SpeakerExistsError, 409, "speaker_exists"),
    (errors.KeyExistsError, 409, "key_exists"),
    (errors.ConflictError, 409, "conflict"),
    (errors.EmptyDatabaseError, 409, "no_speakers"),
    (errors.ModelMismatchError, 409, "model_mismatch"),
    (errors.ModelLoadError, 503, "model_unavailable"),
    (errors.DatabaseBusyError, 503, "database_busy"),  # another writer holds the lock: retry later
    (errors.DatabaseError, 500, "database_error"),
    (errors.SpeakerDBError, 400, "failed"),
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
    message = str(e)
    for private, given in names.items():
        message = message.replace(private, given)
    for kind, status, code in ERROR_STATUS:
        if isinstance(e, kind):
            return ApiError(status, code, message)
    return ApiError(400, "failed", message)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers (as the CLI's --json)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def ok(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """A successful answer: ``document`` as JSON (non-finite numbers as null)."""
    return JSONResponse(_finite(document), status_code=status, headers=headers)
