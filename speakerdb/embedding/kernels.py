"""Faster forwards for the slow parts of a WavLM x-vector model on CPU, same results.

``embed.TransformersXVector`` installs them on the model it loads (after fingerprinting
the weights, which they do not change). Profiling the model card's pipeline on a
10 s clip (``scripts/bench.py``; 2 cores) showed where its time goes:

* **The conv feature encoder** (7 Conv1d layers, 512 channels, 49 GFLOP per 10 s).
  oneDNN's 1-D convolution spends a quarter of its time on layout reorders, and the
  first layer (1 input channel, kernel 10, stride 5) runs at 10 GFLOP/s: its output is
  64 MB per 10 s, written, then read and written again by the GroupNorm and the GELU.
  :func:`conv_feature_encoder` keeps activations time-major, (frames, channels), where a
  strided conv layer is a sum of matrix products over *views* of its input: with stride
  ``s``, the rows ``[h[s*t], ..., h[s*t + s - 1]]`` are row ``t`` of ``h`` viewed as
  (frames / s, s * channels), which BLAS reads in place. The first layer's per-channel
  GroupNorm is folded into its weights (its statistics follow from the 10x10 covariance
  of the input frames), the GELUs run in place, and the first two layers run in slices
  of time, so the 64 MB tensor is never made whole.
* **Attention.** transformers' WavLM attention asks for the attention weights
  (``need_weights=True``), which forces the unfused path: a (heads, T, T) score
  tensor, its softmax and a head-averaged copy per layer. :func:`wavlm_self_attention`
  computes the same function with one fused q/k/v projection and
  ``scaled_dot_product_attention`` (the gated relative position bias goes in as its
  additive mask); nothing downstream reads the weights.
* **The transformer's large linear layers** (q/k/v and feed-forward: 78 GFLOP per 10 s,
  at the CPU's float32 peak): on CPUs with AMX int8 units, from six exact int8 products
  each (:mod:`intgemm`), once :func:`install_int8_products` has prepared them.
* **The positional convolution** (128 taps, 16 groups; 4.7 GFLOP per 10 s): by FFT,
  in overlapping blocks; and its weight normalisation, recomputed on every forward,
  applied once.

Each change reorders floating-point sums or, for the int8 products, rounds within a few
times float32's own rounding: embeddings stay within 1e-5 per component of the model
card's (tested; the full-size model lands 3.5e-7 away). Models of other shapes (another
attention class, a first conv layer with several input channels) keep the parts that
do not fit unchanged.

**When.** The conv encoder's plan and the attention are set up at load (~20 ms); the FFT
spectra (~0.1 s) and the int8 weights (~0.8 s) only by :func:`install_long_run`, which the
embedder calls after its first minute of audio: a one-file command would not win back
their set-up. q, k and v stay three float32 products (fusing them copied 28 MB of weights
at every load for no measurable gain); the int8 products fuse them.

**Checked at load.** These replace private parts of transformers' WavLM
(``torch_multi_head_self_attention``, the encoders' ``forward``), which any release may
move. :func:`install` runs the plain model's base on a probe input (0.1 s of seeded noise,
two rows), installs, and runs it again: if the replacements fail on it or their output
is more than PROBE_TOLERANCE away, they are all taken out (:func:`uninstall`) and one
warning names the transformers version; :func:`install_long_run` checks again against
the same plain output. ``SPEAKERDB_KERNELS=0`` turns them all off. Checked with the
transformers versions in CHECKED_TRANSFORMERS (the tests compare every replacement with
the original modules).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from typing import TYPE_CHECKING, Callable

from .. import config
from . import intgemm

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


FFT_BLOCK = 256  # points per FFT of the positional conv: 129 output frames per block for 128 taps
QUIET_FRAME_RATIO = 16.0  # a frame under 1/16 of the mean frame norm: the positional conv as a conv
FUSED_FRAMES = 2048  # layer-1 frames per slice of the first two conv layers: an 8 MB layer-0 slice
ENV_SWITCH = config.KERNELS_ENV  # "0" runs the plain transformers model
#: transformers releases whose WavLM internals these replacements were checked against
#: (tests/test_embed.py); other versions are checked at load by the probe.
CHECKED_TRANSFORMERS = "4.57.1 and 5.24.0"
# The probe: 0.1 s of seeded noise (4 frames), two rows: ~1.2 GFLOP per forward of WavLM
# base, 77 ms of CPU on one core of a busy 2-core Zen 4 (0.2 s took twice that).
PROBE_SAMPLES = 1600
# Largest relative difference (norm of the difference / norm of the plain output) of the
# probe's last hidden state, by dtype. Measured on random tiny and full-size WavLM: 5.5e-7 and
# 1.1e-6 in float32, 1.0e-2 and 1.8e-2 in bfloat16 (each layer rounds to 8 bits); a
# replacement that computes something else lands near 1.
PROBE_TOLERANCE = {"torch.float32": 1e-4, "torch.bfloat16": 0.1}

log = logging.getLogger("speakerdb")


def enabled() -> bool:
    """False when ``SPEAKERDB_KERNELS=0`` (or false/no/off): the plain transformers model runs."""
    return config.kernels_enabled()


def install(model: "nn.Module", long_run: bool = True) -> list[str]:
    """Swap the faster forwards into a loaded x-vector ``model`` in place, checked; returns what was swapped.

    Call it once the model has its final dtype and device: the rearranged weights are
    copies of the weights as they are at this moment. At once: the conv feature encoder,
    the attention and the positional conv's weight norm. ``long_run=False`` leaves the
    parts whose set-up only pays back over many seconds of audio (the positional conv's
    spectra, the int8 products) to :func:`install_long_run`.

    The result is checked against the plain model on a probe input (:func:`_probe_output`): where
    they disagree, or where transformers' internals have moved so that the replacements
    fail, the model is put back as loaded (:func:`uninstall`), one warning says so, and
    the result is ``[]``. ``SPEAKERDB_KERNELS=0`` skips all of it.
    """
    if not enabled():
        return []
    try:
        expected = _probe_output(model)  # the plain model, before any change
    except Exception as exc:  # a model this code cannot even probe: leave it as it is
        log.debug("kernels not installed: the plain model fails on the probe input: %s", exc)
        return []
    model._speakerdb_probe = expected
    done = _checked(model, lambda: _install_now(model))
    if done and long_run:
        done += install_long_run(model)
    return done


def install_long_run(model: "nn.Module") -> list[str]:
    """The positional conv by FFT and the int8 products, on a model :func:`install` has set up; checked.

    Their set-up costs more than one short file gains from them (~0.1 s for the FFT
    spectra against ~0.02 s saved per 10 s; ~0.8 s for the int8 weights), so the embedder
    calls this after its first minute of audio. Returns what was added; ``[]`` if
    :func:`install` did not run or was refused, or if already done. A disagreement with
    the plain model on the probe input takes every replacement out, as in :func:`install`.
    """
    if getattr(model, "_speakerdb_probe", None) is None or getattr(model, "_speakerdb_long_run", False):
        return []
    model._speakerdb_long_run = True
    before = installed(model)
    done = _checked(model, lambda: _install_long_run_now(model))
    return done[len(before) :] if done else []


def _checked(model: "nn.Module", change: "Callable[[], list[str]]") -> list[str]:
    """Apply ``change`` and compare the model's probe output with the plain model's; undo all on a mismatch.

    Returns every replacement now in the model (``[]`` after an undo).
    """
    import torch  # deferred: torch is heavy to import
    import transformers  # deferred: transformers is heavy to import

    expected = model._speakerdb_probe
    try:
        change()
        got = _probe_output(model)
        error = float(torch.linalg.vector_norm((got - expected).float()) / torch.linalg.vector_norm(expected.float()))
        tolerance = PROBE_TOLERANCE.get(str(expected.dtype), PROBE_TOLERANCE["torch.bfloat16"])
        problem = None if error <= tolerance else f"they differ by {error:.1e} (relative)"
    except Exception as exc:  # transformers' internals moved: an attribute, a signature, a shape
        problem = f"they fail on it ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
    if problem is None:
        return installed(model)
    uninstall(model)
    model._speakerdb_probe = None  # no second attempt (nor a second warning) for this model
    log.warning(
        "speakerdb's faster kernels are off for this model: checked against the plain model on a probe "
        "input with transformers %s, %s; the plain transformers model runs instead (same embeddings, "
        "slower). They were checked with transformers %s; set %s=0 to skip them and this check",
        transformers.__version__,
        problem,
        CHECKED_TRANSFORMERS,
        ENV_SWITCH,
    )
    return []


def _probe_output(model: "nn.Module") -> "torch.Tensor":
    """The base model's last hidden state for PROBE_SAMPLES of seeded noise, two rows: (2, frames, hidden).

    The base model (conv encoder, positional conv, transformer) is everything the
    replacements touch; the x-vector head after it is left alone, and needs more frames.
    Two rows, as the embedder stacks equal-length utterances into one forward pass.
    """
    import torch  # deferred: torch is heavy to import

    generator = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(2, PROBE_SAMPLES, generator=generator)
    parameter = next(model.parameters())
    # On CUDA, cuDNN runs float32 convolutions in TF32 by default (10-bit mantissas): the
    # plain model then moves ~8e-4 (relative) from itself in float32 -- measured on an H200
    # (scripts/gpu_check.py) -- and the probe would refuse correct kernels. Compare the two
    # functions in full float32; TF32, where the user keeps it on, applies to both in use.
    exact = (
        torch.backends.cudnn.flags(enabled=True, allow_tf32=False) if parameter.is_cuda else contextlib.nullcontext()
    )
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with exact, torch.inference_mode():
            return model.base_model(x.to(device=parameter.device, dtype=parameter.dtype)).last_hidden_state
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


def _install_now(model: "nn.Module") -> list[str]:
    """The conv feature encoder, the attention and the positional conv's weight norm."""
    base = model.base_model
    encoder = getattr(base, "feature_extractor", None)
    if encoder is not None and _encoder_fits(encoder):
        encoder._speakerdb_plan = _encoder_plan(encoder)
        encoder.forward = types.MethodType(conv_feature_encoder, encoder)
    for a in _wavlm_attentions(model):
        # q, k and v as three products: fusing them into one would copy 28 MB of weights at
        # every load, for no measurable gain in float32 (the int8 products fuse them).
        a._speakerdb_qkv = functools.partial(_three_projections, a)
        a.torch_multi_head_self_attention = types.MethodType(wavlm_self_attention, a)
    pos_embed = getattr(getattr(base, "encoder", None), "pos_conv_embed", None)
    if pos_embed is not None and _fix_weight_norm(pos_embed.conv):
        pos_embed._speakerdb_weight_norm_fixed = True
    return installed(model)


