"""A microphone as a live session's input (``speakerdb listen --mic``), through the optional
``sounddevice`` package (``pip install 'speakerdb[mic]'``; it needs the PortAudio library:
``apt-get install libportaudio2`` on Debian, included in its wheels for macOS and Windows).

PortAudio calls back on its own thread with each block it captured; the blocks wait in a
bounded queue for the session, which takes them on the caller's thread. A session that
cannot keep up with real time loses the oldest audio beyond ``MAX_BEHIND_S``, with a
warning, rather than holding a growing backlog.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidInputError

log = logging.getLogger("speakerdb")

FRAME_S = 0.1  # seconds of audio in each block PortAudio hands over
MAX_BEHIND_S = 10.0  # seconds of captured audio held for a session that falls behind
POLL_S = 0.1  # seconds between checks for Ctrl-C and the end while no audio arrives
INSTALL = "pip install 'speakerdb[mic]' (and the PortAudio library: apt-get install libportaudio2)"


def _sounddevice() -> Any:
    """The sounddevice module, or one error line saying how to get it."""
    try:
        import sounddevice  # optional extra; loads PortAudio, which may be missing
    except ImportError:
        raise InvalidInputError(f"--mic needs the sounddevice package: {INSTALL}") from None
    except OSError as e:  # sounddevice is there, the PortAudio library is not
        raise InvalidInputError(f"--mic cannot load PortAudio ({e}): {INSTALL}") from None
    return sounddevice


def device_of(device: str | None) -> int | str | None:
    """A ``--mic-device`` value as sounddevice takes it: a number is an index, other text a name."""
    if device is None or not device.strip():
        return None
    return int(device) if device.strip().isdigit() else device


def frames(sample_rate: int, device: str | None = None, max_seconds: float | None = None) -> Iterator[bytes]:
    """Blocks of 16-bit little-endian mono PCM at ``sample_rate`` from the microphone, as they are
    captured, until ``max_seconds`` of audio or Ctrl-C (SIGINT, taken over while the blocks are
    read on the main thread), which ends the iteration quietly. The device is opened before the
    first block is asked for, so a missing one fails at once (InvalidInputError)."""
    sd = _sounddevice()
    blocks: queue.Queue[bytes] = queue.Queue(maxsize=max(1, int(MAX_BEHIND_S / FRAME_S)))
    dropped = {"blocks": 0, "overflows": 0}

    def captured(data: Any, n_frames: int, when: Any, status: Any) -> None:
        if status and getattr(status, "input_overflow", False):
            dropped["overflows"] += 1
        try:
            blocks.put_nowait(bytes(data))
        except queue.Full:  # the session is MAX_BEHIND_S behind: drop the oldest block
            dropped["blocks"] += 1
            try:
                blocks.get_nowait()
                blocks.put_nowait(bytes(data))
            except (queue.Empty, queue.Full):
                pass

    try:
        stream = sd.RawInputStream(
            samplerate=sample_rate,
            blocksize=max(1, int(sample_rate * FRAME_S)),
            device=device_of(device),
            channels=1,
            dtype="int16",
            callback=captured,
        )
    except (ValueError, sd.PortAudioError) as e:
        which = f" {device!r}" if device else ""
        raise InvalidInputError(
            f"cannot open the microphone{which}: {e} (`python -m sounddevice` lists the input devices)"
        ) from None
    return _take(stream, blocks, dropped, sample_rate, max_seconds)


def _take(
    stream: Any, blocks: queue.Queue[bytes], dropped: dict[str, int], sample_rate: int, max_seconds: float | None
) -> Iterator[bytes]:
    limit = None if max_seconds is None else int(max_seconds * sample_rate) * 2  # bytes
    taken, warned = 0, 0
    # Ctrl-C ends the audio between two blocks, never in the middle of the session's work; the
    # audio captured before it is still taken.
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    started = time.monotonic()
    try:
        with stream:
            left = -1  # blocks still to take once Ctrl-C came: those captured before it
            while left != 0 and (limit is None or taken < limit):
                if left < 0 and stop.is_set():
                    left = blocks.qsize()
                    continue
                try:
                    block = blocks.get(timeout=POLL_S)
                    if left > 0:
                        left -= 1
                except queue.Empty:
                    if time.monotonic() - started > MAX_BEHIND_S and taken == 0:
                        raise InvalidInputError("the microphone sends no audio (is it muted or taken?)") from None
                    continue
                if limit is not None:
                    block = block[: limit - taken]
                taken += len(block)
                if dropped["blocks"] > warned:
                    log.warning(
                        "the live session fell %.0f s behind the microphone: %.1f s of audio dropped",
                        MAX_BEHIND_S,
                        (dropped["blocks"] - warned) * FRAME_S,
                    )
                    warned = dropped["blocks"]
                yield block
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if dropped["overflows"]:
            log.warning("the microphone's input overflowed %d time(s): some audio was lost", dropped["overflows"])
