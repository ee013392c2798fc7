"""The ``speakerdb`` command: parse, call :mod:`speakerdb.api`, print, map errors to exit codes.

Exit codes: 0 success, 1 a failed operation (bad audio, unknown speaker, model that cannot
be loaded...), 2 bad usage (unknown option, value out of range).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from typing import Any

import click

from .. import __version__
from ..config import DB_ENV, MODEL_ENV, PRECISION_ENV, SERVER_ENV, api_key
from ..errors import SpeakerDBError

DEFAULT_MODEL_HELP = "microsoft/wavlm-base-plus-sv"

# Python's cyclic garbage collector, for a one-shot command. Importing torch and transformers
# and loading a model leaves ~380k long-lived objects, and Python's default full collection
# (every 10 young ones, once the long-lived set grew by a quarter) walks them all: 7 times
# (0.67 s) in `speakerdb identify` of a 10 s file, plus ~0.7 s more at exit, when the
# interpreter collects what the OS is about to free anyway (2-core AMD EPYC, Python 3.11).
# Young collections keep their defaults, so short-lived cycles (an exception holding a
# decoded recording) are still freed at once; full ones wait this many young ones.
ONE_SHOT_FULL_GC_EVERY = 1000  # generation-1 collections (Python's default: 10)
_gc_thresholds_before: tuple[int, int, int] | None = None  # what main() replaced, for serve


class _Group(click.Group):
    """Turns library errors into one-line messages and exit code 1, never a traceback.

    Every error message is printed through here or click's own errors, with what it quotes
    (paths, names, values) escaped by :func:`_printable`: a newline or a terminal escape in
    a file name stays on the error's one line.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as e:
            e.message = _printable(e.message)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaseException as e:
            if isinstance(ctx.obj, _State):  # a failed first enroll leaves no empty database
                ctx.obj.discard_if_unused()
            if isinstance(e, SpeakerDBError):
                raise click.ClickException(_printable(str(e))) from None
            if isinstance(e, click.ClickException):  # usage errors quote values too (--db PATH)
                e.message = _printable(e.message)
            raise


class _State:
    """What the global options set up; the database is opened on first use.

    Only commands that write speakers (enroll, import, calibrate --apply) call
    :meth:`allow_create`; every other command refuses a database that does not exist, so a
    mistyped --db is an error instead of a new empty database.
    """

    def __init__(self, db: str | None, model: str | None, device: str, precision: str = "fp32") -> None:
        self.db_path, self.model, self.device, self.precision = db, model, device, precision
        self.create = False
        self._db = None

    def allow_create(self) -> None:
        self.create = True

    @property
    def db(self):
        if self._db is None and getattr(self, "server", None):  # --server: the same calls, over HTTP
            from ..service.client import Client

            self._db = Client(self.server, api_key())
        if self._db is None:
            from ..api import SpeakerDB

            self._db = SpeakerDB(self.db_path, model=self.model, device=self.device, precision=self.precision,
                                 create=self.create)
        return self._db

    def open_with(self, embedder):
        """Open the database with an already loaded embedder (so the model is not loaded twice)."""
        from ..api import SpeakerDB

        if self._db is None:
            self._db = SpeakerDB(self.db_path, model=self.model, device=self.device, precision=self.precision,
                                 embedder=embedder, create=self.create)
        return self._db

    def bound_model(self) -> str | None:
        """--model if given, else the model the database (if it exists) is bound to."""
        if self.model is not None:
            return self.model
        from ..api import default_db_path

        path = self.db_path or default_db_path()
        if self._db is None and not os.path.exists(path):
            return None
        return (self._db or self.db).info().model_source

    def discard_if_unused(self) -> None:
        """Delete the database if this command created it and stored nothing in it."""
        if self._db is not None and self._db.created:
            try:
                self._db.discard_if_unused()
            except SpeakerDBError:  # the database itself is what failed: nothing more to tidy
                pass

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


def _text_argument(what: str):
    """A parameter callback: a name that is not valid UTF-8 (lone surrogates in argv) is one
    clear error line (exit 1) before any command runs, locally and through --server alike."""
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        from ..storage.store import check_name_text

        for item in value if isinstance(value, tuple) else (value,):
            check_name_text(item, what)
        return value

    return check


_speaker_name, _key_name = _text_argument("speaker name"), _text_argument("key name")


class _Score(click.ParamType):
    """A cosine score in [low, 1], or on a database with score normalisation an AS-norm score
    in its range: NaN, infinities and text are usage errors (exit 2)."""

    name = "score"

    def __init__(self, low: float) -> None:
        self.low = low

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not self.low <= number <= 1.0:  # NaN fails this comparison
            if number == number and _as_norm_database(ctx):
                from ..scoring.norm import AS_NORM_RANGE

                low, high = AS_NORM_RANGE
                if not low <= number <= high:
                    self.fail(f"{value} is not in the range {low:g} to {high:g} of AS-norm scores", param, ctx)
                return number
            hint = ": a negative threshold accepts nearly every voice" if number < 0 <= self.low else ""
            self.fail(f"{value} is not in the range {self.low:g} to 1{hint}", param, ctx)
        return number


def _as_norm_database(ctx: click.Context | None) -> bool:
    """Whether the command's database exists and has its threshold on the AS-norm scale
    (--db must then come before --threshold on the command line)."""
    state = ctx.find_object(_State) if ctx is not None else None
    if state is None:
        return False
    from ..api import default_db_path

    if state._db is None and not os.path.exists(state.db_path or default_db_path()):
        return False
    from ..scoring.norm import AS_NORM

    return state.db.threshold_scale == AS_NORM


#: Per-call overrides may go down to -1 (experiments); a stored threshold is in [0, 1].
OVERRIDE_SCORE = _Score(-1.0)
STORED_SCORE = _Score(0.0)


def _emit(as_json: bool, document: Any, text: str) -> None:
    if as_json:
        # allow_nan=False: NaN and Infinity are not JSON; _finite has turned them into null.
        click.echo(json.dumps(_finite(document), indent=2, ensure_ascii=False, allow_nan=False))
    else:
        click.echo(text)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, for strict JSON."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _interactive() -> bool:
    """Progress bars only for a person at a terminal, never into a pipe or a file."""
    return sys.stdout.isatty()