def _install_long_run_now(model: "nn.Module") -> list[str]:
    """The positional conv by FFT and the int8 products."""
    pos_embed = getattr(getattr(model.base_model, "encoder", None), "pos_conv_embed", None)
    if pos_embed is not None and _positional_conv_fits(pos_embed):
        pos_embed._speakerdb_spectra = _positional_conv_spectra(pos_embed.conv)
        pos_embed._speakerdb_convolve = pos_embed.forward  # the original, for quiet frames
        pos_embed.forward = types.MethodType(positional_conv_embedding, pos_embed)
    install_int8_products(model)
    return installed(model)


def installed(model: "nn.Module") -> list[str]:
    """What is replaced in ``model`` now, in a fixed order (``[]``: the plain model)."""
    base = model.base_model
    encoder = getattr(base, "feature_extractor", None)
    pos_embed = getattr(getattr(base, "encoder", None), "pos_conv_embed", None)
    names = []
    if encoder is not None and "forward" in vars(encoder):
        names.append("conv feature encoder")
    if any("torch_multi_head_self_attention" in vars(a) for a in _wavlm_attentions(model)):
        names.append("attention")
    if getattr(pos_embed, "_speakerdb_weight_norm_fixed", False):
        names.append("positional conv weight norm")
    if pos_embed is not None and "forward" in vars(pos_embed):
        names.append("positional conv by FFT")
    n_int8 = len(_int8_layers(model))
    if n_int8:
        names.append(f"int8 products ({n_int8} linear layers)")
    return names


