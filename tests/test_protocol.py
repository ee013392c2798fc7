"""One interface, two implementations: SpeakerDB and Client both are a SpeakerDBProtocol.

The signatures are compared here with ``inspect`` (names, kinds and defaults of every
parameter); the types are compared by mypy, run on a three-line file.
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from speakerdb.api import SpeakerDB
from speakerdb.protocol import LOCAL_ONLY, SpeakerDBProtocol
from speakerdb.results import NormSettings
from speakerdb.service.client import Client


def _members(cls: type) -> dict[str, Any]:
    """The public methods and properties ``cls`` defines or inherits (not object's)."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__ in ("builtins", "typing"):  # object, typing.Protocol: no part of the interface
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and (callable(value) or isinstance(value, property)):
                found[name] = value
    return found


PROTOCOL = _members(SpeakerDBProtocol)


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    """(name, kind, default) of each parameter: what a caller can rely on."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_protocol_names_the_operations_of_both():
    assert {
        "identify",
        "enroll",
        "verify",
        "timeline",
        "list",
        "show",
        "rename",
        "remove",
        "info",
        "threshold",
        "threshold_scale",
        "set_threshold",
        "export",
        "import_gallery",
        "create_key",
        "list_keys",
        "revoke_key",
        "audit",
        "close",
        "db_path",
        "created",
    } <= set(PROTOCOL)
    assert not set(PROTOCOL) & LOCAL_ONLY


@pytest.mark.parametrize("implementation", [SpeakerDB, Client], ids=["SpeakerDB", "Client"])
def test_each_operation_has_the_protocols_signature(implementation):
    wrong = []
    for name, member in PROTOCOL.items():
        if isinstance(member, property):
            continue  # compared in test_properties_are_read_the_same_way
        mine = inspect.getattr_static(implementation, name, None)
        if mine is None:
            wrong.append(f"{name}: missing")
        elif _parameters(mine) != _parameters(member):
            wrong.append(f"{name}{inspect.signature(mine)} != protocol {name}{inspect.signature(member)}")
    assert not wrong, f"{implementation.__name__} differs from SpeakerDBProtocol: {wrong}"


def test_properties_are_read_the_same_way(tmp_path):
    client = Client("http://127.0.0.1:9")
    with SpeakerDB(tmp_path / "p.sqlite") as db:
        for name, member in PROTOCOL.items():
            if not isinstance(member, property):
                continue
            for implementation in (db, client):
                # Statically: a client's property asks the service, and nothing listens here.
                found = inspect.getattr_static(implementation, name, inspect.Parameter.empty)
                assert found is not inspect.Parameter.empty, f"{type(implementation).__name__}.{name} is missing"
                assert not callable(found) or isinstance(found, property), f"{type(implementation).__name__}.{name}"


def test_the_client_has_nothing_more_and_speakerdb_only_what_is_local(tmp_path):
    """A public method of one and not the other is either in the protocol or named local-only."""
    assert set(_members(Client)) - set(PROTOCOL) == set()  # (the protocol's all there: the tests above)
    assert set(_members(SpeakerDB)) - set(PROTOCOL) <= LOCAL_ONLY
    with SpeakerDB(tmp_path / "p.sqlite") as db:  # the attributes a local database sets when it opens
        for name in LOCAL_ONLY:
            assert inspect.getattr_static(db, name, None) is not None, f"LOCAL_ONLY names {name}, which SpeakerDB lacks"


def test_a_local_only_operation_is_no_attribute_of_the_client():
    """No __getattr__ turning every missing name into a request (or an InvalidInputError)."""
    client = Client("http://127.0.0.1:9")
    assert "__getattr__" not in vars(Client)
    for name in sorted(LOCAL_ONLY):
        with pytest.raises(AttributeError):
            getattr(client, name)


def test_the_client_sends_what_the_protocol_takes(monkeypatch, tmp_path):
    """count_voices travels to the service; threshold_scale and norm_settings come from /v1/info."""
    sent: list[tuple[str, str, dict[str, Any]]] = []
    norm = NormSettings("as-norm", 100, "m@1", 24, 300, "ab" * 32)
    info = {
        "model_id": "m@1",
        "model_source": "m",
        "dim": 24,
        "threshold": 3.0,
        "n_speakers": 1,
        "n_utterances": 2,
        "schema_revision": "0003",
        "generation": 1,
        "threshold_scale": "as-norm",
        "norm": norm.to_dict(),
    }

    def request(self, method: str, path: str, **kw: Any) -> Any:
        sent.append((method, path, kw))
        return info if path == "/v1/info" else [{"file": "a.wav", "speaker": None, "score": None, "candidates": []}]

    monkeypatch.setattr(Client, "_request", request)
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF....")
    client = Client("http://127.0.0.1:9")
    client.identify([clip], count_voices=False)
    assert sent[-1][2]["fields"]["count_voices"] == "false"
    client.identify([clip])
    assert sent[-1][2]["fields"]["count_voices"] == "true"
    assert client.threshold_scale == "as-norm"
    assert client.norm_settings == norm


def test_mypy_accepts_both_as_the_protocol_and_refuses_a_local_only_call(tmp_path):
    """mypy itself: SpeakerDB and Client are SpeakerDBProtocols; client.vacuum() is a type error."""
    if shutil.which("mypy") is None and not _has_module("mypy"):
        pytest.skip("mypy is not installed")
    check = tmp_path / "check_protocol.py"
    check.write_text(
        "from speakerdb.api import SpeakerDB\n"
        "from speakerdb.protocol import SpeakerDBProtocol\n"
        "from speakerdb.service.client import Client\n\n\n"
        "def local(db: SpeakerDB) -> SpeakerDBProtocol:\n    return db\n\n\n"
        "def remote(client: Client) -> SpeakerDBProtocol:\n    return client\n\n\n"
        "def wrong(client: Client) -> None:\n    client.vacuum()\n"
    )
    # The heavy libraries are not followed: their types do not decide the interface, and
    # analysing torch would take minutes.
    heavy = ",".join(
        f"{m}.*"
        for m in (
            "torch",
            "transformers",
            "faiss",
            "fastapi",
            "starlette",
            "uvicorn",
            "sqlalchemy",
            "alembic",
            "numpy",
            "scipy",
            "onnxruntime",
            "matplotlib",
            "soundfile",
            "psycopg",
            "click",
            "huggingface_hub",
            "safetensors",
            "pydantic",
        )
    )
    config = tmp_path / "mypy.ini"
    config.write_text(
        f"[mypy]\nfollow_imports = silent\nignore_missing_imports = True\n\n[mypy-{heavy}]\nfollow_imports = skip\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            str(check),
        ],
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and '"Client" has no attribute "vacuum"' in errors[0], out.stdout + out.stderr


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