def _progress(label: str, n_files: int, as_json: bool):
    """A progress bar on stderr for many files; silent for --json or when stdout is not a terminal."""
    if as_json or n_files < 2 or not _interactive():
        return None, None
    bar = click.progressbar(length=n_files, label=label, file=sys.stderr, show_pos=True, show_eta=True)
    bar.__enter__()
    state = {"done": 0}

    def update(done: int, total: int, seconds: float) -> None:
        bar.label = f"{label} ({seconds:.0f} s of audio)"
        bar.update(done - state["done"])
        state["done"] = done

    return bar, update


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="speakerdb")
@click.option(
    "--db",
    envvar=DB_ENV,
    type=click.Path(dir_okay=False),
    help="SQLite database file [env SPEAKERDB_DB; default: speakerdb.sqlite in $SPEAKERDB_HOME "
    "or the platform's app-data directory]. The FAISS index is kept beside it as DB.faiss.",
)
@click.option(
    "--model",
    envvar=MODEL_ENV,
    metavar="ID_OR_DIR",
    help=f"Embedding model: a Hugging Face hub id, a local save_pretrained() directory, or "
    f"'resemblyzer' for the pretrained GE2E encoder (extra: .[resemblyzer]) "
    f"[env SPEAKERDB_MODEL; default: the database's own model, else {DEFAULT_MODEL_HELP}].",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Where the model runs.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    envvar=PRECISION_ENV,
    show_default=True,
    help="fp32: the model card's embeddings (within ~4e-7 per component). bf16: about 2.7x as fast on CPUs "
    "with bf16 matrix units (AMX), embeddings within ~1e-3 per component [env SPEAKERDB_PRECISION].",
)
@click.option(
    "--server",
    envvar=SERVER_ENV,
    metavar="URL",
    help="Send the commands to a `speakerdb serve` service at URL instead of opening a database; "
    "the API key is read from $SPEAKERDB_API_KEY [env SPEAKERDB_SERVER].",
)
@click.pass_context
def cli(ctx: click.Context, db: str | None, model: str | None, device: str, precision: str,
        server: str | None = None) -> None:
    """speakerdb: enroll speakers from recordings, then identify or verify unknown voices.

    Voices are embedded with a WavLM x-vector model, stored in SQLite and searched
    with a FAISS index.

    \b
    Examples:
      speakerdb enroll alice alice1.flac alice2.flac
      speakerdb identify unknown.mp3
      speakerdb verify alice claim.wav
      speakerdb --db team.sqlite --model ./wavlm-base-plus-sv list
    """
    _log_warnings_to_stderr()
    state = _State(db, model, device, precision)
    state.server = server
    ctx.obj = state
    ctx.call_on_close(state.close)


@cli.command()
@click.argument("name", callback=_speaker_name)
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--new", is_flag=True, help="Refuse if NAME is already enrolled instead of adding to it.")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Metadata to store with the speaker (repeatable).")
@click.option("--strict", is_flag=True, help="Refuse clips with too little speech or a voice unlike the others, instead of warning.")
@json_option
@click.pass_obj
def enroll(
    state: _State, name: str, files: tuple[str, ...], new: bool, meta: tuple[str, ...], strict: bool, as_json: bool
) -> None:
    """Enroll speaker NAME from one or more recordings, or add recordings to NAME.

    Every file is checked and embedded before anything is written: one bad file and
    nothing changes. Audio already enrolled for NAME is skipped with a note. A clip
    with less than a second of speech, or whose voice scores below the threshold
    against NAME's other clips, gets a warning (with --strict: a refusal).

    \b
    Examples:
      speakerdb enroll alice alice1.flac alice2.flac
      speakerdb enroll bob bob.wav --new --meta team=sales
    """
    metadata = _parse_meta(meta)
    state.allow_create()
    bar, update = _progress(f"enrolling {name}", len(files), as_json)
    try:
        result = state.db.enroll(name, list(files), new=new, metadata=metadata, strict=strict, progress=update)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    for skipped in result.skipped:
        click.echo(f"note: skipped {_printable(skipped.source)}: {_printable(skipped.reason)}", err=True)
    for warning in result.warnings:
        click.echo(f"warning: {_printable(warning.source)}: {_printable(warning.reason)}", err=True)
    verb = "created" if result.created else "updated" if result.added or metadata else "unchanged"
    _emit(
        as_json,
        result.to_dict(),
        f"{verb} {result.speaker}: {len(result.added)} utterance(s) added, "
        f"{len(result.skipped)} skipped, {result.n_utterances} in all",
    )


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Candidates to list per file.")
@click.option("--threshold", type=OVERRIDE_SCORE, help="Override the database's threshold for this call [-1 to 1; -20 to 100 on an AS-norm database].")
@click.option("--no-voice-check", is_flag=True,
              help="Skip counting the voices in each file (one more pass over the speech; about doubles the time with WavLM).")
