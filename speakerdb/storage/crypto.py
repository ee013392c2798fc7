"""Encryption at rest: the one place where vectors are sealed and opened.

Keys, from the outside in:

- the **key-encryption key** (KEK) is the operator's: 32 random bytes (or 64 hex digits)
  in the file ``$SPEAKERDB_KEY_FILE``, or printed by the command ``$SPEAKERDB_KEY_COMMAND``
  (a KMS or Vault client). speakerdb never stores it.
- the **data key** (DEK) is random, made with the encryption, and stored only wrapped by
  the KEK (AES-256-GCM under HKDF-SHA256(KEK, random salt)) in the ``data_keys`` table,
  bound to the database's identity and the DEK's number (``dek_id``).
- vectors are sealed with AES-256-GCM under a key derived from the DEK (HKDF, one key per
  purpose), a random 96-bit nonce per encryption, and associated data naming the row and
  column they belong to: a blob copied into another row, column or database does not open.

A sealed vector is ``0xE1 | dek_id (u32 LE) | nonce (12) | ciphertext | tag (16)``: 33
bytes more than the float32 vector, and never a multiple of 4 long, so an unsealed blob
(4 bytes a value) is told from a sealed one by its length alone.

Index files seal their vectors by blocks of :data:`INDEX_BLOCK` positions under a key
derived from the DEK and a random per-file salt; the tags live in a table beside the
labels, so a removed speaker's vector can still be zeroed in place (its block is opened,
zeroed and sealed again under a new nonce). See index.py.

Vectors are opened only in memory. Nothing here logs or prints a key or a vector.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import config
from ..errors import (
    DatabaseError,
    EncryptedSinceOpenedError,
    EncryptionKeyMissingError,
    EncryptionKeyWrongError,
    InvalidInputError,
)

KEY_BYTES = 32  # AES-256, and the least key material accepted from the operator
NONCE_BYTES = 12
TAG_BYTES = 16
SEALED_MARK = 0xE1
SEALED_OVERHEAD = 1 + 4 + NONCE_BYTES + TAG_BYTES  # bytes a sealed blob adds to its vector
KEY_COMMAND_TIMEOUT_S = 30  # a key command that hangs is reported, not waited for
INDEX_BLOCK = 512  # positions sealed together in an index file (1 MiB of 512-d vectors)
INDEX_ENTRY_BYTES = NONCE_BYTES + TAG_BYTES  # one block's nonce and tag in the file's table

_WRAP_INFO = b"speakerdb key wrap v1"
_VECTOR_INFO = b"speakerdb vectors v1"
_INDEX_INFO = b"speakerdb index vectors v1"


def _hkdf(material: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(material)


# ---- the key-encryption key -------------------------------------------------------------------
@dataclass(frozen=True)
class KeySource:
    """Where a key-encryption key comes from: a file, or a command's standard output."""

    file: str | None = None
    command: str | None = None

    def describe(self) -> str:
        return f"key file {self.file}" if self.file else f"key command {self.command!r}"

    def read(self) -> bytes:
        """The key's bytes; EncryptionKeyMissingError (one line) if they cannot be had."""
        if self.file:
            try:
                raw = Path(self.file).expanduser().read_bytes()
            except OSError as e:
                raise EncryptionKeyMissingError(f"cannot read the key file {self.file}: {e.strerror or e}") from None
        else:
            raw = _run_key_command(str(self.command))
        return parse_key(raw, self.describe())


def configured() -> KeySource | None:
    """The key the environment names (``SPEAKERDB_KEY_FILE`` first, then
    ``SPEAKERDB_KEY_COMMAND``), or None if it names none."""
    if config.key_file():
        return KeySource(file=config.key_file())
    if config.key_command():
        return KeySource(command=config.key_command())
    return None


def _run_key_command(command: str) -> bytes:
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=KEY_COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EncryptionKeyMissingError(
            f"the key command {command!r} gave no key within {KEY_COMMAND_TIMEOUT_S} s"
        ) from None
    except OSError as e:
        raise EncryptionKeyMissingError(f"the key command {command!r} cannot be run: {e.strerror or e}") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        tail = f": {said[-1][:200]}" if said else ""
        raise EncryptionKeyMissingError(f"the key command {command!r} failed (exit status {done.returncode}){tail}")
    return done.stdout


def parse_key(raw: bytes, where: str) -> bytes:
    """Key material as given: exactly 32 raw bytes, 64 hex digits, base64 of 32 or more
    bytes, or any 32 or more bytes (surrounding whitespace ignored but for raw keys)."""
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    if re.fullmatch(rb"[0-9a-fA-F]{64,}", text) and len(text) % 2 == 0:
        return bytes.fromhex(text.decode())
    try:
        decoded = base64.b64decode(text, validate=True)
        if len(decoded) >= KEY_BYTES:
            return decoded
    except (binascii.Error, ValueError):
        pass
    if len(text) >= KEY_BYTES:
        return text
    raise EncryptionKeyMissingError(
        f"the {where} holds {len(text)} bytes, not a key: a key is 32 random bytes or 64 hex digits "
        "(make one with `speakerdb key generate FILE`)"
    )


