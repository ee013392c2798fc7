"""A client of ``speakerdb serve`` with the methods and results of :class:`speakerdb.SpeakerDB`.

Both satisfy :class:`speakerdb.protocol.SpeakerDBProtocol` (checked by mypy, below, and by
``tests/test_protocol.py``); what only a local database can do (:data:`speakerdb.protocol.LOCAL_ONLY`)
is not here at all, so asking a client for it is an AttributeError, and a type error for mypy.

    >>> from speakerdb.client import Client
    >>> with Client("http://127.0.0.1:8000", key=os.environ["SPEAKERDB_API_KEY"]) as db:
    ...     db.enroll("alice", ["alice1.flac"])
    ...     [r] = db.identify(["unknown.wav"])
    ...     print(r.speaker, r.score)

The CLI uses it when given ``--server URL`` (or ``$SPEAKERDB_SERVER``, with the key in
``$SPEAKERDB_API_KEY``), so scripts keep their commands. Only the standard library speaks
HTTP here: urllib, and http.client for uploads of 1 MiB or more, which ask the service
first (``Expect: 100-continue``) so that one it refuses is never sent. Files are uploaded
under the names they were given, so answers and stored labels read as they do locally.
The service's errors come back as the library's own exceptions (an unknown speaker is
:class:`~speakerdb.errors.SpeakerNotFoundError`), its refusals as
:class:`~speakerdb.errors.ServiceError` and subclasses.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import http.client
import io
import json
import os
import secrets
import select
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import errors
from ..config import DEFAULT_GALLERY, audio_files, gallery_name
from ..results import (
    AuditEntry,
    Candidate,
    Consent,
    DatabaseInfo,
    EnrolledEvent,
    EnrollResult,
    Erasure,
    ErrorEvent,
    ExpireSummary,
    ExportSummary,
    FileNote,
    Identification,
    ImportSummary,
    KeyInfo,
    Limits,
    LiveEvent,
    NewKey,
    NormChange,
    NormSettings,
    OptOutList,
    OptOutResult,
    Params,
    Policy,
    Progress,
    Segment,
    ServiceLimits,
    SpeakerInfo,
    SpeechEvent,
    Timeline,
    UtteranceInfo,
    Verification,
    Voice,
    VoiceEvent,
    check_cohort_count,
    parse_iso,
)

# Python 3.10 has no typing.Self: a bound type variable says the same for __enter__.
_Self = TypeVar("_Self")

if TYPE_CHECKING:
    from ..protocol import SpeakerDBProtocol

DEFAULT_TIMEOUT_S = 600.0  # seconds: a long recording takes a while to embed on a busy CPU
MAX_RETRY_WAIT_S = 30.0  # seconds: the longest Retry-After this client honours
DOWNLOAD_CHUNK = 1 << 20  # bytes
# An upload this large asks the service first (``Expect: 100-continue``, as curl does from
# 1 MiB): one refused for its size or its key is answered before a byte of it is sent. A
# service that never answers the question gets the body after CONTINUE_WAIT_S anyway.
EXPECT_CONTINUE_BYTES = 1 << 20  # bytes
CONTINUE_WAIT_S = 1.0  # seconds
#: A live stream's encodings as the library names them, and as the service does (the wire's).
STREAM_ENCODINGS = {"f32": "f32le", "f32le": "f32le", "pcm_s16le": "pcm_s16le", "mulaw": "mulaw", "alaw": "alaw"}
STREAM_BYTES_PER_SAMPLE = {"f32le": 4, "pcm_s16le": 2, "mulaw": 1, "alaw": 1}
#: Audio is sent in frames of at most this (the service takes up to --max-frame-kb, 1 MiB by default):
#: 0.5 s of 16 kHz float32, so that the service answers as the audio goes.
STREAM_FRAME_BYTES = 32 * 1024
#: The largest message taken from the service (the timeline of a long session).
STREAM_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: The service's error codes as the library's exceptions (server.ERROR_STATUS, reversed).
ERROR_CODES: dict[str, type[errors.SpeakerDBError]] = {
    "bad_audio": errors.SpeakerDBError,  # the message already names the file
    "bad_gallery": errors.GalleryError,
    "enrollment_refused": errors.EnrollmentRefusedError,
    "invalid_input": errors.InvalidInputError,
    "invalid_fields": errors.InvalidInputError,
    "speaker_not_found": errors.SpeakerNotFoundError,
    "key_not_found": errors.KeyNotFoundError,
    "gallery_not_found": errors.GalleryNotFoundError,
    "gallery_exists": errors.GalleryExistsError,
    "speaker_exists": errors.SpeakerExistsError,
    "key_exists": errors.KeyExistsError,
    "conflict": errors.ConflictError,
    "no_speakers": errors.EmptyDatabaseError,
    "consent_required": errors.ConsentRequiredError,
    "opted_out": errors.OptedOutError,
    "model_mismatch": errors.ModelMismatchError,
    "model_unavailable": errors.ModelLoadError,
    "database_error": errors.DatabaseError,
    "encryption_key": errors.EncryptionKeyError,
    "encryption_key_missing": errors.EncryptionKeyMissingError,
    "encryption_key_wrong": errors.EncryptionKeyWrongError,
}


class Client:
    """The service at ``url`` as a :class:`SpeakerDB`-like object.

    Args:
        url: e.g. ``http://127.0.0.1:8000`` (https works as well).
        key: an API key (``speakerdb keys create``); None for a service without keys.
        retries: how many times a request answered 503 "busy" is sent again, after the
            ``Retry-After`` the service asked for (at most MAX_RETRY_WAIT_S).
        timeout: seconds to wait for an answer.
        gallery: the service's gallery (tenant) to work in: requests go to
            ``/v1/galleries/GALLERY/...`` (default: ``$SPEAKERDB_GALLERY``, else ``default``,
            whose routes are also the plain ``/v1/...``). The key must be one of that gallery.
    """

    #: The CLI asks this of a database it opened (a client creates nothing).
    created = False

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        retries: int = 3,
        timeout: float = DEFAULT_TIMEOUT_S,
        gallery: str | None = None,
    ) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise errors.InvalidInputError(f"server URL must be http://HOST:PORT or https://..., not {url!r}")
        self.url = url.rstrip("/")
        self.key = key or None
        self.retries = retries
        self.timeout = timeout
        self.db_path = self.url  # what messages name as "the database"
        try:
            self.gallery = gallery_name(gallery)
        except ValueError as e:
            raise errors.InvalidInputError(str(e)) from None
        #: What every route's path starts with: the gallery's prefix, or the plain /v1 of the default's.
        self._v1 = "/v1" if self.gallery == DEFAULT_GALLERY else f"/v1/galleries/{_q(self.gallery)}"
        #: The service's limits on one request, read once from GET /v1/info when first needed
        #: (a list: empty until read; [None] from a service too old to say them).
        self._limits: builtins.list[ServiceLimits | None] = []

    # ---- lifecycle (nothing to open or close: one connection per request) ------------------
    def close(self) -> None:
        """Nothing to release; here so that a Client stands in for a SpeakerDB."""

    def discard_if_unused(self) -> bool:
        return False

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- operations --------------------------------------------------------------------
    def identify(
        self,
        files: Sequence[str | os.PathLike[str]],
        *,
        top_k: int = 5,
        threshold: float | None = None,
        progress: Progress | None = None,
        count_voices: bool = True,
        on_result: Callable[[Identification], None] | None = None,
    ) -> list[Identification]:
        """As :meth:`SpeakerDB.identify`: one answer per file, in order; a file that cannot be
        read here, or is larger than the service takes in one request, gets its error without
        being sent. More files than the service takes at once go in several requests (see
        :meth:`_per_file`); ``progress`` and ``on_result`` (once per file, in order) are
        called as each request's answer arrives, not while the service works."""
        fields = {"top_k": str(top_k), "count_voices": _bool(count_voices)}

        def result(label: str, d: dict[str, Any] | str) -> Identification:
            return _identification(d) if isinstance(d, dict) else Identification(label, None, None, [], d)

        return self._per_file("identify", "/v1/identify", files, fields, threshold, result, progress, on_result)

    def timeline(
        self,
        files: Sequence[str | os.PathLike[str]],
        *,
        threshold: float | None = None,
        params: Params | None = None,
        progress: Progress | None = None,
        on_result: Callable[[Timeline], None] | None = None,
    ) -> list[Timeline]:
        """As :meth:`SpeakerDB.timeline`: one :class:`speakerdb.results.Timeline` per file, in
        order; a file that cannot be read here, or is larger than the service takes in one
        request, gets its error without being sent. Uploads are split as :meth:`identify`'s;
        ``on_result`` is called once per file, in order, as each request's answer arrives."""
        params = (params or Params()).check()
        if params.segmentation is not None:
            raise errors.InvalidInputError(
                "the segmentation model is the service's own setting (SPEAKERDB_SEGMENTATION where it runs)"
            )
        fields = {"window": repr(params.window_s), "hop": repr(params.hop_s), "min_segment": repr(params.min_segment_s)}
        for name in ("speakers", "min_speakers", "max_speakers"):
            if getattr(params, name) is not None:
                fields[name] = str(getattr(params, name))

        def result(label: str, d: dict[str, Any] | str) -> Timeline:
            return _timeline(d, label)

        return self._per_file("timeline", "/v1/timeline", files, fields, threshold, result, progress, on_result)

    def stream(
        self,
        sample_rate: int = 16000,
        encoding: str = "f32",
        threshold: float | None = None,
        embed_windows: Callable[[builtins.list[Any]], Any] | None = None,
    ) -> LiveStream:
        """As :meth:`SpeakerDB.stream`: a live session on the service (``WebSocket /v1/stream``),
        with the same ``feed``, ``finish``, ``enroll``, ``close`` and ``seconds_fed``, and the
        events as the same dataclasses. ``embed_windows`` cannot be given: the service embeds."""
        if embed_windows is not None:
            raise errors.InvalidInputError("embed_windows is the service's own: a client stream cannot take one")
        return LiveStream(self, sample_rate, encoding, threshold)

    def _per_file(
        self,
        command: str,
        path: str,
        files: Sequence[str | os.PathLike[str]],
        fields: dict[str, str],
        threshold: float | None,
        result: Callable[[str, dict[str, Any] | str], _T],
        progress: Progress | None,
        on_result: Callable[[_T], None] | None,
    ) -> builtins.list[_T]:
        """Upload the readable ``files`` to ``path``, in as few requests as the service's limits
        allow (files in order; each request's answers are per file, so splitting changes no
        answer): per file, in order, ``result(its label, the service's answer for it, or the
        reason it was not sent)``. A file that cannot be read here, or whose request would be
        over the service's upload limit on its own, is not sent; files are read one request at
        a time, so memory holds at most one request's body."""
        if not files:
            raise errors.InvalidInputError(f"{command} needs at least one audio file")
        if threshold is not None:
            fields = {**fields, "threshold": repr(float(threshold))}
        base = _multipart_size(fields, [])  # the body of a request with no file
        out: builtins.list[_T] = []
        # The files since the last request: (label, (name, bytes) to send, or the reason not to).
        pending: builtins.list[tuple[str, tuple[str, bytes] | str]] = []
        count, body = 0, base  # files in pending to send, and the size of their request's body

        def send() -> None:
            nonlocal count, body
            parts = [("files", *item) for _, item in pending if not isinstance(item, str)]
            answers = iter(self._request("POST", path, fields=fields, files=parts) if parts else [])
            for label, item in pending:
                answer = item if isinstance(item, str) else next(answers, None)
                if answer is None:
                    raise errors.ServiceError(f"the service answered fewer results than the {len(parts)} files sent")
                out.append(result(label, answer))
                if on_result is not None:
                    on_result(out[-1])
            pending.clear()
            count, body = 0, base
            if progress is not None:
                progress(len(out), len(files), 0.0)

        for f in files:
            label = errors.printable_path(f)
            try:
                name, data = _read(f)
            except errors.AudioError as e:
                pending.append((label, e.reason))
                continue
            limits = self._upload_limits()  # asked only once there is something to send
            size = _multipart_size({}, [("files", name, len(data))]) - _multipart_size({}, [])
            if limits is not None and base + size > limits.max_upload_bytes:
                pending.append((label, _too_large_alone(base + size, limits.max_upload_bytes)))
                continue
            if limits is not None and (count >= limits.max_files or body + size > limits.max_upload_bytes):
                send()
            pending.append((label, (name, data)))
            count, body = count + 1, body + size
        send()
        return out

    def _upload_limits(self) -> ServiceLimits | None:
        """The service's limits on one request (GET /v1/info, read once); None from a service
        too old to say them, which is sent everything in one request as before."""
        if not self._limits:
            doc = self._request("GET", "/v1/info").get("limits")
            self._limits.append(ServiceLimits.from_dict(doc) if isinstance(doc, dict) else None)
        return self._limits[0]

    def enroll(
        self,
        name: str,
        files: Sequence[str | os.PathLike[str]],
        *,
        new: bool = False,
        metadata: dict[str, Any] | None = None,
        strict: bool = False,
        progress: Progress | None = None,
        consent: str | None = None,
        external_id: str | None = None,
        override_optout: bool = False,
    ) -> EnrollResult:
        """As :meth:`SpeakerDB.enroll`; the files are uploaded (a file that cannot be read here fails
        first). ``override_optout`` needs an admin key. One enrollment is one request, never
        split (it writes all of its files or none): more than the service takes at once is
        refused with what to do instead."""
        if not files:
            raise errors.InvalidInputError("enroll needs at least one audio file")
        parts = [("files", *_read(f)) for f in files]
        fields = {"new": _bool(new), "strict": _bool(strict)}
        if metadata:
            fields["metadata"] = json.dumps(metadata, ensure_ascii=False, allow_nan=False)
        if consent is not None:
            fields["consent"] = consent
        if external_id is not None:
            fields["external_id"] = external_id
        if override_optout:
            fields["override_optout"] = _bool(True)
        # In parts, each file is enrolled alone or with others; a single file has no parts.
        with _advise_on_413(
            "enroll them in parts (each later `speakerdb enroll NAME FILES...` without --new adds to the speaker)"
            if len(files) > 1
            else None
        ):
            doc = self._request("POST", f"/v1/speakers/{_q(name)}/enrollments", fields=fields, files=parts)
        if progress is not None:
            progress(len(files), len(files), 0.0)
        return EnrollResult(
            doc["speaker"],
            doc["created"],
            [_utterance(u) for u in doc["added"]],
            [FileNote(**s) for s in doc["skipped"]],
            doc["n_utterances"],
            [FileNote(**w) for w in doc["warnings"]],
            [_make(Candidate, m) for m in doc.get("matches", [])],  # absent from an older service
            list(doc.get("notes", [])),
        )

    def verify(
        self, name: str, file: str | os.PathLike[str], *, threshold: float | None = None, count_voices: bool = True
    ) -> Verification:
        """As :meth:`SpeakerDB.verify`; the file is uploaded."""
        fields = {"count_voices": _bool(count_voices)}
        if threshold is not None:
            fields["threshold"] = repr(float(threshold))
        doc = self._request("POST", f"/v1/speakers/{_q(name)}/verify", fields=fields, files=[("file", *_read(file))])
        return _make(Verification, doc)

    def list(self) -> list[SpeakerInfo]:
        """As :meth:`SpeakerDB.list`."""
        return [_speaker(d) for d in self._request("GET", "/v1/speakers")]

    def show(self, name: str) -> SpeakerInfo:
        """As :meth:`SpeakerDB.show`."""
        return _speaker(self._request("GET", f"/v1/speakers/{_q(name)}"))

    def rename(self, old: str, new: str) -> None:
        """As :meth:`SpeakerDB.rename`."""
        self._request("PATCH", f"/v1/speakers/{_q(old)}", body={"name": new})

    def remove(self, name: str) -> int:
        """As :meth:`SpeakerDB.remove`."""
        return int(self._request("DELETE", f"/v1/speakers/{_q(name)}")["utterances"])

    def policy(self) -> Policy:
        """As :meth:`SpeakerDB.policy`."""
        return _make(Policy, self._request("GET", "/v1/policy"))

    def set_policy(self, *, require_consent: bool | None = None, expire_after: str | None = None) -> Policy:
        """As :meth:`SpeakerDB.set_policy` (an admin key)."""
        body = {"require_consent": require_consent, "expire_after": expire_after}
        return _make(Policy, self._request("PUT", "/v1/policy", body=body))

    def expire(self, *, dry_run: bool = False) -> ExpireSummary:
        """As :meth:`SpeakerDB.expire` (an admin key)."""
        d = self._request("POST", "/v1/expire", body={"dry_run": dry_run})
        cutoff = parse_iso(d["cutoff"])
        return ExpireSummary(d["expired"], d["utterances"], cutoff, d["dry_run"], _erasure(d["erasure"]))

    def optout(self, name: str, *, external_id: str | None = None) -> OptOutResult:
        """As :meth:`SpeakerDB.optout` (a write key)."""
        d = self._request("POST", f"/v1/speakers/{_q(name)}/optout", body={"external_id": external_id})
        return OptOutResult(
            d["removed"], d["utterances"], d["external_id"], _time(d["recorded_at"]), _erasure(d["erasure"])
        )

    def optouts(self) -> OptOutList:
        """As :meth:`SpeakerDB.optouts` (an admin key)."""
        d = self._request("GET", "/v1/optouts")
        return OptOutList(d["count"], [_time(t) for t in d["dates"]])

    def erasure(self) -> Erasure:
        """As :meth:`SpeakerDB.erasure`."""
        return Erasure(**self._request("GET", "/v1/erasure"))

    def info(self) -> DatabaseInfo:
        """As :meth:`SpeakerDB.info`; the service keeps its paths to itself, so the database is its URL."""
        return _make(DatabaseInfo, {"db_path": self.url, "index_path": None, **self._request("GET", "/v1/info")})

    @property
    def threshold(self) -> float:
        """The service's decision threshold, on :attr:`threshold_scale`."""
        return float(self._request("GET", "/v1/threshold")["threshold"])

    @property
    def threshold_scale(self) -> str:
        """``"cosine"`` or ``"as-norm"``: the scale of the service's threshold (from /v1/info)."""
        return self.info().threshold_scale

    @property
    def norm_settings(self) -> NormSettings | None:
        """The service's score normalisation (None: raw cosine scores), from /v1/info."""
        d = self.info().norm
        return NormSettings.from_dict(d) if d else None

    def set_threshold(self, value: float) -> None:
        """As :meth:`SpeakerDB.set_threshold` (an admin key)."""
        self._request("PUT", "/v1/threshold", body={"threshold": value})

    def set_norm(
        self,
        cohort: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        top_n: int | None = None,
        progress: Progress | None = None,
        screen_enrolled: bool = True,
    ) -> NormChange:
        """As :meth:`SpeakerDB.set_norm` (an admin key): the cohort's recordings (a folder, searched
        recursively, or a list of files) are uploaded in one request and embedded by the service."""
        if isinstance(cohort, (str, os.PathLike)):
            root = Path(cohort).expanduser()
            if not root.is_dir():
                raise errors.InvalidInputError(f"cohort {errors.printable_path(root)} is not a directory")
            files: Sequence[str | os.PathLike[str]] = audio_files(root)
        else:
            files = cohort
        check_cohort_count(len(files), top_n)  # as SpeakerDB.set_norm does, and before the upload, not after
        fields = {"screen_enrolled": "true" if screen_enrolled else "false"}
        if top_n is not None:
            fields["top_n"] = str(top_n)
        parts = [("files", *_read(f)) for f in files]
        # The cohort replaces the stored one whole: it cannot be sent in parts.
        with _advise_on_413(
            "the cohort goes in one request: use fewer or shorter recordings, or run `speakerdb norm --cohort DIR` "
            "with --db on the service's machine"
        ):
            doc = self._request("POST", "/v1/norm", fields=fields, files=parts)
        if progress is not None:
            progress(len(files), len(files), 0.0)
        return NormChange.from_dict(doc)

    def set_norm_off(self) -> NormChange:
        """As :meth:`SpeakerDB.set_norm_off` (an admin key)."""
        return NormChange.from_dict(self._request("DELETE", "/v1/norm"))

    def export(
        self, path: str | os.PathLike[str], speakers: Sequence[str] | None = None, *, overwrite: bool = False
    ) -> ExportSummary:
        """Download a gallery to ``path`` (0600, written under a temporary name, then renamed)."""
        path = errors.check_output(path, overwrite=overwrite)
        query = "&".join(f"speaker={_q(s)}" for s in (speakers or []))
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        with self._open("GET", "/v1/gallery" + (f"?{query}" if query else "")) as response:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := response.read(DOWNLOAD_CHUNK):
                        out.write(chunk)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            headers = response.headers
        return ExportSummary(
            str(path), int(headers["X-Speakerdb-Speakers"]), int(headers["X-Speakerdb-Utterances"]), path.stat().st_size
        )

    def import_gallery(
        self,
        path: str | os.PathLike[str],
        *,
        on_conflict: str = "fail",
        dry_run: bool = False,
        limits: Limits | None = None,
    ) -> ImportSummary:
        """As :meth:`SpeakerDB.import_gallery`; the file is uploaded and the service's own limits apply."""
        if limits is not None:
            raise errors.InvalidInputError("--max-utterances applies on the server, not through --server")
        name, data = _read(path, what="gallery")
        doc = self._request(
            "POST",
            "/v1/gallery",
            fields={"on_conflict": on_conflict, "dry_run": _bool(dry_run)},
            files=[("file", name, data)],
        )
        return _make(ImportSummary, doc)

    # ---- keys and audit -----------------------------------------------------------------
    def create_key(self, name: str, scope: str, *, actor: str | None = None) -> NewKey:
        """As :meth:`SpeakerDB.create_key`; the service records the caller's key as the actor."""
        return NewKey(**self._request("POST", "/v1/keys", body={"name": name, "scope": scope}))

    def list_keys(self) -> builtins.list[KeyInfo]:
        """As :meth:`SpeakerDB.list_keys`."""
        return [
            KeyInfo(d["name"], d["scope"], _time(d["created_at"]), parse_iso(d["revoked_at"]))
            for d in self._request("GET", "/v1/keys")
        ]

    def revoke_key(self, name: str, *, actor: str | None = None) -> KeyInfo:
        """As :meth:`SpeakerDB.revoke_key`; the service records the caller's key as the actor."""
        d = self._request("DELETE", f"/v1/keys/{_q(name)}")
        return KeyInfo(d["name"], d["scope"], _time(d["created_at"]), parse_iso(d["revoked_at"]))

    def audit(self, limit: int = 100, speaker: str | None = None) -> builtins.list[AuditEntry]:
        """As :meth:`SpeakerDB.audit`."""
        query = f"?limit={int(limit)}" + (f"&speaker={_q(speaker)}" if speaker else "")
        return [
            AuditEntry(_time(d["time"]), d["key_name"], d["operation"], d["speaker"], d["detail"])
            for d in self._request("GET", "/v1/audit" + query)
        ]

    # ---- HTTP ---------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        fields: dict[str, str] | None = None,
        files: builtins.list[tuple[str, str, bytes]] | None = None,
    ) -> Any:
        with self._open(method, path, body=body, fields=fields, files=files) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def _open(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        fields: dict[str, str] | None = None,
        files: builtins.list[tuple[str, str, bytes]] | None = None,
    ) -> Any:
        if path.startswith("/v1/"):
            path = self._v1 + path.removeprefix("/v1")
        headers = {"Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None
        if files is not None:
            data, ctype = _multipart(fields or {}, files)
            headers["Content-Type"] = ctype
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(self.retries + 1):
            try:
                response = self._send(method, path, headers, data)
            except urllib.error.URLError as e:
                raise errors.ServiceError(f"cannot reach the speakerdb service at {self.url}: {e.reason}") from None
            except ConnectionRefusedError as e:  # http.client's large uploads; urllib wraps it in URLError
                raise errors.ServiceError(f"cannot reach the speakerdb service at {self.url}: {e}") from None
            except (TimeoutError, ConnectionError) as e:
                raise errors.ServiceError(f"the speakerdb service at {self.url} did not answer: {e}") from None
            except (OSError, http.client.HTTPException) as e:
                raise errors.ServiceError(f"cannot reach the speakerdb service at {self.url}: {e}") from None
            if response.status < 400:
                return response
            with response:
                error = _service_error(response.status, response.reason, response.headers, response.read())
            if (
                response.status == 503
                and attempt < self.retries
                and isinstance(error, errors.ServiceError)
                and error.retry_after is not None
            ):
                time.sleep(min(error.retry_after, MAX_RETRY_WAIT_S))
                continue
            raise error
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, headers: dict[str, str], data: bytes | None) -> Any:
        """One request; its response (an error status included) to read and close."""
        target = urllib.parse.urlsplit(self.url)
        if data is not None and len(data) >= EXPECT_CONTINUE_BYTES and target.scheme == "http" and not _proxied(target):
            return self._send_after_asking(target, method, path, headers, data)
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            return e  # a response too: status, reason, headers, read()

    def _send_after_asking(
        self, target: urllib.parse.SplitResult, method: str, path: str, headers: dict[str, str], data: bytes
    ) -> http.client.HTTPResponse:
        """An upload with ``Expect: 100-continue``: the body goes only after the service's
        "100 Continue" (or CONTINUE_WAIT_S of silence); an answer instead (413 too large, 401
        no valid key) is returned without sending it. Plain http only: over TLS, select()
        cannot tell the service's answer from TLS's own records."""
        conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=self.timeout)
        try:
            conn.putrequest(method, target.path + path, skip_accept_encoding=True)
            for name, value in {
                **headers,
                "Content-Length": str(len(data)),
                "Expect": "100-continue",
                "Connection": "close",
            }.items():
                conn.putheader(name, value)
            conn.endheaders()
            if select.select([conn.sock], [], [], CONTINUE_WAIT_S)[0]:
                reader = conn.sock.makefile("rb")
                status_line = reader.readline()
                if status_line.split(b" ", 2)[1:2] != [b"100"]:  # the answer, before the body
                    # HTTPResponse only calls makefile() on what it is given: a socket, or this.
                    response = http.client.HTTPResponse(_Answered(status_line, reader), method=method)  # type: ignore[arg-type]
                    response.begin()
                    return response
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass  # the 100's headers; nothing else comes before the body is sent
                reader.close()  # the socket stays open: conn holds it
            try:
                conn.send(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused part-way: the answer is read below
            return conn.getresponse()
        finally:
            conn.close()  # the response keeps the socket open until it is closed


class LiveStream:
    """A live session on the service (``WebSocket /v1/stream``, docs/live.md), with the methods of
    :class:`speakerdb.live.LiveSession`; made by :meth:`Client.stream`. One thread at a time.

    The service answers audio as it embeds it: :meth:`feed` sends its audio and returns the
    events that have arrived by then (those of earlier audio, mostly); :meth:`finish` ends
    the audio and waits for the rest, :meth:`close` returns the timeline. An ``error`` event
    that ends the stream is raised as the library's exception (a refused key as
    :class:`~speakerdb.errors.AuthenticationError`, a full service as
    :class:`~speakerdb.errors.ServiceError` with code ``busy``) at the next call.
    """

    def __init__(self, client: Client, sample_rate: int, encoding: str, threshold: float | None) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidStatus  # ~80 ms: a client opening a stream pays it
        from websockets.sync.client import connect  # websockets, as above

        wire = STREAM_ENCODINGS.get(encoding)
        if wire is None:
            raise errors.InvalidInputError(
                f"encoding must be one of {', '.join(sorted(set(STREAM_ENCODINGS.values())))}, not {encoding!r}"
            )
        self.sample_rate, self.encoding = int(sample_rate), wire
        self._bytes_per_sample = STREAM_BYTES_PER_SAMPLE[wire]
        self._samples_sent = 0
        self._events: builtins.list[LiveEvent] = []
        self._timeline: Timeline | None = None
        self._error: errors.SpeakerDBError | None = None
        self._finished = False
        query = {"sample_rate": str(self.sample_rate), "encoding": wire}
        if threshold is not None:
            query["threshold"] = repr(float(threshold))
        base = urllib.parse.urlsplit(client.url)
        scheme = "wss" if base.scheme == "https" else "ws"
        url = urllib.parse.urlunsplit(
            (scheme, base.netloc, base.path + client._v1 + "/stream", urllib.parse.urlencode(query), "")
        )
        headers = {"Authorization": f"Bearer {client.key}"} if client.key else {}
        self._timeout = client.timeout
        self._stack = contextlib.ExitStack()
        try:
            # max_queue None: events are read into memory as they come, so the service never
            # waits on this client to read while this client waits on it to take audio.
            self._ws = self._stack.enter_context(
                connect(
                    url,
                    additional_headers=headers,
                    open_timeout=min(client.timeout, 60.0),
                    max_size=STREAM_MAX_MESSAGE_BYTES,
                    max_queue=None,
                    compression=None,
                )
            )
        except InvalidStatus as e:
            raise _service_error(
                e.response.status_code, e.response.reason_phrase, e.response.headers, bytes(e.response.body or b"")
            ) from None
        except (InvalidHandshake, OSError, TimeoutError) as e:
            raise errors.ServiceError(f"cannot open a live stream at {client.url}: {e}") from None

    @property
    def seconds_fed(self) -> float:
        """Seconds of audio sent so far."""
        return self._samples_sent / self.sample_rate

    def feed(self, audio: Any) -> builtins.list[LiveEvent]:
        """Send the next audio (bytes in this stream's encoding, or float32 samples for ``f32le``
        and ``pcm_s16le``); returns the events that arrived meanwhile."""
        data = self._encode(audio)
        self._check_open()
        for start in range(0, len(data), STREAM_FRAME_BYTES):
            frame = data[start : start + STREAM_FRAME_BYTES]
            self._send(frame)
            self._samples_sent += len(frame) // self._bytes_per_sample
        self._drain(wait=False)
        events, self._events = self._events, []
        return events

    def finish(self) -> builtins.list[LiveEvent]:
        """End the audio: the events still to come (the final segments), once the service has
        sent its timeline (kept for :meth:`close`)."""
        if not self._finished:
            self._check_open()
            self._send(json.dumps({"type": "end"}))
            self._finished = True
            self._drain(wait=True)
        events, self._events = self._events, []
        return events

    def enroll(self, label: str, name: str, *, add: bool = False) -> EnrolledEvent:
        """Enroll the voice reported as ``label`` as speaker ``name`` (a write key), from the
        window vectors the service's session holds; ``add`` adds to an existing speaker."""
        self._check_open()
        if self._finished:
            raise errors.InvalidInputError("the live stream is finished: nothing more can be enrolled")
        self._send(json.dumps({"type": "enroll", "label": label, "name": name, "add": bool(add)}))
        while True:
            event = self._next(self._timeout)
            if isinstance(event, EnrolledEvent):
                return event
            if isinstance(event, ErrorEvent):  # this enrollment's (the stream goes on), or the stream's end
                raise _stream_error(event.code, event.message)
            if event is not None:
                self._events.append(event)

    def close(self) -> Timeline:
        """End the stream (:meth:`finish` if not done) and return its timeline, as
        ``timeline`` gives it for the same audio as a file."""
        try:
            if self._timeline is None:
                self.finish()
            assert self._timeline is not None
            return self._timeline
        finally:
            self._stack.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # ---- the WebSocket ------------------------------------------------------------------
    def _encode(self, audio: Any) -> bytes:
        if isinstance(audio, (bytes, bytearray, memoryview)):
            data = bytes(audio)
        elif hasattr(audio, "astype") and self.encoding == "f32le":  # a numpy array: no numpy import here
            data = bytes(audio.astype("<f4").tobytes())
        elif hasattr(audio, "astype") and self.encoding == "pcm_s16le":
            data = bytes((audio.clip(-1.0, 1.0) * 32767.0).round().astype("<i2").tobytes())
        else:
            raise errors.InvalidInputError(
                f"feed takes bytes in {self.encoding} (or float32 samples for f32le or pcm_s16le)"
            )
        if len(data) % self._bytes_per_sample:
            raise errors.InvalidInputError(
                f"{len(data)} bytes of {self.encoding} audio: "
                f"not a whole number of {self._bytes_per_sample}-byte samples"
            )
        return data

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error

    def _send(self, message: str | bytes) -> None:
        from websockets.exceptions import ConnectionClosed  # websockets: as in __init__

        try:
            self._ws.send(message)
        except ConnectionClosed:
            self._read_rest()  # the service's error event, sent before it closed
            raise self._failed(errors.ServiceError("the service closed the live stream")) from None

    def _drain(self, wait: bool) -> None:
        """Keep the events that have arrived (``wait``: until the timeline has); an error event
        ends the stream: raised, here and at every later call."""
        while not (wait and self._timeline is not None):
            event = self._next(self._timeout if wait else 0.0)
            if isinstance(event, ErrorEvent):
                error = self._failed(_stream_error(event.code, event.message))
                self._read_rest()
                raise error
            if event is not None:
                self._events.append(event)
            elif not wait:
                return

    def _read_rest(self) -> None:
        """Until the service closes: a timeline it may still send (a stream past its length)."""
        try:
            while True:
                event = self._next(self._timeout)
                if isinstance(event, ErrorEvent):
                    self._failed(_stream_error(event.code, event.message))
        except errors.ServiceError:
            pass

    def _failed(self, error: errors.SpeakerDBError) -> errors.SpeakerDBError:
        """The stream has ended with ``error`` (the first one, if it had ended already)."""
        self._error = self._error or error
        return self._error

    def _next(self, timeout: float) -> LiveEvent | None:
        """The next event; None for nothing within ``timeout`` 0, or for the timeline (kept).
        ServiceError once the stream is closed or silent for ``timeout``."""
        from websockets.exceptions import ConnectionClosed  # websockets: as in __init__

        while True:
            try:
                raw = self._ws.recv(timeout=timeout)
            except TimeoutError:
                if timeout <= 0:
                    return None
                raise self._failed(
                    errors.ServiceError(f"the service sent nothing for {timeout:g} s on the live stream")
                ) from None
            except ConnectionClosed as e:
                raise self._failed(errors.ServiceError(f"the service closed the live stream ({e})")) from None
            if isinstance(raw, bytes):
                continue  # the service sends text only
            doc = json.loads(raw)
            if doc.get("type") == "timeline":
                self._timeline = _timeline({k: v for k, v in doc.items() if k != "type"}, "live")
                return None
            event = _live_event(doc)
            if event is not None:
                return event


class _Answered:
    """The socket of an answer whose status line was already read, for http.client to parse."""

    def __init__(self, status_line: bytes, reader: io.BufferedReader) -> None:
        self.status_line, self.reader = status_line, reader

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_Prepended(self.status_line, self.reader))


