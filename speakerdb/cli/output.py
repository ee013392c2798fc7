"""Everything the command line writes: results (text or JSON), progress bars, questions,
warnings and error lines, and how errors become exit codes.

Exit codes: 0 success, 1 a failed operation (a :class:`SpeakerDBError`, or any file of a batch
that failed), 2 bad usage (click's own errors). Whatever a line quotes (paths, names, values)
goes through :func:`printable`, so a newline or a terminal escape in a file name stays on
its own line's one line and cannot forge another.

With --json, a command that fails as a whole also prints ``{"error": {"code", "message"}}`` on
stdout (the error's own code, as the service answers it; ``usage_error`` for exit code 2), so a
script that parses stdout always gets one JSON document.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import click

from ..errors import SpeakerDBError, printable_path
from ..results import Timeline

_JSON = "speakerdb.json"  # ctx.meta (shared by a command's contexts): --json was given
_ARGS = "speakerdb.args"  # ctx.meta: the command line, for usage errors raised before --json is read
_EMITTED = "speakerdb.emitted"  # ctx.meta: the command's result is on stdout already
_EVENTS = "speakerdb.events"  # ctx.meta: --json prints events, an error is {"type": "error", ...}
_ERROR_SHOWN = "speakerdb.error_shown"  # ctx.meta: the command printed its error's JSON line itself
USAGE_ERROR = "usage_error"  # the code of a JSON error with exit code 2


def _json_given(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """Remember --json for the error path (:class:`Group`); eager, so read before any other
    option or argument can fail."""
    if value:
        ctx.meta[_JSON] = True
    return value


def json_flag(help: str, *, events: bool = False) -> Any:
    """The --json option with its own help: what the command prints with it. ``events``: it
    prints events as JSON lines (listen), so an error, however early, is one more line."""
    callback = _events_given if events else _json_given
    return click.option("--json", "as_json", is_flag=True, is_eager=True, callback=callback, help=help)


def _events_given(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """Remember that --json prints events as JSON lines: an error, however early, is one more
    line of the events' own shape (:func:`emit_error_event`)."""
    if value:
        ctx.meta[_JSON] = ctx.meta[_JSONL] = ctx.meta[_EVENTS] = True
    return value


json_option = json_flag('Print one JSON document on stdout (on failure: {"error": {"code", "message"}}).')
_JSONL = "speakerdb.jsonl"  # ctx.meta: --jsonl was given (errors are one line too)


def _jsonl_given(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """Remember --jsonl for the error path, as :func:`_json_given` does for --json."""
    if value:
        ctx.meta[_JSON] = ctx.meta[_JSONL] = True
    return value


jsonl_option = click.option(
    "--jsonl",
    "as_jsonl",
    is_flag=True,
    is_eager=True,
    callback=_jsonl_given,
    help="Print one JSON object per file on one line of stdout as soon as that file is done "
    '(on failure of the whole command: a last line {"error": {"code", "message"}}).',
)
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts).")


