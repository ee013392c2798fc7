"""Float32 linear layers computed from exact 8-bit integer products, on CPUs with AMX int8 units.

Why: on the 2-core Xeon of ``scripts/bench.py``, a (499 x 768) @ (768 x 3072) product (one
WavLM feed-forward layer on 10 s of audio) takes 5.9 ms in float32 and 0.5 ms as an
int8 x int8 -> int32 product on AMX (oneDNN, through ``torch.ops.onednn.qlinear_pointwise``),
where every integer product and sum is exact. Six such products carry float32's
precision: the split-product ("Ozaki") scheme, here with one scale per activation tensor.

Activations, on every call::

    X = round(c * x),  c = (2**22 - 1) / max|x|        |X| < 2**22: 22 bits and a sign
    X + 2**22 = a2 * 2**16 + a1 * 2**8 + a0              a2 in [0, 128), a1, a0 in [0, 256)

  ``1.5 * 2**23 + c * x`` in float32 lies in [2**23, 2**24), where floats are spaced 1
  apart: the one add rounds ``c * x`` to an integer, and the mantissa bits of the sum are
  ``X + 2**22``. The planes a2, a1, a0 (uint8) are its bytes: shifts and casts, no
  division and no rounding op. ``a2`` goes in with zero point 64, so it stands for
  ``a2 - 64``.

Weights, once, per output channel ``n`` (in float64)::

    w[n] = t[n] * (p1 + p2 / 254 + p3 / 254**2),  t[n] = max|w[n]| / 127,  p_j int8 in [-127, 127]

The product keeps the six terms of order at most 2 (a2 and p1 are order 0, a1 and p2
order 1, a0 and p3 order 2): ``a2 p1, a2 p2, a1 p1, a2 p3, a1 p2, a0 p1``, each one
oneDNN call whose int32 result is scaled to float32 and summed into the output,
smallest first. What is lost: the rounding of ``X`` (half a unit, ``max|x| / 2**23``),
the weights' third slice (``max|w[n]| * 6e-8``) and the two dropped order-3 terms (each
under ``2.5e-7 * max|x| * max|w[n]|`` per summed element). Measured on WavLM-shaped
products, the error against float64 is 3-6x float32's own (tests/test_intgemm.py), and
the full-size model's embeddings land 3.5e-7 from the model card's.

The precision is relative to the largest activation, not to each one as in float32.
A tensor whose maximum is far above its typical value (the "massive activations" of
some trained transformers) would lose bits for everything else, so a call where
``max|x| > OUTLIER_LIMIT * mean|x|`` (the mean estimated from 64 evenly spaced rows)
falls back to the float32 product: at the limit an activation of average size still
has 18 bits (Gaussian activations sit near 6, GELU outputs near 12). Each weight
channel is checked the same way, once; a layer with a channel beyond the limit keeps
the float32 product.

``available()`` decides once per process: the environment does not opt out
(``SPEAKERDB_INT8_PRODUCTS=0``), the CPU has AMX int8 units, and :func:`exact` holds: the
oneDNN ops exist and a probe product with every plane at its extremes matches float64,
which catches a backend whose int8 path saturates or mis-handles the zero point.

Why AMX only: CPUs with AVX-512 VNNI but no AMX (AMD Zen 4, Intel Ice Lake) also add int8
products exactly in int32, and the probe passes there, but six int8 products cost more
than one float32 product. Measured on a 2-core AMD EPYC (Zen 4), one thread, (499 x 768)
by (768 x 3072): float32 26.9 ms, the six int8 products 38.3 ms (plus 0.8 ms to split);
(499 x 3072) by (3072 x 768): 24.1 against 33.9 ms. VNNI's int8 rate is 4 x the float32
rate, AMX's ~16 x. There the float32 product runs, and the tests check the int8 path
wherever :func:`exact` holds, AMX or not.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .. import config

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

ENV_SWITCH = config.INT8_PRODUCTS_ENV  # "0" turns the integer products off
ACTIVATION_BITS = 22  # |X| < 2**22: with the sign, 23 bits, in three byte planes
MAGIC = 1.5 * 2.0**23  # float32 spacing is 1 in [2**23, 2**24): adding it rounds to an integer
# Zero points of the planes a2, a1, a0: a2 = (X + 2**22) >> 16 is in [0, 128), a2 - 64 its signed value.
ZERO_POINTS = (64, 0, 0)
WEIGHT_RADIX = 254.0  # residual in [-0.5, 0.5] * 254 stays within int8's [-127, 127]
WEIGHT_SLICES = 3  # 7 + 8 + 8 bits of each weight, relative to its channel's maximum
SLICE_BLOCK_ROWS = 128  # output channels sliced at a time (float64 temporaries of ~0.8-3 MB)
OUTLIER_LIMIT = 32.0  # max|x| / mean|x| above which a call takes the float32 product: 2**5, 5 bits
GUARD_ROWS = 64  # rows the mean|x| of that test is estimated from
# Fewer rows than this (frames: 50 per s of audio) take the float32 product. Measured per
# layer of WavLM base: the six products and the split win from ~100 rows (768 -> 3072),
# ~150 (768 -> 2304), ~200 (3072 -> 768); at 49 rows (1 s) they lose 5-25 %.
MIN_ROWS = 200
# (activation plane, weight slice) pairs of order <= 2, smallest first; plane 0 is a2.
PAIRS = ((2, 0), (1, 1), (0, 2), (1, 0), (0, 1), (0, 0))
PROBE_TOLERANCE = 2.0**-19  # probe error / sum|x||w|: float32 itself reaches ~2**-22 here


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether the integer products are used in this process (decided once; see module doc)."""
    if not config.int8_products_enabled():
        return False
    return faster_here() and exact()