def uninstall(model: "nn.Module") -> None:
    """Take every replacement out of ``model``: its modules' own forwards run again.

    The positional conv's weight norm stays applied (it is no longer listed): its weight
    is the one the parametrization computes on every forward, so the function is the same.
    """
    base = model.base_model
    encoder = getattr(base, "feature_extractor", None)
    modules = [encoder, getattr(getattr(base, "encoder", None), "pos_conv_embed", None)]
    modules += _wavlm_attentions(model)
    modules += [dense for _, dense in _feed_forward_denses(model)]
    for module in modules:
        if module is None:
            continue
        for name in [n for n in vars(module) if n.startswith("_speakerdb_")]:
            delattr(module, name)
        for name in ("forward", "torch_multi_head_self_attention"):
            if name in vars(module):  # an instance attribute set here; the class's method is the original
                delattr(module, name)


def install_int8_products(model: "nn.Module") -> int:
    """The transformer's large linear layers (fused q/k/v, both feed-forward) from int8
    products, where :mod:`intgemm` can (AMX CPUs, float32 weights that suit it).

    Returns how many layers now use them; 0 where none can, or where it already ran.
    Preparing them takes ~0.8 s for WavLM base (slicing and packing 85 M weights).
    """
    import torch  # deferred: torch is heavy to import

    if not intgemm.available():
        return 0
    count = 0
    # Not the attention's output projection: at 768 x 768 the six int8 products and the
    # split cost as much as the float32 product (1.68 against 1.60 ms for 10 s).
    for a in _wavlm_attentions(model):
        if "_speakerdb_qkv" in vars(a) and not isinstance(a._speakerdb_qkv, intgemm.IntLinear):
            weight = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
            bias = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).detach()
            product = intgemm.make_linear(weight, bias)
            if isinstance(product, intgemm.IntLinear):  # else keep the three float32 products
                a._speakerdb_qkv = product
                count += 1
    for _, dense in _feed_forward_denses(model):
        if not isinstance(vars(dense).get("forward"), intgemm.IntLinear):
            product = intgemm.make_linear(dense.weight, dense.bias)
            if isinstance(product, intgemm.IntLinear):
                dense.forward = product  # an instance attribute: nn.Module.__call__ uses it
                count += 1
    return count


