"""Enrollment clips that look wrong: too little speech, or a voice far from the speaker's other clips."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..embedding.pipeline import EmbeddedClip
from ..errors import EnrollmentRefusedError
from ..results import FileNote

#: An enrollment clip with less active speech than this is flagged (seconds).
MIN_SPEECH_S = 1.0


def quality_warnings(
    name: str, existing: Sequence[np.ndarray], embedded: Sequence[EmbeddedClip], threshold: float
) -> list[FileNote]:
    """Clips of ``embedded`` with too little speech, or whose raw score against the mean of
    speaker ``name``'s other clips (``existing`` and the rest of ``embedded``) is below ``threshold``."""
    notes = []
    new_vectors = [clip.vector for clip in embedded]
    for i, clip in enumerate(embedded):
        vector, speech = clip.vector, clip.speech_s
        if speech < MIN_SPEECH_S:
            notes.append(
                FileNote(clip.source, f"only {speech:.1f} s of speech (at least {MIN_SPEECH_S:g} s recommended)")
            )
        others = [*existing, *new_vectors[:i], *new_vectors[i + 1 :]]
        if others:
            mean = np.mean(others, axis=0)
            score = float(vector @ (mean / max(np.linalg.norm(mean), 1e-12)))
            if score < threshold:
                notes.append(
                    FileNote(
                        clip.source,
                        f"far from {name}'s other clips (score {score:.3f} < threshold {threshold:.3f}): "
                        "a different voice?",
                    )
                )
    return notes


def review(
    name: str, existing: Sequence[np.ndarray], embedded: Sequence[EmbeddedClip], threshold: float, strict: bool
) -> list[FileNote]:
    """:func:`quality_warnings`; with ``strict``, any of them refuses the enrollment (EnrollmentRefusedError)."""
    warnings = quality_warnings(name, existing, embedded, threshold)
    if warnings and strict:
        raise EnrollmentRefusedError(
            f"enrollment of {name!r} refused (--strict): " + "; ".join(f"{w.source}: {w.reason}" for w in warnings)
        )
    return warnings