@json_option
@click.pass_obj
def identify(state: _State, files: tuple[str, ...], top_k: int, threshold: float | None, no_voice_check: bool,
             as_json: bool) -> None:
    """Name the speaker of each recording, or say "unknown".

    The best candidate is named when its cosine score reaches the threshold
    (see `speakerdb threshold`). With --json, prints a list with one object per file:
    {"file", "speaker" (null if unknown), "score", "candidates": [{"speaker", "score"}]},
    or {"file", "error"} for a file that could not be used. Every file gets its answer;
    the exit code is 1 if any file failed. "voices" counts the voices in a file; above 1
    a warning points to `speakerdb timeline` (--no-voice-check skips the count).

    \b
    Examples:
      speakerdb identify unknown.mp3
      speakerdb identify calls/*.wav --top-k 3 --json
    """
    bar, update = _progress("identifying", len(files), as_json)
    try:
        voice_check = {"count_voices": False} if no_voice_check else {}  # --server's client has no such knob
        results = state.db.identify(list(files), top_k=top_k, threshold=threshold, progress=update, **voice_check)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    cut = threshold if threshold is not None else state.db.threshold
    lines = []
    for r in results:
        if not r.ok:
            continue  # reported on stderr below
        cosine = f", cosine {r.raw_score:.3f}" if r.raw_score is not None and r.raw_score != r.score else ""
        if r.speaker is not None:
            lines.append(f"{_printable(r.file)}: {r.speaker} (score {r.score:.3f} >= threshold {cut:.3f}{cosine})")
        else:
            lines.append(f"{_printable(r.file)}: unknown (best score {_score_text(r.score)} < threshold {cut:.3f}{cosine})")
        width = max((len(c.speaker) for c in r.candidates), default=0)  # scores in one column
        lines.extend(f"  {i}. {c.speaker:<{width}}  {c.score:.3f}" for i, c in enumerate(r.candidates, 1))
    failed = [r for r in results if not r.ok]
    if lines or as_json:
        _emit(as_json, [r.to_dict() for r in results], "\n".join(lines))
    for r in failed:
        click.echo(f"Error: {_printable(r.file)}: {_printable(r.error)}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


def _check_outputs(force: bool, *paths: str | None) -> None:
    """Refuse now, before any work, output files that cannot be written or that exist
    without --force (see atomic.check_output); two outputs may not share one path."""
    from ..storage.atomic import check_output

    given = [check_output(p, overwrite=force) for p in paths if p]
    if len({os.path.abspath(p) for p in given}) < len(given):
        raise click.UsageError(f"the outputs need different files, not {_printable(str(given[0]))} twice")


def _printable(text: str) -> str:
    """``text`` with every character that is not printable (controls, escape sequences, line
    and paragraph separators, invisible format characters) written as a Python escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _score_text(score: float | None) -> str:
    return "-" if score is None else f"{score:.3f}"


@cli.command()
@click.argument("name", callback=_speaker_name)
@click.argument("file", type=click.Path())
@click.option("--threshold", type=OVERRIDE_SCORE, help="Override the database's threshold for this call [-1 to 1; -20 to 100 on an AS-norm database].")
@json_option
@click.pass_obj
def verify(state: _State, name: str, file: str, threshold: float | None, as_json: bool) -> None:
    """Check whether FILE is spoken by the enrolled speaker NAME (1:1).

    Accepts when the cosine score to NAME's centroid reaches the threshold. The exit
    code is 0 for an answer either way; read "accepted" in the output.

    \b
    Example:
      speakerdb verify alice claim.wav --json
    """
    v = state.db.verify(name, file, threshold=threshold)
    word = "accepted" if v.accepted else "rejected"
    sign = ">=" if v.accepted else "<"
    cosine = f", cosine {v.raw_score:.3f}" if v.raw_score is not None and v.raw_score != v.score else ""
    _emit(as_json, v.to_dict(),
          f"{word}: {_printable(v.file)} as {v.speaker} (score {v.score:.3f} {sign} threshold {v.threshold:.3f}{cosine})")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--threshold", type=OVERRIDE_SCORE, help="Override the database's threshold for this call [-1 to 1; -20 to 100 on an AS-norm database].")
@click.option("--rttm", "rttm_path", type=click.Path(dir_okay=False), help="Also write the segments to this RTTM file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Draw one lane per voice over time into this PNG.")
@click.option("--window", type=click.FloatRange(0.5, 30), default=1.5, show_default=True, help="Window length, seconds.")
@click.option("--hop", type=click.FloatRange(0.05, 30), default=0.5, show_default=True, help="Window hop, seconds.")
@click.option("--min-segment", type=click.FloatRange(0, 60), default=1.0, show_default=True,
              help="Shorter segments join their neighbour, seconds.")
@click.option("--force", is_flag=True, help="Replace the --rttm and --plot files if they exist.")
@json_option
@click.pass_obj
def timeline(state: _State, files: tuple[str, ...], threshold: float | None, rttm_path: str | None,
             plot_path: str | None, window: float, hop: float, min_segment: float, as_json: bool,
             force: bool = False) -> None:
    """Who speaks when: segments of each voice in each recording, named from the enrolled
    speakers when a voice reaches the threshold, else unknown-1, unknown-2...

    Finds the speech (Silero VAD), embeds windows of it, groups them into voices and
    names each voice. With no speakers enrolled every voice is unknown-N. One voice per
    instant: where two people overlap, the louder one gets the time. Names are decided as
    identify decides them: with normalisation on (speakerdb norm), "score" is the AS-norm
    score and "raw_score" the cosine. With --json, prints [{"file", "duration", "segments":
    [{"start", "end", "label", "speaker", "score", "raw_score"}], "voices": [{"label",
    "speaker", "seconds", "score", "raw_score"}], "notes"}]. As with identify,
    every file gets its timeline or {"file", "error"}, and the exit code is 1 if any failed.

    \b
    Examples:
      speakerdb timeline meeting.wav
      speakerdb timeline calls/*.wav --json
      speakerdb timeline call.wav --rttm call.rttm --plot call.png
    """
    from ..timeline import Params, plot, write_rttm

    params = Params(window_s=window, hop_s=hop, min_segment_s=min_segment)
    if hop > window:
        raise click.BadParameter(f"the hop ({hop:g} s) must not exceed the window ({window:g} s)", param_hint="--hop")
    _check_outputs(force, rttm_path, plot_path)  # before minutes of work, not after
    if plot_path:
        from ..scoring.evaluate import check_plotting

        check_plotting()
    bar, update = _progress("timeline", len(files), as_json)
    try:
        results = state.db.timeline(list(files), threshold=threshold, params=params, progress=update)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    failed = [t for t in results if t.error is not None]
    results_ok = [t for t in results if t.error is None]
    if rttm_path and results_ok:
        write_rttm(rttm_path, results_ok, overwrite=force)
    if plot_path and results_ok:
        plot(results_ok, plot_path, overwrite=force)
    for t in results:
        for note in t.notes:
            click.echo(f"note: {_printable(t.file)}: {note}", err=True)
    lines = []
    for t in results_ok:
        lines.append(f"{_printable(t.file)} ({t.duration:.1f} s, {len(t.voices)} voice(s))")
        width = max((len(s.label) for s in t.segments), default=5)
        lines += [f"  {s.start:8.2f} {s.end:8.2f}  {_printable(s.label):<{width}}  {_score_text(s.score)}" for s in t.segments]
        lines += [f"  {_printable(v.label)}: {v.seconds:.1f} s" + (f", score {v.score:.3f}" if v.score is not None else "")
                  + (f" (cosine {v.raw_score:.3f})" if v.raw_score is not None and v.raw_score != v.score else "")
                  for v in t.voices]
    if rttm_path and results_ok:
        lines.append(f"rttm: {rttm_path}")
    if plot_path and results_ok:
        lines.append(f"plot: {plot_path}")
    _emit(as_json, [t.to_dict() for t in results], "\n".join(lines))
    for t in failed:  # every file gets its answer or its error; any error makes the exit code 1
        click.echo(f"Error: {_printable(t.file)}: {_printable(t.error)}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


@cli.command(name="list")
@json_option
@click.pass_obj
def list_(state: _State, as_json: bool) -> None:
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
    # list has no per-utterance details: leave the key out rather than print an empty list
    _emit(as_json, [{k: v for k, v in s.to_dict().items() if k != "utterances"} for s in speakers], text)


@cli.command()
@click.argument("name", callback=_speaker_name)
@json_option
@click.pass_obj
def show(state: _State, name: str, as_json: bool) -> None:
    """Show one speaker: metadata and enrolled utterances.

    \b
    Example:
      speakerdb show alice
    """
    info = state.db.show(name)
    d = info.to_dict()
    lines = [
        f"name: {info.name}",
        f"utterances: {info.n_utterances} ({info.total_duration_s:.1f} s)",
        f"created: {d['created_at']}",
        f"updated: {d['updated_at']}",
    ]
    # Sources and metadata are whatever was typed or named the files: escaped, so a newline or
    # a terminal escape sequence in them cannot forge lines of this output.
    lines += [f"metadata.{_printable(k)}: {_printable(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}"
              for k, v in info.metadata.items()]
    lines += [f"  {_printable(u.source)}  {u.duration_s:.2f} s  sha256 {u.audio_sha256[:12]}" for u in info.utterances]
    _emit(as_json, d, "\n".join(lines))


@cli.command()
@click.argument("old", callback=_speaker_name)
@click.argument("new", callback=_speaker_name)
@json_option
@click.pass_obj
def rename(state: _State, old: str, new: str, as_json: bool) -> None:
    """Rename speaker OLD to NEW.

    \b
    Example:
      speakerdb rename alice alicia
    """
    state.db.rename(old, new)
    _emit(as_json, {"old": old, "new": new}, f"renamed {old} to {new}")


yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts).")


def _can_ask() -> bool:
    """Whether a person can answer a question: stdin is a terminal."""
    return sys.stdin.isatty()


def _confirm(question: str, yes: bool) -> None:
    """Ask a person at a terminal; refuse (exit 2) without --yes when nobody can answer."""
    if yes:
        return
    if not _can_ask():
        raise click.UsageError(f"{question} Not confirmed: add --yes to do it without asking.")
    click.confirm(question, abort=True, err=True)


@cli.command()
@click.argument("names", nargs=-1, required=True, callback=_speaker_name)
@yes_option
@json_option
@click.pass_obj
def remove(state: _State, names: tuple[str, ...], yes: bool, as_json: bool) -> None:
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
    _confirm(f"Delete {len(names)} speaker(s) ({', '.join(_printable(n) for n in names)}) and their "
             f"{total} utterance(s)? This cannot be undone.", yes)
    removed = {name: state.db.remove(name) for name in names}
    _emit(as_json, {"removed": list(removed), "utterances": sum(removed.values())},
          "\n".join(f"removed {name} ({n} utterance(s))" for name, n in removed.items()))


@cli.command()
@json_option
@click.pass_obj
def info(state: _State, as_json: bool) -> None:
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
    _emit(as_json, d, "\n".join(lines))


@cli.command()
@click.argument("value", required=False, type=STORED_SCORE)
@json_option
@click.pass_obj
def threshold(state: _State, value: float | None, as_json: bool) -> None:
    """Show the decision threshold, or store VALUE as the new one.

    A cosine score at or above the threshold names the speaker (identify) or accepts
    the claim (verify). New databases start at 0.86, the model card's suggestion for
    wavlm-base-plus-sv; the right value depends on your recordings. With score
    normalisation on (`speakerdb norm`) the threshold is an AS-norm score (-20 to 100).

    \b
    Examples:
      speakerdb threshold
      speakerdb threshold 0.8
    """
    if value is not None:
        state.db.set_threshold(value)
    current = state.db.threshold
    scale = state.db.threshold_scale
    _emit(as_json, {"threshold": current}, f"threshold: {current:g}" + ("" if scale == "cosine" else f" ({scale} scale)"))


@cli.command(name="index")
@click.option("--ef-search", type=click.IntRange(1, 100_000),
              help="HNSW candidates per search: higher finds the true nearest speaker more often, slower. "
              "Applies at once.")
@click.option("--approximate-above", type=click.IntRange(0, 2**31 - 1),
              help="Speakers above which the index is an HNSW graph instead of exact search (from the next rebuild).")
@click.option("--hnsw-m", type=click.IntRange(2, 256), help="HNSW graph degree, 2 to 256 (from the next rebuild).")
@click.option("--ef-construction", type=click.IntRange(1, 10_000), help="HNSW build effort, 1 to 10,000 (from the next rebuild).")
@click.option("--rebuild", is_flag=True,
              help="Rebuild the index files from SQLite now (an HNSW graph of a million speakers takes ~15 min).")
@json_option
@click.pass_obj
def index_(state: _State, ef_search: int | None, approximate_above: int | None, hnsw_m: int | None,
           ef_construction: int | None, rebuild: bool, as_json: bool) -> None:
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
    changes = {key: value for key, value in (("hnsw_ef_search", ef_search), ("approximate_above", approximate_above),
                                             ("hnsw_m", hnsw_m), ("hnsw_ef_construction", ef_construction))
               if value is not None}
    if changes:
        state.db.set_index_params(**changes)
    rebuilt = state.db.rebuild_index() if rebuild else None
    document = {"params": state.db.index_params, "file": state.db.index_file_info()}
    if rebuilt is not None:
        document["rebuilt_speakers"] = rebuilt
    lines = [f"{key}: {value}" for key, value in document["params"].items()]
    built = document["file"]
    if built is None:
        lines.append("index file: none yet (built on the next search)")
    else:
        lines.append(f"index file: {built['kind']}, {built['speakers']} speakers, {built['bytes']:,} bytes, "
                     f"built with {', '.join(f'{k}={v}' for k, v in (built['built_with'] or {}).items())}")
    _emit(as_json, document, "\n".join(lines))


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--speaker", "speakers", multiple=True, callback=_speaker_name, metavar="NAME", help="Export only this speaker (repeatable).")
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
@json_option
@click.pass_obj
def export(state: _State, path: str, speakers: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Export speakers to a gallery file: metadata and embeddings, no audio.

    The file is portable between machines running the same model; see
    docs/gallery-format.md for what is inside.

    \b
    Examples:
      speakerdb export site-a.gallery
      speakerdb export team.gallery --speaker alice --speaker bob
    """
    summary = state.db.export(path, list(speakers) or None, overwrite=force)
    _emit(
        as_json,
        summary.to_dict(),
        f"exported {summary.n_speakers} speaker(s), {summary.n_utterances} utterance(s) to {summary.path} "
        f"({summary.size_bytes} bytes)",
    )


@cli.command(name="import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--on-conflict",
    type=click.Choice(["fail", "skip", "replace", "merge"]),
    default="fail",
    show_default=True,
    help="For speakers that already exist: refuse the whole import, keep ours, take theirs whole, "
    "or add their utterances to ours.",
)
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option("--max-utterances", type=click.IntRange(min=1), metavar="N",
              help="Refuse galleries declaring more than N utterances [default: 1,000,000]; memory grows with N "
              "(about 2 KiB of names and metadata plus the vector per utterance).")
@json_option
@click.pass_obj
def import_(state: _State, path: str, on_conflict: str, dry_run: bool, max_utterances: int | None, as_json: bool) -> None:
    """Import a gallery file into this database, all of it or nothing.

    The file is validated whole (format, checksums, model, names, vectors) before
    anything is written, and imported in one transaction.

    \b
    Examples:
      speakerdb import site-a.gallery
      speakerdb import site-a.gallery --on-conflict merge --dry-run
    """
    limits = None
    if max_utterances is not None:
        from ..storage.gallery import Limits

        limits = Limits(max_utterances=max_utterances)
    state.allow_create()
    summary = state.db.import_gallery(path, on_conflict=on_conflict, dry_run=dry_run, limits=limits)
    if dry_run:  # a dry run into a new path leaves no database behind
        state.discard_if_unused()
    counts = ", ".join(
        f"{len(getattr(summary, k))} {k}" for k in ("created", "merged", "replaced", "skipped")
    )
    prefix = "would import" if dry_run else "imported"
    _emit(as_json, summary.to_dict(), f"{prefix} {summary.path}: {counts}; {summary.utterances_added} utterance(s) added")


def _evaluation_options(command):
    """The options evaluate and calibrate share: how to split DATA_DIR and score it."""
    options = [
        click.argument("data_dir", type=click.Path(exists=True, file_okay=False)),
        click.option("--enroll-count", type=click.IntRange(min=1), default=3, show_default=True,
                     help="Recordings per speaker used for enrollment; the rest are test probes."),
        click.option("--impostor-speakers", type=click.IntRange(min=0),
                     help="Speakers of DATA_DIR held out entirely as impostors [default: a fifth, if 5 or more]."),
        click.option("--impostors", "impostor_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
                     help="Extra impostor recordings: DIR/<speaker>/... or loose files (repeatable)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random split."),
        click.option("--test-seconds", type=click.FloatRange(min=0.5),
                     help="Keep S seconds from the middle of each test recording's detected speech "
                     "(short-utterance condition)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_evaluation(state: "_State", as_json: bool, **kwargs):
    from ..scoring.evaluate import run

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if as_json or not _interactive():
            return
        if stage not in bars:
            for bar in bars.values():
                bar.__exit__(None, None, None)
            bars.clear()
            bars[stage] = click.progressbar(length=total, label=stage, file=sys.stderr, show_pos=True, show_eta=True)
            bars[stage].__enter__()
            bars[stage].done = 0
        bar = bars[stage]
        bar.update(done - bar.done)
        bar.done = done

    try:
        # The database's model, like every other command (a GE2E database is evaluated with GE2E).
        return run(model=state.bound_model(), device=state.device, precision=state.precision, progress=progress,
                   **kwargs)
    finally:
        for bar in bars.values():
            bar.__exit__(None, None, None)


def _format_report(r) -> str:
    head = [
        f"speakers: {r.n_enrolled_speakers} enrolled ({r.n_enroll_recordings} recordings), "
        f"{r.n_impostor_speakers} impostor speakers",
        f"probes: {r.n_probes} genuine, {r.n_impostor_probes} impostor; "
        f"trials: {r.n_target_trials} target, {r.n_nontarget_trials} non-target",
    ]
    if r.normalised is None:
        return "\n".join(head + [_format_figures(r.__dict__)])
    top_n = (r.settings.get("norm") or {}).get("top_n")
    raw = _format_figures(r.__dict__).splitlines()
    normed = _format_figures(r.normalised).splitlines()
    width = max(len(line) for line in raw)
    lines = head + [f"{'raw cosine scores':<{width}}  |  AS-norm, top {top_n} of {r.settings['norm']['cohort_count']} cohort"]
    lines += [f"{a:<{width}}  |  {b}" for a, b in zip(raw, normed)]
    return "\n".join(lines)


def _format_figures(r: dict[str, Any]) -> str:
    """The figures of one scale (a Report's fields, or its ``normalised`` dict)."""
    lines = [
        f"closed-set identification: top-1 {r['top1']:.1%}, top-5 {r['top5']:.1%}",
        f"EER: {r['eer']:.2%} at threshold {r['eer_threshold']:.3f}",
    ]
    for p, v in r["min_dcf"].items():
        lines.append(f"minDCF (P_target {p}): {v['min_dcf']:.3f} at threshold {_threshold_text(v['threshold'])}")
    for far, v in r["dir"].items():
        lines.append(f"open-set DIR at rank 1, FAR {float(far):.0%}: {v['dir']:.1%} at threshold {_threshold_text(v['threshold'])}")
    if not r["dir"]:
        lines.append("open-set DIR: no impostor recordings (use --impostor-speakers or --impostors)")
    return "\n".join(lines)


def _current_threshold(state: _State, embedder) -> float | None:
    """The cosine threshold identify would use now: the database's, else the model's starting
    one; None when the database's threshold is on the AS-norm scale."""
    from ..api import DEFAULT_THRESHOLD, default_db_path

    if os.path.exists(state.db_path or default_db_path()):
        # A threshold on the AS-norm scale has no place on the plot's cosine axis.
        return state.db.threshold if state.db.threshold_scale == "cosine" else None
    own = getattr(embedder, "default_threshold", None)
    return DEFAULT_THRESHOLD if own is None else float(own)


def _check_target(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--target is checked while parsing: a typo is a usage error (exit 2) before any scoring."""
    from ..scoring.evaluate import parse_target

    try:
        parse_target(value)
    except SpeakerDBError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _threshold_text(value: float | None) -> str:
    return "none (accept nothing)" if value is None else f"{value:.3f}"


@cli.command()
@_evaluation_options
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write score histograms and a DET curve to this PNG.")
@click.option("--force", is_flag=True, help="Replace the --plot file if it exists.")
@click.option("--norm", "norm_method", type=click.Choice(["none", "as-norm"]), default="none", show_default=True,
              help="Also report every figure with adaptive s-norm against --cohort, side by side with the raw ones.")
@click.option("--cohort", "cohort_dir", type=click.Path(exists=True, file_okay=False),
              help="Recordings of people who are neither enrolled nor probes (needed by --norm as-norm).")
@click.option("--top-n", type=click.IntRange(min=1), default=100, show_default=True,
              help="Highest cohort scores averaged per side by --norm as-norm.")
@json_option
@click.pass_obj
def evaluate(state: _State, data_dir: str, plot_path: str | None, norm_method: str, cohort_dir: str | None, top_n: int,
             as_json: bool, force: bool = False, **split_options: Any) -> None:
    """Measure accuracy on your own labelled recordings, DATA_DIR/<speaker>/<files>.

    Enrolls part of each speaker's recordings in a temporary database (yours is never
    touched), holds some speakers out as impostors, scores the rest and reports
    closed-set top-1/top-5 accuracy, EER, minDCF (P_target 0.01, 0.05), and the
    open-set detection-and-identification rate at false-alarm rates 1% and 10%.

    \b
    Examples:
      speakerdb evaluate recordings/
      speakerdb --model resemblyzer evaluate test-other/ --impostors train-clean-100/ --plot report.png
      speakerdb evaluate recordings/ --test-seconds 3 --seed 1 --json
      speakerdb evaluate test-other/ --norm as-norm --cohort train-clean-100/ --top-n 100
    """
    if (norm_method == "as-norm") != (cohort_dir is not None):
        raise click.UsageError("--norm as-norm and --cohort DIR go together")
    if plot_path:  # a path that cannot be written fails now, not after minutes of scoring
        from ..scoring.evaluate import check_plotting

        _check_outputs(force, plot_path)
        check_plotting()
    report, scores, embedder = _run_evaluation(state, as_json, data_dir=data_dir, cohort=cohort_dir, top_n=top_n,
                                               **split_options)
    if plot_path:
        from ..scoring.evaluate import plot

        plot(scores, report, plot_path, threshold=_current_threshold(state, embedder), overwrite=force)
    text = _format_report(report) + (f"\nplot: {plot_path}" if plot_path else "")
    _emit(as_json, report.to_dict(), text)


@cli.command()
@_evaluation_options
@click.option("--target", default="eer", show_default=True, metavar="eer|far=RATE", callback=_check_target,
              help="Operating point: the equal-error-rate threshold, or the lowest threshold whose "
              "false-acceptance rate is at most RATE.")
@click.option("--apply", is_flag=True, help="Store the threshold in the database (--db).")
@json_option
@click.pass_obj
def calibrate(state: _State, data_dir: str, target: str, apply: bool, as_json: bool, **split_options: Any) -> None:
    """Choose the decision threshold from your own labelled recordings.

    Runs the same scoring as `speakerdb evaluate`, then prints the threshold for the
    chosen operating point with the miss and false-acceptance rates expected there:
    the midpoint between the two observed scores that straddle it. On a database with
    score normalisation (`speakerdb norm`) the scores are normalised with its cohort and
    the threshold is on that scale. --apply stores it in the database, which must use
    the same model.

    \b
    Examples:
      speakerdb calibrate recordings/ --target eer
      speakerdb calibrate recordings/ --target far=0.01 --apply
    """
    from ..scoring.evaluate import operating_point

    from ..api import default_db_path

    if apply:
        state.allow_create()
    cohort, top_n = None, None
    if state._db is not None or os.path.exists(state.db_path or default_db_path()):
        settings = state.db.norm_settings  # the active scale: this database's normalisation, if any
        if settings is not None:
            cohort, top_n = state.db.cohort_vectors(), settings.top_n
    extra = {"cohort": cohort, "top_n": top_n} if cohort is not None else {}
    report, scores, embedder = _run_evaluation(state, as_json, data_dir=data_dir, **extra, **split_options)
    scale = "as-norm" if cohort is not None else "cosine"
    point = operating_point(scores.active(), target)
    if apply:
        state.open_with(embedder).apply_threshold(point["threshold"], scale=scale)
    doc = {"target": target, **point, "threshold_scale": scale, "applied": apply, "report": report.to_dict()}
    text = (
        f"threshold for {target}: {_threshold_text(point['threshold'])}{' on the as-norm scale' if scale != 'cosine' else ''} "
        f"(expected miss rate {point['p_miss']:.2%}, false acceptance {point['p_fa']:.2%}, "
        f"on {report.n_target_trials} target / {report.n_nontarget_trials} non-target trials)"
        + (f"\nstored in {state.db.db_path}" if apply else "\nnot stored: add --apply to use it")
    )
    _emit(as_json, doc, text)


@cli.command(name="norm")
@click.option("--cohort", "cohort_dir", type=click.Path(exists=True, file_okay=False),
              help="Recordings of people who are NOT enrolled; their embeddings (never the audio) are stored.")
@click.option("--top-n", type=click.IntRange(min=1), default=None,
              help="Highest cohort scores averaged per side [default: 100, at most the cohort's size].")
@click.option("--off", is_flag=True, help="Return to raw cosine scores and delete the cohort's embeddings.")
@json_option
@click.pass_obj
def norm_(state: _State, cohort_dir: str | None, top_n: int | None, off: bool, as_json: bool) -> None:
    """Show, turn on or turn off score normalisation (adaptive s-norm, AS-norm).

    With a cohort, every score identify, verify and calibrate compare with the threshold
    is normalised against the voices of the cohort nearest to each side; the JSON gives
    "score" (normalised) and "raw_score" (cosine). Normalised scores are on another scale:
    switching normalisation on or off resets the threshold to that scale's starting value,
    so calibrate it again (`speakerdb calibrate DATA_DIR --apply`). A cohort is embedded
    with the database's model; one of another model is refused.

    \b
    Examples:
      speakerdb norm
      speakerdb norm --cohort cohort-recordings/ --top-n 100
      speakerdb norm --off
    """
    if off and (cohort_dir or top_n is not None):
        raise click.UsageError("--off takes neither --cohort nor --top-n")
    if top_n is not None and not cohort_dir:
        raise click.UsageError("--top-n needs --cohort DIR (the statistics are computed when the cohort is stored)")
    if cohort_dir:
        state.allow_create()  # a cohort may come before the first speaker: it binds the model
        # No --top-n: the library's default, 100 or the cohort's size if smaller (after any set aside).
        change = state.db.set_norm(cohort_dir, top_n=top_n)
    elif off:
        change = state.db.set_norm_off()
    else:
        current = state.db.norm_settings
        doc = {"norm": current.to_dict() if current else None, "threshold": state.db.threshold,
               "threshold_scale": state.db.threshold_scale}
        text = (f"AS-norm: top {current.top_n} of {current.count} cohort recordings ({current.model_id})" if current
                else "no score normalisation: raw cosine scores") + f"\nthreshold: {doc['threshold']:g} ({doc['threshold_scale']} scale)"
        _emit(as_json, doc, text)
        return
    n = change.norm
    text = (f"AS-norm on: top {n.top_n} of {n.count} cohort recordings" if n else "normalisation off: raw cosine scores")
    if getattr(change, "set_aside", ()):  # each was named in a warning as it was set aside
        text += f" ({len(change.set_aside)} set aside: they score as enrolled speakers)"
    if change.recalibrate:
        text += (f"\nthreshold reset to {change.threshold:g} on the {change.threshold_scale} scale: "
                 "calibrate it again (speakerdb calibrate DATA_DIR --apply)")
        click.echo(f"warning: the threshold is now on the {change.threshold_scale} scale: run `speakerdb calibrate` again",
                   err=True)
    _emit(as_json, change.to_dict(), text)


@cli.group()
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
def current(state: _State, as_json: bool) -> None:
    """Show the database's schema revision and the one this speakerdb needs.

    \b
    Example:
      speakerdb db current
    """
    from ..api import database_revision

    revision, head = database_revision(state.db_path)
    _emit(as_json, {"revision": revision, "head": head}, f"revision: {revision or 'none'} (this speakerdb needs {head})")


@db.command()
@click.argument("revision", default="head")
@json_option
@click.pass_obj
def upgrade(state: _State, revision: str, as_json: bool) -> None:
    """Migrate the database to REVISION (default: the newest). Back it up first.

    \b
    Example:
      speakerdb --db old.sqlite db upgrade
    """
    from ..api import database_revision, upgrade_database

    before, _ = database_revision(state.db_path)
    new = upgrade_database(state.db_path, revision)
    text = f"database already at revision {new}: nothing to do" if new == before else (
        f"database upgraded from revision {before or 'none'} to {new}")
    _emit(as_json, {"revision": new, "previous": before}, text)


@db.command()
@click.argument("revision")
@yes_option
@json_option
@click.pass_obj
def downgrade(state: _State, revision: str, yes: bool, as_json: bool) -> None:
    """Migrate the database down to REVISION, for rolling back to an older speakerdb.

    Data that the older schema has no place for is lost; "base" drops every table and
    with them every speaker. Asks first on a terminal; --yes for scripts. Back up first.

    \b
    Example:
      cp speakers.sqlite backup.sqlite && speakerdb --db speakers.sqlite db downgrade 0001
    """
    from ..api import database_revision, downgrade_database

    current_revision, _ = database_revision(state.db_path)
    what = "drop every table and every speaker" if revision == "base" else f"migrate down to revision {revision}"
    _confirm(f"Database at revision {current_revision or 'none'}: {what}?", yes)

    new = downgrade_database(state.db_path, revision)
    _emit(as_json, {"revision": new}, f"database at revision {new or 'none'}")


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
    from ..api import copy_database

    def progress(table: str, rows: int) -> None:  # a long copy shows it is moving (terminals only)
        click.echo(f"\rcopying {table}: {rows:,} rows", err=True, nl=False)

    summary = copy_database(source, destination, progress=progress if _interactive() and not as_json else None)
    if _interactive() and not as_json:
        click.echo("", err=True)
    text = f"copied {summary.source} to {summary.destination}: " + ", ".join(
        f"{n:,} {table}" for table, n in summary.rows.items())
    _emit(as_json, summary.to_dict(), text)


@db.command()
@json_option
@click.pass_obj
def vacuum(state: _State, as_json: bool) -> None:
    """Rewrite the tables so that deleted speakers leave no trace in them.

    On PostgreSQL, `remove` runs a plain VACUUM; this runs VACUUM FULL and a CHECKPOINT
    (the tables are locked while it runs: do it in a quiet hour). On SQLite, VACUUM.
    See the README ("Deletion on a server") for what no command can erase.

    \b
    Example:
      speakerdb --db postgresql://speakerdb@db.internal/speakers db vacuum
    """
    state.db.vacuum()
    _emit(as_json, {"vacuumed": str(state.db.db_path)}, f"vacuumed {state.db.db_path}")


class _EchoHandler(logging.Handler):
    """Writes library log records as "warning: ..." lines through click (whatever stderr is now)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {_printable(record.getMessage())}", err=True)


def _log_warnings_to_stderr() -> None:
    logger = logging.getLogger("speakerdb")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler(logging.WARNING))
        logger.propagate = False


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    return metadata


# ---- the HTTP service: serve, keys, audit (issue 13; see server.py and client.py) ----------------
@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Other than loopback only once the database has an API key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes, each with its own copy of the model (~1 GB resident with WavLM base).")
@click.option("--max-upload-mb", type=click.FloatRange(0.001, 10_000), default=50, show_default=True,
              help="Largest request body, in MB (10^6 bytes): 413 beyond it.")
@click.option("--max-files", type=click.IntRange(1, 10_000), default=32, show_default=True,
              help="Most audio files in one request: 413 beyond it.")
@click.option("--max-audio-s", type=click.FloatRange(1, 4 * 3600), default=600, show_default=True,
              help="Longest recording accepted, in seconds: 400 (or a per-file error) beyond it.")
@click.option("--queue-size", type=click.IntRange(1, 100_000), default=32, show_default=True,
              help="Embedding requests a worker holds, running and waiting; beyond it: 503 with Retry-After.")
@click.option("--insecure-no-auth", is_flag=True,
              help="Serve without API keys, on any address: every caller may do everything. Announced at every start.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="TLS certificate chain (PEM).")
@click.option("--tmp-dir", type=click.Path(file_okay=False), help="Where uploads are kept while a request runs "
              "[default: the system's temporary directory]; a private directory is made inside it.")
@click.option("--header-timeout", type=click.FloatRange(0.1, 3600), default=10, show_default=True,
              help="Seconds a client has to send a request's headers; then 408 and the connection is closed.")
@click.option("--body-timeout", type=click.FloatRange(0.1, 3600), default=30, show_default=True,
              help="Seconds a request's body may pause; then 408 (or a closed connection).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@json_option
@click.pass_obj
def serve(state: _State, host: str, port: int, workers: int, max_upload_mb: float, max_files: int, max_audio_s: float,
          queue_size: int, insecure_no_auth: bool, ssl_keyfile: str | None, ssl_certfile: str | None,
          tmp_dir: str | None, header_timeout: float, body_timeout: float, log_level: str, as_json: bool) -> None:
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
    if getattr(state, "server", None):
        raise click.UsageError("serve runs a service on a local database: drop --server / SPEAKERDB_SERVER")
    if _gc_thresholds_before is not None:  # a service runs for days: Python's own full collections
        gc.set_threshold(*_gc_thresholds_before)
    if (ssl_keyfile is None) != (ssl_certfile is None):
        raise click.UsageError("give both --ssl-keyfile and --ssl-certfile, or neither")
    from ..api import default_db_path
    from ..service.app import ServeConfig, is_loopback, serve as run_server

    state.allow_create()
    db = state.db
    db_path = str(db.target)  # a server URL with its password: the workers must connect too
    shown = str(db.db_path)  # what is printed: a server URL without its password
    has_keys = db.has_keys()
    # Decided once, here: a database that has or had a key requires one for every request,
    # even once all are revoked; the service never opens while it runs (server.Service).
    had_keys = has_keys or db.has_keys(include_revoked=True)
    state.close()
    state._db = None
    if insecure_no_auth:
        click.echo("warning: --insecure-no-auth: no API keys are checked; anyone who can reach "
                   f"{host}:{port} may read, change and delete every speaker", err=True)
    elif not is_loopback(host) and not had_keys:
        raise click.UsageError(
            f"refusing to serve {db.db_path} on {host} without API keys: create one with "
            "`speakerdb keys create NAME --scope admin`, or pass --insecure-no-auth")
    elif not had_keys:
        click.echo(f"note: {db.db_path} has no API keys: every caller on this machine may do everything "
                   "(`speakerdb keys create NAME --scope admin` turns keys on)", err=True)
    elif not has_keys:
        click.echo(f"note: every API key of {db.db_path} is revoked: every request is refused until "
                   "`speakerdb keys create NAME --scope admin`", err=True)
    config = ServeConfig(db_path=db_path or str(default_db_path()), model=state.model, device=state.device,
                         precision=state.precision, max_upload_bytes=int(max_upload_mb * 1_000_000),
                         max_files=max_files, max_audio_s=max_audio_s, queue_size=queue_size,
                         insecure_no_auth=insecure_no_auth, require_keys=had_keys and not insecure_no_auth,
                         header_timeout_s=header_timeout, body_timeout_s=body_timeout, tmp_dir=tmp_dir)
    url = f"{'https' if ssl_certfile else 'http'}://{host if ':' not in host else f'[{host}]'}:{port}"
    auth = ("none (--insecure-no-auth)" if insecure_no_auth else "API keys" if has_keys
            else "API keys (all revoked: every request is refused)" if had_keys else "none (loopback, no keys yet)")
    _emit(as_json, {"url": url, "db_path": shown, "workers": workers, "auth": auth},
          f"serving {shown} at {url} with {workers} worker(s), auth: {auth}; SIGTERM or Ctrl-C stops it")
    sys.stdout.flush()
    run_server(config, host=host, port=port, workers=workers, ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile,
               log_level=log_level)


def _actor() -> str:
    """Who runs a key command on this machine, for the audit record."""
    import getpass

    try:
        return f"local:{getpass.getuser()}"
    except Exception:  # no user name (a container without /etc/passwd entry)
        return f"local:uid{os.getuid()}"


@cli.group()
def keys() -> None:
    """Manage the API keys of `speakerdb serve` (stored as salted hashes in the database).

    Scopes: read (identify, verify, list, show, info), write (also enroll, rename,
    remove, import), admin (also threshold, export, keys, audit).

    \b
    Examples:
      speakerdb keys create callcentre --scope read
      speakerdb keys list
      speakerdb keys revoke callcentre
    """


@keys.command(name="create")
@click.argument("name", callback=_key_name)
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True,
              help="What the key may do.")
@json_option
@click.pass_obj
def keys_create(state: _State, name: str, scope: str, as_json: bool) -> None:
    """Create API key NAME and print it, this once: only its hash is stored.

    \b
    Example:
      speakerdb keys create ops --scope admin --json
    """
    state.allow_create()
    new = state.db.create_key(name, scope, actor=_actor())
    if not as_json:
        click.echo(f"created key {new.name} (scope {new.scope}); store it now, it cannot be shown again:", err=True)
    _emit(as_json, new.to_dict(), new.key)


@keys.command(name="list")
@json_option
@click.pass_obj
def keys_list(state: _State, as_json: bool) -> None:
    """List API keys (names, scopes, dates; never the keys).

    \b
    Example:
      speakerdb keys list --json
    """
    found = state.db.list_keys()
    text = "\n".join(
        f"{k.name}  {k.scope:<5}  created {k.created_at:%Y-%m-%d %H:%M}"
        + (f"  REVOKED {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
        for k in found
    ) or "no keys"
    _emit(as_json, [k.to_dict() for k in found], text)


@keys.command(name="revoke")
@click.argument("name", callback=_key_name)
@json_option
@click.pass_obj
def keys_revoke(state: _State, name: str, as_json: bool) -> None:
    """Revoke API key NAME: every server refuses it from its next request.

    \b
    Example:
      speakerdb keys revoke callcentre
    """
    info = state.db.revoke_key(name, actor=_actor())
    _emit(as_json, info.to_dict(), f"revoked key {info.name}")


@cli.command()
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True,
              help="Show the newest N records.")
@click.option("--speaker", metavar="NAME", callback=_speaker_name, help="Only changes to this speaker.")
@json_option
@click.pass_obj
def audit(state: _State, limit: int, speaker: str | None, as_json: bool) -> None:
    """Show the audit record: changes made through the service and to keys (who, what, when).

    \b
    Examples:
      speakerdb audit --limit 20
      speakerdb audit --speaker alice --json
    """
    entries = state.db.audit(limit, speaker)
    text = "\n".join(
        f"{store_iso(e.time)}  {_printable(e.key_name or '-')}  {e.operation:<10}  {_printable(e.speaker or '-')}"
        + (f"  {_printable(json.dumps(e.detail, ensure_ascii=False))}" if e.detail else "")
        for e in entries
    ) or "no audit records"
    _emit(as_json, [e.to_dict() for e in entries], text)


def store_iso(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") + "Z"


# ---- global options also after the command ------------------------------------------------
_GLOBAL_ATTRS = {"db": "db_path", "model": "model", "device": "device", "precision": "precision"}


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """An option given after the command overrides the same option given before it."""
    if value is not None:
        state = ctx.find_object(_State)
        if state is not None:
            setattr(state, _GLOBAL_ATTRS[param.name], value)
    return value


def _global_options() -> list[click.Option]:
    """--db, --model, --device and --precision as each command accepts them (no defaults here:
    the group's options and environment variables give those)."""
    common = {"expose_value": False, "callback": _set_global}
    return [
        click.Option(["--db"], type=click.Path(dir_okay=False), help="SQLite database file (same as before the command).", **common),
        click.Option(["--model"], metavar="ID_OR_DIR", help="Embedding model (same as before the command).", **common),
        click.Option(["--device"], type=click.Choice(["cpu", "cuda"]), help="Where the model runs.", **common),
        click.Option(["--precision"], type=click.Choice(["fp32", "bf16"]), help="fp32 or bf16 embeddings.", **common),
    ]


def _accept_global_options(group: click.Group) -> None:
    """`speakerdb identify --model resemblyzer x.mp3` works like `speakerdb --model resemblyzer identify x.mp3`."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_global_options(command)
            continue
        taken = {opt for p in command.params for opt in p.opts}
        command.params.extend(o for o in _global_options() if not taken & set(o.opts))


_accept_global_options(cli)


def main() -> None:
    """Console-script entry point: one command in its own process."""
    global _gc_thresholds_before
    _gc_thresholds_before = gc.get_threshold()
    young, middle, full = _gc_thresholds_before
    gc.set_threshold(young, middle, max(full, ONE_SHOT_FULL_GC_EVERY))
    try:
        cli(prog_name="speakerdb")
    except SystemExit as e:
        if e.code not in (0, None):
            # An error's traceback holds frames in cycles; freezing them keeps native objects
            # alive to the end, which their bindings (nanobind's) then report as leaks on stderr.
            gc.collect()
        raise
    finally:
        # The command is done and its database closed (call_on_close): the process ends here,
        # so the interpreter need not walk every object to free it.
        gc.freeze()
