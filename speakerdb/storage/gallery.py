"""Speaker galleries: portable, versioned, validated export and import of enrolled speakers.

A gallery is a ZIP archive with exactly three members (the format is documented in
``docs/gallery-format.md``)::

    manifest.json    format name and version, speakerdb version, creation time, model id
                     and dimension, counts, and the size and sha256 of the two others
    speakers.json    the speakers with their metadata and utterance records
    embeddings.f32   every utterance embedding, little-endian float32, row-major
                     (n_utterances, dim), rows in the order of speakers.json

A gallery can also be **sealed to a recipient**: the whole ZIP archive encrypted to their
X25519 public key (``export --to-key PUBFILE``; see crypto.seal_for and the format in
``docs/gallery-format.md``), opened with their private key (``import --key KEYFILE``).

No audio travels. Reading validates everything before the caller writes anything:
member names (no absolute paths, ``..`` or links), sizes (a member that inflates beyond
what the manifest says is refused, a decompression bomb), checksums, format version,
names, and vectors (length, finite, unit norm).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable

import numpy as np

from ..errors import ConflictError, GalleryError, InvalidInputError, SpeakerExistsError, printable_path

# The caps on an import (Limits, whose defaults are these) and what export and import return
# are shared with the client: they live in results.py and stay importable from here.
from ..results import (  # noqa: F401
    MAX_DIM,
    MAX_UTTERANCES,
    REFERENCE_DIM,
    SPEAKERS_JSON_BASE_BYTES,
    SPEAKERS_JSON_BYTES_PER_UTTERANCE,
    ExportSummary,
    ImportSummary,
    Limits,
)
from . import atomic, crypto, governance, store
from .store import validate_name

FORMAT_NAME = "speakerdb-gallery"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPEAKERS = "speakers.json"
EMBEDDINGS = "embeddings.f32"
MEMBERS = (MANIFEST, SPEAKERS, EMBEDDINGS)
MAX_MANIFEST_BYTES = 1 << 20  # 1 MiB: a manifest is a few hundred bytes
UNIT_NORM_TOLERANCE = 1e-3  # embeddings are stored L2-normalised
MAX_JSON_DIGITS = 100  # digits of one JSON number: no field of a gallery needs more
MAX_SOURCE_LENGTH = 4096  # characters of an utterance's source label (PATH_MAX)
MAX_DURATION_S = 1e7  # seconds (115 days): a larger utterance duration is not a recording
READ_CHUNK = 1 << 20  # bytes read from an archive member at a time
# Times in a gallery are ISO 8601, from 1970 on: earlier ones come from a broken clock or an edit.
EARLIEST = datetime(1970, 1, 1)

CONFLICT_POLICIES = ("fail", "skip", "replace", "merge")


@dataclass(frozen=True)
class GalleryUtterance:
    source: str
    duration_s: float
    audio_sha256: str
    created_at: str | None
    embedding: np.ndarray  # (dim,) float32


@dataclass(frozen=True)
class GallerySpeaker:
    name: str
    created_at: str | None
    updated_at: str | None
    metadata: dict[str, Any]
    utterances: list[GalleryUtterance]
    #: The consent recorded with the speaker ({"text", "recorded_at", "recorded_by"}), or None.
    consent: dict[str, Any] | None = None


@dataclass(frozen=True)
class Gallery:
    model_id: str
    model_source: str | None
    dim: int
    speakers: list[GallerySpeaker]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def n_utterances(self) -> int:
        return sum(len(s.utterances) for s in self.speakers)


def write(path: str | Path, gallery: Gallery, speakerdb_version: str, recipient: bytes | None = None) -> int:
    """Write ``gallery`` to ``path`` atomically (temporary file, then rename); returns its size in bytes.

    With ``recipient`` (a raw X25519 public key, crypto.load_public_key) the archive is built
    in memory and written only sealed to that key."""
    path = Path(path)
    speakers_doc = [
        {
            "name": s.name,
            "created_at": s.created_at,
            "updated_at": s.updated_at,
            "metadata": s.metadata,
            **({"consent": s.consent} if s.consent is not None else {}),
            "utterances": [
                {
                    "source": u.source,
                    "duration_s": u.duration_s,
                    "audio_sha256": u.audio_sha256,
                    "created_at": u.created_at,
                }
                for u in s.utterances
            ],
        }
        for s in gallery.speakers
    ]
    speakers_bytes = json.dumps(speakers_doc, ensure_ascii=False, allow_nan=False).encode()
    rows = [u.embedding for s in gallery.speakers for u in s.utterances]
    matrix = np.stack(rows).astype("<f4") if rows else np.zeros((0, gallery.dim), "<f4")  # (n, dim)
    embedding_bytes = matrix.tobytes(order="C")
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "speakerdb_version": speakerdb_version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "model": {"id": gallery.model_id, "source": gallery.model_source, "dim": gallery.dim},
        "counts": {"speakers": len(gallery.speakers), "utterances": len(rows)},
        "members": {
            SPEAKERS: {"size": len(speakers_bytes), "sha256": hashlib.sha256(speakers_bytes).hexdigest()},
            EMBEDDINGS: {"size": len(embedding_bytes), "sha256": hashlib.sha256(embedding_bytes).hexdigest()},
        },
    }
    with atomic.replace(path) as f:
        archive: BinaryIO = io.BytesIO() if recipient is not None else f
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=2), zipfile.ZIP_DEFLATED)
            z.writestr(SPEAKERS, speakers_bytes, zipfile.ZIP_DEFLATED)
            # float32 noise barely compresses: store it.
            z.writestr(EMBEDDINGS, embedding_bytes, zipfile.ZIP_STORED)
        if recipient is not None:
            assert isinstance(archive, io.BytesIO)
            f.write(crypto.seal_for(recipient, archive.getvalue()))
    return path.stat().st_size


ModelCheck = Callable[[str, int], "int | None"]


def read(
    path: str | os.PathLike[str],
    limits: Limits | None = None,
    *,
    check_model: ModelCheck | None = None,
    private_key: str | os.PathLike[str] | None = None,
) -> Gallery:
    """Read and fully validate a gallery file. Raises GalleryError saying what is wrong.

    Memory is bounded by ``limits`` (default: :class:`Limits`): a manifest declaring more
    is refused before the members are unpacked. ``check_model(model_id, dim)``, called with
    the manifest's model before any other member is unpacked, raises if the database cannot
    take that model and returns the database's dimension (None: it has no model yet), which
    sizes the cap on the vectors. The vectors are read in chunks straight into one float32
    array and checked as they arrive, so a file of bad vectors is refused at its first chunk.

    A gallery sealed to a recipient is opened in memory with ``private_key`` (the file of
    that recipient's X25519 private key), then read as any other.
    """
    path = Path(path)
    limits = limits or Limits()
    try:
        with _open_regular(path) as f:
            head = f.read(len(crypto.SEALED_GALLERY_MAGIC))
            if head == crypto.SEALED_GALLERY_MAGIC:
                f = _opened(path, f, private_key)
            elif head[:2] != b"PK":  # every ZIP archive starts with a PK signature
                raise GalleryError(f"{path}: not a speakerdb gallery (not a ZIP archive)")
            f.seek(0)
            with zipfile.ZipFile(f) as z:
                infos = _check_members(path, z)
                manifest = _parse_json(path, MANIFEST, _read_member(path, z, infos[MANIFEST], MAX_MANIFEST_BYTES))
                _check_manifest(path, manifest)
                db_dim = None
                # A gallery of no speakers binds no model (SpeakerDB.import_gallery): nothing to check.
                if check_model is not None and manifest["counts"]["speakers"]:
                    db_dim = check_model(manifest["model"]["id"], manifest["model"]["dim"])
                _check_limits(path, manifest, limits, db_dim)
                raw = _read_member(path, z, infos[SPEAKERS], manifest["members"][SPEAKERS]["size"])
                _check_size_and_digest(path, SPEAKERS, len(raw), hashlib.sha256(raw), manifest)
                records = _speaker_records(path, manifest, _parse_json(path, SPEAKERS, raw))
                del raw
                matrix = _read_embeddings(path, z, infos[EMBEDDINGS], manifest)
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        # zlib.error: damaged deflate data; NotImplementedError: unknown compression
        # method; RuntimeError: an encrypted member (both found by the fuzz tests).
        raise GalleryError(f"{path}: not a readable gallery (truncated or corrupt archive: {e})") from None
    except MemoryError:  # limits raised beyond this machine's memory
        raise GalleryError(
            f"{path}: too large to read in the memory available (a lower --max-utterances refuses it before reading)"
        ) from None
    except OSError as e:
        raise GalleryError(f"{path}: cannot be read ({e.strerror or e})") from None
    return _build(manifest, records, matrix)


def _opened(path: Path, f: BinaryIO, private_key: str | os.PathLike[str] | None) -> BinaryIO:
    """The archive inside a sealed gallery, opened in memory with ``private_key``."""
    if private_key is None:
        raise GalleryError(
            f"{path}: this gallery is sealed to a recipient's key: import it with --key PRIVATE_KEY_FILE"
        )
    f.seek(0)
    try:
        return io.BytesIO(crypto.open_sealed(private_key, f.read(), str(path)))
    except ValueError as e:
        raise GalleryError(f"{path}: not a readable sealed gallery ({e})") from None
    except InvalidInputError as e:
        raise GalleryError(str(e)) from None


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file; GalleryError saying what it is if not.

    The type comes from the open descriptor, so nothing can be swapped in between a check and
    the open; O_NONBLOCK keeps the open of a named pipe from waiting for a writer.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise GalleryError(f"{path}: no such gallery file") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((what for test, what in _FILE_KINDS if test(mode)), "not a file")
            raise GalleryError(f"{path}: not a regular file ({kind}); a gallery is a file written by speakerdb export")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_members(path: Path, z: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in z.infolist():
        name = info.filename
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise GalleryError(f"{path}: archive member {name!r} has an absolute path")
        if ".." in pure.parts:
            raise GalleryError(f"{path}: archive member {name!r} points outside the archive (..)")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise GalleryError(f"{path}: archive member {name!r} is a link")
        if name not in MEMBERS:
            raise GalleryError(f"{path}: unexpected archive member {name!r}")
        if name in infos:
            raise GalleryError(f"{path}: archive member {name!r} appears twice")
        infos[name] = info
    missing = [m for m in MEMBERS if m not in infos]
    if missing:
        raise GalleryError(f"{path}: not a speakerdb gallery (missing {', '.join(missing)})")
    return infos


def _read_member(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytearray:
    """Read at most ``limit`` bytes; one byte more means the member is larger than promised.

    Read in chunks into one buffer of the promised size: memory is the member's size, not
    twice it, and a stream that inflates beyond it is cut at once.
    """
    if info.file_size > limit:
        raise GalleryError(f"{path}: {info.filename} unpacks to {info.file_size} bytes, more than the {limit} expected")
    buffer = bytearray(limit)
    view = memoryview(buffer)
    n = 0
    with z.open(info) as f:
        while True:  # the header's size can lie; the stream cannot
            chunk = f.read(min(READ_CHUNK, limit + 1 - n))
            if not chunk:
                break
            if n + len(chunk) > limit:
                raise GalleryError(f"{path}: {info.filename} unpacks to more than the {limit} bytes expected (refused)")
            view[n : n + len(chunk)] = chunk
            n += len(chunk)
    view.release()
    del buffer[n:]
    return buffer


def _check_limits(path: Path, manifest: dict[str, Any], limits: Limits, db_dim: int | None = None) -> None:
    """Refuse, from the manifest alone, a gallery larger than ``limits`` (its vectors sized for a
    database of dimension ``db_dim``) or whose sizes disagree."""
    dim, counts, members = manifest["model"]["dim"], manifest["counts"], manifest["members"]
    n_utt, n_speakers = counts["utterances"], counts["speakers"]
    if dim > limits.max_dim:
        raise GalleryError(f"{path}: embedding dimension {dim} is more than the {limits.max_dim} accepted")
    if n_utt > limits.max_utterances:
        raise GalleryError(
            f"{path}: declares {n_utt:,} utterances, more than the {limits.max_utterances:,} one import accepts "
            "(import --max-utterances raises the cap; memory grows with it)"
        )
    if n_speakers > n_utt:
        raise GalleryError(f"{path}: declares {n_speakers} speakers but only {n_utt} utterances")
    if members[EMBEDDINGS]["size"] != n_utt * dim * 4:
        raise GalleryError(
            f"{path}: the manifest declares {members[EMBEDDINGS]['size']} bytes of embeddings; "
            f"{n_utt} x {dim} float32 vectors need {n_utt * dim * 4}"
        )
    cap = limits.max_embedding_bytes(db_dim)
    if n_utt * dim * 4 > cap:
        raise GalleryError(
            f"{path}: declares {n_utt:,} utterances of {dim}-d vectors ({n_utt * dim * 4:,} bytes), more than the "
            f"{cap:,} bytes one import accepts (import --max-utterances raises the cap; memory grows with it)"
        )
    # speakers.json: as much as the declared utterances can need, never more than the cap's worth.
    speakers_cap = min(
        limits.max_speakers_json_bytes, SPEAKERS_JSON_BASE_BYTES + n_utt * SPEAKERS_JSON_BYTES_PER_UTTERANCE
    )
    if members[SPEAKERS]["size"] > speakers_cap:
        raise GalleryError(
            f"{path}: speakers.json declares {members[SPEAKERS]['size']:,} bytes, more than the "
            f"{speakers_cap:,} accepted for {n_utt:,} utterances"
        )


class _TooManyDigits(ValueError):
    pass


def _parse_int(text: str) -> int:
    # Python refuses to convert more than 4,300 digits with a ValueError that suggests
    # sys.set_int_max_str_digits(); no gallery field needs a hundred.
    if len(text) > MAX_JSON_DIGITS + 1:  # + 1: a minus sign
        raise _TooManyDigits
    return int(text)


def _parse_json(path: Path, member: str, raw: bytes | bytearray) -> Any:
    """``raw`` parsed as JSON; any fault (encoding, syntax, a number of thousands of digits,
    nesting too deep for the parser) is one GalleryError naming the member."""
    try:
        return json.loads(raw.decode("utf-8"), parse_int=_parse_int)
    except RecursionError:  # nesting 100,000 deep exhausts the parser's stack
        raise GalleryError(f"{path}: not a valid gallery: {member} is nested too deeply") from None
    except _TooManyDigits:
        raise GalleryError(
            f"{path}: not a valid gallery: {member} holds an integer of more than {MAX_JSON_DIGITS} digits"
        ) from None
    except ValueError as e:  # UnicodeDecodeError, json.JSONDecodeError and any other conversion
        raise GalleryError(f"{path}: not a valid gallery: {member} is not valid JSON ({e})") from None


def _check_manifest(path: Path, m: Any) -> None:
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise GalleryError(f"{path}: not a speakerdb gallery (manifest format is not {FORMAT_NAME!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise GalleryError(
            f"{path}: gallery format version {m.get('format_version')!r} is not supported "
            f"(this speakerdb reads version {FORMAT_VERSION})"
        )
    try:
        model, counts, members = m["model"], m["counts"], m["members"]
        ok = (
            isinstance(model["id"], str)
            and isinstance(model.get("source"), (str, type(None)))
            and _is_count(model["dim"])
            and model["dim"] > 0
            and _is_count(counts["speakers"])
            and _is_count(counts["utterances"])
            and all(
                _is_count(members[n]["size"]) and isinstance(members[n]["sha256"], str) for n in (SPEAKERS, EMBEDDINGS)
            )
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise GalleryError(f"{path}: manifest is incomplete or malformed")


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_size_and_digest(path: Path, member: str, size: int, digest: Any, manifest: dict[str, Any]) -> None:
    expected = manifest["members"][member]
    if size != expected["size"]:
        raise GalleryError(f"{path}: {member} is {size} bytes, the manifest says {expected['size']}")
    if digest.hexdigest() != expected["sha256"]:
        raise GalleryError(f"{path}: checksum mismatch in {member} (the file is damaged or was altered)")


def _read_embeddings(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo, manifest: dict[str, Any]) -> np.ndarray:
    """The (n_utt, dim) float32 vectors, unpacked chunk by chunk into their one array.

    Each chunk is hashed and its complete rows checked (finite, unit norm) as it arrives:
    memory is the array (bounded by _check_limits) plus a chunk, and a stream of bad vectors
    is refused at its first chunk rather than after the whole member is unpacked.
    """
    dim, n_utt = manifest["model"]["dim"], manifest["counts"]["utterances"]
    size = n_utt * dim * 4
    if info.file_size > size:
        raise GalleryError(f"{path}: {info.filename} unpacks to {info.file_size} bytes, more than the {size} expected")
    matrix = np.empty((n_utt, dim), "<f4")  # (n_utt, dim); pages are touched only as rows arrive
    flat = matrix.data.cast("B") if size else memoryview(b"")
    digest, n, checked = hashlib.sha256(), 0, 0
    with z.open(info) as f:
        while True:  # the header's size can lie; the stream cannot
            chunk = f.read(min(READ_CHUNK, size + 1 - n))
            if not chunk:
                break
            if n + len(chunk) > size:
                raise GalleryError(f"{path}: {info.filename} unpacks to more than the {size} bytes expected (refused)")
            flat[n : n + len(chunk)] = chunk
            digest.update(chunk)
            n += len(chunk)
            rows = n // (dim * 4)
            _check_rows(path, matrix[checked:rows])
            checked = rows
    flat.release()
    _check_size_and_digest(path, EMBEDDINGS, n, digest, manifest)
    return matrix.astype(np.float32, copy=False)


def _check_rows(path: Path, rows: np.ndarray) -> None:
    """Refuse vectors that are not finite unit vectors; ``rows`` is (k, dim), any k."""
    if not len(rows):
        return
    if not np.isfinite(rows).all():
        raise GalleryError(f"{path}: embeddings contain NaN or infinite values")
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))  # (k,), with no (k, dim) temporary
    if np.max(np.abs(norms - 1)) > UNIT_NORM_TOLERANCE:
        raise GalleryError(f"{path}: embeddings are not unit vectors (norms {norms.min():.3f}..{norms.max():.3f})")


_SpeakerRecord = tuple[
    str, "str | None", "str | None", dict[str, Any], list[tuple[str, float, str, "str | None"]], "dict[str, Any] | None"
]


def _speaker_records(path: Path, manifest: dict[str, Any], speakers_doc: Any) -> list[_SpeakerRecord]:
    """speakers.json checked field by field, before any vector is unpacked: (name, created_at,
    updated_at, metadata, [(source, duration_s, audio_sha256, created_at)]) per speaker, with
    exactly the manifest's count of speakers and of utterances."""
    n_utt = manifest["counts"]["utterances"]
    if not isinstance(speakers_doc, list) or len(speakers_doc) != manifest["counts"]["speakers"]:
        raise GalleryError(
            f"{path}: speakers.json does not list the {manifest['counts']['speakers']} speakers the manifest counts"
        )

    records: list[_SpeakerRecord] = []
    seen: set[str] = set()
    row = 0
    for entry in speakers_doc:
        try:
            name = entry["name"]
            utterances_doc = entry["utterances"]
            if not isinstance(utterances_doc, list):
                raise TypeError
            name = validate_name(name)  # NFC, as enrollment stores it
            metadata = store.validate_metadata(entry.get("metadata"), f"metadata of speaker {name!r}")
            created_at = _check_time(entry.get("created_at"), f"created_at of speaker {name!r}")
            updated_at = _check_time(entry.get("updated_at"), f"updated_at of speaker {name!r}")
            consent = _check_consent(entry.get("consent"), name)
        except InvalidInputError as e:
            raise GalleryError(f"{path}: {e}") from None
        except (KeyError, TypeError, AttributeError):
            raise GalleryError(f"{path}: a speaker entry in speakers.json is malformed") from None
        if name in seen:
            raise GalleryError(f"{path}: speaker {name!r} appears twice")
        seen.add(name)
        if not utterances_doc:
            raise GalleryError(f"{path}: speaker {name!r} has no utterances")
        utterances = []
        for u in utterances_doc:
            try:
                utterance = _check_utterance(u, name)
            except InvalidInputError as e:
                raise GalleryError(f"{path}: {e}") from None
            except (KeyError, TypeError, AttributeError):
                raise GalleryError(f"{path}: an utterance of speaker {name!r} is malformed") from None
            if row >= n_utt:
                raise GalleryError(f"{path}: speakers.json lists more utterances than the {n_utt} embeddings")
            utterances.append(utterance)
            row += 1
        records.append((name, created_at, updated_at, metadata, utterances, consent))
    if row != n_utt:
        raise GalleryError(f"{path}: speakers.json lists {row} utterances, the embeddings hold {n_utt}")
    return records


def _build(manifest: dict[str, Any], records: list[_SpeakerRecord], matrix: np.ndarray) -> Gallery:
    """The gallery of checked records, row i of ``matrix`` (n_utt, dim) for the i-th utterance."""
    speakers, row = [], 0
    for name, created_at, updated_at, metadata, utterances, consent in records:
        items = []
        for utterance in utterances:
            items.append(GalleryUtterance(*utterance, matrix[row]))
            row += 1
        speakers.append(GallerySpeaker(name, created_at, updated_at, metadata, items, consent))
    model = manifest["model"]
    return Gallery(model["id"], model.get("source"), model["dim"], speakers, manifest)


_SHA256_HEX = frozenset("0123456789abcdef")


def _check_utterance(u: Any, speaker: str) -> tuple[str, float, str, str | None]:
    """(source, duration_s, audio_sha256, created_at) of one utterance record, each checked for
    type, range and encoding; InvalidInputError (or KeyError/TypeError) says what is wrong."""
    what = f"an utterance of speaker {speaker!r}"
    sha, source, duration = u["audio_sha256"], u["source"], u["duration_s"]
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _SHA256_HEX):
        raise InvalidInputError(f"{what} has an audio_sha256 that is not 64 lowercase hex digits")
    if not isinstance(source, str) or len(source) > MAX_SOURCE_LENGTH or source != printable_path(source):
        raise InvalidInputError(
            f"{what} has a source that is not text of valid Unicode up to {MAX_SOURCE_LENGTH} characters"
        )
    store.check_text(source, f"the source of {what}")
    # A JSON number only (not "1e400" as text), finite, and no longer than a recording can be.
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 <= duration <= MAX_DURATION_S:
        raise InvalidInputError(f"{what} has a duration_s that is not a number of seconds in [0, {MAX_DURATION_S:g}]")
    created_at = _check_time(u.get("created_at"), f"created_at of {what}")
    return source, float(duration), sha, created_at


