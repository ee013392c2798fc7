"""Speakers: enroll, list, show, rename and remove them; identify and verify voices."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..config import AUDIO_SUFFIXES, audio_files
from ..errors import (
    AudioError,
    ConsentRequiredError,
    EnrollmentRefusedError,
    InvalidInputError,
    OptedOutError,
    ServiceError,
    SpeakerExistsError,
)
from ..results import EnrollResult, Erasure, Identification, SpeakerInfo
from .output import (
    confirm,
    cosine_note,
    emit,
    emit_line,
    fail_files,
    json_option,
    jsonl_option,
    note,
    one_of_json_options,
    print_line,
    printable,
    progress,
    score_text,
    voices_note,
    yes_option,
)
from .params import SCORE, THRESHOLD_HELP, check_score, parse_meta, recordings, speaker_name

if TYPE_CHECKING:
    from . import State


@click.command()
@click.argument("name", required=False, callback=speaker_name)
@click.argument("files", nargs=-1, type=click.Path())
@click.option(
    "--each-folder",
    metavar="ROOT",
    type=click.Path(exists=True, file_okay=False),
    help="Enroll one speaker per sub-folder of ROOT, named after it, from the recordings below it (no NAME, FILES).",
)
@click.option(
    "--new",
    is_flag=True,
    help="NAME is a new speaker: refuse if it is enrolled already, and do not warn when its voice matches another's.",
)
@click.option(
    "--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Metadata to store with the speaker (repeatable)."
)
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse clips with too little speech or a voice unlike the others, and a voice that matches "
    "another enrolled speaker, instead of warning.",
)
@click.option(
    "--consent",
    metavar="TEXT",
    help="Who consented, how and when, or a signed form's reference; stored with the speaker "
    "(required when `speakerdb policy --require-consent` is set).",
)
@click.option(
    "--external-id",
    metavar="ID",
    help="The person's id elsewhere (customer number...): only its keyed hash is kept, for opt-outs.",
)
@click.option(
    "--override-optout",
    is_flag=True,
    help="Enroll a person who opted out (an administrator's decision; their opt-out is lifted and audited).",
)
@json_option
@click.pass_obj
def enroll(
    state: State,
    name: str | None,
    files: tuple[str, ...],
    each_folder: str | None,
    new: bool,
    meta: tuple[str, ...],
    strict: bool,
    consent: str | None,
    external_id: str | None,
    override_optout: bool,
    as_json: bool,
) -> None:
    """Enroll speaker NAME from one or more recordings or folders, or add them to NAME.

    A folder stands for every recording below it (.wav, .flac, .mp3, ... as `evaluate`
    reads them), sorted. Every file is checked and embedded before anything is written:
    one bad file and nothing changes. Audio already enrolled for NAME is skipped with a
    note. A clip with less than a second of speech, or whose voice scores below the
    threshold against NAME's other clips, gets a warning; so does a voice that reaches
    the threshold against another enrolled speaker ("this voice matches alice (0.93): a
    typo?"; --new for a new person who sounds alike). --strict refuses instead. A new
    NAME that differs from an enrolled speaker's only in case or spacing (dave beside
    Dave) is refused: enroll into the spelling enrolled, or choose another name.

    --each-folder ROOT enrolls ROOT/<name>/... as speaker <name>, one speaker after the
    other, and prints a summary table (--json: a list with one object per speaker, or
    {"speaker", "folder", "error"}); a speaker that fails does not stop the others, and
    the exit code is 1 if any failed.

    \b
    Examples:
      speakerdb enroll alice alice1.flac alice2.flac
      speakerdb enroll bob recordings/bob/ --new --meta team=sales
      speakerdb enroll --each-folder recordings/ --json
      speakerdb enroll carol c.wav --consent "verbal, recorded call 2026-12-01, ref CF-118" --external-id C-4411
    """
    metadata = parse_meta(meta)
    if each_folder is not None:
        if name is not None:
            raise click.UsageError("--each-folder names each speaker after its folder: give no NAME or FILES")
        if external_id is not None or override_optout:
            raise click.UsageError("--external-id and --override-optout name one person: not with --each-folder")
        return _enroll_each_folder(state, each_folder, new, metadata, strict, as_json, consent)
    if name is not None and _is_audio_file(name):  # `enroll a.flac b.flac`: a.flac would name the speaker
        raise click.UsageError(
            f"NAME {name!r} is an audio file: give the speaker's name first (speakerdb enroll NAME FILE...)"
        )
    if name is None or not files:
        raise click.UsageError(f"Missing argument '{'FILES...' if name else 'NAME'}'.")
    paths = recordings(files)
    state.allow_create()
    with progress(f"enrolling {name}", len(paths), as_json) as update:
        result = state.db.enroll(
            name,
            paths,
            new=new,
            metadata=metadata,
            strict=strict,
            progress=update,
            consent=consent,
            external_id=external_id,
            override_optout=override_optout,
        )
    for skipped in result.skipped:
        note("note: skipped", skipped.source, skipped.reason)
    for warning in result.warnings:
        note("warning:", warning.source, warning.reason)
    for line in result.notes:
        click.echo(f"warning: {printable(line)}", err=True)
    emit(as_json, result.to_dict(), _enrolled(result, bool(metadata)))


def _verb(result: EnrollResult, metadata: bool) -> str:
    """What an enrollment did to its speaker: created, updated (recordings or metadata) or unchanged."""
    return "created" if result.created else "updated" if result.added or metadata else "unchanged"


def _enrolled(result: EnrollResult, metadata: bool) -> str:
    """One enrollment's line: "created alice: 2 utterance(s) added, 0 skipped, 2 in all"."""
    return (
        f"{_verb(result, metadata)} {result.speaker}: {len(result.added)} utterance(s) added, "
        f"{len(result.skipped)} skipped, {result.n_utterances} in all"
    )


