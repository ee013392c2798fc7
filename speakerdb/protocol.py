"""One interface, two implementations: what both a local database and the service's client do.

:class:`speakerdb.SpeakerDB` (a database on this machine) and
:class:`speakerdb.client.Client` (a ``speakerdb serve`` over HTTP) both satisfy
:class:`SpeakerDBProtocol`, with the same method names, parameters, defaults and result
types (:mod:`speakerdb.results`). Code written against the protocol, the CLI's commands
included, runs unchanged on either::

    def enroll_team(db: SpeakerDBProtocol, team: dict[str, list[str]]) -> None:
        for name, files in team.items():
            db.enroll(name, files)

mypy checks that both classes satisfy it (see the ``TYPE_CHECKING`` blocks at the end of
``api.py`` and ``service/client.py``) and ``tests/test_protocol.py`` compares their
signatures with it. What only a local database can do (:data:`LOCAL_ONLY`: normalisation
cohorts' embeddings, the index, vacuum, applying a calibrated threshold, checking keys) is outside the
protocol: the client has no such methods, and asking it for one is an AttributeError
(a type error for mypy), never a request the service would refuse.

Standard library and :mod:`speakerdb.results` only, so importing it costs nothing.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

from .results import (
    AuditEntry,
    DatabaseInfo,
    EnrolledEvent,
    EnrollResult,
    Erasure,
    ExpireSummary,
    ExportSummary,
    Identification,
    ImportSummary,
    KeyInfo,
    Limits,
    LiveEvent,
    NewKey,
    NormChange,
    NormSettings,
    OptOutList,
    OptOutResult,
    Params,
    Policy,
    Progress,
    SpeakerInfo,
    Timeline,
    Verification,
)

# Python 3.10 has no typing.Self: a bound type variable says the same for __enter__.
_Self = TypeVar("_Self")

__all__ = ["LOCAL_ONLY", "LiveSessionProtocol", "SpeakerDBProtocol"]

#: A file an operation reads: a path (a SpeakerDB also takes decoded speakerdb.audio.Audio clips).
PathLike = str | os.PathLike[str]

#: Public members of SpeakerDB that the protocol leaves out: they need the database's files,
#: its model or its cohort on this machine, and the service offers none of them. The CLI
#: refuses the commands that need them under --server with one line (State.local_only).
LOCAL_ONLY: frozenset[str] = frozenset(
    {
        "apply_threshold",  # calibrate --apply: the threshold measured with this machine's model
        "cohort_vectors",  # a normalisation cohort's embeddings stay on the machine that holds them
        "embedder",  # the loaded model itself
        "vacuum",
        "export_sealed",  # galleries sealed to a recipient's key: the key files are on this machine
        "import_sealed",
        "rebuild_index",
        "index_params",
        "set_index_params",
        "index_file_info",  # files
        "authenticate",
        "has_keys",
        "audited_as",
        "maintain_index",  # what the service itself asks of its database
        "note_seen",
        "flush_seen",
        "now",  # last_seen and the clock: the service's own business
        "expire_every_gallery",  # serve's daily run
        "store",
        "indexer",
        "index_path",
        "target",  # the parts of a local database
        "for_gallery",
        "list_galleries",
        "create_gallery",
        "remove_gallery",  # the galleries themselves are administered on the server's machine
        "gallery_audit",
    }
)


class LiveSessionProtocol(Protocol):
    """A live identification session, local (:class:`speakerdb.live.LiveSession`) or over the
    service's WebSocket: audio in, :data:`~speakerdb.results.LiveEvent` out, a timeline at the end."""

    sample_rate: int
    encoding: str

    @property
    def seconds_fed(self) -> float:
        """Seconds of audio fed so far (the ``at`` of the events)."""
        ...

    def feed(self, audio: Any) -> builtins.list[LiveEvent]:
        """The next audio (bytes in the session's encoding, or float32 samples); the events it caused."""
        ...

    def finish(self) -> builtins.list[LiveEvent]:
        """End the audio; the last events (the final segments of what was still open)."""
        ...

    def enroll(self, label: str, name: str, *, add: bool = False) -> EnrolledEvent: ...

    def close(self) -> Timeline: ...