def _int8_layers(model: "nn.Module") -> list:
    """The int8 products installed in ``model``."""
    qkv = [vars(a).get("_speakerdb_qkv") for a in _wavlm_attentions(model)]
    dense = [vars(d).get("forward") for _, d in _feed_forward_denses(model)]
    return [p for p in qkv + dense if isinstance(p, intgemm.IntLinear)]


def _feed_forward_denses(model: "nn.Module") -> list:
    """(name, nn.Linear) of every transformer layer's two feed-forward products."""
    from torch import nn  # deferred: torch is heavy to import

    out = []
    for layer in getattr(getattr(model.base_model, "encoder", None), "layers", []):
        feed_forward = getattr(layer, "feed_forward", None)
        for name in ("intermediate_dense", "output_dense"):
            dense = getattr(feed_forward, name, None)
            if isinstance(dense, nn.Linear):
                out.append((name, dense))
    return out


def _wavlm_attentions(model: "nn.Module") -> list:
    """The attention modules of WavLM's layers (wav2vec2's attention class has no such method)."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layers", [])
    attentions = [getattr(layer, "attention", None) for layer in layers]
    return [a for a in attentions if hasattr(a, "torch_multi_head_self_attention")]


# ---- the conv feature encoder -------------------------------------------------------------
def _encoder_fits(encoder: "nn.Module") -> bool:
    """Plain Conv1d layers without padding, dilation or groups; the first one on 1 channel."""
    from torch import nn  # deferred: torch is heavy to import

    layers = getattr(encoder, "conv_layers", None)
    if not layers:
        return False
    for i, layer in enumerate(layers):
        conv = getattr(layer, "conv", None)
        if not isinstance(conv, nn.Conv1d) or conv.groups != 1 or conv.dilation[0] != 1 or conv.padding[0] != 0:
            return False
        if (i == 0) != (conv.in_channels == 1):
            return False
    return True


def _encoder_plan(encoder: "nn.Module") -> list[dict]:
    """Per layer: its weights as (taps * C_in, C_out) matrices, one per group of ``stride`` taps,
    and whether its GroupNorm is folded into the product (one group per channel, one product)."""
    from torch import nn  # deferred: torch is heavy to import

    plan = []
    for layer in encoder.conv_layers:
        conv = layer.conv
        w = conv.weight.detach()  # (C_out, C_in, k)
        k, stride = conv.kernel_size[0], conv.stride[0]
        # Layer 0 has one input channel: its (frames, k) patches are a small copy, one product.
        # Later layers: taps in groups of `stride`, each group one product over a view.
        group = k if conv.in_channels == 1 else stride
        chunks = []
        for first in range(0, k, group):
            taps = w[:, :, first : first + group]  # (C_out, C_in, n_taps)
            chunks.append((first, taps.shape[2], taps.permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous()))
        norm = getattr(layer, "layer_norm", None)
        fold = isinstance(norm, nn.GroupNorm) and norm.num_groups == conv.out_channels and len(chunks) == 1
        plan.append({"kernel": k, "stride": stride, "chunks": chunks, "fold_groupnorm": fold})
    return plan


def conv_feature_encoder(encoder: "nn.Module", input_values: "torch.Tensor") -> "torch.Tensor":
    """The conv feature encoder's forward: (batch, n_samples) -> (batch, channels, frames)."""
    import torch  # deferred: torch is heavy to import

    outputs = [_encode_one(encoder, x) for x in input_values]  # each (frames, channels)
    if len(outputs) == 1:
        return outputs[0][None].transpose(1, 2)
    return torch.stack(outputs).transpose(1, 2)


