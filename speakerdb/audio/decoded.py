"""A file decoded once and read as often as needed: identify's embedding and voice count, and
the timeline's two passes (voice activity, then windows), share one decode.

The first read decodes the file with :func:`.decode.stream` and keeps each block as it
passes; later reads give back the same blocks, with the same boundaries, so every consumer
sees exactly what a fresh decode would give it (the VAD's per-call batching and the
windowing depend on where blocks start and end). Up to ``IN_MEMORY_S`` of audio is kept in
memory; a longer recording is spooled to an unnamed temporary file (in ``$TMPDIR``), so
memory stays bounded whatever the length. Replaying costs a small fraction of decoding:
reading float32 back is far cheaper than decoding MP3 or Ogg and resampling.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, final

import numpy as np

from . import decode

#: Seconds of decoded audio kept in memory (4 bytes per sample at 16 kHz: 7.7 MB); beyond
#: this the blocks go to a temporary file. Equal to what the embedding pipeline reads ahead.
IN_MEMORY_S = 120.0  # seconds


@final
class Decoded:
    """A recording at ``path``, decoded on the first call of :meth:`blocks` and replayed after.

    Close it (or use it as a context manager) to release a spooled file early; it is also
    released when the object is collected.
    """

    def __init__(
        self, path: str | os.PathLike[str], in_memory_s: float | None = None, max_audio_s: float | None = None
    ) -> None:
        self.path = path
        self.max_audio_s = max_audio_s  # the longest recording decoded (None: decode.max_duration_s)
        self._limit = int((IN_MEMORY_S if in_memory_s is None else in_memory_s) * decode.SAMPLE_RATE)  # samples
        self._lengths: list[int] = []  # samples per block, in order
        self._held: list[np.ndarray] = []  # the blocks, while they fit in memory
        self._spool: IO[bytes] | None = None
        self._n_samples = 0
        self._complete = False  # a first read ran to the end of the file
        self.decodes = 0  # how many times the file was decoded (1 unless a read was abandoned)

    @property
    def n_samples(self) -> int:
        """Samples kept so far (all of the recording once a read has finished)."""
        return self._n_samples

    @property
    def spooled(self) -> bool:
        """Whether the blocks went to a temporary file (the recording is longer than the limit)."""
        return self._spool is not None

    def blocks(self) -> Iterator[np.ndarray]:
        """The recording's 16 kHz mono float32 blocks, as :func:`.decode.stream` gives them.

        Raises AudioError (on the first read) for a file that cannot be decoded. The blocks
        are read-only: they are the ones later reads give back.
        """
        return self._replay() if self._complete else self._decode()

    def _decode(self) -> Iterator[np.ndarray]:
        # A read abandoned halfway kept part of the file: start again rather than replay a part.
        self.close()
        self.decodes += 1
        for block in decode.stream(Path(self.path), max_audio_s=self.max_audio_s):
            block = np.ascontiguousarray(block, np.float32)
            block.flags.writeable = False
            self._keep(block)
            yield block
        self._complete = True

    def _keep(self, block: np.ndarray) -> None:
        self._lengths.append(len(block))
        self._n_samples += len(block)
        if self._spool is not None:
            self._spool.write(block.data.cast("B"))
            return
        self._held.append(block)
        if self._n_samples > self._limit:  # too long to hold: everything so far goes to a file
            # Unlinked at once, so nothing is left behind; closed by close() or when collected.
            self._spool = tempfile.TemporaryFile()  # noqa: SIM115
            for held in self._held:
                self._spool.write(held.data.cast("B"))
            self._held = []

    def _replay(self) -> Iterator[np.ndarray]:
        if self._spool is None:
            yield from self._held
            return
        spool = self._spool
        spool.flush()
        at = 0  # byte offset: every read seeks, so two replays may be interleaved
        for n in self._lengths:
            spool.seek(at)
            data = spool.read(4 * n)
            if len(data) != 4 * n:  # the temporary file was truncated under us
                raise OSError(f"{self.path}: the decoded audio kept in a temporary file is incomplete")
            at += len(data)
            yield np.frombuffer(data, np.float32)  # read-only, as the first read's blocks

    def close(self) -> None:
        """Release what is kept (a later read decodes the file again)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._held, self._lengths, self._n_samples, self._complete = [], [], 0, False

    def __enter__(self) -> Decoded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Decoded({str(self.path)!r})"
