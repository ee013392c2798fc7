"""threads.py: while a model embeds, torch and BLAS run on the threads chosen for them, and only then."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
threadpoolctl = pytest.importorskip("threadpoolctl")

from conftest import voice  # noqa: E402
from speakerdb.embedding import threads  # noqa: E402
from speakerdb.embedding.models import load_embedder  # noqa: E402
from speakerdb.errors import InvalidInputError  # noqa: E402


def blas_threads() -> list[int]:
    """Threads of every BLAS library loaded in this process (numpy's, scipy's...)."""
    return [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]


@pytest.fixture
def two_threads():
    """torch and BLAS on 2 threads before each test (whatever this machine's default), restored after."""
    import scipy.linalg  # noqa: F401  (its own OpenBLAS, which the clustering loads: on 2 threads too)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        yield
    torch.set_num_threads(before)


def spy_on_forward(module, seen: list):
    """Make ``module``'s forward record (torch threads, BLAS threads) at each call."""
    original = module.forward

    def forward(*args, **kwargs):
        seen.append((torch.get_num_threads(), blas_threads()))
        return original(*args, **kwargs)

    module.forward = forward


def test_wavlm_embeds_with_single_threaded_blas_and_torch_threads_as_configured(
    tiny_checkpoint, two_threads, monkeypatch
):
    assert blas_threads() and set(blas_threads()) == {2}
    seen: list = []
    default = load_embedder(str(tiny_checkpoint))
    spy_on_forward(default.model, seen)
    default.embed([voice(150, 1.0)])
    assert seen == [(2, [threads.BLAS_THREADS] * len(blas_threads()))]  # torch's own setting kept
    monkeypatch.setenv(threads.ENV_THREADS, "1")
    one = load_embedder(str(tiny_checkpoint))
    spy_on_forward(one.model, seen)
    np.testing.assert_array_equal(one.embed([voice(150, 1.0)]), default.embed([voice(150, 1.0)]))
    assert seen[1][0] == 1 and seen[2][0] == 2
    # Restored after the call: the rest of the program keeps its own settings.
    assert torch.get_num_threads() == 2 and set(blas_threads()) == {2}


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_refused_at_load(tiny_checkpoint, monkeypatch, value):
    monkeypatch.setenv(threads.ENV_THREADS, value)
    with pytest.raises(InvalidInputError, match=threads.ENV_THREADS):
        load_embedder(str(tiny_checkpoint))


def test_settings_are_restored_when_the_call_fails(two_threads):
    with pytest.raises(RuntimeError):
        with threads.embedding(1):
            assert torch.get_num_threads() == 1 and set(blas_threads()) == {1}
            raise RuntimeError("a failing forward pass")
    assert torch.get_num_threads() == 2 and set(blas_threads()) == {2}


def test_the_clustering_of_a_timeline_runs_blas_on_one_thread(two_threads, monkeypatch):
    """A long recording's assembly (a live session's close() after a 31-minute turn) is some
    twenty eigendecompositions of 1,000 x 1,000; OpenBLAS's second thread made each 2-10 times
    the CPU on a shared 2-core machine. They run on BLAS_THREADS, and the setting is restored."""
    from speakerdb import timeline
    from speakerdb.audio import vad

    seen: list[list[int]] = []
    original = np.linalg.eigvalsh

    def eigvalsh(a, *args, **kwargs):
        seen.append(blas_threads())
        return original(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "eigvalsh", eigvalsh)
    rng = np.random.default_rng(0)
    regions = [vad.Region(0.0, 30.0)]
    spans = timeline.plan_windows(regions)
    vectors = rng.standard_normal((len(spans), 16)).astype(np.float32)
    t = timeline.assemble("turn.wav", 30.0, regions, spans, vectors, timeline.Gallery.empty(16, 0.8), timeline.Params())
    assert t.segments and seen
    assert all(set(threads_now) == {threads.BLAS_THREADS} for threads_now in seen)
    assert set(blas_threads()) == {2}


def test_holds_that_overlap_without_nesting_leave_the_settings_as_they_found_them(two_threads):
    """The service holds these settings from two threads at once: its embedding lane embeds
    while a live session clusters as it closes. A in, B in, A out, B out used to leave B's
    saved value (A's one thread) in place for the rest of the process."""
    lane, session = threads.embedding(1), threads.blas()
    lane.__enter__()
    session.__enter__()
    lane.__exit__(None, None, None)
    assert set(blas_threads()) == {threads.BLAS_THREADS}  # the session still holds it
    session.__exit__(None, None, None)
    assert torch.get_num_threads() == 2 and set(blas_threads()) == {2}

    first, second = threads.embedding(1), threads.embedding(1)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert torch.get_num_threads() == 1
    second.__exit__(None, None, None)
    assert torch.get_num_threads() == 2 and set(blas_threads()) == {2}


def test_the_latest_holder_still_inside_decides(two_threads):
    """A leaving holder puts back the count of the latest holder still inside, not its own saved one."""
    early, late = threads.blas(3), threads.blas(1)
    early.__enter__()
    late.__enter__()
    early.__exit__(None, None, None)
    assert set(blas_threads()) == {1}
    late.__exit__(None, None, None)
    assert set(blas_threads()) == {2}


def test_the_clustering_runs_scipys_blas_on_one_thread_too():
    """The p search's subset eigendecompositions run on scipy's own OpenBLAS, which a process
    loads only when the clustering first needs it: loaded inside the one-thread hold it kept the
    default count (there, four times the CPU of one thread on the shared 2-core machine).
    cluster_voices loads it before the hold. A fresh process, as a first timeline is."""
    import os
    import subprocess
    import sys

    code = """
import sys, numpy as np, threadpoolctl
from speakerdb import clustering, timeline
assert "scipy.linalg" not in sys.modules
clustering.SUBSET_VALUES_FROM = 1
seen = []
original = clustering._smallest_and_largest
def spy(lap, count):
    seen.append(sorted(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"))
    return original(lap, count)
clustering._smallest_and_largest = spy
x = np.random.default_rng(0).standard_normal((60, 16))
timeline.cluster_voices(x, timeline.Params(), 1.0, np.ones(60))
print(sorted({tuple(s) for s in seen}))
"""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[(1,", "1)]"]  # numpy's and scipy's BLAS, each on one thread