def _is_audio_file(name: str) -> bool:
    """Whether ``name`` is an existing file with a recording's suffix (.flac, .wav...): a
    forgotten NAME, not a speaker's. A folder may share a speaker's name (enroll bob bob/)."""
    return Path(name).suffix.lower() in AUDIO_SUFFIXES and os.path.isfile(name)


#: Errors that concern one speaker's folder of --each-folder: the others go on.
_ONE_FOLDER = (
    AudioError,
    EnrollmentRefusedError,
    SpeakerExistsError,
    InvalidInputError,
    ConsentRequiredError,
    OptedOutError,
)


def _folder_error(root: str, folder: str, reason: str) -> dict[str, str]:
    """--each-folder --json's entry for a speaker whose enrollment failed."""
    return {"speaker": folder, "folder": str(Path(root) / folder), "error": reason}


def _enroll_each_folder(
    state: State, root: str, new: bool, metadata: dict[str, str], strict: bool, as_json: bool, consent: str | None
) -> None:
    """``enroll --each-folder ROOT``: one enrollment per sub-folder, a summary table at the end."""
    folders = [(d.name, audio_files(d)) for d in sorted(Path(root).iterdir()) if d.is_dir()]
    for folder, found in folders:
        if not found:
            note("note: skipped", str(Path(root) / folder), "no recordings in it")
    folders = [(folder, found) for folder, found in folders if found]
    if not folders:
        raise InvalidInputError(f"no sub-folder of {root} holds recordings (ROOT/<speaker>/<recordings>)")
    state.allow_create()
    results: list[EnrollResult | tuple[str, str]] = []
    total = sum(len(found) for _, found in folders)
    with progress("enrolling", total, as_json) as update:
        done, seconds = 0, 0.0
        for folder, found in folders:
            offset, before = done, seconds

            def step(n: int, _total: int, s: float, offset: int = offset, before: float = before) -> None:
                if update is not None:
                    update(offset + n, total, before + s)

            try:
                one = state.db.enroll(
                    folder,
                    [str(p) for p in found],
                    new=new,
                    metadata=metadata,
                    strict=strict,
                    progress=step,
                    consent=consent,
                )
                results.append(one)
                seconds += sum(u.duration_s for u in one.added)
                for line in one.notes:
                    note("warning:", folder, line)
            except _ONE_FOLDER as e:
                results.append((folder, str(e)))
            except ServiceError as e:
                if e.status != 413:  # the service is unreachable or failing: the next folder would fail too
                    raise
                results.append((folder, str(e)))  # this folder is more than one request takes
            done += len(found)
            if update is not None:
                update(done, total, seconds)
    failed = [r for r in results if isinstance(r, tuple)]
    if as_json:
        emit(
            True,
            [r.to_dict() if not isinstance(r, tuple) else _folder_error(root, *r) for r in results],
            "",
        )
    else:
        width = max(len("speaker"), *(len(r[0] if isinstance(r, tuple) else r.speaker) for r in results))
        lines = [f"{'speaker':<{width}}  result     added  skipped  warnings  utterances"]
        for r in results:
            if isinstance(r, tuple):
                lines.append(f"{printable(r[0]):<{width}}  failed (see below)")
                continue
            verb = _verb(r, bool(metadata))
            lines.append(
                f"{printable(r.speaker):<{width}}  {verb:<9}  {len(r.added):>5}  {len(r.skipped):>7}  "
                f"{len(r.warnings) + len(r.notes):>8}  {r.n_utterances:>10}"
            )
        verbs = [_verb(r, bool(metadata)) for r in results if not isinstance(r, tuple)]
        counts = ", ".join(f"{verbs.count(v)} {v}" for v in ("created", "updated", "unchanged"))
        lines.append(f"{counts}, {len(failed)} failed")
        emit(False, None, "\n".join(lines))
    for folder, reason in failed:
        click.echo(f"Error: {printable(folder)}: {printable(reason)}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option(
    "-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Candidates to list per file."
)
@click.option("--threshold", type=SCORE, help=THRESHOLD_HELP)
@click.option(
    "--no-voice-check",
    is_flag=True,
    help="Skip counting the voices in each file (one more pass over the speech; about doubles the time with WavLM).",
)
@json_option
@jsonl_option
@click.pass_obj
def identify(
    state: State,
    files: tuple[str, ...],
    top_k: int,
    threshold: float | None,
    no_voice_check: bool,
    as_json: bool,
    as_jsonl: bool,
) -> None:
    """Name the speaker of each recording (a folder: every recording below it), or say "unknown".

    The best candidate is named when its cosine score reaches the threshold
    (see `speakerdb threshold`). With --json, prints a list with one object per file:
    {"file", "speaker" (null if unknown), "score", "raw_score", "voices", "candidates":
    [{"speaker", "score", "raw_score"}]}, or {"file", "error"} for a file that could not be
    used ("score" is what the threshold is compared to: the AS-norm score when normalisation
    is on, else "raw_score", the cosine). Every file gets its answer;
    the exit code is 1 if any file failed. "voices" counts the voices in a file; above 1
    the answer's line says so ("2 voices: see speakerdb timeline") and a warning on stderr
    points to `speakerdb timeline` too (--no-voice-check skips the count).

    Each file's answer is printed as soon as it is known (in the order files finish);
    --jsonl prints each as one JSON line then, --json one list at the end, in the order
    given. At a terminal a progress bar on stderr shows files and seconds of audio done,
    the rate and the time left.

    \b
    Examples:
      speakerdb identify unknown.mp3
      speakerdb identify calls/*.wav --top-k 3 --json
      speakerdb identify calls/ --jsonl | jq -c 'select(.speaker == null)'
    """
    one_of_json_options(as_json, as_jsonl)
    check_score(state, threshold)
    files = recordings(files)  # a folder: the recordings below it, as enroll takes them
    cut: list[float] = [] if threshold is None else [threshold]  # the database's, read once when needed

    def show(r: Identification) -> None:
        if as_jsonl:
            emit_line(r.to_dict())
        elif r.ok:  # a failed file is reported on stderr at the end
            cut[:] = cut or [state.db.threshold]
            print_line(_identified(r, cut[0]))

    with progress("identifying", len(files)) as bar:
        results = state.db.identify(
            list(files),
            top_k=top_k,
            threshold=threshold,
            progress=bar,
            count_voices=not no_voice_check,
            on_result=None if as_json else show,
        )
    if as_json:
        emit(True, [r.to_dict() for r in results], "")
    fail_files([r for r in results if not r.ok])