def new_key_text() -> bytes:
    """A new key-encryption key, as a key file holds it: 64 hex digits and a newline."""
    return os.urandom(KEY_BYTES).hex().encode() + b"\n"


# ---- the data key -----------------------------------------------------------------------------
def _binding(database_id: str, dek_id: int) -> bytes:
    return f"speakerdb data key|{database_id}|{dek_id}".encode()


def wrap(kek: bytes, dek: bytes, database_id: str, dek_id: int) -> bytes:
    """``dek`` sealed under ``kek``: salt (16) | nonce (12) | ciphertext and tag."""
    salt, nonce = os.urandom(16), os.urandom(NONCE_BYTES)
    return salt + nonce + AESGCM(_hkdf(kek, _WRAP_INFO, salt)).encrypt(nonce, dek, _binding(database_id, dek_id))


def unwrap(kek: bytes, wrapped: bytes, database_id: str, dek_id: int, what: str, where: str = "this database") -> bytes:
    """The data key in ``wrapped``; EncryptionKeyWrongError naming ``what`` (the key) and
    ``where`` (the database) if ``kek`` is not its key."""
    salt, nonce, sealed = wrapped[:16], wrapped[16 : 16 + NONCE_BYTES], wrapped[16 + NONCE_BYTES :]
    try:
        return AESGCM(_hkdf(kek, _WRAP_INFO, salt)).decrypt(nonce, sealed, _binding(database_id, dek_id))
    except (InvalidTag, ValueError):
        raise EncryptionKeyWrongError(
            f"{what} is not the key of {where} (its data key does not unwrap): nothing was read or changed"
        ) from None


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


# ---- the codec the store calls ----------------------------------------------------------------
class Codec:
    """What a database without encryption does with its vectors: nothing.

    It still refuses a sealed blob (the database was encrypted after this process opened
    it) with one line instead of reading ciphertext as floats: the store says it of the
    database, once its listeners have erased what this process keeps in the clear.
    """

    encrypted = False
    dek_id: int | None = None

    def seal(self, plain: bytes, aad: bytes) -> bytes:
        return plain

    def open(self, blob: bytes, aad: bytes, what: str) -> bytes:
        if len(blob) % 4 and blob[:1] == bytes([SEALED_MARK]):
            raise EncryptedSinceOpenedError(
                f"{what} is encrypted (the database was encrypted after this process opened it): "
                "open it again with its key (SPEAKERDB_KEY_FILE or SPEAKERDB_KEY_COMMAND)"
            )
        return bytes(blob)

    def index_key(self, salt: bytes, dek_id: int | None = None) -> AESGCM | None:
        return None


PLAIN = Codec()


