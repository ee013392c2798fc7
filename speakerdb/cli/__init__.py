"""The ``speakerdb`` command: parse, call :mod:`speakerdb.api` (or, with --server, the
service's client), print, map errors to exit codes.

Exit codes: 0 success, 1 a failed operation (bad audio, unknown speaker, model that cannot
be loaded...), 2 bad usage (unknown option, value out of range).

The commands are grouped by what users do: :mod:`.speakers`, :mod:`.analysis`,
:mod:`.database` and :mod:`.service`; what they print and how errors end them is in
:mod:`.output`, what their arguments accept in :mod:`.params`. Nothing heavy (numpy,
SQLAlchemy, torch) is imported until a command runs, so ``speakerdb --help`` is quick.
"""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING, Any, cast

import click

from .. import __version__
from ..config import DB_ENV, GALLERY_ENV, MODEL_ENV, PRECISION_ENV, SERVER_ENV, api_key, db_target
from ..errors import InvalidInputError, SpeakerDBError
from ..service.client import Client
from . import analysis, database, encryption, live, models, service, speakers
from .output import Group, log_warnings_to_stderr

if TYPE_CHECKING:
    from ..api import SpeakerDB
    from ..protocol import SpeakerDBProtocol

__all__ = ["State", "cli", "main"]

DEFAULT_MODEL_HELP = "microsoft/wavlm-base-plus-sv"

# Python's cyclic garbage collector, for a one-shot command. Importing torch and transformers
# and loading a model leaves ~380k long-lived objects, and Python's default full collection
# (every 10 young ones, once the long-lived set grew by a quarter) walks them all: 7 times
# (0.67 s) in `speakerdb identify` of a 10 s file, plus ~0.7 s more at exit, when the
# interpreter collects what the OS is about to free anyway (2-core AMD EPYC, Python 3.11).
# Young collections keep their defaults, so short-lived cycles (an exception holding a
# decoded recording) are still freed at once; full ones wait this many young ones.
ONE_SHOT_FULL_GC_EVERY = 1000  # generation-1 collections (Python's default: 10)
_gc_thresholds_before: tuple[int, int, int] | None = None  # what main() replaced, for serve


class State:
    """What the global options set up; the database (or the service's client, with --server)
    is opened on first use.

    Only commands that write speakers (enroll, import, norm --cohort, keys create, serve) call
    :meth:`allow_create`; every other command refuses a database that does not exist, so a
    mistyped --db is an error instead of a new empty database.
    """

    def __init__(
        self,
        db: str | None,
        model: str | None,
        device: str,
        precision: str = "fp32",
        server: str | None = None,
        gallery: str | None = None,
    ) -> None:
        self.db_path, self.model, self.device, self.precision = db, model, device, precision
        self.server, self.gallery = server, gallery
        self.db_given = False  # --db on the command line (not SPEAKERDB_DB): see :attr:`db`
        self.create = False
        self._db: SpeakerDBProtocol | None = None
        self._gc_before = _gc_thresholds_before  # main()'s, read when the command starts

    def allow_create(self) -> None:
        """Let this command create the database if it does not exist."""
        self.create = True

    @property
    def db(self) -> SpeakerDBProtocol:
        """The database, or with --server the service's client: the same calls either way."""
        if self._db is None and self.server and self.db_given:
            # Either answer would be about a database the user did not mean: the service
            # would take a `--db backup.sqlite remove bob` that SPEAKERDB_SERVER was exported for.
            raise click.UsageError(
                f"--db and --server {self.server} (or SPEAKERDB_SERVER) name two databases: "
                "give one (unset SPEAKERDB_SERVER to use the file)"
            )
        if self._db is None and self.server:
            self._db = Client(self.server, api_key(), gallery=self.gallery)
        if self._db is None:
            from ..api import SpeakerDB  # numpy and SQLAlchemy: not for --help

            self._db = SpeakerDB(
                self.db_path,
                model=self.model,
                device=self.device,
                precision=self.precision,
                create=self.create,
                gallery=self.gallery,
            )
        return self._db

    def exists(self) -> bool:
        """Whether there is a database to ask (a service, a server URL, or an existing file)."""
        if self._db is not None or self.server:
            return True
        target = db_target(self.db_path)
        return isinstance(target, str) or os.path.exists(target)

    def local_only(self, command: str) -> None:
        """One error line (exit 1) for a command that works on a local database only
        (what it needs is outside the protocol: protocol.LOCAL_ONLY)."""
        if self.server:
            raise InvalidInputError(f"{command} is not available through --server {self.server}: run it on the server")

    @property
    def local_db(self) -> SpeakerDB:
        """The local database, for a command that :meth:`local_only` let through."""
        if self.server:
            raise InvalidInputError(f"not available through --server {self.server}: run it on the server")
        return cast("SpeakerDB", self.db)

    def local_options(self) -> dict[str, Any]:
        """The database and model options, for library calls that open the database themselves."""
        return {
            "db": self.db_path,
            "model": self.model,
            "device": self.device,
            "precision": self.precision,
            "gallery": self.gallery,
        }

    def keep_collecting(self) -> None:
        """Give Python's own garbage collection back (main() made it rare): for a long-running service."""
        if self._gc_before is not None:
            gc.set_threshold(*self._gc_before)

    def release(self) -> None:
        """Close the database and forget it (serve hands it to its workers)."""
        self.close()
        self._db = None

    def discard_if_unused(self) -> None:
        """Delete the database if this command created it and stored nothing in it."""
        if self._db is not None and self._db.created:
            try:
                self._db.discard_if_unused()
            except SpeakerDBError:  # the database itself is what failed: nothing more to tidy
                pass

    def close(self) -> None:
        """Close the database, if it was opened."""
        if self._db is not None:
            self._db.close()


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="speakerdb")
@click.option(
    "--db",
    envvar=DB_ENV,
    type=click.Path(dir_okay=False),
    metavar="FILE_OR_URL",
    help="SQLite database file, or PostgreSQL server URL postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME "
    "(docs/postgresql.md) [env SPEAKERDB_DB; default: speakerdb.sqlite in $SPEAKERDB_HOME "
    "or the platform's app-data directory]. The FAISS index is kept beside a file as DB.faiss. "
    "Messages show a URL as typed, its password as ***.",
)
@click.option(
    "--model",
    envvar=MODEL_ENV,
    metavar="ID_OR_DIR",
    help=f"Embedding model: a Hugging Face hub id, a local save_pretrained() directory, or "
    f"'resemblyzer' for the pretrained GE2E encoder (extra: .[resemblyzer]) "
    f"[env SPEAKERDB_MODEL; default: the database's own model, else {DEFAULT_MODEL_HELP}].",
)
@click.option(
    "--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Where the model runs."
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    envvar=PRECISION_ENV,
    show_default=True,
    help="fp32: the model card's embeddings (within ~4e-7 per component). bf16: about 2.7x as fast on CPUs "
    "with bf16 matrix units (AMX), embeddings within ~1e-3 per component [env SPEAKERDB_PRECISION].",
)
@click.option(
    "--server",
    envvar=SERVER_ENV,
    metavar="URL",
    help="Send the commands to a `speakerdb serve` service at URL instead of opening a database; "
    "the API key is read from $SPEAKERDB_API_KEY [env SPEAKERDB_SERVER].",
)
@click.option(
    "--gallery",
    envvar=GALLERY_ENV,
    metavar="NAME",
    help="The gallery (a separate set of speakers, thresholds, normalisation, keys and audit in the same "
    "database: a tenant) to work in; `speakerdb galleries` makes them [env SPEAKERDB_GALLERY; default: "
    "default, the one every database has]. Not to be confused with gallery files (export, import).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    db: str | None,
    model: str | None,
    device: str,
    precision: str,
    server: str | None = None,
    gallery: str | None = None,
) -> None:
    """speakerdb: enroll speakers from recordings, then identify or verify unknown voices.

    Voices are embedded with a WavLM x-vector model, stored in SQLite and searched
    with a FAISS index.

    \b
    Examples:
      speakerdb enroll alice alice1.flac alice2.flac
      speakerdb identify unknown.mp3
      speakerdb verify alice claim.wav
      speakerdb --db team.sqlite --model ./wavlm-base-plus-sv list
      speakerdb --gallery acme enroll alice alice1.flac
    """
    log_warnings_to_stderr()
    state = State(db, model, device, precision, server, gallery)
    state.db_given = ctx.get_parameter_source("db") == click.core.ParameterSource.COMMANDLINE
    ctx.obj = state
    ctx.call_on_close(state.close)