def _identified(r: Identification, cut: float) -> str:
    """identify's lines for one file: the answer, then its candidates."""
    # Several voices: the answer is for a blend of them, said beside it (not only on stderr).
    notes = cosine_note(r.score, r.raw_score) + voices_note(r.voices)
    if r.speaker is not None:
        lines = [f"{printable(r.file)}: {r.speaker} (score {r.score:.3f} >= threshold {cut:.3f}{notes})"]
    else:
        lines = [f"{printable(r.file)}: unknown (best score {score_text(r.score)} < threshold {cut:.3f}{notes})"]
    width = max((len(c.speaker) for c in r.candidates), default=0)  # scores in one column
    lines.extend(f"  {i}. {c.speaker:<{width}}  {c.score:.3f}" for i, c in enumerate(r.candidates, 1))
    return "\n".join(lines)


@click.command()
@click.argument("name", callback=speaker_name)
@click.argument("file", type=click.Path())
@click.option("--threshold", type=SCORE, help=THRESHOLD_HELP)
@click.option(
    "--no-voice-check",
    is_flag=True,
    help="Skip counting the voices in the file (one more pass over the speech; about doubles the time with WavLM).",
)
@json_option
@click.pass_obj
def verify(state: State, name: str, file: str, threshold: float | None, no_voice_check: bool, as_json: bool) -> None:
    """Check whether FILE is spoken by the enrolled speaker NAME (1:1).

    Accepts when the cosine score to NAME's centroid reaches the threshold. The exit
    code is 0 for an answer either way; read "accepted" in the output. A file that holds
    several voices is said to (the answer is for a blend of them), as identify says it
    (--no-voice-check skips the count).

    \b
    Example:
      speakerdb verify alice claim.wav --json
    """
    check_score(state, threshold)
    v = state.db.verify(name, file, threshold=threshold, count_voices=not no_voice_check)
    word = "accepted" if v.accepted else "rejected"
    sign = ">=" if v.accepted else "<"
    emit(
        as_json,
        v.to_dict(),
        f"{word}: {printable(v.file)} as {v.speaker} "
        f"(score {v.score:.3f} {sign} threshold {v.threshold:.3f}"
        f"{cosine_note(v.score, v.raw_score)}{voices_note(v.voices)})",
    )


