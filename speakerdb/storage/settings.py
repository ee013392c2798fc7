"""A database's settings by name, in one place: what each key holds, its default, how it is written.

The settings table keeps one JSON value per key (:class:`speakerdb.storage.store.Setting`).
Everything above the store reads them through these accessors, from the dict that
``store.get_settings`` returns inside a transaction (or ``Store.settings()`` outside one), and
writes them through these writers, inside the caller's write transaction. The rules that need
the rooms above storage (which range a threshold may take on each scale, a model's own
starting threshold) are in :mod:`speakerdb.scoring.thresholds`.
"""

from __future__ import annotations

from typing import Any, Mapping

from sqlalchemy.orm import Session

from ..errors import InvalidInputError
from . import store
from .index import DEFAULT_PARAMS as DEFAULT_INDEX_PARAMS

#: The model card's suggested cosine threshold for microsoft/wavlm-base-plus-sv.
DEFAULT_THRESHOLD = 0.86
#: The scale of raw scores, where databases from before normalisation are (the same name as
#: ``speakerdb.scoring.norm.COSINE``, which sits above storage and cannot be imported here).
COSINE = "cosine"

#: Largest index parameters accepted. FAISS keeps them in C ints (a 20-digit ef_search
#: overflowed every later search); beyond these a graph costs memory for no recall: M of
#: 256 links per node is 2 KiB per speaker per level, ef of 100,000 searches most of a
#: million-speaker graph.
INDEX_PARAM_MAX = {
    "hnsw_ef_search": 100_000,  # candidates per search
    "hnsw_ef_construction": 10_000,  # candidates per insertion
    "hnsw_m": 256,  # links per node
    "approximate_above": 2**31 - 1,  # speakers
}

#: The settings as read from the table: key -> JSON value.
Settings = dict[str, Any]


# ---- reading ---------------------------------------------------------------------------------
def threshold(settings: Settings) -> float:
    """The decision threshold, on :func:`scale`."""
    return float(settings.get("threshold", DEFAULT_THRESHOLD))


def scale(settings: Settings) -> str:
    """The scale the threshold is on: ``"cosine"`` or ``"as-norm"``."""
    return settings.get("threshold_scale") or COSINE


def stored_cosine_threshold(settings: Settings) -> float | None:
    """The cosine threshold kept from before normalisation was switched on, if any."""
    value = settings.get("cosine_threshold")
    return float(value) if value is not None else None


def threshold_chosen(settings: Settings) -> bool:
    """Whether someone chose the threshold (set or calibrated), rather than a default."""
    return bool(settings.get("threshold_chosen"))


def model_id(settings: Settings) -> str | None:
    """The model the database's embeddings were made with (None: no model bound yet)."""
    return settings.get("model_id")


def model_source(settings: Settings) -> str | None:
    """Where the bound model is loaded from (hub id or directory)."""
    return settings.get("model_source")


def dim(settings: Settings) -> int | None:
    """The dimension of the stored embeddings (None: no model bound yet)."""
    value = settings.get("dim")
    return int(value) if value is not None else None


def norm(settings: Settings) -> dict[str, Any] | None:
    """The score normalisation's record (``NormSettings.to_dict()``), or None: raw scores."""
    return settings.get("norm") or None


def index_params(settings: Settings) -> dict[str, Any]:
    """The index parameters stored (without the defaults of those never set)."""
    return dict(settings.get("index") or {})


def database_id(settings: Settings) -> str:
    """The database's identity (its index file's name on a server)."""
    return str(settings["database_id"])


# ---- writing (inside the caller's write transaction) -----------------------------------------
def write_defaults(st: store.Store) -> None:
    """A new database's settings, written once; afterwards they only change on purpose."""
    defaults = {"threshold": DEFAULT_THRESHOLD, "index": DEFAULT_INDEX_PARAMS}
    missing = {k: v for k, v in defaults.items() if k not in st.settings()}
    if missing:
        with st.write() as s:
            for key, value in missing.items():
                store.set_setting(s, key, value)


def write_gallery_defaults(s: Session, gallery_id: int, threshold: float) -> None:
    """A new gallery's own settings: ``threshold`` (not chosen: calibrate) and the default index parameters."""
    store.set_setting(s, "threshold", float(threshold), gallery_id)
    store.set_setting(s, "index", DEFAULT_INDEX_PARAMS, gallery_id)


def write_threshold(s: Session, value: float, *, chosen: bool = True) -> None:
    """Store the threshold (on the database's scale), as chosen by someone unless ``chosen`` is False."""
    store.set_setting(s, "threshold", float(value))
    store.set_setting(s, "threshold_chosen", chosen)


def write_scale(s: Session, new_scale: str, new_threshold: float, *, cosine_threshold: float | None = None) -> None:
    """Move the threshold to ``new_scale`` with its starting value there (not chosen: calibrate),
    keeping ``cosine_threshold`` for what still compares raw scores, when given."""
    if cosine_threshold is not None:
        store.set_setting(s, "cosine_threshold", float(cosine_threshold))
    store.set_setting(s, "threshold_scale", new_scale)
    write_threshold(s, new_threshold, chosen=False)


def bind_model(
    s: Session, settings: Settings, model: str, dimension: int, source: str, own_threshold: float | None
) -> None:
    """The one way a database gets its model, whoever calls (enroll, calibrate --apply, import):
    id, dimension and where to load it from, and the model's own starting threshold unless
    someone already chose one. Does nothing for a database that already has a model."""
    if model_id(settings) is not None:
        return
    store.set_setting(s, "model_id", model)
    store.set_setting(s, "dim", int(dimension))
    store.set_setting(s, "model_source", source)
    # A model whose scores live on another scale (GE2E) brings its own starting threshold, to
    # every gallery (the model is the database's) where nobody chose one.
    if own_threshold is not None:
        for gallery_id in store.gallery_ids(s):
            if not store.setting_of(s, gallery_id, "threshold_chosen"):
                store.set_setting(s, "threshold", float(own_threshold), gallery_id)


def write_norm(s: Session, record: dict[str, Any]) -> None:
    """Store the normalisation's record (``NormSettings.to_dict()``)."""
    store.set_setting(s, "norm", record)


def delete_norm(s: Session) -> None:
    """Remove the normalisation's record: raw scores from now on."""
    store.delete_setting(s, "norm")


def check_index_params(params: Mapping[str, Any]) -> None:
    """InvalidInputError unless each of ``params`` is an index parameter (``index.DEFAULT_PARAMS``)
    with a whole-number value in its range (a graph of degree 1 is a list: hnsw_m is at least 2)."""
    unknown = sorted(set(params) - set(DEFAULT_INDEX_PARAMS))
    if unknown:
        raise InvalidInputError(f"unknown index parameter {', '.join(unknown)}: use {', '.join(DEFAULT_INDEX_PARAMS)}")
    for key, value in params.items():
        least = {"approximate_above": 0, "hnsw_m": 2}.get(key, 1)
        most = INDEX_PARAM_MAX[key]
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
            raise InvalidInputError(
                f"index parameter {key} must be a whole number from {least} to {most:,}, not {value!r}"
            )


def write_index_params(s: Session, params: dict[str, Any]) -> None:
    """Store the index parameters (all of them, defaults merged in by the caller)."""
    store.set_setting(s, "index", params)