class Group(click.Group):
    """Turns library errors into one-line messages and exit code 1, never a traceback.

    Every error message is printed through here or click's own errors, with what it quotes
    escaped by :func:`printable`.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta.setdefault(_ARGS, list(args))
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as e:
            _escape(e)
            _json_error(ctx, e)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaseException as e:
            discard = getattr(ctx.obj, "discard_if_unused", None)
            if discard is not None:  # a failed first enroll leaves no empty database
                discard()
            if isinstance(e, SpeakerDBError):
                _json_error(ctx, e)
                raise click.ClickException(printable(str(e))) from None
            if isinstance(e, click.ClickException):  # usage errors quote values too (--db PATH)
                _escape(e)
                _json_error(ctx, e)
            raise


def _escape(e: click.ClickException) -> None:
    """A click error's message with what it quotes made :func:`printable`; but not the help
    that a group given no command prints (NoArgsIsHelpError carries it as its message): its
    lines are ours and must stay lines, not one line of escaped newlines."""
    if not isinstance(e, click.exceptions.NoArgsIsHelpError):
        e.message = printable(e.message)  # type: ignore[misc]  # click declares it Final


def _json_error(ctx: click.Context, e: SpeakerDBError | click.ClickException) -> None:
    """With --json, the error as ``{"error": {"code", "message"}}`` on stdout, unless the command
    printed its document already; the ``Error:`` line on stderr and the exit code stay as they are.

    A usage error may come before click reads --json (an unknown option): then --json anywhere
    on the command line before ``--`` counts."""
    if ctx.meta.get(_ERROR_SHOWN) or (ctx.meta.get(_EMITTED) and not ctx.meta.get(_JSONL)):
        return  # JSON lines: the error is one more line, unless the command printed it
    if isinstance(e, click.ClickException):
        args: list[str] = ctx.meta.get(_ARGS, [])
        given = args[: args.index("--")] if "--" in args else args
        if not (ctx.meta.get(_JSON) or "--json" in given):
            return
        code = USAGE_ERROR if isinstance(e, click.UsageError) else SpeakerDBError.code
        message = e.format_message()
    else:
        if not ctx.meta.get(_JSON):
            return
        code, message = e.code, str(e)
    ctx.meta[_EMITTED] = True
    # printable_path: lone surrogates (file names that are not UTF-8) escaped, so stdout can write them
    if ctx.meta.get(_EVENTS):  # a stream of events: the error event's shape, as the service sends it
        click.echo(json.dumps({"type": "error", "code": code, "message": printable_path(message)}, ensure_ascii=False))
        return
    document = {"error": {"code": code, "message": printable_path(message)}}
    click.echo(json.dumps(document, indent=None if ctx.meta.get(_JSONL) else 2, ensure_ascii=False))


# ---- text --------------------------------------------------------------------------------------
def printable(text: str) -> str:
    """``text`` with every character that is not printable (controls, escape sequences, line
    and paragraph separators, invisible format characters) written as a Python escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def score_text(score: float | None) -> str:
    """A score to three places, or "-" for none."""
    return "-" if score is None else f"{score:.3f}"


def timeline_text(t: Timeline, title: str) -> str:
    """A timeline's lines under ``title``: its segments, then its voices with their scores
    (timeline's answer for a file, and listen's final timeline alike)."""
    lines = [f"{title} ({t.duration:.1f} s, {len(t.voices)} voice(s))"]
    width = max((len(s.label) for s in t.segments), default=5)
    lines += [
        f"  {s.start:8.2f} {s.end:8.2f}  {printable(s.label):<{width}}  {score_text(s.score)}" for s in t.segments
    ]
    lines += [
        f"  {printable(v.label)}: {v.seconds:.1f} s"
        + (f", score {v.score:.3f}" if v.score is not None else "")
        + (f" (cosine {v.raw_score:.3f})" if v.raw_score is not None and v.raw_score != v.score else "")
        for v in t.voices
    ]
    return "\n".join(lines)


def threshold_text(value: float | None) -> str:
    """A threshold to three places; None is the threshold that accepts nothing."""
    return "none (accept nothing)" if value is None else f"{value:.3f}"


def cosine_note(score: float | None, raw_score: float | None) -> str:
    """ ", cosine X" when the score shown is normalised (it differs from the raw cosine)."""
    return f", cosine {raw_score:.3f}" if raw_score is not None and raw_score != score else ""


def voices_note(voices: int | None) -> str:
    """ "; N voices: see speakerdb timeline" when identify counted more than one voice in a file."""
    return f"; {voices} voices: see speakerdb timeline" if voices is not None and voices > 1 else ""