def faster_here() -> bool:
    """Whether this CPU has AMX int8 units, where six int8 products beat one float32 product."""
    try:
        import torch  # deferred: torch is heavy to import

        return bool(torch._C._cpu._get_cpu_capability().get("amx_int8", False))
    except Exception:  # no such query in this torch build
        return False


@functools.lru_cache(maxsize=1)
def exact() -> bool:
    """Whether this torch build's int8 products are here and exact: the probe matches float64."""
    try:
        import torch  # deferred: torch is heavy to import

        ops = torch.ops.onednn
        ops.qlinear_prepack, ops.qlinear_pointwise  # noqa: B018 -- raises where absent
        error = _probe()
    except Exception as exc:  # an op missing or failing in this torch build: float32 it is
        log.debug("int8 products unavailable: %s", exc)
        return False
    if error > PROBE_TOLERANCE:
        log.warning("int8 products disabled: probe error %.2e of the product's scale", error)
        return False
    return True


class IntLinear:
    """``F.linear(x, weight, bias)`` for float32 CPU tensors, from six int8 products.

    Build it with :func:`make_linear`, which checks :func:`available` and the weights.
    ``calls`` and ``fallbacks`` count the calls and those that took the float32 product:
    inputs of fewer than MIN_ROWS rows, and those :func:`split` turns down.
    """

    def __init__(self, weight: "torch.Tensor", bias: "torch.Tensor | None") -> None:
        import torch  # deferred: torch is heavy to import

        self.weight, self.bias = weight.detach(), None if bias is None else bias.detach()
        n_out, n_in = self.weight.shape
        scale = self.weight.abs().amax(1).to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny) / 127  # t[n]
        slices = torch.empty(WEIGHT_SLICES, n_out, n_in, dtype=torch.int8)  # contiguous: prepacking needs it
        # In float64, in blocks of channels: whole-matrix float64 temporaries (19 MB for a
        # 768 x 3072 weight) are fresh memory each, and their page faults tripled the time.
        for first in range(0, n_out, SLICE_BLOCK_ROWS):
            rows = slice(first, first + SLICE_BLOCK_ROWS)
            residual = self.weight[rows].to(torch.float64) / scale[rows, None]  # in [-127, 127]
            for j in range(WEIGHT_SLICES):
                p = residual.round()
                residual = (residual - p).mul_(WEIGHT_RADIX)
                slices[j, rows] = p
        self.packed = [torch.ops.onednn.qlinear_prepack(slices[j], None) for j in range(WEIGHT_SLICES)]
        self.weight_scales = [(scale / WEIGHT_RADIX**j).to(torch.float32) for j in range(WEIGHT_SLICES)]
        self.zero_points = torch.zeros(n_out, dtype=torch.int32)
        self.calls = self.fallbacks = 0

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        """(..., K) float32 -> (..., N) float32."""
        import torch  # deferred: torch is heavy to import

        self.calls += 1
        flat = x.reshape(-1, x.shape[-1])  # (M, K)
        planes = split(flat) if flat.shape[0] >= MIN_ROWS else None
        if planes is None:
            self.fallbacks += 1
            return torch.nn.functional.linear(x, self.weight, self.bias)
        out = self.product(planes)
        return out.view(*x.shape[:-1], out.shape[-1])

    def product(self, planes: "Planes") -> "torch.Tensor":
        """planes (of an (M, K) tensor) @ weight.T + bias -> (M, N) float32."""
        import torch  # deferred: torch is heavy to import

        op = torch.ops.onednn.qlinear_pointwise
        out = None
        for i, j in PAIRS:
            args = (
                planes.planes[i],
                planes.units[i],
                ZERO_POINTS[i],
                self.packed[j],
                self.weight_scales[j],
                self.zero_points,
            )
            if out is None:
                out = op.default(*args, None, 1.0, 0, torch.float32, "none", [], "")
            else:  # added into out in place (the "sum" post-op); the bias rides on the last, largest term
                bias = self.bias if (i, j) == PAIRS[-1] else None
                out = op.binary(*args, out, bias, 1.0, 0, torch.float32, 1.0, 0, "sum", 1.0, "none", [], "")
        return out


