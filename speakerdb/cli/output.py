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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import click

from ..errors import SpeakerDBError, printable_path

_JSON = "speakerdb.json"  # ctx.meta (shared by a command's contexts): --json was given
_ARGS = "speakerdb.args"  # ctx.meta: the command line, for usage errors raised before --json is read
_EMITTED = "speakerdb.emitted"  # ctx.meta: the command's result is on stdout already
USAGE_ERROR = "usage_error"  # the code of a JSON error with exit code 2


def _json_given(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """Remember --json for the error path (:class:`Group`); eager, so read before any other
    option or argument can fail."""
    if value:
        ctx.meta[_JSON] = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    is_eager=True,
    callback=_json_given,
    help='Print one JSON document on stdout (on failure: {"error": {"code", "message"}}).',
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
            e.message = printable(e.message)  # type: ignore[misc]  # click declares it Final
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
                e.message = printable(e.message)  # type: ignore[misc]  # as in parse_args
                _json_error(ctx, e)
            raise


def _json_error(ctx: click.Context, e: SpeakerDBError | click.ClickException) -> None:
    """With --json, the error as ``{"error": {"code", "message"}}`` on stdout, unless the command
    printed its document already; the ``Error:`` line on stderr and the exit code stay as they are.

    A usage error may come before click reads --json (an unknown option): then --json anywhere
    on the command line before ``--`` counts."""
    if ctx.meta.get(_EMITTED):
        return
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
    document = {"error": {"code": code, "message": printable_path(message)}}
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


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
    click.echo(f"{prefix} {printable(source)}: {printable(reason)}", err=True)


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
    """Progress bars only for a person at a terminal, never into a pipe or a file."""
    return sys.stdout.isatty()


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


@contextmanager
def progress(label: str, n_files: int, as_json: bool) -> Iterator[Callable[[int, int, float], None] | None]:
    """A progress bar on stderr for many files, as the library's ``progress(done, total, seconds)``
    callback; None (no bar) for --json, one file, or when stdout is not a terminal."""
    if as_json or n_files < 2 or not interactive():
        yield None
        return
    with click.progressbar(length=n_files, label=label, file=sys.stderr, show_pos=True, show_eta=True) as bar:
        state = {"done": 0}

        def update(done: int, total: int, seconds: float) -> None:
            bar.label = f"{label} ({seconds:.0f} s of audio)"
            bar.update(done - state["done"])
            state["done"] = done

        yield update


@contextmanager
def stages(as_json: bool) -> Iterator[Callable[[str, int, int], None]]:
    """One progress bar per stage (``progress(stage, done, total)``), each closed when the next
    begins; silent for --json or when stdout is not a terminal."""
    bars: dict[str, Any] = {}
    done: dict[str, int] = {}

    def update(stage: str, n: int, total: int) -> None:
        if as_json or not interactive():
            return
        if stage not in bars:
            for bar in bars.values():
                bar.__exit__(None, None, None)
            bars.clear()
            bars[stage] = click.progressbar(length=total, label=stage, file=sys.stderr, show_pos=True, show_eta=True)
            bars[stage].__enter__()
            done[stage] = 0
        bars[stage].update(n - done[stage])
        done[stage] = n

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.__exit__(None, None, None)


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
        click.echo(f"{record.levelname.lower()}: {printable(record.getMessage())}", err=True)


def log_warnings_to_stderr() -> None:
    """The library's warnings (``logging.getLogger("speakerdb")``) as lines on stderr."""
    logger = logging.getLogger("speakerdb")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler(logging.WARNING))
        logger.propagate = False
