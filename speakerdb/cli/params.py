"""What the commands' arguments and options accept, and the checks a value gets before any
work: names that are valid UTF-8, scores in range, KEY=VALUE pairs, calibration targets,
durations.

Nothing here opens the database: a check that needs it (is the threshold on the AS-norm
scale?) is made by the command, through :func:`check_score`.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import click

from ..config import AUDIO_SUFFIXES, audio_files
from ..errors import InvalidInputError, SpeakerDBError, check_output
from .output import printable

if TYPE_CHECKING:
    from . import State


def text_argument(what: str) -> Any:
    """A parameter callback: a name that is not valid UTF-8 (lone surrogates in argv) is one
    clear error line (exit 1) before any command runs, locally and through --server alike."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str) and any("\ud800" <= ch <= "\udfff" for ch in item):
                # As the library words it (store.check_name_text); loaded only for a bad name.
                from ..api import check_name_text

                check_name_text(item, what)
        return value

    return check


speaker_name, key_name = text_argument("speaker name"), text_argument("key name")


class Score(click.ParamType):
    """A finite number; whether it is in range is the command's check (:func:`check_score`),
    which knows the database's scale. NaN, infinities and text are usage errors (exit 2)."""

    name = "score"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not in the range {COSINE_LOW:g} to 1", param, ctx)
        return number


def _shown(value: float) -> str:
    """A number as it was most likely typed: 3 for 3.0, 0.25 for 0.25."""
    text = repr(value)
    return text.removesuffix(".0")


SCORE = Score()
#: The lowest cosine threshold, stored (`threshold VALUE`) or for one call (--threshold): a
#: negative one accepts nearly every voice. AS-norm thresholds have their own range.
COSINE_LOW = 0.0
THRESHOLD_HELP = "Override the database's threshold for this call [0 to 1; -20 to 100 on an AS-norm database]."


def check_score(state: State, value: float | None, name: str = "threshold") -> None:
    """A usage error (exit 2) for a score outside [0, 1], unless the database's threshold is
    on the AS-norm scale and the score is in that scale's range."""
    if value is None or COSINE_LOW <= value <= 1.0:
        return
    ctx = click.get_current_context()
    param = next(p for p in ctx.command.params if p.name == name)
    if state.exists():
        from ..api import (  # numpy: only for a score outside [-1, 1]
            AS_NORM,
            AS_NORM_RANGE,
        )

        if state.db.threshold_scale == AS_NORM:
            low_norm, high_norm = AS_NORM_RANGE
            if not low_norm <= value <= high_norm:
                raise click.BadParameter(
                    f"{_shown(value)} is not in the range {low_norm:g} to {high_norm:g} of AS-norm scores", ctx, param
                )
            return
    hint = ": a negative threshold accepts nearly every voice" if value < 0 else ""
    raise click.BadParameter(f"{_shown(value)} is not in the range {COSINE_LOW:g} to 1{hint}", ctx, param)


def parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    """--meta KEY=VALUE pairs as a dict; a pair without "=" or a key is a usage error."""
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    return metadata


def check_target(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--target is checked while parsing: a typo is a usage error (exit 2) before any scoring."""
    from ..api import parse_target  # numpy: loaded when a command runs, not for --help

    try:
        parse_target(value)
    except SpeakerDBError as e:
        raise click.BadParameter(str(e)) from None
    return value


def check_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """policy --expire-after is checked while parsing: a duration that is not one (5x), or zero
    or over 200 years, is a usage error (exit 2), as an out-of-range threshold is."""
    if value is None:
        return value
    from ..api import parse_duration  # SQLAlchemy: loaded when a command runs, not for --help

    try:
        parse_duration(value)
    except SpeakerDBError as e:
        raise click.BadParameter(str(e)) from None
    return value


def check_outputs(force: bool, *paths: str | None) -> None:
    """Refuse now, before any work, output files that cannot be written or that exist without
    --force; two outputs may not share one path."""
    given = [check_output(p, overwrite=force) for p in paths if p]
    if len({os.path.abspath(p) for p in given}) < len(given):
        raise click.UsageError(f"the outputs need different files, not {printable(str(given[0]))} twice")


def evaluation_options(command: Any) -> Any:
    """The options evaluate and calibrate share: how to split DATA_DIR and score it."""
    options = [
        click.argument("data_dir", type=click.Path(exists=True, file_okay=False)),
        click.option(
            "--enroll-count",
            type=click.IntRange(min=1),
            default=3,
            show_default=True,
            help="Recordings per speaker used for enrollment; the rest are test probes.",
        ),
        click.option(
            "--impostor-speakers",
            type=click.IntRange(min=0),
            help="Speakers of DATA_DIR held out entirely as impostors [default: a fifth, if 5 or more].",
        ),
        click.option(
            "--impostors",
            "impostor_dirs",
            multiple=True,
            type=click.Path(exists=True, file_okay=False),
            help="Extra impostor recordings: DIR/<speaker>/... or loose files (repeatable).",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random split."),
        click.option(
            "--test-seconds",
            type=click.FloatRange(min=0.5),
            help="Keep S seconds from the middle of each test recording's detected speech (short-utterance condition).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def recordings(files: tuple[str, ...]) -> tuple[str, ...]:
    """The files as given, each folder replaced by the recordings below it (sorted): enroll,
    identify and timeline take folders alike; a folder with none is an error before anything
    is read."""
    paths: list[str] = []
    for f in files:
        if not os.path.isdir(f):
            paths.append(f)
            continue
        found = audio_files(f)
        if not found:
            raise InvalidInputError(f"no recordings under {f} (looked for {', '.join(sorted(AUDIO_SUFFIXES))})")
        paths += [str(p) for p in found]
    return tuple(paths)
