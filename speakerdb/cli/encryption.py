"""Encryption at rest: ``db encrypt``, and the key of an encrypted database (``key ...``).

The key-encryption key comes from ``SPEAKERDB_KEY_FILE`` or ``SPEAKERDB_KEY_COMMAND``
(or --key-file / --key-command here); see docs/security.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import click

from ..errors import InvalidInputError
from .database import db
from .output import emit, end_line, interactive, json_option

if TYPE_CHECKING:
    from ..api import KeySource
    from . import State


def _source(file: str | None, command: str | None, what: str) -> KeySource | None:
    """The key named by a file option or a command option (not both), or None."""
    from ..api import KeySource  # numpy and SQLAlchemy: loaded when the command runs

    if file and command:
        raise InvalidInputError(f"give the {what} as a file or as a command, not both")
    if file:
        return KeySource(file=file)
    if command:
        return KeySource(command=command)
    return None


def _progress(as_json: bool) -> Callable[[str, int], None] | None:
    """Rows sealed so far, one line rewritten in place on stderr (terminals only)."""
    if as_json or not interactive():
        return None

    def update(table: str, rows: int) -> None:
        click.echo(f"\rsealing {table}: {rows:,} rows", err=True, nl=False)

    return update


def _sealed_text(rows: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {table}" for table, n in rows.items())


key_file_option = click.option(
    "--key-file", type=click.Path(dir_okay=False), help="The key-encryption key's file (default: $SPEAKERDB_KEY_FILE)."
)
key_command_option = click.option(
    "--key-command", help="A command printing the key-encryption key (default: $SPEAKERDB_KEY_COMMAND)."
)


@db.command()
@key_file_option
@key_command_option
@json_option
@click.pass_obj
def encrypt(state: State, key_file: str | None, key_command: str | None, as_json: bool) -> None:
    """Encrypt the database's vectors (and its index file) under a key, in one transaction.

    A random data key seals every centroid, utterance and cohort embedding (AES-256-GCM);
    it is stored only wrapped by the key-encryption key from --key-file/--key-command, else
    SPEAKERDB_KEY_FILE / SPEAKERDB_KEY_COMMAND. From then on the database opens only with
    that key. Stop other processes using the database first. See docs/security.md.

    \b
    Examples:
      speakerdb key generate ~/.speakerdb.key
      SPEAKERDB_KEY_FILE=~/.speakerdb.key speakerdb --db team.sqlite db encrypt
      speakerdb --db team.sqlite db encrypt --key-command 'vault kv get -field=key secret/speakerdb'
    """
    state.local_only("db encrypt")
    from ..api import encrypt_database  # numpy and SQLAlchemy: loaded when the command runs

    progress = _progress(as_json)
    summary = encrypt_database(state.db_path, _source(key_file, key_command, "key"), progress=progress)
    end_line(progress)
    emit(as_json, summary.to_dict(), f"encrypted {summary.database}: sealed {_sealed_text(summary.rows)}")


@click.group()
def key() -> None:
    """The key of an encrypted database (generate, rotate), and key pairs for sealed galleries (pair).

    \b
    Examples:
      speakerdb key generate new.key
      speakerdb key rotate --new-key-file new.key
      speakerdb key rotate --reencrypt
      speakerdb key pair site-b.key
    """


@key.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing file.")
@json_option
def generate(path: str, force: bool, as_json: bool) -> None:
    """Write a new random key-encryption key (64 hex digits) to PATH, readable by you only.

    Keep it apart from the database and its backups: whoever has both has the voiceprints.

    \b
    Example:
      speakerdb key generate ~/.config/speakerdb/db.key
    """
    from ..api import new_key_file  # loaded when the command runs

    written = new_key_file(path, overwrite=force)
    emit(as_json, {"key_file": written}, f"wrote a new key to {written} (mode 0600)")


@key.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace existing files.")
@json_option
def pair(path: str, force: bool, as_json: bool) -> None:
    """Write a new X25519 key pair for sealed galleries: PATH (private, 0600) and PATH.pub.

    Give PATH.pub to whoever sends you galleries (export --to-key PATH.pub); keep PATH to
    open them (import --key PATH). openssl makes the same files:
    `openssl genpkey -algorithm X25519 -out PATH` and `openssl pkey -in PATH -pubout -out PATH.pub`.

    \b
    Example:
      speakerdb key pair ~/.config/speakerdb/site-b.key
    """
    from ..api import new_key_pair  # loaded when the command runs

    private, public = new_key_pair(path, overwrite=force)
    emit(as_json, {"private_key": private, "public_key": public}, f"wrote {private} (private, 0600) and {public}")


@key.command()
@click.option("--new-key-file", type=click.Path(dir_okay=False), help="The new key-encryption key's file.")
@click.option("--new-key-command", help="A command printing the new key-encryption key.")
@click.option("--reencrypt", is_flag=True, help="Also seal every vector again under a new data key.")
@key_file_option
@key_command_option
@json_option
@click.pass_obj
def rotate(
    state: State,
    new_key_file: str | None,
    new_key_command: str | None,
    reencrypt: bool,
    key_file: str | None,
    key_command: str | None,
    as_json: bool,
) -> None:
    """Wrap the data key under a new key-encryption key; --reencrypt also replaces the data key.

    Both keys are needed: the current one (--key-file/--key-command, else
    SPEAKERDB_KEY_FILE / SPEAKERDB_KEY_COMMAND) unwraps the data key, the new one
    (--new-key-file/--new-key-command) wraps it. One transaction; a wrong current key
    changes nothing. Running processes keep working; give them the new key when they
    restart. --reencrypt alone keeps the key-encryption key and seals every vector again
    under a new data key (and rewrites the index file).

    \b
    Examples:
      speakerdb key rotate --new-key-file new.key
      speakerdb key rotate --key-file old.key --new-key-command 'vault kv get -field=key secret/speakerdb-2'
      speakerdb key rotate --reencrypt
    """
    state.local_only("key rotate")
    from ..api import rotate_key  # numpy and SQLAlchemy: loaded when the command runs

    progress = _progress(as_json)
    summary = rotate_key(
        state.db_path,
        _source(new_key_file, new_key_command, "new key"),
        reencrypt=reencrypt,
        key=_source(key_file, key_command, "key"),
        progress=progress,
    )
    end_line(progress)
    done = []
    if summary.rewrapped:
        done.append("wrapped its data key under the new key")
    if summary.reencrypted:
        done.append(f"sealed {_sealed_text(summary.rows)} under data key {summary.dek_id}")
    emit(as_json, summary.to_dict(), f"rotated the key of {summary.database}: " + "; ".join(done))


COMMANDS = [key]
