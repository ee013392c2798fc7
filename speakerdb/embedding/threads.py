"""Thread pools chosen on purpose, so that torch's and numpy's do not fight over the cores.

A process that embeds holds several pools of worker threads: torch's OpenMP pool (one
thread per physical core), numpy's and scipy's OpenBLAS pools (one per core each), and
faiss's OpenMP pool. Each pool's workers busy-wait for a while after their last job
(OpenBLAS for up to ~0.1 s), on the cores another pool is about to use; and an OpenMP
parallel region ends in a barrier that waits for its slowest thread, so one worker
pre-empted by a spinning neighbour stalls them all.

Measured on a 2-core AMD EPYC (Zen 4), 40 LibriSpeech files (292 s of audio) through the
GE2E encoder, with other jobs on the machine: 33-35 s with the default pools, 6-28 s with
numpy's BLAS on one thread, 3.1 s with torch on one thread, 2.8 s with both. The GE2E
encoder is a 3-layer LSTM: every time step is a small product (windows x 256 by 256 x
1024) followed by a barrier, where a second thread gains little and loses a time slice
whenever it is pre-empted.

So, while a model embeds (:func:`embedding`):

* numpy's and scipy's BLAS run on BLAS_THREADS = 1 thread. speakerdb's own numpy work
  while embedding (mel filterbanks, level checks) is small; a single-threaded BLAS has
  no workers to spin.
* the GE2E encoder runs torch on LSTM_THREADS = 1 thread (what ``OMP_NUM_THREADS=1``
  gives, without slowing the rest of the process).
* the transformers models (WavLM) run torch on ``SPEAKERDB_THREADS`` threads when that
  is set, else on torch's default (one per physical core, or ``OMP_NUM_THREADS``): their
  large products scale with cores on a quiet machine (1.8 x on 2 cores). On a machine
  where other work keeps the cores busy, ``SPEAKERDB_THREADS=1`` is faster (10 s of audio
  in 3.5 s against 7.3 s with 2 threads, at a load average of 7 on 2 cores).

The clustering of a timeline's windows into voices (:func:`speakerdb.clustering.voices`) also
runs BLAS on BLAS_THREADS (:func:`blas`): its p search decomposes some twenty 1,000 x 1,000
Laplacians, and OpenBLAS's second thread spun more than it helped on a shared 2-core machine
(docs/timeline.md, "What clustering costs").

The settings are restored when the call returns, so a program that uses speakerdb keeps
its own thread settings for its own work. Both settings are per process, and the service
holds them from several Python threads at once (its embedding lane, and live sessions
clustering as they close): holds that overlap share one :class:`_Shared` setting, which the
first to enter saves, the latest still inside decides, and the last to leave restores.
Two holders asking for different counts at once see the later one's.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from typing import Iterator

from .. import config
from ..errors import InvalidInputError

ENV_THREADS = config.THREADS_ENV  # torch threads for the transformers models
BLAS_THREADS = 1  # numpy's and scipy's BLAS while a model embeds
LSTM_THREADS = 1  # torch threads for the GE2E encoder's LSTM


def configured_threads() -> int | None:
    """torch threads asked for with ``SPEAKERDB_THREADS``, or None (torch's default)."""
    try:
        return config.threads()
    except ValueError as e:
        raise InvalidInputError(str(e)) from None


_controller: tuple[int, object] | None = None  # (len(sys.modules) when made, the controller)


def _blas_controller():
    """threadpoolctl's view of the BLAS libraries loaded now; None without threadpoolctl.

    Finding the libraries takes ~2 ms, limiting them ~20 us: the view is kept, and made
    again when modules have been imported since (a BLAS library comes with an extension
    module, e.g. faiss's own OpenBLAS when the index is first opened).
    """
    global _controller
    if _controller is None or _controller[0] != len(sys.modules):
        try:
            from threadpoolctl import ThreadpoolController  # deferred: threadpoolctl is heavy to import
        except ImportError:  # pragma: no cover -- a dependency; without it BLAS keeps its default
            return None
        _controller = (len(sys.modules), ThreadpoolController().select(user_api="blas"))
    return _controller[1]


class _Shared:
    """A process-wide thread count that overlapping holders share.

    Each holder sets its count on entering; on leaving, the count of the latest holder still
    inside is set again, and the last to leave puts back what was there before the first
    entered. Without this, two holds that overlap without nesting (A in, B in, A out, B out)
    left B's saved value, A's setting, in place for the rest of the process.
    """

    def __init__(self, apply: Callable[[int], None], restore: Callable[[], None]) -> None:
        self._apply = apply  # sets a count, saving what it changed on the first call of a hold
        self._restore = restore  # puts back everything that the apply calls of a hold changed
        self._lock = threading.Lock()
        self._holders: list[tuple[object, int]] = []

    @contextmanager
    def hold(self, count: int) -> Iterator[None]:
        token = object()
        with self._lock:
            self._holders.append((token, count))
            self._apply(count)
        try:
            yield
        finally:
            with self._lock:
                self._holders = [h for h in self._holders if h[0] is not token]
                if self._holders:
                    self._apply(self._holders[-1][1])
                else:
                    self._restore()


class _BlasSetting:
    """numpy's and scipy's BLAS thread count through threadpoolctl, and the limiters that changed it."""

    def __init__(self) -> None:
        self._limiters: list = []

    def apply(self, count: int) -> None:
        controller = _blas_controller()
        if controller is not None and controller.lib_controllers:
            self._limiters.append(controller.limit(limits=count))

    def restore(self) -> None:
        # Latest first: each limiter saved the counts its predecessors had set.
        while self._limiters:
            self._limiters.pop().restore_original_limits()


class _TorchSetting:
    """torch's intra-op thread count, and what it was before a hold changed it."""

    def __init__(self) -> None:
        self._before: int | None = None

    def apply(self, count: int) -> None:
        import torch  # deferred: torch is heavy to import

        if self._before is None:
            self._before = torch.get_num_threads()
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)

    def restore(self) -> None:
        import torch  # deferred: torch is heavy to import

        if self._before is not None and torch.get_num_threads() != self._before:
            torch.set_num_threads(self._before)
        self._before = None


_blas_setting = _BlasSetting()
_blas = _Shared(_blas_setting.apply, _blas_setting.restore)
_torch_setting = _TorchSetting()
_torch = _Shared(_torch_setting.apply, _torch_setting.restore)


@contextmanager
def blas(threads: int = BLAS_THREADS) -> Iterator[None]:
    """numpy's and scipy's BLAS on ``threads`` threads inside the block, restored after."""
    with _blas.hold(threads):
        yield


@contextmanager
def embedding(torch_threads: int | None) -> Iterator[None]:
    """While a model embeds: BLAS on BLAS_THREADS, torch on ``torch_threads`` (None: unchanged)."""
    with blas(BLAS_THREADS):
        if torch_threads is None:
            yield
        else:
            with _torch.hold(torch_threads):
                yield