# ---- results -----------------------------------------------------------------------------------
def emit(as_json: bool, document: Any, text: str) -> None:
    """The command's result on stdout: ``document`` as JSON with --json, else ``text``."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_EMITTED] = True  # one document on stdout: no error document after it
    if as_json:
        # allow_nan=False: NaN and Infinity are not JSON; finite() has turned them into null.
        click.echo(json.dumps(finite(document), indent=2, ensure_ascii=False, allow_nan=False))
    else:
        click.echo(text)


def emit_error_event(document: dict[str, Any]) -> None:
    """An error event (``{"type": "error", ...}``) as the last JSON line of a stream of events;
    the error path then prints no second one."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_EMITTED] = ctx.meta[_ERROR_SHOWN] = True
    click.echo(json.dumps(finite(document), ensure_ascii=False, allow_nan=False))


def emit_line(document: Any) -> None:
    """One result as one JSON line on stdout, at once (--jsonl), above any progress bar."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_EMITTED] = True
    _print_line(json.dumps(finite(document), ensure_ascii=False, allow_nan=False))


def print_line(text: str) -> None:
    """A result's text on stdout at once (results that stream), above any progress bar."""
    _print_line(text)


def one_of_json_options(as_json: bool, as_jsonl: bool) -> None:
    """--json (one document at the end) and --jsonl (a line per result as it comes) exclude each other."""
    if as_json and as_jsonl:
        raise click.UsageError("--json and --jsonl cannot be combined: --json prints one document at the end")


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def note(prefix: str, source: str, reason: str) -> None:
    """One "PREFIX SOURCE: REASON" line on stderr (notes and warnings about single files)."""
    _print_line(f"{prefix} {printable(source)}: {printable(reason)}", err=True)


class _FileResult(Protocol):
    """A per-file answer (Identification, Timeline): its file and, if it failed, why."""

    @property
    def file(self) -> str: ...

    @property
    def error(self) -> str | None: ...