def _encode_one(encoder: "nn.Module", x: "torch.Tensor") -> "torch.Tensor":
    """One waveform (n_samples,) through every conv layer: -> (frames, channels), time-major."""
    layers, plans = encoder.conv_layers, encoder._speakerdb_plan
    first = 0
    h = x[:, None]  # (T, C=1)
    if len(layers) > 1 and all(_rows_independent(layer, plan) for layer, plan in zip(layers[:2], plans[:2])):
        h, first = _first_two_layers(encoder, x), 2
    for i in range(first, len(layers)):
        h = _conv_layer(layers[i], plans[i], h, i)
    return h


def _rows_independent(layer: "nn.Module", plan: dict) -> bool:
    """Whether a slice of the layer's output frames can be computed from a slice of its input:
    no normalisation over time, or one folded into the weights from the whole input first."""
    from torch import nn  # deferred: torch is heavy to import

    return plan["fold_groupnorm"] or not isinstance(getattr(layer, "layer_norm", None), nn.GroupNorm)


def _first_two_layers(encoder: "nn.Module", x: "torch.Tensor") -> "torch.Tensor":
    """Conv layers 0 and 1 in slices of time: (n_samples,) -> (frames_1, channels).

    Layer 0's output is the model's largest tensor (512 channels every 0.31 ms: 65 MB per
    10 s). Made whole, it is fresh memory from the OS, and its first touch page-faults
    (~16,000 faults per 10 s, 15-30 ms); then the GELU and layer 1 each read it back from
    RAM. In slices of FUSED_FRAMES layer-1 frames, each layer-0 slice (8 MB) is computed,
    activated and consumed in turn, in memory the allocator hands back for the next
    slice: no page faults, and less traffic. The encoder's time for a 10 s clip went from
    145 to 133 ms (30 s: 470 to 427 ms); slices of 512 frames or fewer were slower.
    """
    import torch  # deferred: torch is heavy to import

    (layer0, layer1), (plan0, plan1) = encoder.conv_layers[:2], encoder._speakerdb_plan[:2]
    n0 = _frames_out(len(x), plan0, 0)
    n1 = _frames_out(n0, plan1, 1)
    k0, s0, k1, s1 = plan0["kernel"], plan0["stride"], plan1["kernel"], plan1["stride"]
    folded = None
    if plan0["fold_groupnorm"]:  # statistics of the whole input, before any slice
        folded = _fold_groupnorm(_tap_rows(x[:, None], s0, n0, 0, k0), plan0["chunks"][0][2], layer0.layer_norm)
    out = torch.empty(n1, layer1.conv.out_channels, dtype=x.dtype, device=x.device)
    for a in range(0, n1, FUSED_FRAMES):
        b = min(n1, a + FUSED_FRAMES)
        lo, hi = s1 * a, s1 * (b - 1) + k1  # the layer-0 frames that layer-1 frames [a, b) read
        h0 = _conv_layer(layer0, plan0, x[lo * s0 : (hi - 1) * s0 + k0][:, None], 0, folded=folded)
        _conv_layer(layer1, plan1, h0, 1, out=out[a:b])
    return out


