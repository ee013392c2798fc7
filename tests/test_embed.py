"""The embedder equals the model card's recipe, one file or a mixed-length batch, and loads cleanly or fails clearly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from builders import CHECKPOINT_SIZES, build_random_checkpoint
from conftest import voice
from speakerdb.embedding.models import Embedder, l2_normalize, load_embedder, same_model
from speakerdb.errors import ModelLoadError

TOLERANCE = 1e-5  # per component, as the product promises


def model_card_embedding(checkpoint, waves):
    """The model card's snippet for microsoft/wavlm-base-plus-sv, verbatim in spirit.

    feature extractor (padding=True) -> WavLMForXVector -> embeddings -> L2 normalise.
    """
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMForXVector

    feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(checkpoint)
    model = WavLMForXVector.from_pretrained(checkpoint)
    inputs = feature_extractor(waves, padding=True, return_tensors="pt", sampling_rate=16000)
    with torch.no_grad():
        embeddings = model(**inputs).embeddings
    return torch.nn.functional.normalize(embeddings, dim=-1).cpu().numpy()


def test_implements_the_interface(tiny_embedder):
    assert isinstance(tiny_embedder, Embedder)
    assert tiny_embedder.dim == 24
    assert tiny_embedder.model_id.startswith(tiny_embedder.model_id.split("@")[0] + "@")


def test_single_file_equals_model_card(tiny_checkpoint, tiny_embedder):
    for seconds, f0 in [(1.0, 120.0), (2.7, 200.0), (4.1, 300.0)]:
        wave = voice(f0, seconds)
        ours = tiny_embedder.embed([wave])
        card = model_card_embedding(tiny_checkpoint, [wave])
        assert ours.dtype == np.float32 and ours.shape == (1, 24)
        assert np.max(np.abs(ours - card)) < TOLERANCE
        assert np.linalg.norm(ours[0]) == pytest.approx(1.0, abs=1e-6)


def test_mixed_length_batch_equals_one_at_a_time(tiny_embedder):
    waves = [voice(110 + 20 * i, 0.8 + 0.37 * i, seed=i) for i in range(7)]
    waves.append(waves[2].copy())  # equal lengths are stacked into one forward pass
    waves.append(voice(500, len(waves[2]) / 16000, seed=9))
    batch = tiny_embedder.embed(waves)
    single = np.concatenate([tiny_embedder.embed([w]) for w in waves])
    assert np.max(np.abs(batch - single)) < TOLERANCE
    np.testing.assert_array_equal(batch[2], batch[7])


def test_zero_padding_would_change_the_result(tiny_checkpoint):
    """Why the embedder never pads: the model card's own padded batch differs from single files.

    WavLM base puts a GroupNorm over time in the first conv layer, and transformers pools
    padded inputs over a length computed without the TDNN dilations.
    """
    short, long = voice(150, 1.0), voice(250, 3.0)
    padded = model_card_embedding(tiny_checkpoint, [short, long])
    alone = model_card_embedding(tiny_checkpoint, [short])
    assert np.max(np.abs(padded[0] - alone[0])) > 100 * TOLERANCE


@pytest.mark.slow
def test_full_size_architecture_equals_model_card(tmp_path_factory):
    checkpoint = build_random_checkpoint(tmp_path_factory.mktemp("full"), "full", seed=1)
    embedder = load_embedder(str(checkpoint))
    assert embedder.dim == 512
    waves = [voice(140, 3.0), voice(230, 1.3, seed=2)]
    ours = embedder.embed(waves)
    card = np.concatenate([model_card_embedding(checkpoint, [w]) for w in waves])
    assert np.max(np.abs(ours - card)) < TOLERANCE
    # The fast mode on the real architecture: measured 6.7e-4 per component, cosine 0.99999.
    fast = load_embedder(str(checkpoint), precision="bf16").embed(waves)
    assert np.max(np.abs(fast - ours)) < 5e-3 and np.min(np.sum(fast * ours, axis=1)) > 0.9999


def test_model_id_pins_the_weights_not_the_path(tiny_checkpoint, tiny_embedder, tmp_path):
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "copied-elsewhere")
    again = load_embedder(str(copy))
    assert again.model_id != tiny_embedder.model_id  # the label says where it came from...
    assert same_model(again.model_id, tiny_embedder.model_id)  # ...the fingerprint decides
    other = build_random_checkpoint(tmp_path / "seed7", "tiny", seed=7)
    assert not same_model(load_embedder(str(other)).model_id, tiny_embedder.model_id)
    assert not same_model("fake-a", "fake-b") and same_model("fake-a", "fake-a")


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_embedder(str(tmp_path / "no-such-model"))


def test_directory_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="lacks config.json"):
        load_embedder(str(tmp_path))


def test_broken_weights_are_a_clear_error(tiny_checkpoint, tmp_path):
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="cannot load an x-vector model from directory"):
        load_embedder(str(broken))


def test_unreachable_hub_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_embedder("microsoft/wavlm-base-plus-sv")
    message = str(err.value)
    assert "microsoft/wavlm-base-plus-sv" in message and "--model DIR" in message
    assert "\n" not in message


def test_bf16_mode_stays_close_to_fp32(tiny_checkpoint, tiny_embedder):
    import torch

    fast = load_embedder(str(tiny_checkpoint), precision="bf16")
    assert fast.model_id == tiny_embedder.model_id  # same weights: same database
    assert next(fast.model.parameters()).dtype == torch.bfloat16  # the fast mode, not fp32 under its name
    waves = [voice(140, 3.0), voice(230, 1.3, seed=2), voice(320, 2.0, seed=1)]
    exact, approx = tiny_embedder.embed(waves), fast.embed(waves)
    assert approx.dtype == np.float32 and np.allclose(np.linalg.norm(approx, axis=1), 1, atol=1e-5)
    # Close means every voice stays nearest its own fp32 embedding. Not more: this tiny random
    # model puts its voices ~1e-2 apart in cosine, and on CPUs with AMX oneDNN's bf16 kernels
    # move its vectors about as far (1e-5 without AMX); the full-size model moves ~1e-5 on
    # both (docs/performance.md), which a checkpoint small enough for the tests cannot show.
    assert ((approx @ exact.T).argmax(axis=1) == np.arange(len(waves))).all()
    assert (1 - np.sum(exact * approx, axis=1)).max() < 0.05


def tiny_wavlm(norm: str = "group"):
    """A random tiny WavLMForXVector, eval mode (seeded)."""
    import torch
    from transformers import WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    sizes = CHECKPOINT_SIZES["tiny"]
    return WavLMForXVector(WavLMConfig(**{**sizes, "feat_extract_norm": norm, "conv_bias": norm == "layer"})).eval()


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("slices", ["one slice", "many slices"])
def test_kernels_feature_encoder_equals_the_convolutions(norm, slices, monkeypatch):
    """kernels.py's time-major conv encoder computes what the Conv1d stack computes."""
    import torch

    from speakerdb.embedding import kernels

    if slices == "many slices":  # layers 0 and 1 in 97-frame slices: 20 of them, the last one short
        monkeypatch.setattr(kernels, "FUSED_FRAMES", 97)
    encoder = tiny_wavlm(norm).wavlm.feature_extractor
    x = torch.from_numpy(np.stack([voice(120, 1.2), voice(260, 1.2, seed=3)]))  # (2, n_samples)
    with torch.inference_mode():
        expected = encoder(x).numpy()
        encoder._speakerdb_plan = kernels._encoder_plan(encoder)
        got = kernels.conv_feature_encoder(encoder, x).numpy()  # (2, C, frames)
        one = kernels.conv_feature_encoder(encoder, x[:1]).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(one, expected[:1], atol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_kernels_attention_equals_transformers(padded, monkeypatch):
    """The whole model with kernels.install() equals the original, with and without padded keys."""
    import torch

    from speakerdb.embedding import intgemm, kernels

    model, fast = tiny_wavlm(), tiny_wavlm()  # the same seeded weights
    # 3 linear layers per transformer layer (q/k/v fused, 2 feed-forward); int8 where AMX,
    # here at every size (the tiny model's 2 x 99 frames are under intgemm.MIN_ROWS).
    monkeypatch.setattr(intgemm, "MIN_ROWS", 1)
    int8 = [f"int8 products ({3 * model.config.num_hidden_layers} linear layers)"] if intgemm.available() else []
    assert kernels.install(fast) == [
        "conv feature encoder",
        "attention",
        "positional conv weight norm",
        "positional conv by FFT",
        *int8,
    ]
    x = torch.from_numpy(np.stack([voice(150, 2.0), voice(240, 2.0, seed=4)]))  # (2, n_samples)
    mask = torch.ones_like(x, dtype=torch.long)
    if padded:
        x[1, 20_000:] = 0.0
        mask[1, 20_000:] = 0  # the second utterance is 1.25 s of speech and 0.75 s of padding
    with torch.inference_mode():
        expected, got = (m.wavlm(x, attention_mask=mask).last_hidden_state.numpy() for m in (model, fast))
        # The tiny random model's raw embeddings are ~1e-6: compare them normalised.
        expected_xv, got_xv = (l2_normalize(m(x, attention_mask=mask).embeddings.numpy()) for m in (model, fast))
    np.testing.assert_allclose(got, expected, atol=1e-5)  # (2, frames, hidden), values ~1
    np.testing.assert_allclose(got_xv, expected_xv, atol=1e-5)


def test_kernels_on_wav2vec2_replace_what_fits_and_keep_the_result(monkeypatch):
    """A wav2vec2 x-vector model: same conv encoder (replaced), another attention class (kept)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForXVector

    from speakerdb.embedding import intgemm, kernels

    sizes = {k: v for k, v in CHECKPOINT_SIZES["tiny"].items() if k not in ("num_buckets", "max_bucket_distance")}
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(Wav2Vec2ForXVector(Wav2Vec2Config(**sizes)).eval())
    model, fast = models
    monkeypatch.setattr(intgemm, "MIN_ROWS", 1)
    int8 = [f"int8 products ({2 * model.config.num_hidden_layers} linear layers)"] if intgemm.available() else []
    assert kernels.install(fast) == [
        "conv feature encoder",
        "positional conv weight norm",
        "positional conv by FFT",
        *int8,
    ]
    x = torch.from_numpy(voice(180, 1.5)[None])  # (1, n_samples)
    with torch.inference_mode():
        expected, got = (m.wav2vec2(x).last_hidden_state.numpy() for m in (model, fast))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("frames", [1, 128, 129, 387, 499])
@pytest.mark.parametrize("kernel", [128, 33])
def test_positional_conv_by_fft_equals_the_convolution(frames, kernel):
    """WavLM base's positional conv shape (768 channels, 16 groups) over block edges: T < one
    block's 129 frames, exactly 1 and 3 blocks, 10 s; and an odd kernel (no trimmed frame)."""
    import torch
    from transformers import WavLMConfig
    from transformers.models.wavlm.modeling_wavlm import WavLMPositionalConvEmbedding

    from speakerdb.embedding import kernels

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=768, num_conv_pos_embeddings=kernel, num_conv_pos_embedding_groups=16)
    embed = WavLMPositionalConvEmbedding(config).eval()
    kernels._fix_weight_norm(embed.conv)
    assert kernels._positional_conv_fits(embed)
    x = torch.randn(2, frames, 768)
    with torch.inference_mode():
        expected = embed(x)
        embed._speakerdb_spectra = kernels._positional_conv_spectra(embed.conv)
        got = kernels.positional_conv_embedding(embed, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-6)  # outputs ~1
    x[1, frames // 2 :] = 0.0  # padded frames, zeroed: the convolution, exactly
    with torch.inference_mode():
        embed._speakerdb_convolve = embed.forward
        np.testing.assert_array_equal(kernels.positional_conv_embedding(embed, x).numpy(), embed(x).numpy())


AT_LOAD = ["conv feature encoder", "attention", "positional conv weight norm"]


def test_long_run_kernels_come_after_enough_audio_and_keep_the_embeddings(tiny_checkpoint, monkeypatch):
    """The positional conv by FFT and the int8 products wait for LONG_RUN_AFTER_S of audio (one
    short file would not repay their set-up); embeddings stay within the tolerance across the switch."""
    from speakerdb.embedding import intgemm
    from speakerdb.embedding import models as embed

    monkeypatch.setattr(embed, "LONG_RUN_AFTER_S", 3.0)
    monkeypatch.setattr(intgemm, "MIN_ROWS", 1)  # a 2 s clip is 99 frames
    embedder = load_embedder(str(tiny_checkpoint))
    assert embedder.speedups == AT_LOAD
    wave = voice(150, 2.0)
    first = embedder.embed([wave])  # 0 s before it
    again = embedder.embed([wave])  # 2 s before it: still the same kernels
    assert np.array_equal(first, again) and embedder.speedups == AT_LOAD
    later = embedder.embed([wave])  # 4 s before it: the long-run kernels
    int8 = (
        [f"int8 products ({3 * embedder.model.config.num_hidden_layers} linear layers)"] if intgemm.available() else []
    )
    assert embedder.speedups == [*AT_LOAD, "positional conv by FFT", *int8]
    assert embedder.audio_seconds == 6.0
    np.testing.assert_allclose(later, first, atol=1e-5)
    assert embedder.prepare_long_run() == []  # once only
    assert load_embedder(str(tiny_checkpoint), precision="bf16").prepare_long_run() == []


def plain_model_runs(embedder) -> bool:
    """Whether none of kernels.py's replacements is left in the embedder's model."""
    return not any(
        "forward" in vars(m)
        or "torch_multi_head_self_attention" in vars(m)
        or any(n.startswith("_speakerdb_") for n in vars(m))
        for m in embedder.model.base_model.modules()
    )


def kernel_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "faster kernels are off" in r.getMessage()]


