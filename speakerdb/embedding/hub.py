"""Getting a model onto a machine: ``speakerdb model download`` and ``speakerdb model list``.

On a connected machine :func:`download_model` fetches a hub model's files into the local Hugging
Face cache (where ``--model ID`` finds them) or into a folder (to carry to an offline
machine and pass as ``--model DIR``); :func:`cached_models` lists what the cache holds. The cache
is the one huggingface_hub uses: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``, read when called (not when huggingface_hub was imported).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import config
from ..config import model_cache_dir
from ..errors import InvalidInputError, ModelLoadError, first_line

#: The files a transformers x-vector model loads from (weights in either format); a
#: repository's other files (ONNX exports, other frameworks' weights) are not fetched.
MODEL_FILES = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]


@dataclass(frozen=True)
class CachedModel:
    """One model repository in the local Hugging Face cache."""

    model: str  # the hub id, what --model takes
    size_bytes: int  # on disk, every revision
    files: int
    revisions: int
    last_modified: str | None  # ISO 8601, UTC
    path: str  # the repository's folder in the cache

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cached_models() -> list[CachedModel]:
    """Every model repository in the hub cache, by id; empty when there is no cache yet."""
    from huggingface_hub import scan_cache_dir  # deferred: huggingface_hub is heavy to import

    where = model_cache_dir()
    if not where.is_dir():
        return []
    try:
        info = scan_cache_dir(where)
    except Exception as e:  # CacheNotFound, an unreadable folder: one line, not a traceback
        raise InvalidInputError(f"cannot read the Hugging Face cache {where}: {e}") from None
    models = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        modified = datetime.fromtimestamp(repo.last_modified, timezone.utc).replace(tzinfo=None)
        models.append(
            CachedModel(
                repo.repo_id,
                repo.size_on_disk,
                repo.nb_files,
                len(repo.revisions),
                modified.isoformat(timespec="seconds") + "Z",
                str(repo.repo_path),
            )
        )
    return sorted(models, key=lambda m: m.model)


def download_model(model: str, to: str | os.PathLike[str] | None = None, *, progress_bars: bool = True) -> Path:
    """Fetch hub model ``model`` into the hub cache, or into folder ``to``; returns where its
    files are. ``progress_bars``: huggingface_hub's own bars on stderr (one per file).

    Raises ModelLoadError naming what to do when the hub cannot be reached (HF_HUB_OFFLINE
    set, no network) or does not have the model."""
    from huggingface_hub import snapshot_download  # deferred: huggingface_hub is heavy to import
    from huggingface_hub.utils import (  # deferred: huggingface_hub is heavy to import
        disable_progress_bars,
        enable_progress_bars,
    )

    if model == "resemblyzer":
        raise InvalidInputError("resemblyzer's weights ship inside its wheel: nothing to download")
    target = Path(to).expanduser() if to is not None else None
    if target is not None and target.exists() and not target.is_dir():
        raise InvalidInputError(f"--to {target} is a file, not a folder")
    if config.hub_offline():
        raise ModelLoadError(_offline(model, "HF_HUB_OFFLINE is set"))
    (enable_progress_bars if progress_bars else disable_progress_bars)()
    try:
        path = snapshot_download(
            model,
            cache_dir=None if target is not None else model_cache_dir(),
            local_dir=target,
            allow_patterns=MODEL_FILES,
        )
    except Exception as e:  # offline, unknown repository, gated model, full disk...
        raise ModelLoadError(_offline(model, first_line(e))) from None
    return Path(str(path))


def _offline(model: str, reason: str) -> str:
    # A segmentation model is used by `timeline --segmentation`: --model would refuse its files.
    option = "--segmentation DIR" if model.split("/")[-1].startswith("segmentation") else "--model DIR"
    return (
        f"cannot download model {model!r} ({reason}). On a machine with network run "
        f"`speakerdb model download {model} --to DIR`, copy DIR here and pass {option}; "
        "`speakerdb model list` shows the models in this machine's Hugging Face cache"
    )