for _command in (
    *speakers.COMMANDS,
    *analysis.COMMANDS,
    *live.COMMANDS,
    *database.COMMANDS,
    *models.COMMANDS,
    *encryption.COMMANDS,
    *service.COMMANDS,
):
    cli.add_command(_command)


# ---- global options also after the command ------------------------------------------------
_GLOBAL_ATTRS = {"db": "db_path", "model": "model", "device": "device", "precision": "precision", "gallery": "gallery"}


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """An option given after the command overrides the same option given before it."""
    if value is not None:
        state = ctx.find_object(State)
        if state is not None and param.name is not None:
            setattr(state, _GLOBAL_ATTRS[param.name], value)
            if param.name == "db":
                state.db_given = True
    return value


def _global_options() -> list[click.Option]:
    """--db, --model, --device, --precision and --gallery as each command accepts them (no defaults here:
    the group's options and environment variables give those)."""
    common: dict[str, Any] = {"expose_value": False, "callback": _set_global}
    return [
        click.Option(
            ["--db"],
            type=click.Path(dir_okay=False),
            metavar="FILE_OR_URL",
            help="SQLite database file or postgresql:// URL (same as before the command).",
            **common,
        ),
        click.Option(["--model"], metavar="ID_OR_DIR", help="Embedding model (same as before the command).", **common),
        click.Option(["--device"], type=click.Choice(["cpu", "cuda"]), help="Where the model runs.", **common),
        click.Option(["--precision"], type=click.Choice(["fp32", "bf16"]), help="fp32 or bf16 embeddings.", **common),
        click.Option(
            ["--gallery"], metavar="NAME", help="The gallery to work in (same as before the command).", **common
        ),
    ]


def _accept_global_options(group: click.Group) -> None:
    """`speakerdb identify --model resemblyzer x.mp3` works like `speakerdb --model resemblyzer identify x.mp3`."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_global_options(command)
            continue
        taken = {opt for p in command.params for opt in p.opts}
        command.params.extend(o for o in _global_options() if not taken & set(o.opts))


_accept_global_options(cli)


def main() -> None:
    """Console-script entry point: one command in its own process."""
    global _gc_thresholds_before
    _gc_thresholds_before = gc.get_threshold()
    young, middle, full = _gc_thresholds_before
    gc.set_threshold(young, middle, max(full, ONE_SHOT_FULL_GC_EVERY))
    try:
        cli(prog_name="speakerdb")
    except SystemExit as e:
        if e.code not in (0, None):
            # An error's traceback holds frames in cycles; freezing them keeps native objects
            # alive to the end, which their bindings (nanobind's) then report as leaks on stderr.
            gc.collect()
        raise
    finally:
        # The command is done and its database closed (call_on_close): the process ends here,
        # so the interpreter need not walk every object to free it.
        gc.freeze()