@pytest.mark.parametrize("breakage", ["wrong attention", "moved internals", "wrong FFT"])
def test_kernels_that_disagree_with_the_model_leave_it_plain_with_one_warning(
    tiny_checkpoint, monkeypatch, caplog, breakage
):
    """kernels.py replaces private parts of transformers' WavLM; at load (and when the long-run
    kernels come) a probe input checks them against the plain model."""
    import logging

    from speakerdb.embedding import kernels
    from speakerdb.embedding import models as embed

    if breakage == "wrong attention":  # computes something else: scores not scaled

        def wrong(attention, hidden_states, attention_mask, gated_position_bias):
            out, _ = original(attention, hidden_states, attention_mask, gated_position_bias)
            return out * 1.5, None

        original = kernels.wavlm_self_attention
        monkeypatch.setattr(kernels, "wavlm_self_attention", wrong)
    elif breakage == "moved internals":  # a transformers release renamed the projections
        monkeypatch.setattr(
            kernels, "_three_projections", lambda a, h: (a.query_proj(h), a.key_proj(h), a.value_proj(h))
        )
    else:  # the FFT's spectra for another kernel length
        spectra = kernels._positional_conv_spectra
        monkeypatch.setattr(kernels, "_positional_conv_spectra", lambda conv: spectra(conv).flip(0))
    monkeypatch.setattr(embed, "LONG_RUN_AFTER_S", 1.0)
    wave = voice(150, 2.0)
    with caplog.at_level(logging.WARNING, logger="speakerdb"):
        embedder = load_embedder(str(tiny_checkpoint))
        ours = np.concatenate([embedder.embed([wave]) for _ in range(3)])  # the long-run kernels come at 2 s
    assert len(kernel_warnings(caplog)) == 1
    assert "transformers" in kernel_warnings(caplog)[0] and "SPEAKERDB_KERNELS=0" in kernel_warnings(caplog)[0]
    assert embedder.speedups == [] and plain_model_runs(embedder)
    assert np.max(np.abs(ours - model_card_embedding(tiny_checkpoint, [wave]))) < TOLERANCE