class SpeakerDBProtocol(Protocol):
    """The operations of a speaker database, local (:class:`speakerdb.SpeakerDB`) or through
    the service (:class:`speakerdb.client.Client`). See :class:`speakerdb.SpeakerDB` for what
    each one does; the client's answers are the same values, read from the service."""

    # ---- what it is, and its lifecycle ------------------------------------------------------
    @property
    def db_path(self) -> str | os.PathLike[str]:
        """The database as messages name it: its file, a server URL without password, or the service's URL."""
        ...

    @property
    def created(self) -> bool:
        """Whether opening it created the database (a client never creates one)."""
        ...

    @property
    def gallery(self) -> str:
        """The gallery (tenant) of the database that the calls work in (``default``: the one every database has)."""
        ...

    def close(self) -> None: ...

    def discard_if_unused(self) -> bool: ...

    def __enter__(self: _Self) -> _Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None, /
    ) -> None: ...

    # ---- the decision threshold ---------------------------------------------------------------
    @property
    def threshold(self) -> float: ...

    @property
    def threshold_scale(self) -> str: ...

    @property
    def norm_settings(self) -> NormSettings | None: ...

    def set_threshold(self, value: float) -> None: ...

    def set_norm(
        self,
        cohort: PathLike | Sequence[PathLike],
        *,
        top_n: int | None = None,
        progress: Progress | None = None,
        screen_enrolled: bool = True,
    ) -> NormChange: ...

    def set_norm_off(self) -> NormChange: ...

    # ---- audio in ---------------------------------------------------------------------------
    def enroll(
        self,
        name: str,
        files: Sequence[PathLike],
        *,
        new: bool = False,
        metadata: dict[str, Any] | None = None,
        strict: bool = False,
        progress: Progress | None = None,
        consent: str | None = None,
        external_id: str | None = None,
        override_optout: bool = False,
    ) -> EnrollResult: ...

    def identify(
        self,
        files: Sequence[PathLike],
        *,
        top_k: int = 5,
        threshold: float | None = None,
        progress: Progress | None = None,
        count_voices: bool = True,
        on_result: Callable[[Identification], None] | None = None,
    ) -> builtins.list[Identification]: ...

    def verify(
        self, name: str, file: PathLike, *, threshold: float | None = None, count_voices: bool = True
    ) -> Verification: ...

    def timeline(
        self,
        files: Sequence[PathLike],
        *,
        threshold: float | None = None,
        params: Params | None = None,
        progress: Progress | None = None,
        on_result: Callable[[Timeline], None] | None = None,
    ) -> builtins.list[Timeline]: ...

    def stream(
        self,
        sample_rate: int = 16000,
        encoding: str = "f32",
        threshold: float | None = None,
        embed_windows: Callable[[builtins.list[Any]], Any] | None = None,
    ) -> LiveSessionProtocol:
        """A live session (the service's ``WebSocket /v1/stream`` for a client, which embeds there:
        ``embed_windows`` is for a local database only)."""
        ...

    # ---- speakers -----------------------------------------------------------------------------
    def list(self) -> builtins.list[SpeakerInfo]: ...

    def show(self, name: str) -> SpeakerInfo: ...

    def rename(self, old: str, new: str) -> None: ...

    def remove(self, name: str) -> int: ...

    def info(self) -> DatabaseInfo: ...

    # ---- governance: consent, retention, opt-out ------------------------------------------------
    def policy(self) -> Policy: ...

    def set_policy(self, *, require_consent: bool | None = None, expire_after: str | None = None) -> Policy: ...

    def expire(self, *, dry_run: bool = False) -> ExpireSummary: ...

    def optout(self, name: str, *, external_id: str | None = None) -> OptOutResult: ...

    def optouts(self) -> OptOutList: ...

    def erasure(self) -> Erasure: ...

    # ---- galleries ----------------------------------------------------------------------------
    def export(
        self, path: PathLike, speakers: Sequence[str] | None = None, *, overwrite: bool = False
    ) -> ExportSummary: ...

    def import_gallery(
        self, path: PathLike, *, on_conflict: str = "fail", dry_run: bool = False, limits: Limits | None = None
    ) -> ImportSummary: ...

    # ---- keys of the service and the audit record ---------------------------------------------
    def create_key(self, name: str, scope: str, *, actor: str | None = None) -> NewKey: ...

    def list_keys(self) -> builtins.list[KeyInfo]: ...

    def revoke_key(self, name: str, *, actor: str | None = None) -> KeyInfo: ...

    def audit(self, limit: int = 100, speaker: str | None = None) -> builtins.list[AuditEntry]: ...
