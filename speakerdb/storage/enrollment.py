"""An enrollment's writes: the speaker found or created, its new utterances, its metadata and centroid."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
from sqlalchemy.orm import Session

from ..results import FileNote, UtteranceInfo
from . import store


class Clip(Protocol):
    """An embedded recording as enrollment stores it (embedding.pipeline.EmbeddedClip)."""

    @property
    def source(self) -> str: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def sha256(self) -> str: ...
    @property
    def vector(self) -> np.ndarray: ...


def add_clips(
    s: Session,
    name: str,
    speaker: store.Speaker | None,
    clips: Sequence[Clip],
    metadata: dict[str, Any],
) -> tuple[store.Speaker, bool, list[UtteranceInfo], list[FileNote]]:
    """Add ``clips`` to ``speaker`` (None: create speaker ``name``) and merge ``metadata`` into its own.

    A clip whose audio the speaker already has (same sha256) is skipped with a note; the
    centroid is recomputed when anything was added. Returns the speaker, whether it was
    created, the utterances added and the clips skipped.
    """
    created = speaker is None
    if speaker is None:
        now = store.utcnow()
        speaker = store.Speaker(name=name, created_at=now, updated_at=now, meta={}, centroid=b"")
        s.add(speaker)
    known = {u.audio_sha256 for u in speaker.utterances}
    added, skipped = [], []
    for clip in clips:
        if clip.sha256 in known:
            skipped.append(FileNote(clip.source, f"same audio already enrolled for {name!r}"))
            continue
        known.add(clip.sha256)
        utt = store.Utterance(
            source=clip.source,
            duration_s=clip.duration_s,
            audio_sha256=clip.sha256,
            embedding=store.embedding_blob(speaker, clip.sha256, clip.vector),
            created_at=store.utcnow(),
        )
        speaker.utterances.append(utt)
        added.append(UtteranceInfo(clip.source, clip.duration_s, clip.sha256, utt.created_at))
    if metadata:
        speaker.meta = {**(speaker.meta or {}), **metadata}
    if added or created:
        store.recompute_centroid(speaker)
    return speaker, created, added, skipped