@click.command(name="list")
@json_option
@click.pass_obj
def list_(state: State, as_json: bool) -> None:
    """List enrolled speakers.

    \b
    Example:
      speakerdb list --json
    """
    speakers = state.db.list()
    if not speakers:
        text = "no speakers enrolled"
    else:
        width = max(len(s.name) for s in speakers)
        text = "\n".join(
            f"{s.name:<{width}}  {s.n_utterances:>4} utt  {s.total_duration_s:>8.1f} s  since {s.created_at:%Y-%m-%d}"
            for s in speakers
        )
    # list has no per-utterance details or audit: leave the keys out rather than print empty lists
    emit(as_json, [{k: v for k, v in s.to_dict().items() if k not in SpeakerInfo.SHOW_ONLY} for s in speakers], text)


@click.command()
@click.argument("name", callback=speaker_name)
@json_option
@click.pass_obj
def show(state: State, name: str, as_json: bool) -> None:
    """Show everything held about one speaker: metadata, consent, enrolled utterances (sources
    and times), when a decision last named them, and the audit records that concern them.
    Never a voiceprint.

    \b
    Example:
      speakerdb show alice --json
    """
    info = state.db.show(name)
    d = info.to_dict()
    consent = info.consent
    lines = [
        f"name: {info.name}",
        f"utterances: {info.n_utterances} ({info.total_duration_s:.1f} s)",
        f"created: {d['created_at']}",
        f"updated: {d['updated_at']}",
        f"last seen: {d['last_seen'] or 'never'}",
        "consent: "
        + (
            f"{printable(consent.text)} (recorded {d['consent']['recorded_at']}"
            + (f" by key {printable(consent.recorded_by)})" if consent.recorded_by else ")")
            if consent is not None
            else "none recorded"
        ),
    ]
    if info.external_id_hash:
        lines.append(f"external id: held as a keyed hash ({info.external_id_hash[:12]}...)")
    # Sources and metadata are whatever was typed or named the files: escaped, so a newline or
    # a terminal escape sequence in them cannot forge lines of this output.
    lines += [
        f"metadata.{printable(k)}: {printable(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}"
        for k, v in info.metadata.items()
    ]
    lines += [
        f"  {printable(u.source)}  {u.duration_s:.2f} s  sha256 {u.audio_sha256[:12]}  {d_u['created_at']}"
        for u, d_u in zip(info.utterances, d["utterances"])
    ]
    if info.audit:
        lines.append("audit:")
        lines += [
            f"  {a['time']}  {a['operation']}" + (f"  key {printable(a['key_name'])}" if a["key_name"] else "")
            for a in d["audit"]
        ]
    emit(as_json, d, "\n".join(lines))


