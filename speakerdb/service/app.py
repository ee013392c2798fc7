"""``speakerdb serve``: the :class:`~speakerdb.api.SpeakerDB` facade over HTTP (FastAPI + uvicorn).

Every route parses its request, calls one facade method (on a lane of the worker's
:class:`~.worker.Service`) and answers the JSON that the matching CLI command prints with
``--json``; nothing here decides anything about speakers. Around the routes:

- :mod:`.settings`: :class:`ServeConfig`, and how it reaches the worker processes;
- :mod:`.auth`: keys and scopes; :mod:`.uploads`: the files a request sends;
- :mod:`.lanes`: the two lanes of a worker and identify batches; :mod:`.worker`: what a worker holds;
- :mod:`.metrics`: ``/metrics``, summed over the workers;
- :mod:`.connections`: limits checked before the app (413, 415, 401 before an upload's
  body), lingering close, and deadlines on slow clients;
- :mod:`.responses`: errors are always ``{"error": {"code", "message"}}``, never a stack trace;
- :mod:`.tracebacks`: the log's tracebacks, types and frames without messages;
- :mod:`.stream`: ``WebSocket /v1/stream``, live sessions;
- :mod:`.serve`: starting uvicorn.

The app is built by :func:`create_app` from a :class:`ServeConfig`; uvicorn's worker
processes rebuild it from the JSON that :func:`~.serve.serve` leaves them (``ServeConfig.from_env``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, errors
from ..api import SpeakerDB
from ..config import DEFAULT_TOP_N, segmentation_model
from ..results import ServiceLimits, SpeakerInfo
from ..storage import store
from ..storage.keys import SCOPES
from ..timeline import Params
from .apidocs import install as install_docs
from .auth import Caller, require
from .connections import Guard, TimedHTTPProtocol, TimedWebSocketProtocol, path_template, route_words
from .responses import ApiError, error_response, from_library, ok
from .schemas import (
    AUDIO_PARTS,
    EXAMPLE_ENROLL,
    EXAMPLE_ERASURE,
    EXAMPLE_ERROR,
    EXAMPLE_IDENTIFY,
    EXAMPLE_INFO,
    EXAMPLE_NORM,
    EXAMPLE_SPEAKER,
    EXAMPLE_TIMELINE,
    EXAMPLE_VERIFY,
    ExpireBody,
    KeyBody,
    OptOutBody,
    PolicyBody,
    RenameBody,
    ThresholdBody,
    example,
)
from .settings import COHORT_MAX_FILES, ServeConfig
from .stream import router as stream_router
from .tracebacks import log_error
from .uploads import COPY_CHUNK, client_names
from .web import install as install_page
from .worker import Service

log = logging.getLogger("speakerdb.server")
#: POST /v1/norm's top_n, as the command line's --top-n says it.
TOP_N_HELP = f"Highest cohort scores averaged per side [default: {DEFAULT_TOP_N}, at most the cohort's size]."

# The caller's key must allow reading, changing speakers, or administering keys and settings.
READ = Depends(require("read"))
WRITE = Depends(require("write"))
ADMIN = Depends(require("admin"))


#: Fields of ``speakerdb info`` that name places on the server: left out of GET /v1/info.
SERVER_ONLY_INFO = ("db_path", "index_path")


def _form_json(text: str | None, what: str) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise ApiError(422, "invalid_input", f"{what} must be JSON, not {text[:80]!r}") from None
    except RecursionError:  # nesting thousands deep exhausts the parser's stack: bad input, not a 500
        raise ApiError(
            422, "invalid_input", f"{what} is nested more than {store.MAX_METADATA_DEPTH} levels deep"
        ) from None


def _check_count(service: Service, files: list[UploadFile]) -> None:
    if len(files) > service.config.max_files:
        raise ApiError(
            413, "too_many_files", f"{len(files)} files in one request, at most {service.config.max_files} are accepted"
        )


# ---- the app ------------------------------------------------------------------------------
def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app of one worker (uvicorn calls this with no argument in each worker process)."""
    config = config or ServeConfig.from_env()
    store.APPLICATION = store.APPLICATION or "speakerdb serve"  # how its PostgreSQL sessions are named
    if config.insecure_no_auth:
        log.warning(
            "speakerdb worker %d: --insecure-no-auth: every request is allowed everything, without a key", os.getpid()
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(config)
        app.state.service = service
        loader = asyncio.create_task(service.start())
        publisher = asyncio.create_task(service.publish_metrics_forever())
        expirer = asyncio.create_task(service.expire_forever())
        try:
            yield
        finally:
            loader.cancel()
            publisher.cancel()
            expirer.cancel()
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = FastAPI(
        title="speakerdb",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # apidocs.install serves /docs without a CDN; no /redoc
        redoc_url=None,
        description="Speaker enrollment, identification and verification. Answers are the JSON that the "
        "`speakerdb` CLI prints with `--json`. Send `Authorization: Bearer KEY` (`speakerdb keys create`). "
        'Errors are `{"error": {"code", "message"}}`. Every `/v1/...` route is also answered as '
        "`/v1/galleries/{gallery}/...` for each gallery (tenant) of the database; the plain routes are the "
        "default gallery's, and a key reaches its own gallery's routes only.",
    )
    app.state.config = config
    # This process's connections (uvicorn makes them once the app is built).
    TimedHTTPProtocol.header_timeout_s, TimedHTTPProtocol.body_timeout_s = (
        config.header_timeout_s,
        config.body_timeout_s,
    )
    TimedWebSocketProtocol.drain_timeout_s = config.stream_idle_s
    _install_handlers(app)
    install_page(app)  # the web page at / (docs/web.md)
    install_docs(app)  # /docs, Swagger UI from this service
    # Every /v1 route, mounted twice (below): as the default gallery's, and under
    # /v1/galleries/{gallery} as any gallery's (auth.require takes the gallery from the path).
    router = APIRouter()

    @app.get("/healthz", tags=["service"], responses=example({"status": "ok"}))
    async def healthz() -> dict[str, str]:
        """Answers 200 as soon as the process runs (liveness)."""
        return {"status": "ok"}

    @app.get(
        "/readyz", tags=["service"], responses=example({"status": "ready", "model": "microsoft/wavlm-base-plus-sv"})
    )
    async def readyz(request: Request):
        """200 once the model is loaded (readiness); 503 while it loads or if it cannot be loaded."""
        service: Service = request.app.state.service
        service.require_ready()
        return {"status": "ready", "model": service.model_id, "pid": os.getpid()}

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format: requests by endpoint and status, latency histograms, seconds of
        audio embedded, queue depth, summed over every worker of the service (the others'
        figures at most a second old); `speakerdb_worker_pid` names the worker that answered."""
        service: Service = request.app.state.service
        text = await asyncio.get_running_loop().run_in_executor(None, service.metrics_text)  # reads files
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @router.post("/identify", tags=["speakers"], responses=example(EXAMPLE_IDENTIFY))
    async def identify(
        request: Request,
        files: list[UploadFile] = File(..., description=AUDIO_PARTS),
        top_k: int = Form(5, ge=1, description="Candidates per file."),
        threshold: float | None = Form(
            None, description="Override the threshold for this call ([0, 1]; an AS-norm score on an AS-norm database)."
        ),
        count_voices: bool = Form(
            True,
            description="Count the voices in each file (`voices`); "
            "false skips that pass (`identify --no-voice-check`).",
        ),
        caller: Caller = READ,
    ) -> JSONResponse:
        """Name the speaker of each file (`speakerdb identify --json`): one answer per file, in order,
        or `{"file", "error"}` for a file that could not be used.

        `curl -H "Authorization: Bearer $KEY" -F files=@call.wav http://127.0.0.1:8000/v1/identify`
        """
        service: Service = request.app.state.service
        _check_count(service, files)
        saved = await service.uploads.save(files)
        entry = service.identify_batches.add(saved, top_k, threshold, count_voices)
        try:
            results = await service.embed(
                service.identify_batches.run, entry, names=client_names(saved), files=len(saved)
            )
        finally:
            service.identify_batches.discard(entry)
            service.uploads.remove(saved)
        return ok([r.to_dict() for r in results])

    @router.post("/speakers/{name}/enrollments", tags=["speakers"], responses=example(EXAMPLE_ENROLL, 201))
    async def enroll(
        request: Request,
        name: str,
        files: list[UploadFile] = File(..., description=AUDIO_PARTS),
        metadata: str | None = Form(None, description='JSON object, e.g. {"team": "sales"}'),
        new: bool = Form(False, description="Refuse if the speaker exists."),
        strict: bool = Form(False, description="Refuse doubtful clips instead of warning."),
        consent: str | None = Form(None, description="Who consented, how and when (or a signed form's reference)."),
        external_id: str | None = Form(None, description="The person's id elsewhere; only its keyed hash is kept."),
        override_optout: bool = Form(False, description="Enroll a person who opted out (an admin key)."),
        caller: Caller = WRITE,
    ) -> JSONResponse:
        """Enroll speaker `name` from the files, or add them to it (`speakerdb enroll --json`).
        201 when the speaker was created, 200 when added to.

        `curl -H "Authorization: Bearer $KEY" -F files=@alice1.flac -F files=@alice2.flac
        -F 'metadata={"team":"sales"}' http://127.0.0.1:8000/v1/speakers/alice/enrollments`
        """
        service: Service = request.app.state.service
        _check_count(service, files)
        meta = _form_json(metadata, "metadata")
        if override_optout and caller.scope != "admin":
            raise ApiError(
                403, "forbidden", f"key {caller.key_name!r} has scope {caller.scope!r}; override_optout needs 'admin'"
            )
        saved = await service.uploads.save(files)
        try:
            result = await service.embed(
                lambda db, progress: db.enroll(
                    name,
                    saved,
                    new=new,
                    metadata=meta,
                    strict=strict,
                    consent=consent,
                    external_id=external_id,
                    override_optout=override_optout,
                    progress=progress,
                ),
                caller=caller,
                names=client_names(saved),
                files=len(saved),
            )
        finally:
            service.uploads.remove(saved)
        return ok(result.to_dict(), 201 if result.created else 200)

    @router.post("/speakers/{name}/verify", tags=["speakers"], responses=example(EXAMPLE_VERIFY))
    async def verify(
        request: Request,
        name: str,
        file: UploadFile = File(..., description="One audio file."),
        threshold: float | None = Form(None, description="Override the threshold for this call."),
        count_voices: bool = Form(
            True, description="Count the voices in the file (`voices`); the answer for a blend of several is unsure."
        ),
        caller: Caller = READ,
    ) -> JSONResponse:
        """Is `file` spoken by `name`? (`speakerdb verify --json`)

        `curl -H "Authorization: Bearer $KEY" -F file=@claim.wav http://127.0.0.1:8000/v1/speakers/alice/verify`
        """
        service: Service = request.app.state.service
        saved = await service.uploads.save([file])
        try:
            result = await service.embed(
                lambda db: db.verify(name, saved[0], threshold=threshold, count_voices=count_voices),
                names=client_names(saved),
            )
        finally:
            service.uploads.remove(saved)
        return ok(result.to_dict())

    @router.post("/timeline", tags=["speakers"], responses=example(EXAMPLE_TIMELINE))
    async def timeline(
        request: Request,
        files: list[UploadFile] = File(..., description=AUDIO_PARTS),
        threshold: float | None = Form(None, description="Override the threshold for this call."),
        window: float = Form(1.5, description="Window length, seconds (0.5-30)."),
        hop: float = Form(0.5, description="Window hop, seconds (0.05 to the window)."),
        min_segment: float = Form(1.0, description="Shorter segments join their neighbour, seconds."),
        speakers: int | None = Form(None, description="How many voices each file holds (default: found from it)."),
        min_speakers: int | None = Form(None, description="At least this many voices."),
        max_speakers: int | None = Form(None, description="At most this many voices."),
        caller: Caller = READ,
    ) -> JSONResponse:
        """Who speaks when in each file (`speakerdb timeline --json`): segments named from the
        enrolled speakers or unknown-1, unknown-2..., or `{"file", "error"}` for a file that
        could not be used. Recordings longer than the service's `--max-audio-s` are refused.

        `curl -H "Authorization: Bearer $KEY" -F files=@meeting.wav http://127.0.0.1:8000/v1/timeline`
        """
        service: Service = request.app.state.service
        _check_count(service, files)
        try:
            params = Params(
                window_s=window,
                hop_s=hop,
                min_segment_s=min_segment,
                speakers=speakers,
                min_speakers=min_speakers,
                max_speakers=max_speakers,
                # The operator's model, never a path a caller names (SPEAKERDB_SEGMENTATION).
                segmentation=segmentation_model(),
            ).check()
        except errors.SpeakerDBError as e:  # before anything is uploaded
            raise from_library(e, {}) from None
        saved = await service.uploads.save(files)
        try:
            results = await service.embed(
                lambda db, progress: db.timeline(saved, threshold=threshold, params=params, progress=progress),
                names=client_names(saved),
                files=len(saved),
            )
        finally:
            service.uploads.remove(saved)
        return ok([t.to_dict() for t in results])

    @router.get("/speakers", tags=["speakers"], responses=example([EXAMPLE_SPEAKER]))
    async def list_speakers(request: Request, caller: Caller = READ) -> JSONResponse:
        """Every enrolled speaker (`speakerdb list --json`)."""
        speakers = await request.app.state.service.admin(lambda db: db.list())
        return ok([{k: v for k, v in s.to_dict().items() if k not in SpeakerInfo.SHOW_ONLY} for s in speakers])

    @router.get(
        "/speakers/{name}",
        tags=["speakers"],
        responses={
            **example(
                {
                    **EXAMPLE_SPEAKER,
                    "utterances": EXAMPLE_ENROLL["added"],
                    "consent": {
                        "text": "signed form CF-118, 2026-11-30",
                        "recorded_at": "2026-11-30T18:00:00Z",
                        "recorded_by": "ops",
                    },
                    "last_seen": "2026-12-06T09:12:00Z",
                    "external_id_hash": None,
                    "audit": [
                        {
                            "time": "2026-11-30T18:00:00Z",
                            "key_name": "ops",
                            "operation": "enroll",
                            "speaker": "alice",
                            "detail": {"files": 2, "new": False, "consent": True, "override_optout": False},
                        }
                    ],
                }
            ),
            **example(EXAMPLE_ERROR, 404),
        },
    )
    async def show(request: Request, name: str, caller: Caller = READ) -> JSONResponse:
        """Everything held about one speaker (`speakerdb show --json`): metadata, consent, utterances
        (sources and times), last_seen, the keyed hash of an external id, the audit records that
        concern them. Never a vector."""
        info = await request.app.state.service.admin(lambda db: db.show(name))
        return ok(info.to_dict())

    @router.patch("/speakers/{name}", tags=["speakers"], responses=example({"old": "alice", "new": "alicia"}))
    async def rename(request: Request, name: str, body: RenameBody, caller: Caller = WRITE) -> JSONResponse:
        """Rename a speaker (`speakerdb rename --json`).

        `curl -X PATCH -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json'
        -d '{"name": "alicia"}' http://127.0.0.1:8000/v1/speakers/alice`
        """
        await request.app.state.service.admin(lambda db: db.rename(name, body.name), caller=caller)
        return ok({"old": name, "new": body.name})

    @router.delete(
        "/speakers/{name}",
        tags=["speakers"],
        responses=example({"removed": ["bob"], "utterances": 2, "erasure": EXAMPLE_ERASURE}),
    )
    async def remove(request: Request, name: str, caller: Caller = WRITE) -> JSONResponse:
        """Delete a speaker, its utterances and embeddings (`speakerdb remove --yes --json`); `erasure`
        says where the voiceprint was erased and what no command can reach."""

        def call(db: SpeakerDB) -> tuple[int, Any]:
            return db.remove(name), db.erasure()

        n, erasure = await request.app.state.service.admin(call, caller=caller)
        return ok({"removed": [name], "utterances": n, "erasure": erasure.to_dict()})

    @router.post(
        "/speakers/{name}/optout",
        tags=["governance"],
        responses=example(
            {
                "removed": True,
                "utterances": 2,
                "external_id": True,
                "recorded_at": "2026-12-07T02:00:00Z",
                "erasure": EXAMPLE_ERASURE,
            }
        ),
    )
    async def optout(request: Request, name: str, body: OptOutBody, caller: Caller = WRITE) -> JSONResponse:
        """Opt a person out (`speakerdb optout --json`): the speaker, if enrolled, is removed and only
        keyed hashes of the name and external id are kept, so that enrolling them again is refused."""
        result = await request.app.state.service.admin(
            lambda db: db.optout(name, external_id=body.external_id), caller=caller
        )
        return ok(result.to_dict())

    @router.get("/optouts", tags=["governance"], responses=example({"count": 1, "dates": ["2026-12-07T02:00:00Z"]}))
    async def optouts(request: Request, caller: Caller = ADMIN) -> JSONResponse:
        """How many opt-outs are kept and when each was recorded (`speakerdb optout --list --json`); never names."""
        return ok((await request.app.state.service.admin(lambda db: db.optouts())).to_dict())

    @router.get(
        "/policy",
        tags=["governance"],
        responses=example({"require_consent": True, "expire_after": "3y", "expire_after_s": 94608000}),
    )
    async def get_policy(request: Request, caller: Caller = READ) -> JSONResponse:
        """The governance policy (`speakerdb policy --json`)."""
        return ok((await request.app.state.service.admin(lambda db: db.policy())).to_dict())

    @router.put(
        "/policy",
        tags=["governance"],
        responses=example({"require_consent": True, "expire_after": "3y", "expire_after_s": 94608000}),
    )
    async def put_policy(request: Request, body: PolicyBody, caller: Caller = ADMIN) -> JSONResponse:
        """Change the policy (`speakerdb policy --require-consent --expire-after 3y --json`)."""
        policy = await request.app.state.service.admin(
            lambda db: db.set_policy(require_consent=body.require_consent, expire_after=body.expire_after),
            caller=caller,
        )
        return ok(policy.to_dict())

    @router.post(
        "/expire",
        tags=["governance"],
        responses=example(
            {
                "expired": ["bob"],
                "utterances": 2,
                "cutoff": "2023-12-07T02:00:00Z",
                "dry_run": False,
                "erasure": EXAMPLE_ERASURE,
            }
        ),
    )
    async def expire(request: Request, body: ExpireBody, caller: Caller = ADMIN) -> JSONResponse:
        """Remove the speakers the retention policy expires (`speakerdb expire --json`); the service
        also runs this once a day."""
        service: Service = request.app.state.service
        service.require_ready()
        await service.embed_lane.run(lambda db: db.flush_seen())  # this worker's decisions count first
        summary = await service.admin(lambda db: db.expire(dry_run=body.dry_run), caller=caller)
        return ok(summary.to_dict())

    @router.get("/erasure", tags=["governance"], responses=example(EXAMPLE_ERASURE))
    async def erasure(request: Request, caller: Caller = READ) -> JSONResponse:
        """Where a removal erases a voiceprint in this database, and what no command can reach."""
        return ok((await request.app.state.service.admin(lambda db: db.erasure())).to_dict())

    @router.get("/info", tags=["database"], responses=example(EXAMPLE_INFO))
    async def info(request: Request, caller: Caller = READ) -> JSONResponse:
        """The database: model, dimension, threshold, counts (`speakerdb info --json` without the
        server's paths, which are no client's business), and `limits`: what one request may
        carry, so that a client can split its uploads to fit."""
        service: Service = request.app.state.service
        document = (await service.admin(lambda db: db.info())).to_dict()
        limits = ServiceLimits(service.config.max_files, service.config.max_upload_bytes, COHORT_MAX_FILES)
        return ok({**{k: v for k, v in document.items() if k not in SERVER_ONLY_INFO}, "limits": limits.to_dict()})

    @router.get(
        "/whoami",
        tags=["keys"],
        responses=example(
            {"key": "ops", "scope": "admin", "scopes": ["read", "write", "admin"], "keys_required": True}
        ),
    )
    async def whoami(request: Request, caller: Caller = READ) -> JSONResponse:
        """The caller's key and what its scope allows (the web page offers only that): `key` is
        null where the service needs no key (loopback, the database never had one)."""
        return ok(
            {
                "key": caller.key_name,
                "scope": caller.scope,
                "scopes": [s for s in SCOPES if SCOPES.index(s) <= SCOPES.index(caller.scope)],
                "keys_required": caller.key_name is not None,
            }
        )

    @router.get("/threshold", tags=["database"], responses=example({"threshold": 0.86}))
    async def get_threshold(request: Request, caller: Caller = READ) -> JSONResponse:
        """The decision threshold (`speakerdb threshold --json`)."""
        return ok({"threshold": await request.app.state.service.admin(lambda db: db.threshold)})

    @router.put("/threshold", tags=["database"], responses=example({"threshold": 0.8}))
    async def put_threshold(request: Request, body: ThresholdBody, caller: Caller = ADMIN) -> JSONResponse:
        """Store a new decision threshold in [0, 1] (`speakerdb threshold VALUE --json`)."""

        def call(db: SpeakerDB) -> float:
            db.set_threshold(body.threshold)
            return db.threshold  # as stored

        return ok({"threshold": await request.app.state.service.admin(call, caller=caller)})

    @router.post("/norm", tags=["database"], responses=example(EXAMPLE_NORM))
    async def post_norm(
        request: Request,
        files: list[UploadFile] = File(..., description="Recordings of people who are NOT enrolled (the cohort)."),
        top_n: int | None = Form(None, ge=1, description=TOP_N_HELP),
        screen_enrolled: bool = Form(True, description="Set aside recordings that score as an enrolled speaker."),
        caller: Caller = ADMIN,
    ) -> JSONResponse:
        """Turn on AS-norm with the uploaded cohort, replacing any cohort stored before
        (`speakerdb norm --cohort DIR --json`). Only the cohort's embeddings are kept. If the
        threshold's scale changes it is reset and `recalibrate` is true: calibrate it again.

        `curl -H "Authorization: Bearer $KEY" -F files=@c1.flac ... -F files=@c40.flac
        http://127.0.0.1:8000/v1/norm`
        """
        service: Service = request.app.state.service
        if len(files) > COHORT_MAX_FILES:
            many = f"{len(files)} cohort files in one request, at most {COHORT_MAX_FILES} are accepted"
            raise ApiError(413, "too_many_files", many)
        saved = await service.uploads.save(files)
        try:
            change = await service.embed(
                lambda db, progress: db.set_norm(
                    saved, top_n=top_n, progress=progress, screen_enrolled=screen_enrolled
                ),
                caller=caller,
                names=client_names(saved),
                files=len(saved),
            )
        finally:
            service.uploads.remove(saved)
        return ok(change.to_dict())

    @router.delete("/norm", tags=["database"], responses=example({**EXAMPLE_NORM, "norm": None}))
    async def delete_norm(request: Request, caller: Caller = ADMIN) -> JSONResponse:
        """Return to raw cosine scores; the cohort's embeddings are deleted (`speakerdb norm --off --json`)."""
        change = await request.app.state.service.admin(lambda db: db.set_norm_off(), caller=caller)
        return ok(change.to_dict())

    @router.get(
        "/gallery",
        tags=["galleries"],
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"application/zip": {}},
                "description": "A gallery file (docs/gallery-format.md): metadata and embeddings.",
            }
        },
    )
    async def export(
        request: Request,
        speaker: list[str] | None = Query(None, description="Only these speakers."),
        caller: Caller = ADMIN,
    ) -> StreamingResponse:
        """Export speakers to a gallery file, streamed (`speakerdb export`). The file is written to a
        private temporary file that is unlinked before the first byte is sent.

        `curl -H "Authorization: Bearer $KEY" -o site-a.gallery http://127.0.0.1:8000/v1/gallery`
        """
        service: Service = request.app.state.service
        path = service.uploads.new_path(".gallery")

        def call(db: SpeakerDB) -> tuple[Any, Any]:
            summary = db.export(path, speaker or None)
            f = open(path, "rb")  # noqa: SIM115 - closed by the stream once the last chunk is sent
            os.unlink(path)  # the open descriptor keeps the data until the stream ends; no name on disk
            return summary, f

        try:
            summary, f = await service.admin(call)
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(COPY_CHUNK):
                    yield chunk

        headers = {
            "Content-Disposition": 'attachment; filename="speakerdb.gallery"',
            "Content-Length": str(summary.size_bytes),
            "X-Speakerdb-Speakers": str(summary.n_speakers),
            "X-Speakerdb-Utterances": str(summary.n_utterances),
        }
        return StreamingResponse(chunks(), media_type="application/zip", headers=headers)

    @router.post(
        "/gallery",
        tags=["galleries"],
        responses=example(
            {
                "path": "site-a.gallery",
                "dry_run": False,
                "created": ["alice"],
                "merged": [],
                "replaced": [],
                "skipped": [],
                "utterances_added": 2,
            }
        ),
    )
    async def import_gallery(
        request: Request,
        file: UploadFile = File(..., description="A gallery file."),
        on_conflict: str = Form("fail", description="fail, skip, replace or merge"),
        dry_run: bool = Form(False, description="Report what would happen; write nothing."),
        caller: Caller = WRITE,
    ) -> JSONResponse:
        """Import a gallery file, all of it or nothing (`speakerdb import --json`).

        `curl -H "Authorization: Bearer $KEY" -F file=@site-a.gallery -F on_conflict=merge
        http://127.0.0.1:8000/v1/gallery`
        """
        service: Service = request.app.state.service
        saved = await service.uploads.save([file])

        try:
            summary = await service.admin(
                lambda db: db.import_gallery(saved[0], on_conflict=on_conflict, dry_run=dry_run),
                caller=caller,
                names=client_names(saved),
            )
        finally:
            service.uploads.remove(saved)
        return ok(summary.to_dict())

    @router.get(
        "/keys",
        tags=["keys"],
        responses=example(
            [
                {
                    "name": "ops",
                    "scope": "admin",
                    "created_at": "2026-11-30T18:00:00Z",
                    "revoked_at": None,
                    "active": True,
                }
            ]
        ),
    )
    async def list_keys(request: Request, caller: Caller = ADMIN) -> JSONResponse:
        """Every API key, revoked ones included (never their secrets)."""
        return ok([k.to_dict() for k in await request.app.state.service.admin(lambda db: db.list_keys())])

    @router.post(
        "/keys",
        tags=["keys"],
        status_code=201,
        responses=example({"name": "callcentre-1", "key": "sdb_...", "scope": "read"}, 201),
    )
    async def create_key(request: Request, body: KeyBody, caller: Caller = ADMIN) -> JSONResponse:
        """Create a key; its secret is in this answer only."""
        new = await request.app.state.service.admin(lambda db: db.create_key(body.name, body.scope), caller=caller)
        return ok(new.to_dict(), 201)

    @router.delete(
        "/keys/{name}",
        tags=["keys"],
        responses=example(
            {
                "name": "callcentre-1",
                "scope": "read",
                "created_at": "2026-11-30T18:00:00Z",
                "revoked_at": "2026-11-30T19:00:00Z",
                "active": False,
            }
        ),
    )
    async def revoke_key(request: Request, name: str, caller: Caller = ADMIN) -> JSONResponse:
        """Revoke a key: refused from the next request on, by every worker."""
        info = await request.app.state.service.admin(lambda db: db.revoke_key(name), caller=caller)
        return ok(info.to_dict())

    @router.get(
        "/audit",
        tags=["keys"],
        responses=example(
            [
                {
                    "time": "2026-11-30T18:00:00Z",
                    "key_name": "ops",
                    "operation": "enroll",
                    "speaker": "alice",
                    "detail": {"files": 2, "new": False},
                }
            ]
        ),
    )
    async def audit_log(
        request: Request, limit: int = Query(100, ge=1, le=100_000), speaker: str | None = None, caller: Caller = ADMIN
    ) -> JSONResponse:
        """The newest changes made through the service or to keys, oldest first (`speakerdb audit --json`)."""
        entries = await request.app.state.service.admin(lambda db: db.audit(limit, speaker))
        return ok([e.to_dict() for e in entries])

    # The metrics name a route by its template; these are the router's, relative to a mount
    # (FastAPI hands the Guard the route itself), which connections.endpoint_label completes.
    app.state.mounted_routes = frozenset(id(route) for route in router.routes)  # routes compare by value
    app.include_router(router, prefix="/v1")
    # Not repeated in the OpenAPI page, which says so once (the description above).
    app.include_router(router, prefix="/v1/galleries/{gallery}", include_in_schema=False)
    # WebSocket /v1/stream: live sessions (service/stream.py), the same two ways.
    app.include_router(stream_router, prefix="/v1", tags=["live"])
    app.include_router(stream_router, prefix="/v1/galleries/{gallery}", include_in_schema=False)
    # What the access log may show of a path no route matched: these words, never a name.
    paths = [getattr(r, "path", None) for r in [*app.router.routes, *router.routes, *stream_router.routes]]
    app.state.route_words = route_words([p for p in paths if p] + ["/v1/galleries/{gallery}"])
    return app


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid_fields", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        # A route's errors are answered by the Guard; this is for one of the Guard's own.
        # Starlette re-raises it to uvicorn, whose log serve's formatter keeps message-free.
        log_error(log, f"unexpected error in {request.method} {path_template(request.scope)}", e)
        return error_response(500, "internal", f"internal error ({type(e).__name__}); see the server log")

    app.add_middleware(Guard)
