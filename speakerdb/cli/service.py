"""The HTTP service: run it (serve), manage its API keys (keys) and read its audit record (audit)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING

import click

from ..config import SEGMENTATION_ENV, default_db_path, segmentation_model
from ..errors import ModelLoadError
from ..service import settings  # standard library only: the service's defaults, in one place
from .output import emit, json_option, printable
from .params import key_name, speaker_name

if TYPE_CHECKING:
    from ..results import AuditEntry
    from . import State


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Other than loopback only once the database has an API key.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes, each with its own copy of the model (~1 GB resident with WavLM base).",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(0.001, 10_000),
    default=settings.DEFAULT_MAX_UPLOAD_BYTES // settings.MB,
    show_default=True,
    help="Largest request body, in MB (10^6 bytes): 413 beyond it.",
)
@click.option(
    "--max-files",
    type=click.IntRange(1, 10_000),
    default=settings.DEFAULT_MAX_FILES,
    show_default=True,
    help="Most audio files in one request: 413 beyond it.",
)
@click.option(
    "--max-audio-s",
    type=click.FloatRange(1, 4 * 3600),
    default=settings.DEFAULT_MAX_AUDIO_S,
    show_default=True,
    help="Longest recording accepted, in seconds: 400 (or a per-file error) beyond it.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(1, 100_000),
    default=settings.DEFAULT_QUEUE_SIZE,
    show_default=True,
    help="Embedding requests a worker holds, running and waiting; beyond it: 503 with Retry-After.",
)
@click.option(
    "--max-streams",
    type=click.IntRange(1, 10_000),
    default=settings.DEFAULT_MAX_STREAMS,
    show_default=True,
    help="Live streams (WebSocket /v1/stream) a worker holds; one more is closed with 1013, try again later.",
)
@click.option(
    "--max-streams-per-key",
    type=click.IntRange(1, 10_000),
    default=settings.DEFAULT_MAX_STREAMS_PER_KEY,
    show_default=True,
    help="Live streams one API key holds on a worker; one more is closed with 1013.",
)
@click.option(
    "--max-stream-s",
    type=click.FloatRange(1, 7 * 24 * 3600),
    default=settings.DEFAULT_MAX_STREAM_S,
    show_default=True,
    help="Longest live stream, in seconds of audio or of connection, whichever is larger.",
)
@click.option(
    "--stream-idle-s",
    type=click.FloatRange(0.1, 3600),
    default=settings.DEFAULT_STREAM_IDLE_S,
    show_default=True,
    help="Seconds a live stream may go without audio, or its client without taking an event, before it is closed.",
)
@click.option(
    "--max-frame-kb",
    type=click.IntRange(1, 64 * 1024),
    default=settings.DEFAULT_MAX_FRAME_BYTES // 1024,
    show_default=True,
    help="Largest audio frame of a live stream, in KiB (1024 bytes).",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve without API keys, on any address: every caller may do everything. Announced at every start.",
)
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="TLS certificate chain (PEM).")
@click.option(
    "--tmp-dir",
    type=click.Path(file_okay=False),
    help="Where uploads are kept while a request runs "
    "[default: the system's temporary directory]; a private directory is made inside it.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(0.1, 3600),
    default=settings.DEFAULT_HEADER_TIMEOUT_S,
    show_default=True,
    help="Seconds a client has to send a request's headers; then 408 and the connection is closed.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(0.1, 3600),
    default=settings.DEFAULT_BODY_TIMEOUT_S,
    show_default=True,
    help="Seconds a request's body may pause; then 408 (or a closed connection).",
)
@click.option(
    "--expire-every",
    type=click.FloatRange(0.1, 365 * 86_400),
    default=settings.DEFAULT_EXPIRE_EVERY_S,
    show_default=True,
    metavar="SECONDS",
    help="How often each worker runs `speakerdb expire` (the retention policy), the first time at start.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.option(
    "--access-log/--no-access-log",
    default=settings.DEFAULT_ACCESS_LOG,
    show_default=True,
    help="One line per request at info: route template (/v1/speakers/{name}), status, time, key name, "
    "gallery; never the path or query, which hold speaker names.",
)
@json_option
@click.pass_obj
def serve(
    state: State,
    host: str,
    port: int,
    workers: int,
    max_upload_mb: float,
    max_files: int,
    max_audio_s: float,
    queue_size: int,
    max_streams: int,
    max_streams_per_key: int,
    max_stream_s: float,
    stream_idle_s: float,
    max_frame_kb: int,
    insecure_no_auth: bool,
    ssl_keyfile: str | None,
    ssl_certfile: str | None,
    tmp_dir: str | None,
    header_timeout: float,
    body_timeout: float,
    expire_every: float,
    log_level: str,
    access_log: bool,
    as_json: bool,
) -> None:
    """Run the identification service (HTTP, FastAPI on uvicorn) on this database.

    Each worker loads the model once; /readyz answers 200 when it is loaded, /healthz
    at once. Endpoints are under /v1 and answer the JSON that the commands print with
    --json; the OpenAPI page is /docs. Requests carry `Authorization: Bearer KEY`
    (see `speakerdb keys create`). SIGTERM stops it once requests in flight are done.

    \b
    Examples:
      speakerdb serve
      speakerdb keys create ops --scope admin && speakerdb serve --host 0.0.0.0 --workers 2
      curl -H "Authorization: Bearer $KEY" -F files=@call.wav http://127.0.0.1:8000/v1/identify
    """
    if state.server:
        raise click.UsageError("serve runs a service on a local database: drop --server / SPEAKERDB_SERVER")
    state.keep_collecting()  # a service runs for days: Python's own full collections
    if (ssl_keyfile is None) != (ssl_certfile is None):
        raise click.UsageError("give both --ssl-keyfile and --ssl-certfile, or neither")
    segmentation = segmentation_model()
    if segmentation:  # else every /v1/timeline fails while the service looks healthy: one error line now
        from ..workflows import check_segmentation  # deferred: torch and numpy, not for --help

        try:
            check_segmentation(segmentation)
        except ModelLoadError as e:  # named by its variable: serve has no --segmentation option
            raise ModelLoadError(f"{SEGMENTATION_ENV}: {e}") from None
    # uvicorn (and FastAPI in the workers): imported by serve only.
    from ..service.serve import ServeConfig, is_loopback
    from ..service.serve import (  # deferred: uvicorn and FastAPI load only when serve runs
        serve as run_server,
    )

    state.allow_create()
    db = state.local_db
    db_path = str(db.target)  # a server URL with its password: the workers must connect too
    shown = str(db.db_path)  # what is printed: a server URL without its password
    has_keys = db.has_keys(any_gallery=True)  # every gallery's keys: the service answers for all
    # Decided once, here: a database that has or had a key requires one for every request,
    # even once all are revoked; the service never opens while it runs (server.Service).
    had_keys = has_keys or db.has_keys(include_revoked=True, any_gallery=True)
    state.release()  # the workers open it themselves
    if insecure_no_auth:
        click.echo(
            "warning: --insecure-no-auth: no API keys are checked; anyone who can reach "
            f"{host}:{port} may read, change and delete every speaker",
            err=True,
        )
    elif not is_loopback(host) and not had_keys:
        raise click.UsageError(
            f"refusing to serve {db.db_path} on {host} without API keys: create one with "
            "`speakerdb keys create NAME --scope admin`, or pass --insecure-no-auth"
        )
    elif not had_keys:
        click.echo(
            f"note: {db.db_path} has no API keys: every caller on this machine may do everything "
            "(`speakerdb keys create NAME --scope admin` turns keys on)",
            err=True,
        )
    elif not has_keys:
        click.echo(
            f"note: every API key of {db.db_path} is revoked: every request is refused until "
            "`speakerdb keys create NAME --scope admin`",
            err=True,
        )
    config = ServeConfig(
        db_path=db_path or str(default_db_path()),
        model=state.model,
        device=state.device,
        precision=state.precision,
        max_upload_bytes=int(max_upload_mb * settings.MB),
        max_files=max_files,
        max_audio_s=max_audio_s,
        queue_size=queue_size,
        max_streams=max_streams,
        max_streams_per_key=max_streams_per_key,
        max_stream_s=max_stream_s,
        stream_idle_s=stream_idle_s,
        max_frame_bytes=max_frame_kb * 1024,
        insecure_no_auth=insecure_no_auth,
        require_keys=had_keys and not insecure_no_auth,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        tmp_dir=tmp_dir,
        expire_every_s=expire_every,
        access_log=access_log,
    )
    url = f"{'https' if ssl_certfile else 'http'}://{host if ':' not in host else f'[{host}]'}:{port}"
    auth = (
        "none (--insecure-no-auth)"
        if insecure_no_auth
        else "API keys"
        if has_keys
        else "API keys (all revoked: every request is refused)"
        if had_keys
        else "none (loopback, no keys yet)"
    )
    emit(
        as_json,
        {"url": url, "db_path": shown, "workers": workers, "auth": auth},
        f"serving {shown} at {url} with {workers} worker(s), auth: {auth}; SIGTERM or Ctrl-C stops it",
    )
    sys.stdout.flush()
    run_server(
        config,
        host=host,
        port=port,
        workers=workers,
        ssl_keyfile=ssl_keyfile,
        ssl_certfile=ssl_certfile,
        log_level=log_level,
    )


@click.group()
def keys() -> None:
    """Manage the API keys of `speakerdb serve` (stored as salted hashes in the database).

    Scopes: read (identify, verify, list, show, info, policy), write (also enroll,
    rename, remove, optout, import), admin (also threshold, policy changes, expire,
    optout --list, enroll --override-optout, export, keys, audit).

    \b
    Examples:
      speakerdb keys create callcentre --scope read
      speakerdb keys list
      speakerdb keys revoke callcentre
    """


@keys.command(name="create")
@click.argument("name", callback=key_name)
@click.option(
    "--scope",
    type=click.Choice(["read", "write", "admin"]),
    default="read",
    show_default=True,
    help="What the key may do.",
)
@json_option
@click.pass_obj
def keys_create(state: State, name: str, scope: str, as_json: bool) -> None:
    """Create API key NAME and print it, this once: only its hash is stored.

    \b
    Example:
      speakerdb keys create ops --scope admin --json
    """
    state.allow_create()
    new = state.db.create_key(name, scope)
    if not as_json:
        click.echo(f"created key {new.name} (scope {new.scope}); store it now, it cannot be shown again:", err=True)
    emit(as_json, new.to_dict(), new.key)


@keys.command(name="list")
@json_option
@click.pass_obj
def keys_list(state: State, as_json: bool) -> None:
    """List API keys (names, scopes, dates; never the keys).

    \b
    Example:
      speakerdb keys list --json
    """
    found = state.db.list_keys()
    text = (
        "\n".join(
            f"{k.name}  {k.scope:<5}  created {k.created_at:%Y-%m-%d %H:%M}"
            + (f"  REVOKED {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
            for k in found
        )
        or "no keys"
    )
    emit(as_json, [k.to_dict() for k in found], text)


@keys.command(name="revoke")
@click.argument("name", callback=key_name)
@json_option
@click.pass_obj
def keys_revoke(state: State, name: str, as_json: bool) -> None:
    """Revoke API key NAME: every server refuses it from its next request.

    \b
    Example:
      speakerdb keys revoke callcentre
    """
    info = state.db.revoke_key(name)
    emit(as_json, info.to_dict(), f"revoked key {info.name}")


@click.command()
@click.option(
    "--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True, help="Show the newest N records."
)
@click.option("--speaker", metavar="NAME", callback=speaker_name, help="Only changes to this speaker.")
@json_option
@click.pass_obj
def audit(state: State, limit: int, speaker: str | None, as_json: bool) -> None:
    """Show the gallery's audit record: every change (enroll, rename, remove, threshold, norm,
    import, policy, expire, optout, keys), who made it and when: an API key through the
    service, `local:<user>` for a command or Python program on this machine. Galleries made
    and removed: `speakerdb galleries audit`.

    \b
    Examples:
      speakerdb audit --limit 20
      speakerdb audit --speaker alice --json
    """
    entries = state.db.audit(limit, speaker)
    emit(as_json, [e.to_dict() for e in entries], audit_text(entries))


def audit_text(entries: list[AuditEntry]) -> str:
    """Audit records as ``audit`` prints them, one a line."""
    return (
        "\n".join(
            f"{store_iso(e.time)}  {printable(e.key_name or '-')}  {e.operation:<10}  {printable(e.speaker or '-')}"
            + (f"  {printable(json.dumps(e.detail, ensure_ascii=False))}" if e.detail else "")
            for e in entries
        )
        or "no audit records"
    )


def store_iso(t: datetime) -> str:
    """A stored (UTC) time as audit prints it."""
    return t.strftime("%Y-%m-%d %H:%M:%S") + "Z"


COMMANDS = [serve, keys, audit]
