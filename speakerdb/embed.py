"""Compatibility: the embedders live in :mod:`speakerdb.embedding.models`; this path keeps working."""

from .embedding.models import DEFAULT_MODEL, Embedder, TransformersXVector, load_embedder

__all__ = ["DEFAULT_MODEL", "Embedder", "TransformersXVector", "load_embedder"]