def fail_files(failed: Sequence[_FileResult]) -> None:
    """An "Error: FILE: why" line for each file of a batch that failed, then exit code 1.

    Every file gets its answer or its error; any error makes the exit code 1."""
    for r in failed:
        click.echo(f"Error: {printable(r.file)}: {printable(r.error or '')}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


# ---- a person at a terminal --------------------------------------------------------------------
def interactive() -> bool:
    """Progress only for a person watching: when stderr (where it is drawn) is a terminal,
    never into a pipe or a log file."""
    return sys.stderr.isatty()


def can_ask() -> bool:
    """Whether a person can answer a question: stdin is a terminal."""
    return sys.stdin.isatty()


def confirm(question: str, yes: bool) -> None:
    """Ask a person at a terminal; refuse (exit 2) without --yes when nobody can answer."""
    if yes:
        return
    if not can_ask():
        raise click.UsageError(f"{question} Not confirmed: add --yes to do it without asking.")
    click.confirm(question, abort=True, err=True)


def _clock(seconds: float) -> str:
    """A duration as M:SS or H:MM:SS."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Bar:
    """One progress line on stderr, redrawn in place: files done of all, seconds of audio,
    the rate and the time left (from the rate so far). Called as the library's
    ``progress(done, total, seconds)``; lines printed while it shows go through :meth:`echo`
    (or :func:`note`, the log handler), which lift the bar, print, and draw it again below."""

    WIDTH = 24  # characters of the bar itself
    REDRAW_S = 0.1  # at most ten redraws a second (the last one always)

    def __init__(self, label: str, total: int, unit: str = "files", clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit, self.clock = label, total, unit, clock
        self.started = clock()
        self.done: int = 0
        self.seconds: float | None = None
        self._drawn = False
        self._last = float("-inf")

    def __call__(self, done: int, total: int, seconds: float | None = None) -> None:
        self.done, self.total, self.seconds = done, total, seconds
        now = self.clock()
        if now - self._last >= self.REDRAW_S or done >= total:
            self._last = now
            self.draw()

    def line(self) -> str:
        """What the bar shows now: ``identifying [#####-----]  37/251 files, 412 s of audio, 7.9 s/s, 0:42 left``."""
        elapsed = max(self.clock() - self.started, 1e-9)
        filled = int(self.WIDTH * self.done / self.total) if self.total else self.WIDTH
        parts = [f"{self.done}/{self.total} {self.unit}"]
        if self.seconds is not None:
            parts.append(f"{self.seconds:.0f} s of audio")
            parts.append(f"{self.seconds / elapsed:.1f} s/s" if self.done else "- s/s")
        else:
            parts.append(f"{self.done / elapsed:.1f} {self.unit}/s" if self.done else f"- {self.unit}/s")
        left = elapsed / self.done * (self.total - self.done) if self.done else None
        parts.append(f"{_clock(left)} left" if left is not None else "- left")
        return f"{self.label} [{'#' * filled}{'-' * (self.WIDTH - filled)}] " + ", ".join(parts)

    def draw(self) -> None:
        click.echo("\r\x1b[K" + self.line(), err=True, nl=False)
        self._drawn = True

    def lift(self) -> None:
        """Clear the bar's line (before another line is printed on the terminal)."""
        if self._drawn:
            click.echo("\r\x1b[K", err=True, nl=False)
            self._drawn = False

    def echo(self, text: str, err: bool = False) -> None:
        """Print a line above the bar."""
        self.lift()
        click.echo(text, err=err)
        self.draw()


#: The bar on screen now, if any: what note() and the log handler print lifts it first.
_SHOWN: list[Bar] = []


def _print_line(text: str, err: bool = False) -> None:
    """A line on stdout or stderr, above the progress bar if one is shown."""
    if _SHOWN:
        _SHOWN[-1].echo(text, err=err)
    else:
        click.echo(text, err=err)


@contextmanager
def progress(label: str, n_files: int, as_json: bool = False) -> Iterator[Bar | None]:
    """A progress bar on stderr for many files (:class:`Bar`), as the library's
    ``progress(done, total, seconds)`` callback; None (no bar) for one file, or when stderr is
    not a terminal. It is drawn whatever stdout gets (--json too): stderr is the person's."""
    if n_files < 2 or not interactive():
        yield None
        return
    bar = Bar(label, n_files)
    bar.seconds = 0.0  # files of audio: their seconds are counted from the start
    _SHOWN.append(bar)
    try:
        bar.draw()
        yield bar
    finally:
        _SHOWN.remove(bar)
        bar.lift()


@contextmanager
def stages(as_json: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """One progress bar per stage (``progress(stage, done, total)``), each replacing the one
    before; drawn only when stderr is a terminal (as :func:`progress`)."""
    bars: dict[str, Bar] = {}

    def update(stage: str, n: int, total: int) -> None:
        if not interactive():
            return
        if stage not in bars:
            for old in bars.values():
                old.lift()
                _SHOWN.remove(old)
            bars.clear()
            bars[stage] = Bar(stage, total, unit="steps")
            _SHOWN.append(bars[stage])
        bars[stage](n, total)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.lift()
            _SHOWN.remove(bar)


def rows_copied(as_json: bool) -> Callable[[str, int], None] | None:
    """``db copy``'s progress: a line rewritten in place on stderr (terminals only)."""
    if as_json or not interactive():
        return None

    def update(table: str, rows: int) -> None:
        click.echo(f"\rcopying {table}: {rows:,} rows", err=True, nl=False)

    return update


def end_line(progress: object) -> None:
    """End the line :func:`rows_copied` kept rewriting."""
    if progress is not None:
        click.echo("", err=True)


# ---- the library's log -------------------------------------------------------------------------
class _EchoHandler(logging.Handler):
    """Writes library log records as "warning: ..." lines through click (whatever stderr is now)."""

    def emit(self, record: logging.LogRecord) -> None:
        _print_line(f"{record.levelname.lower()}: {printable(record.getMessage())}", err=True)


def log_warnings_to_stderr() -> None:
    """The library's warnings (``logging.getLogger("speakerdb")``) as lines on stderr."""
    logger = logging.getLogger("speakerdb")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler(logging.WARNING))
        logger.propagate = False