def _check_consent(value: Any, speaker: str) -> dict[str, Any] | None:
    """A speaker's consent record ({"text", "recorded_at", "recorded_by"}) checked, or None."""
    if value is None:
        return None
    what = f"consent of speaker {speaker!r}"
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        raise InvalidInputError(f"{what} is not an object with a text")
    by = value.get("recorded_by")
    if by is not None and (not isinstance(by, str) or len(by) > store.MAX_NAME_LENGTH):
        raise InvalidInputError(f"{what} has a recorded_by that is not a key name")
    return {
        "text": governance.check_consent(value["text"]),
        "recorded_at": _check_time(value.get("recorded_at"), f"recorded_at of {what}"),
        "recorded_by": store.check_text(store.check_name_text(by, what), what) if by is not None else None,
    }


def _check_time(value: Any, what: str) -> str | None:
    """An ISO 8601 time (or None) between 1970 and 9999, as store.iso writes it."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInputError(f"{what} is not an ISO 8601 time")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if t.tzinfo is not None:
            t = t.astimezone(timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise InvalidInputError(f"{what} is not an ISO 8601 time ({value!r})") from None
    if t < EARLIEST:
        raise InvalidInputError(f"{what} ({value!r}) is before 1970")
    return store.iso(t)


def from_store(settings: dict[str, Any], speakers: list[store.Speaker]) -> Gallery:
    """A gallery of these speakers (rows of the store), with the database's model."""
    return Gallery(
        model_id=settings["model_id"],
        model_source=settings.get("model_source"),
        dim=int(settings["dim"]),
        speakers=[
            GallerySpeaker(
                sp.name,
                store.iso(sp.created_at),
                store.iso(sp.updated_at),
                dict(sp.meta or {}),
                [
                    GalleryUtterance(u.source, u.duration_s, u.audio_sha256, store.iso(u.created_at), u.vector())
                    for u in sp.utterances
                ],
                consent(sp),
            )
            for sp in speakers
        ],
    )


