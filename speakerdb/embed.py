"""The embedding model behind a small interface.

An :class:`Embedder` turns 16 kHz mono float32 waveforms into L2-normalised float32
vectors. :class:`TransformersXVector` is the real one: any Hugging Face checkpoint that
``AutoModelForAudioXVector`` loads (WavLM, wav2vec2, UniSpeech-SAT x-vector heads), from
the hub cache or from a directory written by ``save_pretrained``.

torch and transformers are imported only when a model is loaded, so commands that never
embed (``list``, ``show``, ``info``, ``--help``) start fast.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np

from .audio import SAMPLE_RATE
from .errors import InvalidInputError, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("speakerdb")

DEFAULT_MODEL = "microsoft/wavlm-base-plus-sv"
# Equal-length utterances are batched; this caps one forward pass at 16 x 10 s of audio so
# memory stays bounded however many files arrive at once.
MAX_BATCH_SAMPLES = 16 * 10 * SAMPLE_RATE  # samples


@runtime_checkable
class Embedder(Protocol):
    """What :class:`speakerdb.api.SpeakerDB` needs from a speaker-embedding model."""

    #: Pins the checkpoint: two embedders with the same id give the same vectors.
    model_id: str
    #: Length of every embedding vector.
    dim: int

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Embed 16 kHz mono float32 waveforms: returns (len(waveforms), dim) float32, rows of norm 1."""
        ...