@click.command()
@click.argument("old", callback=speaker_name)
@click.argument("new", callback=speaker_name)
@json_option
@click.pass_obj
def rename(state: State, old: str, new: str, as_json: bool) -> None:
    """Rename speaker OLD to NEW (audited as local:<user>).

    NEW must not differ from another speaker's name only in case or spacing.

    \b
    Example:
      speakerdb rename alice alicia
    """
    state.db.rename(old, new)
    emit(as_json, {"old": old, "new": new}, f"renamed {old} to {new}")


@click.command()
@click.argument("names", nargs=-1, required=True, callback=speaker_name)
@yes_option
@json_option
@click.pass_obj
def remove(state: State, names: tuple[str, ...], yes: bool, as_json: bool) -> None:
    """Delete speakers NAMES with all their utterances and embeddings.

    Asks first on a terminal; --yes for scripts. Every name is checked before anything
    is deleted.

    \b
    Examples:
      speakerdb remove bob
      speakerdb remove bob carol --yes --json
    """
    names = tuple(dict.fromkeys(names))
    counts = {name: state.db.show(name).n_utterances for name in names}  # an unknown name fails here
    total = sum(counts.values())
    confirm(
        f"Delete {len(names)} speaker(s) ({', '.join(printable(n) for n in names)}) and their "
        f"{total} utterance(s)? This cannot be undone.",
        yes,
    )
    removed = {name: state.db.remove(name) for name in names}
    erasure = state.db.erasure()
    emit(
        as_json,
        {"removed": list(removed), "utterances": sum(removed.values()), "erasure": erasure.to_dict()},
        "\n".join(f"removed {name} ({n} utterance(s))" for name, n in removed.items()),
    )


def erasure_lines(erasure: Erasure | None) -> list[str]:
    """Where a removal erased the voiceprints, and what no command reaches, as lines."""
    if erasure is None:
        return []
    return (
        ["erased from:"]
        + [f"  {x}" for x in erasure.erased]
        + ["not reachable by any command:"]
        + [f"  {x}" for x in erasure.not_reachable]
    )


@click.command()
@click.argument("name", required=False, callback=speaker_name)
@click.option("--external-id", metavar="ID", help="The person's external id, kept as a keyed hash too.")
@click.option("--list", "list_them", is_flag=True, help="Show how many opt-outs are kept and when (never names).")
@yes_option
@json_option
@click.pass_obj
def optout(state: State, name: str | None, external_id: str | None, list_them: bool, yes: bool, as_json: bool) -> None:
    """Opt person NAME out: remove the speaker (as `remove` does) and keep only keyed hashes
    (HMAC-SHA256 with this database's secret) of the name and of the external id, so that
    enrolling them again is refused unless an administrator passes --override-optout.
    Their name is replaced in the audit records. NAME need not be enrolled.

    \b
    Examples:
      speakerdb optout alice --yes
      speakerdb optout "Bob Stone" --external-id C-4411 --yes --json
      speakerdb optout --list
    """
    if list_them:
        if name is not None or external_id is not None:
            raise click.UsageError("--list takes no NAME or --external-id")
        listed = state.db.optouts()
        d = listed.to_dict()
        emit(as_json, d, "\n".join([f"{listed.count} opt-out(s)", *(f"  {t}" for t in d["dates"])]))
        return
    if name is None:
        raise click.UsageError("give the NAME of the person who opts out (or --list)")
    # An opt-out may come before any enrollment: the question must not say a voiceprint is held.
    question = "delete their voiceprint if one is enrolled, and refuse to enroll them again?"
    confirm(f"Opt {printable(name)} out: {question}", yes)
    result = state.db.optout(name, external_id=external_id)
    what = f"removed and opted out ({result.utterances} utterance(s) erased)" if result.removed else "opted out"
    text = f"{printable(name)}: {what}; only keyed hashes are kept"
    emit(as_json, result.to_dict(), "\n".join([text, *erasure_lines(result.erasure)]))


COMMANDS = [enroll, identify, verify, list_, show, rename, remove, optout]
