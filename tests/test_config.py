"""One place for configuration (speakerdb/config.py): every SPEAKERDB_* variable is read
there and nowhere else, "file or server URL" is decided there for every caller, and
settings reach the code that uses them as arguments, never through ``os.environ``."""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import re
from pathlib import Path

import pytest

from conftest import FakeEmbedder, voice, write
from speakerdb import SpeakerDB, config
from speakerdb.errors import AudioError

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "speakerdb"
SOURCES = sorted([*PACKAGE.rglob("*.py"), REPO / "migrations" / "env.py"])

# The environment reads allowed outside config.py: variables that belong to other
# libraries, not speakerdb settings. Each is (file, the variable's name as the code writes it).
FOREIGN_VARIABLES = {
    # onnxruntime reads its telemetry switch once, when first imported: vad sets it off first.
    ("speakerdb/audio/vad.py", "ORT_TELEMETRY_ENV"),
}


def _environment_reads(path: Path) -> list[tuple[int, str]]:
    """(line, source) of every os.environ / os.getenv / os.putenv use and every click
    ``envvar=`` given as a literal in ``path``."""
    text = path.read_text()
    tree = ast.parse(text, str(path))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv", "putenv", "unsetenv")
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            or isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(a.name in ("environ", "getenv", "putenv") for a in node.names)
        ):
            found.append(node)
        elif (
            isinstance(node, ast.keyword)
            and node.arg in ("envvar", "auto_envvar_prefix")
            and isinstance(node.value, ast.Constant)
        ):
            found.append(node.value)
    lines = text.splitlines()
    return [(n.lineno, lines[n.lineno - 1].strip()) for n in found]


def test_no_module_but_config_reads_the_environment():
    """Every SPEAKERDB_* variable is read in config.py. The CLI's options name theirs by
    config's constants (``envvar=config.DB_ENV``): click reads those, as it always did, so
    that --help and an option's precedence over its variable stay click's."""
    wrong = []
    for path in SOURCES:
        rel = path.relative_to(REPO).as_posix()
        if rel == "speakerdb/config.py":
            continue
        for line, source in _environment_reads(path):
            if not any(rel == f and name in source for f, name in FOREIGN_VARIABLES):
                wrong.append(f"{rel}:{line}: {source}")
    assert not wrong, "environment read outside speakerdb/config.py:\n" + "\n".join(wrong)


def test_config_lists_every_speakerdb_variable_the_package_mentions():
    named = set()
    for path in SOURCES:
        named |= set(re.findall(r"\bSPEAKERDB_[A-Z_]+\b", path.read_text()))
    assert named <= set(config.VARIABLES), sorted(named - set(config.VARIABLES))
    assert all(v in (PACKAGE / "config.py").read_text().split('"""')[1] for v in config.VARIABLES), (
        "config.py's docstring describes every variable"
    )


