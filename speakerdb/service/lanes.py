"""Lanes and batches: how one worker process runs facade calls.

- **lanes**: each worker keeps two :class:`~speakerdb.api.SpeakerDB` objects, each used by
  one thread only. The *embedding lane* holds the model (loaded once, at start-up) and runs
  identify, timeline, verify and enroll; the *admin lane* runs everything else, so a listing
  never waits behind a 10 s embedding. Both see every write acknowledged by any process at
  their next call (``IndexKeeper.snapshot``).
- **batches**: identify requests that wait for the embedding lane together are answered by
  one facade call (:class:`IdentifyBatches`): short clips of equal length then share a
  forward pass (``pipeline.embed_clips``), which is where a busy worker gains throughput.
- **galleries**: a request works in the gallery its URL names (:data:`GALLERY`, set by the
  route's key check); a lane's database is the default gallery, and it keeps a view of each
  other gallery asked for (``SpeakerDB.for_gallery``: same connections and model, its own
  index), checked against the database at every call, so a gallery removed (or removed and
  made again) is never answered for from a stale view.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import errors
from ..api import SpeakerDB
from ..audio import decode as audio
from ..config import DEFAULT_GALLERY
from ..errors import GalleryNotFoundError
from ..results import Progress
from .uploads import UploadedFile

#: The gallery the running request works in: its URL's ``/v1/galleries/{gallery}/...``, else the
#: default. Set by the route's key check (auth.require); the lanes run each call in it.
GALLERY: contextvars.ContextVar[str] = contextvars.ContextVar("speakerdb_gallery", default=DEFAULT_GALLERY)


class CountingEmbedder:
    """The loaded model, counting the seconds of audio it embeds (for /metrics), and the place
    where live sessions' windows meet every other forward pass of the embedding lane.

    ``embed`` runs on the embedding lane's thread only (identify, timeline, enroll...). Live
    sessions run on threads of their own and hand their windows in through
    :meth:`embed_windows`, which waits while the lane embeds them: each call of ``embed``
    takes every window waiting at that moment into the same call, where the model stacks
    those of equal length (all of a session's windows, and identify clips of that length)
    into one forward pass. So live windows never wait behind the lane's queue of requests,
    only for the forward pass running now, and the more callers, the fuller each pass.
    """

    def __init__(self, inner: Any, submit: Callable[[Callable[[], None]], Any] | None = None) -> None:
        self._inner = inner
        self._submit = submit  # queues a call on the lane's thread (Lane.executor.submit)
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._waiting: list[_Windows] = []
        self._drain_queued = False
        self.window_passes = 0  # calls that embedded live windows (/metrics: how well they share)
        self.windows_embedded = 0

    def embed(self, waveforms: Sequence[Any]) -> Any:
        """The inner model's embeddings of ``waveforms``, their seconds counted; live windows
        waiting meanwhile are embedded in the same call (on the lane's thread)."""
        taken = self._take()
        if not taken:
            return self._embed(waveforms)
        together = [*waveforms, *(w for job in taken for w in job.windows)]
        try:
            out = self._embed(together)
        except BaseException:  # noqa: BLE001 - one bad window must not fail another's request: each alone
            self._embed_apart(taken)
            return self._embed(waveforms)
        start = len(waveforms)
        for job in taken:
            self._deliver(job, out[start : start + len(job.windows)])
            start += len(job.windows)
        self.window_passes += 1
        return out[: len(waveforms)]

    def embed_windows(self, windows: list[Any]) -> Any:
        """From a live session's thread: the L2-normalised embeddings (n, dim) of ``windows``
        (16 kHz float32), computed on the embedding lane with whatever else it embeds now."""
        if not windows:
            return np.zeros((0, self._inner.dim), np.float32)  # no trip to the lane
        job = _Windows(list(windows))
        with self._lock:
            self._waiting.append(job)
            queue_drain, self._drain_queued = not self._drain_queued, True
        if queue_drain:
            if self._submit is None:
                self._drain()
            else:
                try:
                    self._submit(self._drain)
                except RuntimeError:  # the lane is shutting down
                    with self._lock:
                        self._drain_queued = False
                    self._fail(self._take(), errors.ServiceError("the service is stopping"))
        return job.result()

    def _drain(self) -> None:
        """On the lane's thread: embed the windows waiting (none if a request's pass took them)."""
        with self._lock:
            self._drain_queued = False
        taken = self._take()
        if taken:
            self._embed_apart(taken) if len(taken) == 1 else self._embed_together(taken)

    def _embed_together(self, taken: list[_Windows]) -> None:
        try:
            out = self._embed([w for job in taken for w in job.windows])
        except BaseException:  # noqa: BLE001 - say which session's windows failed: each alone
            self._embed_apart(taken)
            return
        start = 0
        for job in taken:
            self._deliver(job, out[start : start + len(job.windows)])
            start += len(job.windows)
        self.window_passes += 1

    def _embed_apart(self, taken: list[_Windows]) -> None:
        for job in taken:
            try:
                self._deliver(job, self._embed(job.windows))
                self.window_passes += 1
            except BaseException as e:  # noqa: BLE001 - handed to the session that sent them
                job.fail(e)

    def _deliver(self, job: _Windows, out: Any) -> None:
        self.windows_embedded += len(job.windows)
        job.done(out)

    def _take(self) -> list[_Windows]:
        with self._lock:
            taken, self._waiting = self._waiting, []
        return taken

    @staticmethod
    def _fail(taken: list[_Windows], error: BaseException) -> None:
        for job in taken:
            job.fail(error)

    def _embed(self, waveforms: Sequence[Any]) -> Any:
        out = self._inner.embed(waveforms)
        self.seconds += sum(len(w) for w in waveforms) / audio.SAMPLE_RATE
        return out

    def __getattr__(self, name: str) -> Any:  # model_id, dim, name_or_path, default_threshold...
        return getattr(self._inner, name)


class _Windows:
    """One session's windows waiting for the lane, and then their embeddings or the error."""

    def __init__(self, windows: list[Any]) -> None:
        self.windows = windows
        self._event = threading.Event()
        self._out: Any = None
        self._error: BaseException | None = None

    def done(self, out: Any) -> None:
        self._out = out
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def result(self) -> Any:
        self._event.wait()
        if self._error is not None:
            raise self._error
        return self._out


class Lane:
    """One thread and the SpeakerDB only it uses: calls run one at a time, in order."""

    def __init__(self, name: str, open_db: Callable[[], SpeakerDB]) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"speakerdb-{name}")
        self.db: SpeakerDB | None = None
        self._open_db = open_db
        self.pending = 0  # calls admitted and not finished (the running one included)
        self.views: dict[str, SpeakerDB] = {}  # the other galleries asked for, by name

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.db is None:
            self.db = self._open_db()
        return fn(self._view(self.db, GALLERY.get()), *args, **kwargs)

    def _view(self, db: SpeakerDB, gallery: str) -> SpeakerDB:
        """``db`` seen as ``gallery`` (GalleryNotFoundError if the database has none of that name)."""
        if gallery == DEFAULT_GALLERY:
            return db
        view = self.views.get(gallery)
        now = db.store.find_gallery(gallery)  # one indexed read: removed, or removed and made again?
        if view is not None and view.store.gallery_id != now:
            del self.views[gallery]
            view.close()
            view = None
        if now is None:
            raise GalleryNotFoundError(f"no gallery named {gallery!r}")
        if view is None:
            view = self.views[gallery] = db.for_gallery(gallery)
        return view

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(db, *args, **kwargs)`` on this lane's thread."""
        self.pending += 1
        try:
            ctx = contextvars.copy_context()
            call = functools.partial(ctx.run, self._call, fn, *args, **kwargs)
            result = await asyncio.get_running_loop().run_in_executor(self.executor, call)
        finally:
            self.pending -= 1
        # After the answer, on this lane's thread: save the index file if it lags far behind
        # this worker's index (a header read when it does not), so no request waits for it.
        try:
            self.executor.submit(self._maintain)
        except RuntimeError:
            pass  # shutting down: close() saves what is owed
        return result

    def _maintain(self) -> None:
        if self.db is not None:
            self.db.maintain_index()
        for view in self.views.values():
            view.maintain_index()

    def close(self) -> None:
        """Finish the calls queued, then close this lane's database (its galleries' views first)."""
        self.executor.shutdown(wait=True)
        for view in self.views.values():
            view.close()
        if self.db is not None:
            self.db.close()


class _Waiting:
    """One identify request in :class:`IdentifyBatches`: its files and, once run, its answer."""

    def __init__(
        self, files: list[UploadedFile], top_k: int, threshold: float | None, count_voices: bool = True
    ) -> None:
        # Requests of one gallery only are answered together: the call searches one gallery.
        self.files, self.key = files, (top_k, threshold, count_voices, GALLERY.get())
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class IdentifyBatches:
    """Identify requests waiting for the embedding lane, answered several at a time.

    Each request is registered here, then queues its own job on the lane as before (so
    the queue bound and 503s count requests, as documented). The first of those jobs to
    run takes every registered request with the same ``top_k``, threshold and voice count, up to
    ``max_files`` files, into one ``SpeakerDB.identify`` call, and hands each its slice of
    the answer; the later jobs find theirs ready and return at once. One request alone
    runs exactly as before. What is shared is only work: one index snapshot, and one
    forward pass for clips of equal length (pipeline.embed_clips); every file still gets its
    own answer or its own error, and an error that concerns the whole call (no speakers
    enrolled) is what each request would have got alone.
    """

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self.calls = 0  # facade calls made (tests and /metrics compare it with requests)
        self.requests = 0

    def add(
        self, files: list[UploadedFile], top_k: int, threshold: float | None, count_voices: bool = True
    ) -> _Waiting:
        """Register a request before it queues its job on the lane."""
        entry = _Waiting(files, top_k, threshold, count_voices)
        with self._lock:
            self._waiting.append(entry)
        return entry

    def discard(self, entry: _Waiting) -> None:
        """Forget a request that will not run (cancelled before its turn)."""
        with self._lock:
            if entry in self._waiting:
                self._waiting.remove(entry)

    def run(self, db: SpeakerDB, entry: _Waiting, progress: Progress | None = None) -> Any:
        """On the lane's thread: ``entry``'s answer, computing it (with others') if not done yet
        (``progress`` follows that call: the files of every request it answers)."""
        if not entry.done:
            with self._lock:
                batch, n_files = [entry], len(entry.files)
                for other in self._waiting:
                    if other is not entry and other.key == entry.key and n_files + len(other.files) <= self.max_files:
                        batch.append(other)
                        n_files += len(other.files)
                for member in batch:
                    if member in self._waiting:  # ``entry`` is not when its request was cancelled
                        self._waiting.remove(member)
            top_k, threshold, count_voices, _ = entry.key
            files = [f for member in batch for f in member.files]
            try:
                if progress is None:
                    results = db.identify(files, top_k=top_k, threshold=threshold, count_voices=count_voices)
                else:
                    results = db.identify(
                        files, top_k=top_k, threshold=threshold, count_voices=count_voices, progress=progress
                    )
            except BaseException as e:  # noqa: BLE001 - handed to every request of the call
                for member in batch:
                    member.error, member.done = e, True
            else:
                start = 0
                for member in batch:
                    member.result, member.done = results[start : start + len(member.files)], True
                    start += len(member.files)
            self.calls += 1
            self.requests += len(batch)
        if entry.error is not None:
            raise entry.error
        return entry.result