def consent(sp: store.Speaker) -> dict[str, Any] | None:
    """The consent stored with ``sp`` as a gallery carries it, or None."""
    if sp.consent is None:
        return None
    return {"text": sp.consent, "recorded_at": store.iso(sp.consent_at), "recorded_by": sp.consent_by}


def _set_consent(sp: store.Speaker, record: dict[str, Any] | None) -> None:
    if record is not None:
        sp.consent = record["text"]
        sp.consent_at = store.parse_iso(record.get("recorded_at"))
        sp.consent_by = record.get("recorded_by")


def into_store(s, g: Gallery, on_conflict: str, summary: ImportSummary) -> None:
    """Write a validated gallery into the open write transaction ``s``, by the conflict policy.

    Fills ``summary``. The store records the changed centroids itself (store.py).
    """
    existing = {sp.name: sp for sp in store.speakers_by_name(s, [x.name for x in g.speakers])}
    if existing and on_conflict == "fail":
        raise ConflictError(
            f"{len(existing)} speaker(s) of {summary.path} already exist: {', '.join(sorted(existing))}; "
            "nothing was imported (choose --on-conflict skip, replace or merge)"
        )
    _refuse_twins(s, [x.name for x in g.speakers if x.name not in existing], summary.path)
    for incoming in g.speakers:
        current = existing.get(incoming.name)
        if current is not None and on_conflict == "skip":
            summary.skipped.append(incoming.name)
            continue
        if current is not None and on_conflict == "replace":
            s.delete(current)
            s.flush()
            current = None
            summary.replaced.append(incoming.name)
        elif current is None:
            summary.created.append(incoming.name)
        else:
            summary.merged.append(incoming.name)
        if current is None:
            now = store.utcnow()
            current = store.Speaker(
                name=incoming.name,
                created_at=store.parse_iso(incoming.created_at) or now,
                updated_at=store.parse_iso(incoming.updated_at) or now,
                meta=dict(incoming.metadata),
                centroid=b"",
            )
            _set_consent(current, incoming.consent)
            s.add(current)
        else:  # merge: existing metadata wins, incoming keys fill the gaps
            current.meta = {**incoming.metadata, **(current.meta or {})}
            if current.consent is None:  # and the consent already recorded, if any
                _set_consent(current, incoming.consent)
        known = {u.audio_sha256 for u in current.utterances}
        for u in incoming.utterances:
            if u.audio_sha256 in known:  # merges never add the same audio twice
                continue
            known.add(u.audio_sha256)
            current.utterances.append(
                store.Utterance(
                    source=u.source,
                    duration_s=u.duration_s,
                    audio_sha256=u.audio_sha256,
                    embedding=store.embedding_blob(current, u.audio_sha256, u.embedding),
                    created_at=store.parse_iso(u.created_at) or store.utcnow(),
                )
            )
            summary.utterances_added += 1
        store.recompute_centroid(current)


