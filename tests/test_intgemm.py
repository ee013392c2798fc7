"""intgemm.py: float32 linear layers from int8 products (AMX CPUs), and its fallbacks."""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from speakerdb.embedding import intgemm  # noqa: E402

# The int8 path is checked wherever this torch build computes it exactly (AMX, or VNNI where
# it is slower and not used by default: see test_the_products_used_here_are_the_ones_measured_faster).
needs_int8 = pytest.mark.skipif(not intgemm.exact(), reason="no exact int8 products in this torch build")


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    """Integer products for inputs of any number of rows (by default: 200 or more)."""
    monkeypatch.setattr(intgemm, "MIN_ROWS", 1)


def relative_errors(got, x, w, b):
    """|got - exact| / (|x| @ |w|.T + |b|) per output, against float64: float32's own is ~1e-7 at most."""
    x64, w64, b64 = x.double(), w.double(), b.double()
    exact = x64 @ w64.T + b64
    return ((got.double() - exact).abs() / (x64.abs() @ w64.abs().T + b64.abs())).numpy()


@needs_int8
@pytest.mark.parametrize("shape", [(499, 768, 3072), (499, 3072, 768), (37, 64, 96)])
def test_products_are_as_precise_as_float32(shape):
    """WavLM's feed-forward shapes (10 s of audio) and a small one, against float64."""
    m, k, n = shape
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) * 0.03, torch.randn(n, generator=g)
    layer = intgemm.IntLinear(w, b)
    ours = relative_errors(layer(x), x, w, b)
    blas = relative_errors(torch.nn.functional.linear(x, w, b), x, w, b)
    assert layer.calls == 1 and layer.fallbacks == 0
    # Measured: max 3.2e-7 to 5.4e-7 (float32: 6e-8 to 1.9e-7); dropping any one of the
    # six products costs at least 1e-5.
    assert ours.max() < 2e-6
    assert np.median(ours) < 10 * np.median(blas) + 1e-9


@needs_int8
def test_batched_input_keeps_its_leading_shape():
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(2, 50, 64, generator=g), torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    got = intgemm.IntLinear(w, b)(x)
    assert got.shape == (2, 50, 96)
    assert relative_errors(got.reshape(100, 96), x.reshape(100, 64), w, b).max() < 2e-6


@needs_int8
@pytest.mark.parametrize("poison", ["outlier", "zeros", "nan"])
def test_inputs_the_scheme_does_not_suit_take_the_float32_product(poison):
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(40, 64, generator=g), torch.randn(32, 64, generator=g), torch.randn(32, generator=g)
    if poison == "outlier":
        x[3, 7] = 1e4  # max/mean ~2000: every other value would keep ~12 bits
    elif poison == "zeros":
        x.zero_()
    else:
        x[0, 0] = float("nan")
    layer = intgemm.IntLinear(w, b)
    got = layer(x)
    assert layer.fallbacks == 1
    np.testing.assert_array_equal(got.numpy(), torch.nn.functional.linear(x, w, b).numpy())


@needs_int8
def test_inputs_of_few_rows_take_the_float32_product(monkeypatch):
    monkeypatch.setattr(intgemm, "MIN_ROWS", 200)  # the default: where the int8 products start to win
    g = torch.Generator().manual_seed(6)
    w, b = torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    layer = intgemm.IntLinear(w, b)
    short, long = torch.randn(199, 64, generator=g), torch.randn(200, 64, generator=g)
    assert torch.equal(layer(short), torch.nn.functional.linear(short, w, b))
    assert layer.fallbacks == 1
    assert relative_errors(layer(long), long, w, b).max() < 2e-6
    assert layer.fallbacks == 1 and layer.calls == 2


def test_make_linear_keeps_float32_for_unsuitable_weights_or_when_switched_off(monkeypatch):
    g = torch.Generator().manual_seed(4)
    w, b, x = torch.randn(32, 64, generator=g), torch.randn(32, generator=g), torch.randn(5, 64, generator=g)
    spiky = w.clone()
    spiky[0, 0] = 1e3  # one channel with max/mean ~60
    for weights in (spiky, w.double(), w.bfloat16()):
        product = intgemm.make_linear(weights, None)
        assert isinstance(product, functools.partial)
        assert torch.equal(product(x.to(weights.dtype)), torch.nn.functional.linear(x.to(weights.dtype), weights))
    monkeypatch.setenv(intgemm.ENV_SWITCH, "0")
    intgemm.available.cache_clear()
    try:
        assert not intgemm.available()
        assert isinstance(intgemm.make_linear(w, b), functools.partial)
    finally:
        monkeypatch.delenv(intgemm.ENV_SWITCH)
        intgemm.available.cache_clear()


@needs_int8
def test_the_probe_passes_here_and_would_catch_a_wrong_zero_point(monkeypatch):
    assert intgemm._probe() < intgemm.PROBE_TOLERANCE
    monkeypatch.setattr(intgemm, "ZERO_POINTS", (63, 0, 0))  # the top plane read one step off
    assert intgemm._probe() > intgemm.PROBE_TOLERANCE


@needs_int8
def test_weights_laid_out_transposed_give_the_same_product():
    """A (N, K) weight that is a transposed view, as a conv layer's taps would be."""
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(40, 64, generator=g), torch.randn(64, 96, generator=g).T, torch.randn(96, generator=g)
    assert not w.is_contiguous()
    assert relative_errors(intgemm.IntLinear(w, b)(x), x, w, b).max() < 2e-6


def test_the_products_used_here_are_the_ones_measured_faster(monkeypatch):
    """On an AMX CPU the int8 products must be on (the probe must not quietly turn them off);
    on any other CPU, float32, as six int8 products are slower there (VNNI: 38 against 27 ms)."""
    monkeypatch.delenv(intgemm.ENV_SWITCH, raising=False)
    monkeypatch.setattr(intgemm, "MIN_ROWS", 200)  # the default, which the probe must not depend on
    amx = bool(torch._C._cpu._get_cpu_capability().get("amx_int8", False))
    assert intgemm.faster_here() == amx
    intgemm.available.cache_clear()
    try:
        assert intgemm.available() == amx
        w = torch.randn(32, 64)
        assert isinstance(intgemm.make_linear(w, None), intgemm.IntLinear) == amx
    finally:
        intgemm.available.cache_clear()
    if amx:
        assert intgemm.exact()  # and the tests above ran