def test_kernels_are_switched_off_by_the_environment(tiny_checkpoint, monkeypatch, caplog):
    from speakerdb.embedding import models as embed

    monkeypatch.setenv("SPEAKERDB_KERNELS", "0")
    monkeypatch.setattr(embed, "LONG_RUN_AFTER_S", 1.0)
    embedder = load_embedder(str(tiny_checkpoint))
    wave = voice(150, 2.0)
    ours = np.concatenate([embedder.embed([wave]) for _ in range(2)])
    assert embedder.speedups == [] and plain_model_runs(embedder) and not kernel_warnings(caplog)
    card = model_card_embedding(tiny_checkpoint, [wave])
    np.testing.assert_array_equal(ours[0], ours[1])
    assert np.max(np.abs(ours - card)) < 1e-6  # the same code as the card's, unbatched


def test_unknown_precision(tiny_checkpoint):
    from speakerdb.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="precision"):
        load_embedder(str(tiny_checkpoint), precision="fp8")


def test_a_cached_model_that_fails_to_load_says_why(tmp_path, monkeypatch):
    """Not "not in the local cache": the cache has it, and the real reason is given."""
    import huggingface_hub.constants

    snapshot = tmp_path / "models--acme--broken-sv" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--acme--broken-sv" / "refs").mkdir()
    (tmp_path / "models--acme--broken-sv" / "refs" / "main").write_text("a" * 40)
    (snapshot / "config.json").write_text("{not json")
    (snapshot / "preprocessor_config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as err:
        load_embedder("acme/broken-sv")
    message = str(err.value)
    assert "is in the local Hugging Face cache but cannot be loaded" in message and "config.json" in message
    assert "not in the local" not in message


def test_unreachable_hub_names_the_offline_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_embedder("microsoft/wavlm-base-plus-sv")
    message = str(err.value)
    assert "--model resemblyzer" in message and "'Models and offline machines'" in message
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "\n## Models and offline machines\n" in readme  # the section the message names exists
