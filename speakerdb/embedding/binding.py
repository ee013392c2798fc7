"""Whether a database can take a model's embeddings: the model it is bound to, and its dimension.

The values come from the database's settings (:mod:`speakerdb.storage.settings`); the
comparison of model ids is :func:`speakerdb.embedding.models.same_model`'s.
"""

from __future__ import annotations

import os

from ..errors import ModelMismatchError
from .models import same_model


def check_model(
    db_name: str | os.PathLike[str],
    bound: str | None,
    bound_dim: int | None,
    bound_source: str | None,
    model_id: str,
    dim: int,
) -> None:
    """ModelMismatchError unless database ``db_name``, bound to model ``bound`` of ``bound_dim``
    dimensions (None: not bound yet), can use the loaded model ``model_id`` of ``dim``."""
    if bound is not None and not same_model(bound, model_id):
        raise ModelMismatchError(
            f"database {db_name} was built with model {bound}, not {model_id}: "
            f"use --model {bound_source or bound} or another database (--db)"
        )
    if bound_dim is not None and bound_dim != dim:
        raise ModelMismatchError(f"database {db_name} holds {bound_dim}-d embeddings, model {model_id} makes {dim}-d")


def check_gallery_model(
    path: str | os.PathLike[str], bound: str | None, bound_dim: int | None, model_id: str, dim: int
) -> None:
    """ModelMismatchError unless a database bound to ``bound`` (None: not bound yet) can take
    the vectors of gallery ``path``, made by ``model_id`` with ``dim`` dimensions.

    The message names no database path: the service sends it to clients.
    """
    if bound is not None and (not same_model(bound, model_id) or bound_dim != dim):
        raise ModelMismatchError(
            f"gallery {path} holds {dim}-d embeddings of model {model_id}; this database holds "
            f"{bound_dim}-d embeddings of model {bound}: nothing was imported"
        )