def _frames_out(n_in: int, plan: dict, index: int) -> int:
    """Frames out of a conv layer for ``n_in`` frames in; an error when there are none."""
    n_out = (n_in - plan["kernel"]) // plan["stride"] + 1
    if n_out < 1:
        raise ValueError(f"input too short for conv layer {index} (kernel {plan['kernel']})")
    return n_out


def _tap_rows(h: "torch.Tensor", stride: int, n_out: int, first: int, n_taps: int) -> "torch.Tensor":
    """(n_out, n_taps * C) view of h (T, C): row t is h[stride*t + first : stride*t + first + n_taps], flat."""
    channels = h.shape[1]
    return h.as_strided((n_out, n_taps * channels), (stride * channels, 1), h.storage_offset() + first * channels)


def _conv_layer(
    layer: "nn.Module",
    plan: dict,
    h: "torch.Tensor",
    index: int,
    folded: "torch.Tensor | None" = None,
    out: "torch.Tensor | None" = None,
) -> "torch.Tensor":
    """One conv layer with its norm and activation: (frames, C_in) -> (frames', C_out), time-major.

    ``folded``: the first layer's GroupNorm-folded weights, from statistics of the whole
    input (given when ``h`` is a slice of it). ``out``: where to write the result.
    """
    import torch  # deferred: torch is heavy to import
    from torch import nn  # deferred: torch is heavy to import

    conv, norm = layer.conv, getattr(layer, "layer_norm", None)
    stride = plan["stride"]
    n_out = _frames_out(h.shape[0], plan, index)
    if plan["fold_groupnorm"]:
        rows = _tap_rows(h, stride, n_out, 0, plan["kernel"])  # (T', k): one product, all taps
        if folded is None:
            folded = _fold_groupnorm(rows, plan["chunks"][0][2], norm)
        ones = torch.ones(n_out, 1, dtype=h.dtype, device=h.device)
        out = torch.mm(torch.cat([rows, ones], 1), folded, out=out)  # (T', C_out), already normalised
        norm = None
    else:
        for first, n_taps, weight in plan["chunks"]:  # taps in groups of `stride`: one product each
            rows = _tap_rows(h, stride, n_out, first, n_taps)
            if first == 0:
                out = torch.mm(rows, weight, out=out)
            else:
                assert out is not None  # written by the first chunk (first == 0)
                out.addmm_(rows, weight)
        if conv.bias is not None:
            out += conv.bias
    assert out is not None
    if isinstance(norm, nn.GroupNorm):  # per channel over time, another grouping: the plain op
        out = torch.nn.functional.group_norm(out.T[None], norm.num_groups, norm.weight, norm.bias, norm.eps)[0].T
    elif isinstance(norm, nn.LayerNorm):  # large models: over channels
        out.copy_(norm(out))
    return _activate(layer.activation, out)


def _fold_groupnorm(patches: "torch.Tensor", weight: "torch.Tensor", norm: "nn.GroupNorm") -> "torch.Tensor":
    """GroupNorm(one group per channel)(patches @ weight) as weights for [patches, 1]: (k + 1, C_out).

    Channel c of the conv output is ``patches @ w_c``, so its mean over time is
    ``mean(patches) @ w_c`` and its variance ``w_c' cov(patches) w_c``, with cov the
    (k, k) covariance of the patches: the normalisation is a per-channel scale and
    shift folded into the weights before the product. A conv bias cancels out of it.
    Statistics in float64, as a (k, k) matrix is cheap and the variance is a difference.
    The shift rides in the product as the weight row of a column of ones: addmm would
    first copy it into every row of the output, a whole extra pass.
    """
    import torch  # deferred: torch is heavy to import

    p64 = patches.to(torch.float64)  # (T', k)
    mean = p64.mean(0)  # (k,)
    centered = p64 - mean
    cov = centered.T @ centered / p64.shape[0]  # (k, k)
    w64 = weight.to(torch.float64)  # (k, C_out)
    var = ((cov @ w64) * w64).sum(0)  # (C_out,)
    scale = norm.weight.to(torch.float64) * torch.rsqrt(var + norm.eps)
    shift = norm.bias.to(torch.float64) - (mean @ w64) * scale  # (C_out,)
    return torch.cat([w64 * scale, shift[None]]).to(patches.dtype)  # (k + 1, C_out)


