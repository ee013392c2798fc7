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
its own thread settings for its own work. torch's thread count is per process: two
Python threads embedding at once with different settings would see each other's.
"""

from __future__ import annotations

import sys
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


@contextmanager
def blas(threads: int = BLAS_THREADS) -> Iterator[None]:
    """numpy's and scipy's BLAS on ``threads`` threads inside the block, restored after."""
    controller = _blas_controller()
    limiter = controller.limit(limits=threads) if controller is not None and controller.lib_controllers else None
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


@contextmanager
def embedding(torch_threads: int | None) -> Iterator[None]:
    """While a model embeds: BLAS on BLAS_THREADS, torch on ``torch_threads`` (None: unchanged)."""
    import torch  # deferred: torch is heavy to import

    before = torch.get_num_threads()
    if torch_threads is not None and torch_threads != before:
        torch.set_num_threads(torch_threads)
    try:
        with blas(BLAS_THREADS):
            yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