class _Prepended(io.RawIOBase):
    """``head`` followed by what is left in ``rest``."""

    def __init__(self, head: bytes, rest: io.BufferedReader) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        chunk = self.rest.read1(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self.rest.close()
        super().close()


def _proxied(target: urllib.parse.SplitResult) -> bool:
    """Whether urllib would send a request to ``target`` through a proxy (``http_proxy``...)."""
    return target.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(target.netloc)


def _service_error(status: int, reason: str, headers: Any, raw: bytes) -> errors.SpeakerDBError:
    """An HTTP error answer (its status, reason, headers and body) as the library's exception."""
    try:
        doc = json.loads(raw or b"{}")["error"]
        code, message = str(doc["code"]), str(doc["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {status} {reason}"
    retry = headers.get("Retry-After") if headers else None
    retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    if status == 401:
        return errors.AuthenticationError(f"{message} (set SPEAKERDB_API_KEY)", status, code, retry_after)
    if status == 403:
        return errors.PermissionDeniedError(message, status, code, retry_after)
    kind = ERROR_CODES.get(code)
    if kind is not None and kind is not errors.SpeakerDBError:
        return kind(message)
    if kind is errors.SpeakerDBError:
        error = errors.SpeakerDBError(message)
        error.code = code  # bad_audio: its message names the file, but not as AudioError's (path, reason)
        return error
    return errors.ServiceError(f"the service answered {status}: {message}", status, code, retry_after)


@contextlib.contextmanager
def _advise_on_413(advice: str | None) -> Iterator[None]:
    """A request that must stay one (an enrollment, a cohort) refused as too large or as too
    many files: the service's reason, then ``advice`` (None: none to give)."""
    try:
        yield
    except errors.ServiceError as e:
        if e.status != 413 or advice is None:
            raise
        raise errors.ServiceError(f"{e}: {advice}", e.status, e.code, e.retry_after) from None


def _stream_error(code: str, message: str) -> errors.SpeakerDBError:
    """An ``error`` event of a live stream as the library's exception."""
    if code == "unauthorized":
        return errors.AuthenticationError(f"{message} (set SPEAKERDB_API_KEY)", 401, code)
    if code == "forbidden":
        return errors.PermissionDeniedError(message, 403, code)
    if code in ("busy", "not_ready"):
        return errors.ServiceError(f"the service cannot take a live stream now: {message}", 503, code)
    kind = ERROR_CODES.get(code)
    if kind is not None and kind is not errors.SpeakerDBError:
        return kind(message)
    return errors.ServiceError(f"the service ended the live stream: {message}", None, code)


def _live_event(d: dict[str, Any]) -> LiveEvent | None:
    """A live stream's event from its JSON (None for a type this client does not know)."""
    kind = {"speech": SpeechEvent, "voice": VoiceEvent, "enrolled": EnrolledEvent, "error": ErrorEvent}.get(
        str(d.get("type"))
    )
    return None if kind is None else _make(kind, d)


def _timeline(d: dict[str, Any] | str, label: str) -> Timeline:
    """A Timeline from the service's JSON for one file (or the reason the file failed here)."""
    if not isinstance(d, dict) or "error" in d:
        return Timeline(
            d["file"] if isinstance(d, dict) else label, 0.0, [], [], error=d["error"] if isinstance(d, dict) else d
        )
    return Timeline(
        d["file"],
        d["duration"],
        [_make(Segment, s) for s in d["segments"]],
        [_make(Voice, v) for v in d["voices"]],
        notes=list(d.get("notes", [])),
    )


def _read(f: str | os.PathLike[str], what: str = "audio") -> tuple[str, bytes]:
    """(the name as given, the bytes) of a local file; the library's own checks first (AudioError)."""
    if what == "audio":
        errors.check_input_file(f)
    try:
        return errors.printable_path(f), Path(f).read_bytes()
    except OSError as e:
        if what == "audio":
            raise errors.AudioError(f, f"cannot be read ({e.strerror or e})") from None
        raise errors.InvalidInputError(f"cannot read {errors.printable_path(f)}: {e.strerror or e}") from None


def _multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = "speakerdb-" + secrets.token_hex(16)
    out = bytearray(_multipart_fields(boundary, fields))
    for name, filename, data in files:
        out += _multipart_file_head(boundary, name, filename) + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _multipart_size(fields: dict[str, str], files: list[tuple[str, str, int]]) -> int:
    """The length of :func:`_multipart`'s body for ``fields`` and files of (field, name, size)
    (every boundary is as long as this one), without building it."""
    boundary = "speakerdb-" + "0" * 32
    heads = sum(len(_multipart_file_head(boundary, name, filename)) + size + 2 for name, filename, size in files)
    return len(_multipart_fields(boundary, fields)) + heads + len(f"--{boundary}--\r\n")


def _multipart_fields(boundary: str, fields: dict[str, str]) -> bytes:
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    return bytes(out)


def _multipart_file_head(boundary: str, name: str, filename: str) -> bytes:
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{quoted}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def _too_large_alone(size: int, limit: int) -> str:
    """The reason a file is not sent: its request alone would be ``size`` bytes, over ``limit``."""
    return f"is too large for the service: {size:,} bytes to upload, at most {limit:,} are accepted in one request"


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _bool(value: bool) -> str:
    return "true" if value else "false"


_T = TypeVar("_T")


def _make(cls: type[_T], d: dict[str, Any], **overrides: Any) -> _T:
    """``cls`` (a dataclass) from the answer's fields that it has (a newer service may send more)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass
    return cls(**{**{k: v for k, v in d.items() if k in names}, **overrides})


def _time(text: str | None) -> datetime:
    """A time the service always sends (ISO 8601, as :func:`speakerdb.results.iso` writes it)."""
    t = parse_iso(text)
    if t is None:
        raise errors.ServiceError(f"the service answered an unreadable time: {text!r}")
    return t


def _identification(d: dict[str, Any]) -> Identification:
    if "error" in d:
        return Identification(d["file"], None, None, [], d["error"])
    return _make(Identification, d, candidates=[_make(Candidate, c) for c in d["candidates"]])


def _utterance(d: dict[str, Any]) -> UtteranceInfo:
    return UtteranceInfo(d["source"], d["duration_s"], d["audio_sha256"], parse_iso(d.get("created_at")))


def _speaker(d: dict[str, Any]) -> SpeakerInfo:
    c = d.get("consent")
    consent = Consent(c["text"], parse_iso(c.get("recorded_at")), c.get("recorded_by")) if c else None
    return SpeakerInfo(
        d["name"],
        d["n_utterances"],
        d["total_duration_s"],
        _time(d["created_at"]),
        _time(d["updated_at"]),
        d["metadata"],
        [_utterance(u) for u in d.get("utterances", [])],
        consent,
        parse_iso(d.get("last_seen")),
        d.get("external_id_hash"),
        [
            AuditEntry(_time(a["time"]), a["key_name"], a["operation"], a["speaker"], a["detail"])
            for a in d.get("audit", [])
        ],
    )


def _erasure(d: dict[str, Any] | None) -> Erasure | None:
    return Erasure(d["erased"], d["not_reachable"]) if d else None


if TYPE_CHECKING:  # mypy checks here that a Client is a SpeakerDBProtocol (tests/test_protocol.py compares signatures)

    def _satisfies_the_protocol(client: Client) -> SpeakerDBProtocol:
        return client