def _activate(activation: "nn.Module", h: "torch.Tensor") -> "torch.Tensor":
    """The layer's activation, in place when it is the exact GELU (no second 64 MB tensor)."""
    import torch  # deferred: torch is heavy to import

    if type(activation).__name__ == "GELUActivation" and getattr(activation, "act", None) is torch.nn.functional.gelu:
        return torch.ops.aten.gelu_(h)
    return activation(h)


# ---- attention -------------------------------------------------------------------------------
def wavlm_self_attention(
    attention: "nn.Module",
    hidden_states: "torch.Tensor",
    attention_mask: "torch.Tensor | None",
    gated_position_bias: "torch.Tensor",
    *output_attentions: bool,
) -> tuple["torch.Tensor", None]:
    """WavLMAttention's multi-head self-attention with a fused kernel: (B, T, E) -> ((B, T, E), None).

    ``gated_position_bias`` (B * heads, T, T) is added to the scaled scores before the
    softmax, as in the original; padded keys (``attention_mask`` 0) get -inf. transformers
    4.x passes a fifth argument, ``output_attentions``: when true, the caller wants the
    attention weights, which only the original computes, so the original runs.
    """
    import torch  # deferred: torch is heavy to import
    import torch.nn.functional as F  # deferred: torch is heavy to import

    if any(output_attentions):
        return type(attention).torch_multi_head_self_attention(
            attention, hidden_states, attention_mask, gated_position_bias, *output_attentions
        )

    batch, frames, embed = hidden_states.shape
    heads = attention.num_heads
    qkv = attention._speakerdb_qkv(hidden_states)  # fused: (B, T, 3E); else q, k, v, each (B, T, E)
    q, k, v = qkv.split(embed, dim=-1) if isinstance(qkv, torch.Tensor) else qkv
    q, k, v = (t.view(batch, frames, heads, embed // heads).transpose(1, 2) for t in (q, k, v))  # each (B, H, T, D)
    mask = gated_position_bias.view(batch, heads, frames, frames)
    if attention_mask is not None and not bool(attention_mask.all()):
        padded = attention_mask.eq(0)[:, None, None, :]  # (B, 1, 1, T)
        mask = mask.masked_fill(padded, float("-inf"))
    dropout = attention.dropout if attention.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, T, D)
    out = out.transpose(1, 2).reshape(batch, frames, embed)
    return attention.out_proj(out), None


def _three_projections(attention: "nn.Module", hidden_states: "torch.Tensor") -> tuple:
    """The attention's q, k and v projections of (B, T, E) hidden states: three (B, T, E) tensors."""
    return attention.q_proj(hidden_states), attention.k_proj(hidden_states), attention.v_proj(hidden_states)


# ---- positional convolution ---------------------------------------------------------------
def _positional_conv_fits(embed: "nn.Module") -> bool:
    """A float32 Conv1d of stride 1 whose padding and trimming keep the length, kernel under a block."""
    import torch  # deferred: torch is heavy to import
    from torch import nn  # deferred: torch is heavy to import

    conv = getattr(embed, "conv", None)
    if not isinstance(conv, nn.Conv1d) or conv.weight.dtype != torch.float32 or conv.weight.device.type != "cpu":
        return False
    k, pad, trim = (
        conv.kernel_size[0],
        conv.padding[0],
        getattr(getattr(embed, "padding", None), "num_pad_remove", None),
    )
    return (
        conv.stride[0] == 1
        and conv.dilation[0] == 1
        and isinstance(pad, int)
        and trim is not None
        and 2 * pad - k + 1 - trim == 0
        and k < FFT_BLOCK
        and hasattr(embed, "activation")
    )


def _positional_conv_spectra(conv: "nn.Module") -> "torch.Tensor":
    """The conv's kernels as conjugate spectra for FFT_BLOCK-point blocks: (bins, groups, C_in/g, C_out/g).

    Computed in float64 and stored as complex64: 129 bins x 16 groups x 48 x 48 = 38 MB
    for WavLM base.
    """
    import torch  # deferred: torch is heavy to import

    groups, c_out = conv.groups, conv.out_channels
    w = conv.weight.detach().to(torch.float64)  # (C_out, C_in / g, k)
    spectra = torch.fft.rfft(w, n=FFT_BLOCK, dim=-1).conj()  # (C_out, C_in / g, bins): correlation
    per_group = spectra.view(groups, c_out // groups, w.shape[1], -1)  # (g, out, in, bins)
    return per_group.permute(3, 0, 2, 1).contiguous().to(torch.complex64)  # (bins, g, in, out)


def positional_conv_embedding(embed: "nn.Module", hidden_states: "torch.Tensor") -> "torch.Tensor":
    """The positional conv embedding (grouped Conv1d, trim, activation) by overlap-save FFT:
    (B, T, C) -> (B, T, C).

    WavLM base's positional conv has 128 taps over 16 groups of 48 channels: 4.7 GFLOP per
    10 s as a convolution (20 ms here), but per frequency only a 48 x 48 matrix per group.
    Frames go in blocks of FFT_BLOCK = 256 that overlap by k - 1 = 127, each giving
    256 - 127 = 129 output frames; per block: an rfft, one complex (48 x 48) product per
    bin and group, an irfft. 3.3 ms instead of 20 ms, within 7e-7 of the convolution on
    outputs of ~1 (float64 would take 10 ms and land no closer: the convolution's own
    float32 rounding is that size).

    An FFT's rounding is relative to the whole block, not to each frame: a frame far
    quieter than the rest would get a large relative error (a padded frame, zeroed by the
    attention mask, came out 1e-3 off after the layer norm). Inputs with a frame under
    1/QUIET_FRAME_RATIO of the mean frame norm take the convolution instead; speech
    frames, layer-normalised by the feature projection, sit near the mean.
    """
    import torch  # deferred: torch is heavy to import

    norms = torch.linalg.vector_norm(hidden_states, dim=-1)  # (B, T)
    if not bool((norms >= norms.mean() / QUIET_FRAME_RATIO).all()):  # also false for nan
        return embed._speakerdb_convolve(hidden_states)
    conv = embed.conv
    spectra = embed._speakerdb_spectra  # (bins, g, in, out)
    bins, groups, c_in, _ = spectra.shape
    k, pad = conv.kernel_size[0], conv.padding[0]
    batch, frames, channels = hidden_states.shape
    hop = FFT_BLOCK - (k - 1)  # output frames per block
    n_blocks = -(-frames // hop)
    length = n_blocks * hop + k - 1
    padded = hidden_states.new_zeros(batch, length, channels)  # the conv's zero padding, and more
    padded[:, pad : pad + frames] = hidden_states
    blocks = padded.as_strided((batch, n_blocks, FFT_BLOCK, channels), (length * channels, hop * channels, channels, 1))
    spectrum = torch.fft.rfft(blocks, dim=2)  # (B, n_blocks, bins, C)
    spectrum = spectrum.view(batch * n_blocks, bins, groups, c_in).permute(1, 2, 0, 3)  # (bins, g, B*n_blocks, in)
    product = torch.matmul(spectrum, spectra)  # (bins, g, B*n_blocks, out)
    product = product.permute(2, 0, 1, 3).reshape(batch, n_blocks, bins, channels)
    out = torch.fft.irfft(product, n=FFT_BLOCK, dim=2)[:, :, :hop]  # (B, n_blocks, hop, C): the valid frames
    out = out.reshape(batch, n_blocks * hop, channels)[:, :frames]
    if conv.bias is not None:
        out = out + conv.bias
    return embed.activation(out)


def _fix_weight_norm(conv: "nn.Module") -> bool:
    """Replace a weight-norm parametrization by the weight it computes (once, not per forward)."""
    from torch.nn.utils import parametrize  # deferred: torch is heavy to import

    if not parametrize.is_parametrized(conv, "weight"):
        return False
    parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    return True