def same_model(a: str, b: str) -> bool:
    """Whether two model ids name the same weights.

    Ids of checkpoints loaded by :class:`TransformersXVector` look like
    ``label@fingerprint``: the label says where they were loaded from (a hub id or a
    directory name) and may differ between machines; the fingerprint of the weights
    decides. Other ids must match exactly.
    """
    if "@" in a and "@" in b:
        return a.rsplit("@", 1)[1] == b.rsplit("@", 1)[1]
    return a == b


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float32. (n, d) -> (n, d)"""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)  # (n, 1)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class TransformersXVector:
    """A Hugging Face x-vector model (``AutoModelForAudioXVector``), exactly as the model card runs it.

    For each waveform the result equals the model card's recipe, run on that waveform
    alone: feature extractor -> model -> ``embeddings`` -> L2 normalisation.

    Batching never pads. The base WavLM/wav2vec2 models normalise the first conv layer
    with a GroupNorm over *time*, so zero padding changes every frame of a padded
    utterance; and for padded inputs transformers computes the pooled length without the
    TDNN dilations, so the statistics pooling averages over padding frames. Only
    utterances of identical length are stacked into one forward pass, which changes
    nothing in the result.
    """

    def __init__(self, name_or_path: str = DEFAULT_MODEL, device: str = "cpu") -> None:
        import torch

        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise InvalidInputError(f"unknown device {device!r}: use cpu or cuda")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested but torch sees no CUDA GPU")
        self.device = torch.device(device)
        self.feature_extractor, self.model, label = _load_transformers_model(name_or_path)
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.xvector_output_dim)
        self.model_id = f"{label}@{_fingerprint(self.model)}"
        self.name_or_path = name_or_path
        if getattr(self.model.config, "speakerdb_random_weights", False):
            log.warning(
                "model %s has RANDOM weights (scripts/make_random_checkpoint.py): it cannot tell real "
                "speakers apart, so identify and verify answers are meaningless",
                name_or_path,
            )

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Embed waveforms; (n,) list of 1-D float32 arrays -> (n, dim) float32, rows of norm 1."""
        import torch

        out = np.empty((len(waveforms), self.dim), dtype=np.float32)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, wave in enumerate(waveforms):
            if np.ndim(wave) != 1 or len(wave) == 0:
                raise InvalidInputError(f"waveform {i} must be a non-empty 1-D array")
            by_length[len(wave)].append(i)
        with torch.inference_mode():
            for length, indices in by_length.items():
                per_batch = max(1, MAX_BATCH_SAMPLES // length)
                for start in range(0, len(indices), per_batch):
                    chunk = indices[start : start + per_batch]
                    out[chunk] = self._forward([waveforms[i] for i in chunk])
        return out

    def _forward(self, waves: list[np.ndarray]) -> np.ndarray:
        """One forward pass over equal-length waveforms: (b, n_samples) -> (b, dim)."""
        import torch

        inputs = self.feature_extractor(
            [np.asarray(w, dtype=np.float32) for w in waves],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with warnings.catch_warnings():
            # WavLM mixes a boolean padding mask with its float position bias; torch warns
            # about the mix on every call, and it changes nothing in the result.
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
            embeddings = self.model(**inputs).embeddings  # (b, dim)
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
        return embeddings.float().cpu().numpy()


def load_embedder(model: str | None = None, device: str = "cpu") -> Embedder:
    """Load the embedder named by ``model``: a hub id or a local checkpoint directory."""
    return TransformersXVector(model or DEFAULT_MODEL, device=device)


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with a separator, or starting
    # with ".", "~" or "/", is meant as a directory on this machine.
    return name.startswith((".", "~", "/")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _load_transformers_model(name: str):
    """Load (feature extractor, model, label) from a local directory or the hub cache."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioXVector
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no "some weights were not used" chatter on the CLI
    hf_logging.disable_progress_bar()  # nor a "Loading weights" bar for a local file
    local = Path(name).expanduser()
    if local.is_dir():
        missing = [f for f in ("config.json", "preprocessor_config.json") if not (local / f).is_file()]
        if missing:
            raise ModelLoadError(
                f"{local} is not a model directory: it lacks {' and '.join(missing)} "
                "(a directory written by save_pretrained() or `hf download` has both)"
            )
        try:
            fe = AutoFeatureExtractor.from_pretrained(str(local))
            model = AutoModelForAudioXVector.from_pretrained(str(local))
        except Exception as e:  # transformers raises OSError, ValueError, KeyError...
            raise ModelLoadError(
                f"cannot load an x-vector model from directory {local}: {_first_line(e)}. "
                "It must hold config.json, preprocessor_config.json and the weights, as written "
                "by save_pretrained()"
            ) from None
        return fe, model, local.resolve().name
    if local.exists() or _looks_like_path(name):
        raise ModelLoadError(f"model directory {name} does not exist")

    # A hub id: the local cache first (no network round trip), then the hub itself.
    try:
        fe = AutoFeatureExtractor.from_pretrained(name, local_files_only=True)
        model = AutoModelForAudioXVector.from_pretrained(name, local_files_only=True)
        return fe, model, name
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    reason = "HF_HUB_OFFLINE is set" if offline else _hub_unreachable()
    if reason is None:
        try:
            fe = AutoFeatureExtractor.from_pretrained(name)
            model = AutoModelForAudioXVector.from_pretrained(name)
            return fe, model, name
        except Exception as e:
            reason = _first_line(e)
    raise ModelLoadError(
        f"cannot load model {name!r}: it is not in the local Hugging Face cache and could not be "
        f"fetched from the hub ({reason}). On a machine with network run "
        f"`hf download {name} --local-dir DIR`, copy DIR here and pass --model DIR "
        f"(or set SPEAKERDB_MODEL=DIR); see the README, 'Offline machines'"
    )


def _hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """None if the hub's host accepts a TCP connection, else why not.

    huggingface_hub retries a dead network for most of a minute, printing each retry;
    one quick connection attempt tells the user at once instead.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return None
    except OSError as e:
        return f"{url.hostname} unreachable: {e.strerror or e}"


def _fingerprint(model: "torch.nn.Module") -> str:
    """First 16 hex digits of a sha256 over the weights that shape the embeddings.

    Hashing tensors, not files, makes the same weights saved as .bin or .safetensors, or
    loaded from the hub cache or a copied directory, give the same id. The training-only
    heads (classifier, AM-softmax objective) are left out: they never touch embeddings.
    """
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key.startswith(("classifier.", "objective.")):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
