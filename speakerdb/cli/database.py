"""The database: what it holds (info), its schema and copies (db ...), its search index
(index), gallery files in and out (export, import), and its galleries (tenants: galleries ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..results import Limits
from .output import confirm, emit, end_line, json_option, rows_copied, yes_option
from .params import check_duration, speaker_name
from .service import audit_text

if TYPE_CHECKING:
    from . import State


@click.command()
@json_option
@click.pass_obj
def info(state: State, as_json: bool) -> None:
    """Show the database: paths, model, dimension, counts, threshold.

    \b
    Example:
      speakerdb --db team.sqlite info
    """
    d = state.db.info().to_dict()
    lines = []
    for key, value in d.items():
        if isinstance(value, dict):  # index_params: one indented line each, not a Python dict
            lines.append(f"{key}:")
            lines += [f"  {k}: {v}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {'-' if value is None else value}")
    emit(as_json, d, "\n".join(lines))


@click.command(name="index")
@click.option(
    "--ef-search",
    type=click.IntRange(1, 100_000),
    help="HNSW candidates per search: higher finds the true nearest speaker more often, slower. Applies at once.",
)
@click.option(
    "--approximate-above",
    type=click.IntRange(0, 2**31 - 1),
    help="Speakers above which the index is an HNSW graph instead of exact search (from the next rebuild).",
)
@click.option("--hnsw-m", type=click.IntRange(2, 256), help="HNSW graph degree, 2 to 256 (from the next rebuild).")
@click.option(
    "--ef-construction", type=click.IntRange(1, 10_000), help="HNSW build effort, 1 to 10,000 (from the next rebuild)."
)
@click.option(
    "--rebuild",
    is_flag=True,
    help="Rebuild the index files from SQLite now (an HNSW graph of a million speakers takes ~15 min).",
)
@json_option
@click.pass_obj
def index_(
    state: State,
    ef_search: int | None,
    approximate_above: int | None,
    hnsw_m: int | None,
    ef_construction: int | None,
    rebuild: bool,
    as_json: bool,
) -> None:
    """Show or change the index settings stored with the database; rebuild the index.

    The index is a cache of SQLite: exact search up to --approximate-above speakers
    (200,000 by default), an HNSW graph above. Shows the stored settings and what the
    index file was built with.

    \b
    Examples:
      speakerdb index
      speakerdb index --ef-search 4096
      speakerdb index --approximate-above 500000 --rebuild
    """
    state.local_only("index")
    changes = {
        key: value
        for key, value in (
            ("hnsw_ef_search", ef_search),
            ("approximate_above", approximate_above),
            ("hnsw_m", hnsw_m),
            ("hnsw_ef_construction", ef_construction),
        )
        if value is not None
    }
    db = state.local_db
    if changes:
        db.set_index_params(**changes)
    rebuilt = db.rebuild_index() if rebuild else None
    document: dict[str, Any] = {"params": db.index_params, "file": db.index_file_info()}
    if rebuilt is not None:
        document["rebuilt_speakers"] = rebuilt
    lines = [f"{key}: {value}" for key, value in document["params"].items()]
    built = document["file"]
    if built is None:
        lines.append("index file: none yet (built on the next search)")
    else:
        lines.append(
            f"index file: {built['kind']}, {built['speakers']} speakers, {built['bytes']:,} bytes, "
            f"built with {', '.join(f'{k}={v}' for k, v in (built['built_with'] or {}).items())}"
        )
    emit(as_json, document, "\n".join(lines))


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--speaker",
    "speakers",
    multiple=True,
    callback=speaker_name,
    metavar="NAME",
    help="Export only this speaker (repeatable).",
)
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
@click.option(
    "--to-key",
    type=click.Path(dir_okay=False),
    metavar="PUBFILE",
    help="Seal the gallery to the recipient whose X25519 public key (PEM) is in PUBFILE.",
)
@json_option
@click.pass_obj
def export(state: State, path: str, speakers: tuple[str, ...], force: bool, to_key: str | None, as_json: bool) -> None:
    """Export speakers to a gallery file: metadata and embeddings, no audio.

    The file is portable between machines running the same model; see
    docs/gallery-format.md for what is inside. With --to-key it is sealed to a
    recipient (X25519 + AES-GCM): only their private key opens it (import --key).

    \b
    Examples:
      speakerdb export site-a.gallery
      speakerdb export team.gallery --speaker alice --speaker bob
      speakerdb export for-site-b.gallery --to-key site-b.pub
    """
    if to_key is not None:
        state.local_only("export --to-key")
        summary = state.local_db.export_sealed(path, to_key, list(speakers) or None, overwrite=force)
    else:
        summary = state.db.export(path, list(speakers) or None, overwrite=force)
    emit(
        as_json,
        summary.to_dict(),
        f"exported {summary.n_speakers} speaker(s), {summary.n_utterances} utterance(s) to {summary.path} "
        f"({summary.size_bytes} bytes)",
    )


@click.command(name="import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--on-conflict",
    type=click.Choice(["fail", "skip", "replace", "merge"]),
    default="fail",
    show_default=True,
    help="For speakers that already exist: refuse the whole import, keep ours, take theirs whole, "
    "or add their utterances to ours. A new speaker whose name differs from another's only in case "
    "or spacing refuses the import in every mode.",
)
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option(
    "--max-utterances",
    type=click.IntRange(min=1),
    metavar="N",
    help="Refuse galleries declaring more than N utterances [default: 1,000,000]; memory grows with N "
    "(about 2 KiB of names and metadata plus the vector per utterance).",
)
@click.option(
    "--key",
    "private_key",
    type=click.Path(dir_okay=False),
    metavar="KEYFILE",
    help="Open a gallery sealed to you with your X25519 private key (PEM) in KEYFILE.",
)
@json_option
@click.pass_obj
def import_(
    state: State,
    path: str,
    on_conflict: str,
    dry_run: bool,
    max_utterances: int | None,
    private_key: str | None,
    as_json: bool,
) -> None:
    """Import a gallery file into this database, all of it or nothing.

    The file is validated whole (format, checksums, model, names, vectors) before
    anything is written, and imported in one transaction.

    \b
    Examples:
      speakerdb import site-a.gallery
      speakerdb import site-a.gallery --on-conflict merge --dry-run
      speakerdb import from-site-a.gallery --key site-b.key
    """
    limits = Limits(max_utterances=max_utterances) if max_utterances is not None else None
    state.allow_create()
    if private_key is not None:
        state.local_only("import --key")
        summary = state.local_db.import_sealed(
            path, private_key, on_conflict=on_conflict, dry_run=dry_run, limits=limits
        )
    else:
        summary = state.db.import_gallery(path, on_conflict=on_conflict, dry_run=dry_run, limits=limits)
    if dry_run:  # a dry run into a new path leaves no database behind
        state.discard_if_unused()
    counts = ", ".join(f"{len(getattr(summary, k))} {k}" for k in ("created", "merged", "replaced", "skipped"))
    prefix = "would import" if dry_run else "imported"
    emit(
        as_json, summary.to_dict(), f"{prefix} {summary.path}: {counts}; {summary.utterances_added} utterance(s) added"
    )


@click.group()
def db() -> None:
    """Manage the database schema (Alembic revisions).

    \b
    Examples:
      speakerdb db current
      speakerdb db upgrade
    """


@db.command()
@json_option
@click.pass_obj
def current(state: State, as_json: bool) -> None:
    """Show the database's schema revision and the one this speakerdb needs.

    \b
    Example:
      speakerdb db current
    """
    state.local_only("db current")
    from ..api import (  # deferred: keeps numpy and SQLAlchemy out of light imports (--help)
        database_revision,  # SQLAlchemy and Alembic: loaded when the command runs
    )

    revision, head = database_revision(state.db_path)
    emit(as_json, {"revision": revision, "head": head}, f"revision: {revision or 'none'} (this speakerdb needs {head})")


@db.command()
@click.argument("revision", default="head")
@json_option
@click.pass_obj
def upgrade(state: State, revision: str, as_json: bool) -> None:
    """Migrate the database to REVISION (default: the newest). Back it up first.

    \b
    Example:
      speakerdb --db old.sqlite db upgrade
    """
    state.local_only("db upgrade")
    from ..api import (  # SQLAlchemy and Alembic: when the command runs
        database_revision,
        upgrade_database,
    )

    before, _ = database_revision(state.db_path)
    new = upgrade_database(state.db_path, revision)
    text = (
        f"database already at revision {new}: nothing to do"
        if new == before
        else (f"database upgraded from revision {before or 'none'} to {new}")
    )
    emit(as_json, {"revision": new, "previous": before}, text)


@db.command()
@click.argument("revision")
@yes_option
@json_option
@click.pass_obj
def downgrade(state: State, revision: str, yes: bool, as_json: bool) -> None:
    """Migrate the database down to REVISION, for rolling back to an older speakerdb.

    Data that the older schema has no place for is lost; "base" drops every table and
    with them every speaker. Asks first on a terminal; --yes for scripts. Back up first.

    \b
    Example:
      cp speakers.sqlite backup.sqlite && speakerdb --db speakers.sqlite db downgrade 0001
    """
    state.local_only("db downgrade")
    from ..api import (  # SQLAlchemy and Alembic: when the command runs
        database_revision,
        downgrade_database,
    )

    current_revision, _ = database_revision(state.db_path)
    what = "drop every table and every speaker" if revision == "base" else f"migrate down to revision {revision}"
    confirm(f"Database at revision {current_revision or 'none'}: {what}?", yes)
    new = downgrade_database(state.db_path, revision)
    emit(as_json, {"revision": new}, f"database at revision {new or 'none'}")


@db.command(name="copy")
@click.argument("source")
@click.argument("destination")
@json_option
def copy_(source: str, destination: str, as_json: bool) -> None:
    """Copy a whole database to a new or empty one: SQLite to PostgreSQL, or back.

    Every speaker, utterance, embedding, setting, key and audit record, ids kept; each
    row checked as a gallery import checks it, and written in one transaction (all of it
    or nothing). SOURCE and DESTINATION are SQLite paths or postgresql:// URLs.

    \b
    Examples:
      speakerdb db copy speakers.sqlite postgresql://speakerdb@db.internal:5432/speakers
      speakerdb db copy postgresql://speakerdb@db.internal/speakers backup.sqlite --json
    """
    from ..api import copy_database  # SQLAlchemy: loaded when the command runs

    progress = rows_copied(as_json)  # a long copy shows it is moving (terminals only)
    summary = copy_database(source, destination, progress=progress)
    end_line(progress)
    text = f"copied {summary.source} to {summary.destination}: " + ", ".join(
        f"{n:,} {table}" for table, n in summary.rows.items()
    )
    emit(as_json, summary.to_dict(), text)


@db.command()
@json_option
@click.pass_obj
def vacuum(state: State, as_json: bool) -> None:
    """Rewrite the tables so that deleted speakers leave no trace in them.

    On PostgreSQL, `remove` runs a plain VACUUM; this runs VACUUM FULL and a CHECKPOINT
    (the tables are locked while it runs: do it in a quiet hour). On SQLite, VACUUM.
    See docs/several-machines.md ("Deletion on a server") for what no command can erase.

    \b
    Example:
      speakerdb --db postgresql://speakerdb@db.internal/speakers db vacuum
    """
    state.local_only("db vacuum")
    db = state.local_db
    db.vacuum()
    emit(as_json, {"vacuumed": str(db.db_path)}, f"vacuumed {db.db_path}")


@click.group()
def galleries() -> None:
    """Make, list and remove the galleries of a database: separate sets of speakers, each with
    its own threshold, normalisation, API keys, audit record and index (tenants). Every
    database has the gallery `default`, which is what it held before galleries existed.
    Other commands work in the gallery chosen by --gallery (or $SPEAKERDB_GALLERY).
    Not to be confused with gallery files, which `export` and `import` write and read.

    \b
    Examples:
      speakerdb galleries create acme
      speakerdb --gallery acme enroll alice alice1.flac
      speakerdb --gallery acme keys create acme-ops --scope admin
      speakerdb galleries list
      speakerdb galleries remove acme --yes
      speakerdb galleries audit
    """


@galleries.command(name="list")
@json_option
@click.pass_obj
def galleries_list(state: State, as_json: bool) -> None:
    """Every gallery: its name, when it was made, its speakers and keys.

    \b
    Example:
      speakerdb galleries list --json
    """
    state.local_only("galleries list")
    found = state.local_db.list_galleries()
    lines = [f"{g.name}\t{g.n_speakers} speakers\t{g.n_keys} keys\tcreated {g.to_dict()['created_at']}" for g in found]
    emit(as_json, [g.to_dict() for g in found], "\n".join(lines))


@galleries.command(name="audit")
@click.option(
    "--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True, help="Show the newest N records."
)
@json_option
@click.pass_obj
def galleries_audit(state: State, limit: int, as_json: bool) -> None:
    """Show when galleries were made and removed (the records name them). Only here: no
    gallery's own audit record (`speakerdb audit`, GET /v1/audit) shows them.

    \b
    Example:
      speakerdb galleries audit --json
    """
    state.local_only("galleries audit")
    state.gallery = None  # administered from the default gallery, whatever --gallery says
    entries = state.local_db.gallery_audit(limit)
    emit(as_json, [e.to_dict() for e in entries], audit_text(entries))


@galleries.command(name="create")
@click.argument("name")
@json_option
@click.pass_obj
def galleries_create(state: State, name: str, as_json: bool) -> None:
    """Make an empty gallery NAME (letters, digits, '.', '_', '-'; at most 64).

    \b
    Example:
      speakerdb galleries create acme
    """
    state.local_only("galleries create")
    state.allow_create()
    state.gallery = None  # administered from the default gallery, whatever --gallery says
    made = state.local_db.create_gallery(name)
    emit(as_json, made.to_dict(), f"created gallery {made.name}")


@galleries.command(name="remove")
@click.argument("name")
@yes_option
@json_option
@click.pass_obj
def galleries_remove(state: State, name: str, yes: bool, as_json: bool) -> None:
    """Delete gallery NAME and everything in it: speakers, embeddings, cohort, keys, audit
    record, settings and its index file, erased as `remove` erases a speaker.

    \b
    Example:
      speakerdb galleries remove acme --yes
    """
    state.local_only("galleries remove")
    state.gallery = None  # administered from the default gallery, whatever --gallery says
    confirm(f"Delete gallery {name!r} with all its speakers, keys and audit records?", yes)
    gone = state.local_db.remove_gallery(name)
    emit(
        as_json,
        {"removed": gone.name, "speakers": gone.n_speakers, "keys": gone.n_keys},
        f"removed gallery {gone.name} ({gone.n_speakers} speakers, {gone.n_keys} keys)",
    )


@click.command()
@click.option(
    "--require-consent/--no-require-consent",
    default=None,
    help="Refuse to enroll anyone without a consent record (`enroll --consent`), in the CLI and the service.",
)
@click.option(
    "--expire-after",
    metavar="DURATION",
    callback=check_duration,
    help="Remove speakers that no decision named and nobody enrolled into for this long "
    "(3y, 180d, 12h, 2w...; 'never' clears it); see `speakerdb expire`.",
)
@json_option
@click.pass_obj
def policy(state: State, require_consent: bool | None, expire_after: str | None, as_json: bool) -> None:
    """Show or change the database's governance policy: consent required to enroll, and how
    long a speaker is kept after the last decision that named them. Each change is an audit
    record. With no option, shows the policy.

    \b
    Examples:
      speakerdb policy
      speakerdb policy --require-consent --expire-after 3y
      speakerdb policy --expire-after never --json
    """
    if require_consent is None and expire_after is None:
        p = state.db.policy()
    else:
        p = state.db.set_policy(require_consent=require_consent, expire_after=expire_after)
    emit(
        as_json,
        p.to_dict(),
        f"require consent: {'yes' if p.require_consent else 'no'}\nexpire after: {p.expire_after}",
    )


@click.command()
@click.option("--dry-run", is_flag=True, help="List the speakers that would expire; remove nothing.")
@json_option
@click.pass_obj
def expire(state: State, dry_run: bool, as_json: bool) -> None:
    """Remove the speakers the retention policy expires (`speakerdb policy --expire-after`):
    those no decision (identify, verify, timeline) named and nobody enrolled into for that
    long, with the erasure `remove` does. Each expiry is an audit record. `serve` runs it
    once a day.

    \b
    Examples:
      speakerdb expire --dry-run
      speakerdb expire --json
    """
    summary = state.db.expire(dry_run=dry_run)
    d = summary.to_dict()
    if summary.cutoff is None:
        text = "no retention policy (speakerdb policy --expire-after DURATION): nothing expires"
    else:
        verb = "would expire" if dry_run else "expired"
        lines = [f"{verb} {len(summary.expired)} speaker(s) not seen since {d['cutoff']}"]
        lines += [f"  {name}" for name in summary.expired]
        if summary.erasure is not None:
            lines += ["erased from:", *(f"  {x}" for x in summary.erasure.erased)]
            lines += ["not reachable by any command:", *(f"  {x}" for x in summary.erasure.not_reachable)]
        text = "\n".join(lines)
    emit(as_json, d, text)


COMMANDS = [info, index_, export, import_, db, galleries, policy, expire]
