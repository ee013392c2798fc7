"""The embedding model behind a small interface.

An :class:`Embedder` turns 16 kHz mono float32 waveforms into L2-normalised float32
vectors. :class:`TransformersXVector` is the real one: any Hugging Face checkpoint that
``AutoModelForAudioXVector`` loads (WavLM, wav2vec2, UniSpeech-SAT x-vector heads), from
the hub cache or from a directory written by ``save_pretrained``.
:class:`ResemblyzerEncoder` (``--model resemblyzer``, the optional ``resemblyzer`` extra)
is the pretrained GE2E encoder whose weights ship inside the ``resemblyzer`` wheel.

torch, transformers and resemblyzer are imported only when a model is loaded, so
commands that never embed (``list``, ``show``, ``info``, ``--help``) start fast.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import socket
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable
from urllib.parse import urlparse

import numpy as np

from .. import config
from ..audio.decode import MIN_DURATION_S, SAMPLE_RATE
from ..errors import InvalidInputError, ModelLoadError
from . import idcache, kernels, threads

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("speakerdb")

DEFAULT_MODEL = "microsoft/wavlm-base-plus-sv"
#: fp32: the model card's embeddings (within ~4e-7 per component). bf16: the fast mode.
PRECISIONS = ("fp32", "bf16")
# Equal-length utterances are batched; this caps one forward pass at 16 x 10 s of audio so
# memory stays bounded however many files arrive at once.
MAX_BATCH_SAMPLES = 16 * 10 * SAMPLE_RATE  # samples
#: Audio an fp32 embedder embeds before it sets up the kernels that pay back only over many
#: files (kernels.install_long_run): the int8 products take ~0.8 s to prepare and save ~0.018 s
#: per s of audio on AMX CPUs, repaid after ~45 s; the positional conv's spectra take ~0.1 s
#: and save ~0.002 s per s.
LONG_RUN_AFTER_S = 60.0  # s

#: ``--model`` value that selects :class:`ResemblyzerEncoder` (a reserved name: a local
#: directory called ``resemblyzer`` is reached as ``./resemblyzer``).
RESEMBLYZER_MODEL = "resemblyzer"
#: Label part of :class:`ResemblyzerEncoder`'s model id (``resemblyzer-ge2e@<sha256[:16]>``).
RESEMBLYZER_LABEL = "resemblyzer-ge2e"
#: Partial utterances (1.6 s each) per GE2E forward pass: bounds memory for many windows.
GE2E_BATCH = 256
RESEMBLYZER_INSTALL_HINT = 'pip install -e ".[resemblyzer]" (or pip install "speakerdb[resemblyzer]")'


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

    Fingerprints of different model families are computed differently (a hash over
    tensors for transformers checkpoints, over the weights file for resemblyzer), so the
    family is compared too: a GE2E id never equals a WavLM id, whatever the digests.
    """
    if "@" in a and "@" in b:
        label_a, print_a = a.rsplit("@", 1)
        label_b, print_b = b.rsplit("@", 1)
        return _family(label_a) == _family(label_b) and print_a == print_b
    return a == b


def _family(label: str) -> str:
    """Which code computed an id's fingerprint: ``resemblyzer-ge2e`` or ``transformers``."""
    return RESEMBLYZER_LABEL if label == RESEMBLYZER_LABEL else "transformers"