def test_config_needs_only_the_standard_library():
    import subprocess
    import sys

    code = (
        "import sys, speakerdb.config; "
        "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'sqlalchemy', 'platformdirs', 'click', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# ---- file or server URL -------------------------------------------------------------------------
TARGETS = [
    ("speakers.sqlite", False),
    ("data/team.db", False),
    ("~/speakers.sqlite", False),
    (r"C:\data\speakers.sqlite", False),  # a Windows path: "C:" is no scheme
    ("C:/data/speakers.sqlite", False),
    ("run:2024/speakers.sqlite", False),  # a relative path holding a colon
    ("postgresql:/one-slash.sqlite", False),
    ("postgresql://speakerdb@db.internal:5432/speakers", True),
    ("postgres://u:secret@h/db", True),
    ("postgresql+psycopg://u@h/db?sslmode=require", True),
]


class _Opened(Exception):
    """Raised by a stand-in opener: which kind of database a caller decided on, and with what."""

    def __init__(self, kind: str, target: object) -> None:
        super().__init__(kind, target)
        self.kind, self.target = kind, target


def _stand_in_openers(monkeypatch) -> None:
    """Nothing is opened: the file opener and the server opener each report being called."""
    from speakerdb.storage import paths, store

    def server(url, *a, **k):
        raise _Opened("server", url)

    def file(path, *a, **k):
        raise _Opened("file", path)

    monkeypatch.setattr(store, "open_server_engine", server)
    monkeypatch.setattr(store, "open_engine", file)
    monkeypatch.setattr(store, "create_private", lambda path: None)
    monkeypatch.setattr(paths, "check_db_path", lambda path, create=True: True)


def _decision(call) -> tuple[str, object]:
    with pytest.raises(_Opened) as caught:
        call()
    return caught.value.kind, caught.value.target


def _alembic_upgrade(target: str) -> None:
    """What a developer's ``alembic -x db=TARGET upgrade head`` does: migrations/env.py decides."""
    from alembic import command
    from alembic.config import Config

    from speakerdb.storage import schema

    cfg = Config()
    cfg.set_main_option("script_location", str(schema.migrations_dir()))
    cfg.cmd_opts = argparse.Namespace(x=[f"db={target}"])
    command.upgrade(cfg, "head")


@pytest.mark.parametrize("target, server", TARGETS, ids=[t for t, _ in TARGETS])
def test_file_or_url_is_one_decision_for_every_caller(target, server, tmp_path, monkeypatch):
    from speakerdb import api
    from speakerdb.storage import store

    monkeypatch.chdir(tmp_path)
    assert config.is_server_url(target) is server
    decided = config.db_target(target)
    assert isinstance(decided, str) is server
    assert decided == target if server else decided == Path(target).expanduser().absolute()

    _stand_in_openers(monkeypatch)
    expected = "server" if server else "file"
    callers = {
        "SpeakerDB": lambda: SpeakerDB(target, embedder=FakeEmbedder()),
        "Store": lambda: store.Store(decided),
        "migrate": lambda: api.database_revision(target),
        "copy source": lambda: api.copy_database(target, tmp_path / "copy.sqlite"),
        "migrations/env.py": lambda: _alembic_upgrade(target),
    }
    for caller, call in callers.items():
        kind, opened = _decision(call)
        assert kind == expected, f"{caller} took {target!r} for a {kind}"
        assert str(opened).endswith(target if server else Path(target).expanduser().name), (caller, opened)

    # Unnamed, the database is $SPEAKERDB_DB, decided the same way.
    monkeypatch.setenv(config.DB_ENV, target)
    assert config.db_target(None) == decided
    assert _decision(lambda: SpeakerDB(embedder=FakeEmbedder()))[0] == expected
    assert _decision(lambda: api.database_revision(None))[0] == expected
    assert _decision(lambda: _alembic_upgrade(""))[0] == expected


def test_the_default_database_is_in_the_home(monkeypatch, tmp_path):
    monkeypatch.setenv(config.HOME_ENV, str(tmp_path / "h"))
    monkeypatch.delenv(config.DB_ENV, raising=False)
    assert config.db_target(None) == tmp_path / "h" / config.DB_FILENAME
    assert config.default_index_dir() == tmp_path / "h" / "index"
    assert config.default_cache_dir() == tmp_path / "h" / "cache"


# ---- the longest recording: an argument, not the environment -------------------------------------
def _speakerdb_environment() -> dict[str, str]:
    """speakerdb's own variables (vad turns onnxruntime's telemetry variable off, which is not one)."""
    return {k: v for k, v in os.environ.items() if k.startswith("SPEAKERDB_")}


@pytest.fixture
def three_seconds(tmp_path) -> Path:
    return write(tmp_path / "three.wav", voice(150.0, 3.0))


def _facade_paths(db: SpeakerDB, clip: Path, other: Path) -> dict[str, str | None]:
    """Each facade call that decodes a file: None if it took ``clip``, else the refusal."""

    def reason(call) -> str | None:
        try:
            result = call()
        except AudioError as e:
            return e.reason
        errors = [getattr(r, "error", None) for r in (result if isinstance(result, list) else [result])]
        return next((e for e in errors if e), None)

    return {
        "enroll": reason(lambda: db.enroll("clip", [clip])),
        "verify": reason(lambda: db.verify("other", clip)),
        "identify": reason(lambda: db.identify([clip], count_voices=False)),
        "identify, voices counted": reason(lambda: db.identify([clip], count_voices=True)),
        "timeline": reason(lambda: db.timeline([clip])),
    }


def test_the_facade_hands_its_limit_to_the_decoder(tmp_path, three_seconds, monkeypatch):
    monkeypatch.delenv(config.MAX_AUDIO_ENV, raising=False)
    before = _speakerdb_environment()
    other = write(tmp_path / "other.wav", voice(250.0, 2.0))
    with SpeakerDB(tmp_path / "short.sqlite", embedder=FakeEmbedder(), max_audio_s=2.5) as db:
        db.enroll("other", [other])  # 2 s: within the limit
        refused = _facade_paths(db, three_seconds, other)
    assert all(r and "more than the 2 s accepted" in r for r in refused.values()), refused
    assert _speakerdb_environment() == before

    # The argument wins over the variable, which is only the default.
    monkeypatch.setenv(config.MAX_AUDIO_ENV, "1")
    with SpeakerDB(tmp_path / "long.sqlite", embedder=FakeEmbedder(), max_audio_s=4) as db:
        db.enroll("other", [other])
        taken = _facade_paths(db, three_seconds, other)
    assert taken == dict.fromkeys(taken), taken
    with (
        SpeakerDB(tmp_path / "env.sqlite", embedder=FakeEmbedder()) as db,
        pytest.raises(AudioError, match="more than the 1 s accepted"),
    ):
        db.enroll("other", [other])


def test_a_limit_that_is_no_number_of_seconds_is_refused(tmp_path):
    from speakerdb.errors import InvalidInputError

    for bad in (0, -1, float("nan"), float("inf"), "soon"):
        with pytest.raises(InvalidInputError, match="positive number of seconds"):
            SpeakerDB(tmp_path / "x.sqlite", embedder=FakeEmbedder(), max_audio_s=bad)


@pytest.mark.parametrize(
    "command",
    [["identify", "{b}", "{a}"], ["identify", "--jsonl", "{b}"], ["timeline", "{b}"], ["enroll", "bob", "{b}"]],
)
def test_a_bad_limit_in_the_environment_is_named_and_nothing_is_done(tmp_path, monkeypatch, command):
    """SPEAKERDB_MAX_AUDIO_S=abc: one line naming the variable, before the model loads; it was
    each file's error in identify and timeline ('Error: b.wav: must be a positive number ...')."""
    from click.testing import CliRunner

    from speakerdb.cli import cli

    a, b = write(tmp_path / "a.wav", voice(210.0, 2.0)), write(tmp_path / "b.wav", voice(110.0, 2.0))
    with SpeakerDB(tmp_path / "x.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("alice", [a])
    loaded: list[str] = []
    monkeypatch.setattr("speakerdb.api.load_embedder", lambda source, **kw: loaded.append(source) or FakeEmbedder())
    monkeypatch.setenv(config.MAX_AUDIO_ENV, "abc")
    args = [arg.format(a=a, b=b) for arg in command]
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "x.sqlite"), "--model", "fake", *args])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: SPEAKERDB_MAX_AUDIO_S must be a positive number of seconds, not 'abc'"]
    assert loaded == [] and "b.wav" not in result.output
    with SpeakerDB(tmp_path / "x.sqlite", embedder=FakeEmbedder()) as db:
        assert [s.name for s in db.list()] == ["alice"]


def test_serve_hands_its_limit_to_its_workers_decoder_without_the_environment(
    tmp_path, three_seconds, tiny_checkpoint, monkeypatch
):
    from speakerdb.service.app import ServeConfig, Service

    monkeypatch.delenv(config.MAX_AUDIO_ENV, raising=False)
    before = _speakerdb_environment()
    service = Service(
        ServeConfig(
            db_path=str(tmp_path / "svc.sqlite"),
            model=str(tiny_checkpoint),
            max_audio_s=2.5,
            insecure_no_auth=True,
            tmp_dir=str(tmp_path),
        )
    )
    try:
        asyncio.run(service.start())
        assert service.ready, service.load_error
        assert _speakerdb_environment() == before
        with pytest.raises(AudioError, match="more than the 2 s accepted"):
            asyncio.run(service.embed_lane.run(lambda db: db.enroll("clip", [three_seconds])))
    finally:
        service.close()
    assert _speakerdb_environment() == before
