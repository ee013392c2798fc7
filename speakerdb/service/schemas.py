"""The shapes of requests and answers as the OpenAPI page (``/docs``) shows them: JSON bodies
the routes accept, and an example of each answer.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .settings import COHORT_MAX_FILES, DEFAULT_MAX_FILES, DEFAULT_MAX_UPLOAD_BYTES


class RenameBody(BaseModel):
    name: str = Field(..., description="The speaker's new name.", examples=["alicia"])


class ThresholdBody(BaseModel):
    threshold: float = Field(..., description="Cosine score in [0, 1].", examples=[0.8])


class PolicyBody(BaseModel):
    require_consent: bool | None = Field(None, description="Refuse enrolling without consent; null: unchanged.")
    expire_after: str | None = Field(
        None, description="Retention: 3y, 180d, 12h...; 'never' clears it; null: unchanged.", examples=["3y"]
    )


class ExpireBody(BaseModel):
    dry_run: bool = Field(False, description="List the expired speakers; remove nothing.")


class OptOutBody(BaseModel):
    external_id: str | None = Field(None, description="The person's external id, hashed with the name.")


class KeyBody(BaseModel):
    name: str = Field(..., examples=["callcentre-1"])
    scope: str = Field("read", description="read, write or admin", examples=["read"])


def example(doc: Any, status: int = 200) -> dict[int | str, Any]:
    """``doc`` as the example answer with ``status``, for a route's ``responses``."""
    return {status: {"content": {"application/json": {"example": doc}}}}


EXAMPLE_IDENTIFY = [
    {
        "file": "call-0042.wav",
        "speaker": "alice",
        "score": 0.91,
        "candidates": [{"speaker": "alice", "score": 0.91}, {"speaker": "bob", "score": 0.42}],
    },
    {"file": "noise.wav", "error": "is silent (peak below -80 dBFS)"},
]
EXAMPLE_ENROLL = {
    "speaker": "alice",
    "created": True,
    "added": [
        {"source": "alice1.flac", "duration_s": 9.8, "audio_sha256": "5f1c...", "created_at": "2026-11-30T18:00:00Z"}
    ],
    "skipped": [],
    "n_utterances": 1,
    "warnings": [],
    "matches": [],
    "notes": [],
}
EXAMPLE_TIMELINE = [
    {
        "file": "meeting.wav",
        "duration": 12.0,
        "segments": [
            {"start": 0.31, "end": 5.2, "label": "alice", "speaker": "alice", "score": 0.83, "raw_score": 0.83},
            {"start": 5.9, "end": 11.6, "label": "unknown-1", "speaker": None, "score": 0.41, "raw_score": 0.41},
        ],
        "voices": [
            {"label": "unknown-1", "speaker": None, "seconds": 5.7, "score": 0.41, "raw_score": 0.41},
            {"label": "alice", "speaker": "alice", "seconds": 4.89, "score": 0.83, "raw_score": 0.83},
        ],
        "notes": [],
    },
]
EXAMPLE_VERIFY = {"file": "claim.wav", "speaker": "alice", "score": 0.88, "threshold": 0.86, "accepted": True}
EXAMPLE_SPEAKER = {
    "name": "alice",
    "n_utterances": 2,
    "total_duration_s": 19.6,
    "created_at": "2026-11-30T18:00:00Z",
    "updated_at": "2026-11-30T18:05:00Z",
    "metadata": {"team": "sales"},
}
EXAMPLE_ERASURE = {
    "erased": [
        "speakers and utterances rows: deleted, their cells zeroed (SQLite secure_delete)",
        "the write-ahead log: checkpointed and truncated to zero bytes",
        "the index file: the speaker's position zeroed in place",
    ],
    "not_reachable": ["backups and copies of the database file made before the removal"],
}
EXAMPLE_NORM = {
    "norm": {
        "method": "as-norm",
        "top_n": 100,
        "model_id": "microsoft/wavlm-base-plus-sv",
        "dim": 512,
        "count": 240,
        "digest": "5f0c...",
    },
    "recalibrate": True,
    "threshold": 1.5,
    "threshold_scale": "as-norm",
    "set_aside": [],
}
EXAMPLE_INFO = {
    "model_id": "microsoft/wavlm-base-plus-sv",
    "dim": 512,
    "threshold": 0.86,
    "n_speakers": 2,
    "n_utterances": 3,
    "schema_revision": "0010",
    "generation": 5,
    "gallery": "default",
    # The service's own (serve --max-files, --max-upload-mb): a client splits identify uploads to fit.
    "limits": {
        "max_files": DEFAULT_MAX_FILES,
        "max_upload_bytes": DEFAULT_MAX_UPLOAD_BYTES,
        "max_cohort_files": COHORT_MAX_FILES,
    },
}
EXAMPLE_ERROR = {"error": {"code": "speaker_not_found", "message": "no speaker named 'zoe' (see `speakerdb list`)"}}

AUDIO_PARTS = "Audio files (WAV, FLAC, OGG, MP3, anything FFmpeg decodes) as multipart parts."