def default_threshold_for(model_id: str) -> float | None:
    """The starting threshold a model brings to a new database, from its id alone (None: the
    database default, the WavLM card's 0.86), so that importing a gallery binds the same
    threshold as enrolling with the loaded model does."""
    label = model_id.rsplit("@", 1)[0] if "@" in model_id else model_id
    return ResemblyzerEncoder.default_threshold if _family(label) == RESEMBLYZER_LABEL else None


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float32. (n, d) -> (n, d)"""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)  # (n, 1)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class TransformersXVector:
    """A Hugging Face x-vector model (``AutoModelForAudioXVector``), computing what the model card computes.

    For each waveform the result equals the model card's recipe, run on that waveform
    alone: feature extractor -> model -> ``embeddings`` -> L2 normalisation, to within
    a few float32 roundings (:mod:`speakerdb.kernels` computes parts of the model
    faster, with sums in another order and, on AMX CPUs, the linear layers from exact
    int8 products: ~3.5e-7 per component on the full-size model, tested at 1e-5).

    Batching never pads. The base WavLM/wav2vec2 models normalise the first conv layer
    with a GroupNorm over *time*, so zero padding changes every frame of a padded
    utterance; and for padded inputs transformers computes the pooled length without the
    TDNN dilations, so the statistics pooling averages over padding frames. Only
    utterances of identical length are stacked into one forward pass, which changes
    nothing in the result.
    """

    def __init__(self, name_or_path: str = DEFAULT_MODEL, device: str = "cpu", precision: str = "fp32") -> None:
        import torch  # deferred: torch is heavy to import

        self.device = _torch_device(device)
        if precision not in PRECISIONS:
            raise InvalidInputError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
        # torch threads while embedding (None: torch's default); a bad value fails here, at load.
        self.threads = threads.configured_threads()
        # The model's files as they are before loading: the key of its cached fingerprint.
        directory = _model_directory(name_or_path)
        files = idcache.snapshot(directory) if directory is not None else None
        self.feature_extractor, self.model, label = _load_transformers_model(name_or_path)
        self.model.to(self.device).eval()
        self.precision = precision
        self.dim = int(self.model.config.xvector_output_dim)
        fingerprint = idcache.lookup(directory, files) if files and directory is not None else None
        if (
            fingerprint is None or directory is None or idcache.snapshot(directory) != files
        ):  # not known, or changed while loading
            fingerprint = _fingerprint(self.model)
            if files and directory is not None:
                idcache.remember(directory, files, fingerprint)
        self.model_id = f"{label}@{fingerprint}"
        local = Path(name_or_path).expanduser()
        # Where to load it from next time: a directory as an absolute path, a hub id as is.
        self.name_or_path = str(local.resolve()) if local.is_dir() else name_or_path
        if precision == "bf16":
            # Fingerprinted above in float32: the same weights keep the same model id, so
            # a database enrolled in one precision answers queries in the other.
            self.model.to(torch.bfloat16)
        # Same function, fewer wasted cycles: see kernels.py (checked there against the plain
        # model on a probe input). After the fingerprint (it hashes the weights as loaded) and
        # the dtype change (it copies weights).
        self.speedups = kernels.install(self.model, long_run=False)
        # The rest costs more to set up than a one-file command would gain: it waits for
        # LONG_RUN_AFTER_S of audio. Only float32 on CPU has any.
        self._long_run_pending = bool(self.speedups) and precision == "fp32" and self.device.type == "cpu"
        self.audio_seconds = 0.0  # embedded so far
        if getattr(self.model.config, "speakerdb_random_weights", False):
            log.warning(
                "model %s has RANDOM weights (scripts/make_random_checkpoint.py): it cannot tell real "
                "speakers apart, so identify and verify answers are meaningless",
                name_or_path,
            )

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Embed waveforms; (n,) list of 1-D float32 arrays -> (n, dim) float32, rows of norm 1."""
        import torch  # deferred: torch is heavy to import

        out = np.empty((len(waveforms), self.dim), dtype=np.float32)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, wave in enumerate(waveforms):
            if np.ndim(wave) != 1 or len(wave) == 0:
                raise InvalidInputError(f"waveform {i} must be a non-empty 1-D array")
            by_length[len(wave)].append(i)
        with torch.inference_mode(), threads.embedding(self.threads):
            for length, indices in by_length.items():
                per_batch = max(1, MAX_BATCH_SAMPLES // length)
                for start in range(0, len(indices), per_batch):
                    chunk = indices[start : start + per_batch]
                    if self._long_run_pending and self.audio_seconds >= LONG_RUN_AFTER_S:
                        self.prepare_long_run()
                    out[chunk] = self._forward([waveforms[i] for i in chunk])
                    self.audio_seconds += len(chunk) * length / SAMPLE_RATE
        return out

    def prepare_long_run(self) -> list[str]:
        """Set up now the kernels that pay back only over many files (:func:`kernels.install_long_run`).

        The positional conv by FFT and, on AMX CPUs, the int8 products of the transformer's
        linear layers (see :mod:`speakerdb.intgemm`). :meth:`embed` does it by itself once
        LONG_RUN_AFTER_S of audio has gone through this embedder. Returns what was added:
        nothing in bf16, on GPUs, with ``SPEAKERDB_KERNELS=0``, or when already done.
        Embeddings move by up to ~3e-7 per component at the switch (both sides within 1e-5
        of the card's).
        """
        if not self._long_run_pending:
            return []
        self._long_run_pending = False
        started = time.perf_counter()
        added = kernels.install_long_run(self.model)
        # Everything in place now: [] if the probe refused the additions (with a warning).
        self.speedups = kernels.installed(self.model)
        if added:
            log.debug("%s set up in %.2f s", ", ".join(added), time.perf_counter() - started)
        return added

    def _forward(self, waves: list[np.ndarray]) -> np.ndarray:
        """One forward pass over equal-length waveforms: (b, n_samples) -> (b, dim)."""
        import torch  # deferred: torch is heavy to import

        inputs = self.feature_extractor(
            [np.asarray(w, dtype=np.float32) for w in waves],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if self.precision == "bf16":
            inputs["input_values"] = inputs["input_values"].to(torch.bfloat16)
        with warnings.catch_warnings():
            # WavLM mixes a boolean padding mask with its float position bias; torch warns
            # about the mix on every call, and it changes nothing in the result.
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
            embeddings = self.model(**inputs).embeddings  # (b, dim)
        embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        return embeddings.cpu().numpy()


class ResemblyzerEncoder:
    """The pretrained GE2E speaker encoder of the ``resemblyzer`` package (``--model resemblyzer``).

    A 3-layer LSTM over 40-band mel frames, trained with the generalized end-to-end loss
    (Wan et al., 2018); 256-d embeddings. The weights (``pretrained.pt``) ship inside the
    resemblyzer wheel, so nothing is downloaded. Install with the ``resemblyzer`` extra.

    Each waveform goes through resemblyzer's own recipe: ``preprocess_wav`` (volume raised
    to -30 dBFS if quieter, silences longer than ~0.2 s cut out by webrtcvad in its most
    aggressive mode) and ``VoiceEncoder.embed_utterance`` (1.6 s windows at 1.3 windows
    per second, mean of the window embeddings, L2 normalised).

    When the voice activity detector keeps less than ``MIN_DURATION_S`` of a clip (music,
    a tone, noise, whispering, some synthetic voices), the whole clip is embedded instead,
    volume-normalised but untrimmed, with a warning. ``embed()`` does not know file names,
    so an error raised here could not name the file, which every speakerdb error does;
    the clip has already passed :func:`speakerdb.audio.load`'s checks (not silent, at
    least 0.5 s), and the WavLM models embed such a clip too: a file accepted with one
    model is accepted with the other, and the threshold decides what its score means.
    """

    dim = 256
    name_or_path = RESEMBLYZER_MODEL
    #: GE2E cosine scores sit higher than WavLM's. On LibriSpeech test-other (8 enrolled
    #: speakers, 2 + 251 impostor speakers; see docs/accuracy.md) the EER threshold was 0.79 and the
    #: 1 %-false-acceptance threshold 0.75: 0.80 starts a new database near both.
    default_threshold = 0.80

    def __init__(self, device: str = "cpu") -> None:
        self.device = _torch_device(device)
        resemblyzer = _import_resemblyzer()
        from resemblyzer import VoiceEncoder  # deferred: resemblyzer is heavy to import

        weights = Path(resemblyzer.__file__).resolve().parent / "pretrained.pt"
        if not weights.is_file():
            raise ModelLoadError(
                f"the resemblyzer package has no weights file at {weights}: "
                f"reinstall it with {RESEMBLYZER_INSTALL_HINT}"
            )
        # The same file VoiceEncoder loads by default; passed explicitly so the id is
        # computed over exactly what is loaded. verbose=False: resemblyzer would otherwise
        # print a line on stdout, where --json promises one JSON document.
        try:
            self.encoder = VoiceEncoder(device=self.device, verbose=False, weights_fpath=weights)
        except Exception as e:
            raise ModelLoadError(f"cannot load the resemblyzer GE2E encoder from {weights}: {_first_line(e)}") from None
        self.encoder.eval()
        self.weights_path = weights
        self.model_id = f"{RESEMBLYZER_LABEL}@{_file_sha256(weights)[:16]}"
        # librosa loads its submodules (scipy.signal, numba kernels) on first use: about a
        # second, paid here with the rest of the loading rather than by the first file.
        from resemblyzer import preprocess_wav

        tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)  # 1 s
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"), threads.embedding(threads.LSTM_THREADS):
            preprocess_wav(tone, source_sr=SAMPLE_RATE)
            self.encoder.embed_utterance(tone)

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Embed waveforms; (n,) list of 1-D float32 arrays at 16 kHz -> (n, 256) float32, rows of norm 1.

        Each waveform is what ``VoiceEncoder.embed_utterance`` computes for it alone; the
        LSTM runs once over the 1.6 s partial utterances of all of them (every partial has
        the same 160 mel frames, so they stack without padding), which is many times faster
        than one call per waveform for the short windows of a timeline.
        """
        import torch  # deferred: torch is heavy to import

        out = np.empty((len(waveforms), self.dim), dtype=np.float32)
        mels, owner = [], []  # (160, 40) partials, and the waveform each belongs to
        # BLAS on one thread for the mel filterbank products too (librosa's einsum): with two
        # threads, 1.5 s windows took 80 ms each on a busy 2-core machine instead of 8.
        with threads.embedding(None):
            for i, wave in enumerate(waveforms):
                partials = self._partials(self._speech(i, wave))  # (p, 160, 40)
                mels.append(partials)
                owner += [i] * len(partials)
        if not mels:
            return out
        owner_arr = np.array(owner)
        stacked = np.concatenate(mels)  # (P, 160, 40)
        partial_embeds = np.empty((len(stacked), self.dim), np.float32)
        # The LSTM on one torch thread, BLAS on one: see threads.py (10 x faster on a busy 2-core machine).
        with torch.no_grad(), threads.embedding(threads.LSTM_THREADS):
            for first in range(0, len(stacked), GE2E_BATCH):
                batch = torch.from_numpy(stacked[first : first + GE2E_BATCH]).to(self.device)
                partial_embeds[first : first + GE2E_BATCH] = self.encoder(batch).cpu().numpy()
        for i in range(len(waveforms)):
            vector = np.mean(partial_embeds[owner_arr == i], axis=0)  # as embed_utterance: mean of partials
            if not np.all(np.isfinite(vector)) or not np.any(vector):
                # The encoder's ReLU output can be all zeros for a signal with nothing voice-like.
                raise InvalidInputError(f"waveform {i} gives no speaker embedding (nothing voice-like in it)")
            out[i] = l2_normalize(vector[None, :])[0]
        return out

    def _partials(self, wav: np.ndarray) -> np.ndarray:
        """The mel spectrograms of ``wav``'s partial utterances, exactly as ``embed_utterance``
        cuts them: (p, 160, 40)."""
        from resemblyzer import audio as r_audio  # deferred: resemblyzer is heavy to import

        wav_slices, mel_slices = self.encoder.compute_partial_slices(len(wav), rate=1.3, min_coverage=0.75)
        if wav_slices[-1].stop >= len(wav):
            wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)), "constant")
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            mel = r_audio.wav_to_mel_spectrogram(wav)  # (frames, 40)
        return np.array([mel[s] for s in mel_slices], dtype=np.float32)

    def _speech(self, i: int, wave: np.ndarray) -> np.ndarray:
        """resemblyzer's preprocessing of one waveform: volume normalised, long pauses cut (m,) float32."""
        from resemblyzer import normalize_volume, preprocess_wav  # deferred: resemblyzer is heavy to import
        from resemblyzer.hparams import audio_norm_target_dBFS  # deferred: resemblyzer is heavy to import

        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1 or len(wave) == 0:
            raise InvalidInputError(f"waveform {i} must be a non-empty 1-D array")
        if not np.isfinite(wave).all():
            raise InvalidInputError(f"waveform {i} contains NaN or infinite samples")
        if not np.any(wave):
            raise InvalidInputError(f"waveform {i} is all zeros: there is no voice to embed")
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            speech = preprocess_wav(wave, source_sr=SAMPLE_RATE)  # (m,) m <= n
            if len(speech) < MIN_DURATION_S * SAMPLE_RATE:
                log.warning(
                    "the voice activity detector found %.2f s of speech in a %.2f s recording; "
                    "embedding the whole recording instead (check that it holds speech)",
                    len(speech) / SAMPLE_RATE,
                    len(wave) / SAMPLE_RATE,
                )
                speech = normalize_volume(wave, audio_norm_target_dBFS, increase_only=True)
        return np.asarray(speech, dtype=np.float32)


def load_embedder(model: str | None = None, device: str = "cpu", precision: str = "fp32") -> Embedder:
    """Load the embedder named by ``model``: ``resemblyzer``, a hub id or a local checkpoint directory.

    ``precision="bf16"`` (transformers models only) runs the model in bfloat16: about
    2.7x as fast on CPUs with bf16 matrix units (AMX), with embeddings that differ from the
    float32 ones by up to ~1e-3 per component (see docs/performance.md).
    """
    if model == RESEMBLYZER_MODEL:
        if precision != "fp32":
            raise InvalidInputError("--precision bf16 is implemented for transformers x-vector models, not resemblyzer")
        return ResemblyzerEncoder(device=device)
    return TransformersXVector(model or DEFAULT_MODEL, device=device, precision=precision)


def _torch_device(device: str) -> "torch.device":
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch.device, checked."""
    import torch  # deferred: torch is heavy to import

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InvalidInputError(f"unknown device {device!r}: use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but torch sees no CUDA GPU")
    return torch.device(device)


def _import_resemblyzer():
    """Import resemblyzer, or say in one line how to install it."""

    if importlib.util.find_spec("resemblyzer") is None:
        raise ModelLoadError(f"model 'resemblyzer' needs the resemblyzer package: {RESEMBLYZER_INSTALL_HINT}")
    with warnings.catch_warnings():
        # scipy.ndimage.morphology (resemblyzer) and pkg_resources (webrtcvad) warn that
        # they are deprecated on import; neither is speakerdb's to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
        try:
            return importlib.import_module("resemblyzer")
        except Exception as e:  # ImportError mostly; a broken dependency can raise anything
            hint = (
                "setuptools 82 and later have no pkg_resources, which webrtcvad imports; "
                if "pkg_resources" in str(e)
                else ""
            )
            raise ModelLoadError(
                f"the resemblyzer package is installed but cannot be imported ({_first_line(e)}): "
                f"{hint}reinstall with {RESEMBLYZER_INSTALL_HINT}"
            ) from None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with a separator, or starting
    # with ".", "~" or "/", is meant as a directory on this machine.
    return name.startswith((".", "~", "/")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _model_directory(name: str) -> Path | None:
    """The directory ``name``'s files are loaded from: a local directory, or a hub id's snapshot
    in the local Hugging Face cache; None when it is not on this machine yet."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists() or _looks_like_path(name):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache  # deferred: huggingface_hub is heavy to import

        config = try_to_load_from_cache(name, "config.json")
    except Exception:  # an id huggingface_hub refuses: loading will say why
        return None
    return Path(config).parent if isinstance(config, str) else None


def _load_transformers_model(name: str):
    """Load (feature extractor, model, label) from a local directory or the hub cache."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioXVector  # deferred: transformers is heavy to import
    from transformers.utils import logging as hf_logging  # deferred: transformers is heavy to import

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
    except Exception as e:
        if _in_hub_cache(name):  # cached, yet it does not load: that reason is the one to give
            raise ModelLoadError(
                f"model {name!r} is in the local Hugging Face cache but cannot be loaded: "
                f"{_first_line(e).rstrip('.')}. "
                f"Delete it from the cache and download it again, or use --model DIR"
            ) from None
    offline = config.hub_offline()
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
        f"`speakerdb model download {name} --to DIR`, copy DIR here and pass --model DIR "
        f"(or set SPEAKERDB_MODEL=DIR); `speakerdb model list` shows what this machine's cache holds. "
        f"Or use the pretrained GE2E encoder that needs no download: "
        f"--model resemblyzer; see the README, 'Models and offline machines'"
    )


def _in_hub_cache(name: str) -> bool:
    """Whether the hub cache holds a config.json of ``name`` (then a failed load is not 'not cached')."""
    try:
        from huggingface_hub import try_to_load_from_cache  # deferred: huggingface_hub is heavy to import

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an id the hub library refuses (spaces, ..): certainly not cached
        return False


def _hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """None if the hub's host accepts a TCP connection, else why not.

    huggingface_hub retries a dead network for most of a minute, printing each retry;
    one quick connection attempt tells the user at once instead.
    """

    from huggingface_hub import constants  # deferred: huggingface_hub is heavy to import

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
    import torch  # deferred: torch is heavy to import

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key.startswith(("classifier.", "objective.")):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy())  # the buffer itself: no 400 MB copy
    return h.hexdigest()[:16]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
