"""What a threshold may be on each scale, and the cosine threshold behind an AS-norm one.

The settings themselves are read and written in :mod:`speakerdb.storage.settings`; these are
the rules that need the scales (:mod:`.norm`) and the models' own starting thresholds.
"""

from __future__ import annotations

from typing import Any

from ..embedding.models import default_threshold_for
from ..errors import InvalidInputError
from ..storage import settings as stored
from . import norm


def check_threshold(value: Any, least: float = 0.0, scale: str = norm.COSINE) -> float:
    """``value`` as a threshold on ``scale``: a cosine score in [``least``, 1] (a negative one
    would accept nearly every voice: stored or given for one call, as the command line
    refuses it), or an AS-norm score in ``norm.AS_NORM_RANGE``; InvalidInputError otherwise
    (NaN included)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"threshold must be a number, not {value!r}") from None
    if scale == norm.AS_NORM:
        low, high = norm.AS_NORM_RANGE
        if not low <= value <= high:  # NaN fails too
            raise InvalidInputError(f"threshold {value} is not an AS-norm score in [{low:g}, {high:g}]")
        return value
    if not least <= value <= 1.0:  # NaN fails too
        if value < 0 <= least:
            raise InvalidInputError(f"threshold {value} would accept nearly every voice: give one in [0, 1]")
        raise InvalidInputError(f"threshold {value} is not a cosine score in [{least:g}, 1]")
    return value


def cosine_threshold(settings: stored.Settings) -> float:
    """A threshold on the raw cosine scale: the database's own when it is on that scale, else
    the one it had before normalisation was switched on, else the model's starting one."""
    if stored.scale(settings) == norm.COSINE:
        return stored.threshold(settings)
    kept = stored.stored_cosine_threshold(settings)
    if kept is not None:
        return kept
    own = default_threshold_for(stored.model_id(settings) or "")
    return stored.DEFAULT_THRESHOLD if own is None else float(own)
