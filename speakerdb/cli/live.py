"""Live identification on the command line: ``speakerdb listen`` (see docs/live.md)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from ..errors import AudioError, SpeakerDBError
from ..results import EnrolledEvent, ErrorEvent, LiveEvent, SpeechEvent, VoiceEvent
from .output import emit, emit_error_event, finite, json_flag, note, printable, score_text, timeline_text
from .params import SCORE, check_score

if TYPE_CHECKING:
    from . import State

ENCODINGS = ("pcm_s16le", "f32le", "mulaw", "alaw")  # speakerdb.audio.pcm.ENCODINGS (no numpy here)


@click.command()
@click.argument("source", default="-", metavar="[FILE | -]")
@click.option(
    "--encoding",
    type=click.Choice(ENCODINGS),
    help="The input is raw audio in this encoding [default for standard input: pcm_s16le; "
    "a FILE is decoded as any recording unless this is given].",
)
@click.option(
    "--sample-rate",
    type=click.IntRange(8_000, 48_000),
    default=16_000,
    show_default=True,
    help="Sample rate of raw input, Hz.",
)
@click.option("--realtime", is_flag=True, help="Feed a file at the pace of its audio, as if it were live.")
@click.option(
    "--mic",
    is_flag=True,
    help="Listen to a microphone until Ctrl-C (or --seconds); needs pip install 'speakerdb[mic]'.",
)
@click.option("--mic-device", metavar="INDEX|NAME", help="The microphone for --mic [default: the system's input].")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), help="With --mic: stop after this much audio.")
@click.option(
    "--threshold",
    type=SCORE,
    help="Override the database's threshold for this session [0 to 1; -20 to 100 on an AS-norm database].",
)
@json_flag(
    "Print JSON Lines: one JSON object on its own line of stdout per event as it happens, then the "
    'timeline\'s (on failure, even before the audio: a last line {"type": "error", "code", "message"}, '
    'with "at" once audio has come).',
    events=True,
)
@click.pass_obj
def listen(
    state: State,
    source: str,
    encoding: str | None,
    sample_rate: int,
    realtime: bool,
    mic: bool,
    mic_device: str | None,
    seconds: float | None,
    threshold: float | None,
    as_json: bool,
) -> None:
    """Who is speaking now: stream a recording or standard input through a live session and
    print one line per event as it happens, then the session's timeline.

    Events: "speech" when speech begins; "voice" for a span of one voice, named from the
    enrolled speakers or unknown-N (one unknown voice keeps its N), provisional ("~") and
    then final ("="); the timeline at the end is the one `timeline` gives for the same audio.
    With --json, one JSON object per line: {"type": "speech", "start", "at"}, {"type":
    "voice", "start", "end", "label", "speaker", "score", "final", "at"} ("at": seconds of
    audio fed when it was emitted), then {"type": "timeline", ...} as `timeline --json` gives
    for one file; a failure is a last line {"type": "error", "code", "message", "at"}.

    With --server, the audio goes to the service's live session (WebSocket /v1/stream),
    which embeds it there; the output is the same.

    SOURCE "-" (the default) is raw audio on standard input: 16-bit little-endian PCM mono at
    16 kHz unless --encoding / --sample-rate say otherwise (f32le, G.711 mulaw or alaw;
    8,000-48,000 Hz). A FILE is decoded like any recording (any format FFmpeg reads).
    --mic captures a microphone instead (at --sample-rate) until Ctrl-C, which ends the
    session and prints its timeline.

    \b
    Examples:
      arecord -f S16_LE -r 16000 -c 1 - | speakerdb listen -
      speakerdb listen call.wav --realtime
      speakerdb listen call.ulaw --encoding mulaw --sample-rate 8000 --json
      ffmpeg -i meeting.mp4 -f s16le -ac 1 -ar 16000 - | speakerdb listen - --json
      speakerdb --server https://voices.example.com listen call.wav --realtime
      speakerdb listen --mic --mic-device 2 --seconds 60
    """
    check_score(state, threshold)
    if mic and (source != "-" or encoding or realtime):
        raise click.UsageError("--mic takes no FILE, --encoding or --realtime: it is the input")
    if (mic_device is not None or seconds is not None) and not mic:
        raise click.UsageError("--mic-device and --seconds go with --mic")
    from ..workflows import live_input, microphone_input  # deferred: numpy and the decoders, not for --help

    if mic:
        source = "microphone"
        feed = microphone_input(sample_rate=sample_rate, device=mic_device, max_seconds=seconds)
    else:
        feed = live_input(source, encoding=encoding, sample_rate=sample_rate, realtime=realtime)
    # A local session, or with --server the service's WebSocket /v1/stream: the same calls.
    session = state.db.stream(sample_rate=feed.sample_rate, encoding=feed.encoding, threshold=threshold)
    try:
        for frame in feed.frames:
            _print_events(session.feed(frame), as_json)
        _print_events(session.finish(), as_json)
    except SpeakerDBError as e:
        if as_json:  # JSON lines: the error as one more line, the service's error event
            at = session.seconds_fed or None  # "at" once audio has come, as the help says
            emit_error_event(ErrorEvent(e.code, str(e), at).to_dict())
        raise
    result = session.close()
    if result.error is not None:  # too short or silent: the session's own verdict, after the audio
        message = f"{printable(source)}: {result.error}"
        if as_json:  # one more JSON line, as for an error while the audio came
            emit_error_event(ErrorEvent(AudioError.code, message, session.seconds_fed).to_dict())
        raise click.ClickException(message)
    for text in result.notes:
        note("note:", source, text)
    if as_json:
        emit(False, None, json.dumps(finite({"type": "timeline", **result.to_dict()}), ensure_ascii=False))
    else:
        emit(False, None, timeline_text(result, "timeline"))


def _print_events(events: list[LiveEvent], as_json: bool) -> None:
    for event in events:
        if as_json:
            click.echo(json.dumps(finite(event.to_dict()), ensure_ascii=False, allow_nan=False))
        else:
            click.echo(event_line(event))


def event_line(event: LiveEvent) -> str:
    """One line of text for an event, led by the seconds of audio fed when it came."""
    if isinstance(event, SpeechEvent):
        return f"{event.at:8.2f}  speech from {event.start:.2f}"
    if isinstance(event, VoiceEvent):
        mark = "=" if event.final else "~"
        return (
            f"{event.at:8.2f}  {mark} {event.start:8.2f} {event.end:8.2f}  {printable(event.label)}"
            f"  {score_text(event.score)}" + ("  final" if event.final else "")
        )
    if isinstance(event, EnrolledEvent):
        return f"{event.at:8.2f}  enrolled {printable(event.label)} as {printable(event.name)}"
    if isinstance(event, ErrorEvent):
        return f"error ({event.code}): {printable(event.message)}"
    raise TypeError(f"not a live event: {event!r}")


COMMANDS = [listen]
