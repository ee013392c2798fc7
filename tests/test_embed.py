"""The embedder equals the model card's recipe, one file or a mixed-length batch, and loads cleanly or fails clearly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from speakerdb.embed import Embedder, load_embedder, same_model
from speakerdb.errors import ModelLoadError

from conftest import load_script, voice

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
    checkpoint = load_script("make_random_checkpoint").build(tmp_path_factory.mktemp("full"), "full", seed=1)
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
    other = load_script("make_random_checkpoint").build(tmp_path / "seed7", "tiny", seed=7)
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
    fast = load_embedder(str(tiny_checkpoint), precision="bf16")
    assert fast.model_id == tiny_embedder.model_id  # same weights: same database
    waves = [voice(140, 3.0), voice(230, 1.3, seed=2)]
    exact, approx = tiny_embedder.embed(waves), fast.embed(waves)
    assert approx.dtype == np.float32 and np.allclose(np.linalg.norm(approx, axis=1), 1, atol=1e-5)
    # The tiny random model amplifies rounding more than the full-size one (checked below).
    assert np.min(np.sum(exact * approx, axis=1)) > 0.98  # measured 0.990


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_matmul_feature_encoder_equals_the_convolutions(tmp_path, norm):
    """The bf16 path's conv-as-matmul encoder computes what the Conv1d stack computes (checked in fp32)."""
    import torch
    from transformers import WavLMConfig, WavLMForXVector

    from speakerdb.embed import _matmul_feature_encoder

    torch.manual_seed(0)
    config = WavLMConfig(**{**load_script("make_random_checkpoint").SIZES["tiny"], "feat_extract_norm": norm, "conv_bias": norm == "layer"})
    encoder = WavLMForXVector(config).eval().wavlm.feature_extractor
    x = torch.from_numpy(np.stack([voice(120, 1.2), voice(260, 1.2, seed=3)]))
    with torch.inference_mode():
        np.testing.assert_allclose(_matmul_feature_encoder(encoder, x).numpy(), encoder(x).numpy(), atol=1e-5)


def test_unknown_precision(tiny_checkpoint):
    from speakerdb.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="precision"):
        load_embedder(str(tiny_checkpoint), precision="fp8")