def _refuse_twins(s, created: list[str], path: str) -> None:
    """Refuse an import that would create a speaker whose name differs only in case or spacing
    from an enrolled one's or from another it creates, whatever ``on_conflict`` says: the
    policy decides for a speaker of the same name, and whether a twin is the same person only
    a person can say (rename one of them). A speaker of the exact name is not created. Also
    refuses to create a speaker named ``.`` or ``..`` (store.check_new_name)."""
    if not created:
        return
    for name in created:
        try:
            store.check_new_name(name)
        except InvalidInputError as e:
            raise InvalidInputError(f"{path}: {e}; nothing was imported") from None
    # folded name -> a spelling enrolled or created before in this import; only the enrolled
    # names that fold as a created one are read (by the index on folded names)
    held = {folded: names[0] for folded, names in governance.enrolled_folding_as(s, created).items()}
    twins: list[str] = []
    for name in created:
        other = held.setdefault(governance.fold_name(name), name)
        if other != name:
            twins.append(f"{name!r} (twin of {other!r})")
    if twins:
        raise SpeakerExistsError(
            f"{len(twins)} speaker(s) of {path} would be twins of others (names that differ only in case or "
            f"spacing): {', '.join(twins)}; nothing was imported (rename them in the file's database or in this "
            "one with `speakerdb rename`)"
        )


def check_policy(policy: str) -> str:
    if policy not in CONFLICT_POLICIES:
        raise InvalidInputError(f"on-conflict must be one of {', '.join(CONFLICT_POLICIES)}, not {policy!r}")
    return policy