@dataclass(frozen=True)
class Planes:
    """A float32 tensor as three uint8 planes (a2, a1, a0) of one fixed point: see the module doc."""

    planes: "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"  # each shaped like the tensor
    units: tuple[float, float, float]  # what one step of each plane is worth


def split(x: "torch.Tensor") -> "Planes | None":
    """x (M, K) float32 as byte planes, or None where the scheme does not suit it: all zeros,
    inf or nan, or a maximum beyond OUTLIER_LIMIT times the mean magnitude.

    The mean is taken over ~GUARD_ROWS evenly spaced rows (a pass over all of a 499 x 3072
    tensor costs 0.4 ms, a third of the split); the maximum over all of them.
    """
    import torch  # deferred: torch is heavy to import

    lo, hi = torch.aminmax(x)
    amax = max(-float(lo), float(hi))
    sample = x[:: max(1, x.shape[0] // GUARD_ROWS)]
    mean_abs = float(torch.linalg.vector_norm(sample, 1)) / max(sample.numel(), 1)
    if not (0.0 < amax < math.inf) or amax > OUTLIER_LIMIT * mean_abs:
        return None
    c = (2.0**ACTIVATION_BITS - 1) / amax
    bits = torch.add(torch.tensor(MAGIC), x, alpha=c).view(torch.int32)  # mantissa = X + 2**22
    high = bits >> 8
    planes = ((high >> 8).to(torch.uint8), high.to(torch.uint8), bits.to(torch.uint8))  # a2, a1, a0: casts wrap
    return Planes(planes, (2.0**16 / c, 2.0**8 / c, 1.0 / c))


def make_linear(weight: "torch.Tensor", bias: "torch.Tensor | None") -> "Callable[[torch.Tensor], torch.Tensor]":
    """A callable computing ``F.linear(x, weight, bias)``: integer products where they are
    available and these float32 weights suit them, the float32 product otherwise."""
    import torch  # deferred: torch is heavy to import

    if available() and weight.dtype == torch.float32 and weight.device.type == "cpu" and _weights_fit(weight):
        return IntLinear(weight, bias)
    weight, bias = weight.detach(), None if bias is None else bias.detach()
    return functools.partial(torch.nn.functional.linear, weight=weight, bias=bias)


def _weights_fit(weight: "torch.Tensor") -> bool:
    """Every output channel finite, not all zero, and with max|w| within OUTLIER_LIMIT * mean|w|."""
    w = weight.detach().abs()
    amax, mean = w.amax(1), w.mean(1)  # amax is inf or nan wherever w has one
    return bool(amax.isfinite().all()) and bool((mean > 0).all()) and bool((amax <= OUTLIER_LIMIT * mean).all())


def _probe() -> float:
    """Largest error of an IntLinear product against float64, over sum|x||w| per output.

    Random data plus the extremes: a row of x at +max and one at -max (every plane at its
    largest or smallest byte) against channels of w at +-max, where an int8 kernel that
    adds pairs of u8*s8 products in int16 would saturate.
    """
    import torch  # deferred: torch is heavy to import

    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 256, generator=g).clamp(-2.5, 2.5)
    x[0], x[1] = 3.0, -3.0  # rows at +-max: planes (127, 255, 255) and (0, 0, 1)
    w = torch.randn(40, 256, generator=g)
    w[0], w[1] = 1.0, -1.0
    w[2, ::2], w[2, 1::2] = 1.0, -1.0
    b = torch.randn(40, generator=g)
    planes = split(x)
    if planes is None:
        raise RuntimeError("the probe's input does not split")
    got = IntLinear(w, b).product(planes).to(torch.float64)  # the int8 path, whatever MIN_ROWS says
    x64, w64 = x.to(torch.float64), w.to(torch.float64)
    exact = x64 @ w64.T + b.to(torch.float64)
    scale = x64.abs() @ w64.abs().T + b.to(torch.float64).abs()
    return float(((got - exact).abs() / scale).max())