class Sealer(Codec):
    """AES-256-GCM under the data key ``dek`` (number ``dek_id``).

    ``refresh(dek_id)`` gives the data key of another number (a blob sealed after a
    ``key rotate --reencrypt`` in another process), or raises; it is asked once per number.
    """

    encrypted = True

    def __init__(self, dek_id: int, dek: bytes, refresh: Callable[[int], bytes] | None = None) -> None:
        self.dek_id: int = dek_id
        self._deks = {dek_id: dek}
        self._vector_keys = {dek_id: AESGCM(_hkdf(dek, _VECTOR_INFO))}
        self._refresh = refresh
        self._lock = threading.Lock()

    def _vector_key(self, dek_id: int, what: str) -> AESGCM:
        key = self._vector_keys.get(dek_id)
        if key is None:
            with self._lock:
                if dek_id not in self._vector_keys:
                    if self._refresh is None:
                        raise DatabaseError(
                            f"{what} is sealed under data key {dek_id}, which this database does not have"
                        )
                    dek = self._refresh(dek_id)
                    self._deks[dek_id] = dek
                    self._vector_keys[dek_id] = AESGCM(_hkdf(dek, _VECTOR_INFO))
                key = self._vector_keys[dek_id]
        return key

    def seal(self, plain: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        head = bytes([SEALED_MARK]) + self.dek_id.to_bytes(4, "little") + nonce
        return head + self._vector_keys[self.dek_id].encrypt(nonce, plain, aad)

    def open(self, blob: bytes, aad: bytes, what: str) -> bytes:
        if len(blob) < SEALED_OVERHEAD or len(blob) % 4 != 1 or blob[0] != SEALED_MARK:
            raise DatabaseError(
                f"{what} is not encrypted in an encrypted database (written behind speakerdb's back?): it is not used"
            )
        dek_id = int.from_bytes(blob[1:5], "little")
        try:
            return self._vector_key(dek_id, what).decrypt(blob[5 : 5 + NONCE_BYTES], blob[5 + NONCE_BYTES :], aad)
        except InvalidTag:
            raise DatabaseError(
                f"{what} does not authenticate under the data key (altered, or moved from another row): "
                "it is not used; restore the database from a backup"
            ) from None

    def index_key(self, salt: bytes, dek_id: int | None = None) -> AESGCM:
        """The key that seals an index file's vectors: one per file (``salt``) and data key."""
        number = self.dek_id if dek_id is None else dek_id
        self._vector_key(number, "the index file")  # fetches the data key if it is a newer one
        return AESGCM(_hkdf(self._deks[number], _INDEX_INFO, salt))

    def fingerprints(self) -> list[bytes]:
        """The data keys and the keys derived from them: what must appear in no file (tests)."""
        out: list[bytes] = []
        for dek in self._deks.values():
            out += [dek, _hkdf(dek, _VECTOR_INFO)]
        return out


def index_aad(salt: bytes, block: int, labels: bytes) -> bytes:
    """Associated data of one index block: the file's salt, the block's number and the
    labels (speaker ids) of its positions, so a block is bound to its place and its owners."""
    return b"speakerdb index|" + salt + block.to_bytes(8, "little") + hashlib.sha256(labels).digest()


def require(key: KeySource | None) -> KeySource:
    """``key``, or InvalidInputError when the command needs a key and none is named."""
    if key is None:
        raise InvalidInputError(
            "no key given: set SPEAKERDB_KEY_FILE (or SPEAKERDB_KEY_COMMAND); `speakerdb key generate FILE` makes one"
        )
    return key


# ---- galleries sealed to a recipient ------------------------------------------------------------
SEALED_GALLERY_MAGIC = b"SPEAKERDB-SEALED-GALLERY\n"
_SEALED_GALLERY_VERSION = 1
_GALLERY_INFO = b"speakerdb sealed gallery v1"


def new_key_pair() -> tuple[bytes, bytes]:
    """A new X25519 key pair for sealed galleries: (private key, public key), both PEM.

    The same files ``openssl genpkey -algorithm X25519`` and ``openssl pkey -pubout`` write."""
    private = X25519PrivateKey.generate()
    return (
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )


def _read_key_file(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise InvalidInputError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The raw X25519 public key (32 bytes) in the PEM file ``path``; InvalidInputError if it is not one."""
    try:
        key = serialization.load_pem_public_key(_read_key_file(path, "public key file"))
    except ValueError:
        key = None
    if not isinstance(key, X25519PublicKey):
        raise InvalidInputError(
            f"{path} is not an X25519 public key in PEM (make a pair with `speakerdb key pair FILE`)"
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _load_private_key(path: str | os.PathLike[str]) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read_key_file(path, "private key file"), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, X25519PrivateKey):
        raise InvalidInputError(f"{path} is not an unencrypted X25519 private key in PEM")
    return key


def _gallery_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> AESGCM:
    return AESGCM(_hkdf(shared, _GALLERY_INFO, ephemeral + recipient))


def seal_for(recipient: bytes, plain: bytes) -> bytes:
    """``plain`` sealed to the X25519 public key ``recipient`` (raw, 32 bytes): a fresh
    ephemeral key pair, X25519 with the recipient's key, HKDF-SHA256, AES-256-GCM.

    ``magic | version (1) | ephemeral public key (32) | nonce (12) | ciphertext | tag``;
    the header is the associated data."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    header = SEALED_GALLERY_MAGIC + bytes([_SEALED_GALLERY_VERSION]) + ephemeral_public
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + _gallery_key(shared, ephemeral_public, recipient).encrypt(nonce, plain, header)


def open_sealed(private_key_file: str | os.PathLike[str], sealed: bytes, what: str) -> bytes:
    """The plain bytes of a :func:`seal_for` file; InvalidInputError for a key that is not
    its recipient's, ValueError (message for the caller to prefix) for a damaged file."""
    private = _load_private_key(private_key_file)
    head = len(SEALED_GALLERY_MAGIC) + 1 + 32
    if len(sealed) < head + NONCE_BYTES + TAG_BYTES or not sealed.startswith(SEALED_GALLERY_MAGIC):
        raise ValueError("truncated, or not a sealed gallery")
    if sealed[len(SEALED_GALLERY_MAGIC)] != _SEALED_GALLERY_VERSION:
        raise ValueError(f"sealed gallery version {sealed[len(SEALED_GALLERY_MAGIC)]} is not {_SEALED_GALLERY_VERSION}")
    ephemeral_public = sealed[head - 32 : head]
    recipient = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        return _gallery_key(shared, ephemeral_public, recipient).decrypt(
            sealed[head : head + NONCE_BYTES], sealed[head + NONCE_BYTES :], sealed[:head]
        )
    except (InvalidTag, ValueError):
        raise InvalidInputError(
            f"{what} does not open with the private key {private_key_file}: it was sealed to another key, or altered"
        ) from None
