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
