"""The house: each room of the package imports only the rooms below it, and nothing imports in a cycle.

Read from the source with ``ast`` (nothing is imported), so the check costs milliseconds and
also sees imports inside functions, which run later but bind the rooms together all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "speakerdb"

# Room -> the rooms it may import (besides itself). Lower rooms never import higher ones.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "config": set(),
    # Params.check() raises InvalidInputError; the cohort's checks read config.MIN_COHORT. Both standard library only.
    "results": {"errors", "config"},
    "protocol": {"results"},
    "audio": {"errors", "config"},
    "storage": {"errors", "config", "results"},
    "embedding": {"audio", "errors", "config"},
    "scoring": {"storage", "embedding", "audio", "errors", "config", "results"},
    # Voices from window vectors alone (numpy; scipy deferred): timeline and the live session use it.
    "clustering": set(),
    "timeline": {"clustering", "scoring", "storage", "embedding", "audio", "errors", "config", "results"},
    # A live session (issue 23): a room beside timeline, whose assembly and naming it reuses.
    "live": {"clustering", "timeline", "scoring", "storage", "embedding", "audio", "errors", "config", "results"},
    "api": {"live", "timeline", "scoring", "storage", "embedding", "audio", "errors", "config", "results", "protocol"},
    # Workflows built on the facade (evaluate, calibrate --apply, timeline files); the facade never imports them.
    "workflows": {
        "api",
        "timeline",
        "scoring",
        "storage",
        "embedding",
        "audio",
        "errors",
        "config",
        "results",
        "protocol",
    },
    "service.client": {"errors", "config", "results", "protocol"},
    "service": {
        "api",
        "timeline",
        "scoring",
        "storage",
        "embedding",
        "audio",
        "errors",
        "config",
        "results",
        "protocol",
        "service.client",
    },
    # "service": `speakerdb serve` starts it (cli/service.py, deferred: FastAPI is heavy).
    "cli": {"api", "workflows", "service.client", "service", "errors", "config", "results", "protocol"},
    # Compatibility paths kept for users: speakerdb.client, speakerdb.embed.
    "client": {"service.client"},
    "embed": {"embedding"},
    # The package itself: __version__ and lazily imported names only.
    "": {"api", "errors"},
    "__main__": {"cli"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _room(module: str) -> str:
    """The room a module (dotted, without ``speakerdb.``) belongs to."""
    if module.startswith("service.client"):
        return "service.client"
    return module.split(".")[0] if module else ""


def _imports(path: Path) -> list[tuple[str, int]]:
    """(speakerdb module imported, line) for every import in ``path``, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "speakerdb" or node.module.startswith("speakerdb.")):
                target = node.module.removeprefix("speakerdb").lstrip(".")
            else:
                continue
            # `from . import store` names a module: count the module, not its package.
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                found.append(
                    (
                        sub
                        if (PACKAGE / sub.replace(".", "/")).exists()
                        or (PACKAGE / (sub.replace(".", "/") + ".py")).exists()
                        else target,
                        node.lineno,
                    )
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("speakerdb."):
                    found.append((alias.name.removeprefix("speakerdb."), node.lineno))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.relative_to(PACKAGE).parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_room_imports_only_the_rooms_below_it(path):
    room = _room(_module_name(path))
    assert room in ALLOWED, f"{path}: a module outside every room ({room!r}): add the room to ALLOWED"
    # The package itself (its __version__, and speakerdb.migrations, mapped from ./migrations)
    # is open to every room: its __init__ imports nothing until a name is asked for.
    wrong = [
        f"line {line}: {target or 'speakerdb'} ({_room(target) or 'the package'})"
        for target, line in _imports(path)
        if _room(target) not in (room, "") and _room(target) not in ALLOWED[room]
    ]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({room}) imports above or beside itself: {wrong}"


def test_no_module_imports_in_a_cycle():
    graph = {_module_name(p): {t for t, _ in _imports(p)} for p in MODULES}
    graph = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    # Importing a submodule runs its package's __init__ first: those edges are not cycles.
    graph = {
        m: {t for t in targets if not m.startswith(t + ".") and not t.startswith(m + ".") or m == ""}
        for m, targets in graph.items()
    }
    graph[""] = set()  # the package's names are imported lazily (PEP 562), on first use
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if seen.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in seen:
                visit(t)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_client_and_the_cli_need_no_heavy_library_to_import():
    """The client is standard library only; the CLI's --help pays for no database or model."""
    import subprocess
    import sys

    code = (
        "import sys, speakerdb.client, speakerdb.cli; "
        "print(sorted(m for m in ('numpy', 'sqlalchemy', 'torch', 'faiss', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# Libraries whose import costs enough (time, memory, or a native runtime) to defer to the
# function that needs them, so that `speakerdb --help`, the client and light modules stay fast.
HEAVY = {
    "torch",
    "transformers",
    "faiss",
    "numpy",
    "scipy",
    "sqlalchemy",
    "alembic",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "av",
    "soundfile",
    "soxr",
    "onnxruntime",
    "silero_vad",
    "webrtcvad",
    "resemblyzer",
    "matplotlib",
    "huggingface_hub",
    "threadpoolctl",
    "platformdirs",
    "psycopg",
    "multipart",
    "websockets",  # ~80 ms: only a client that opens a live stream pays it
}
# Not heavy, but only on some systems.
PLATFORM_ONLY = {"fcntl"}
# Optional extras: imported only by the command that needs them (listen --mic).
OPTIONAL = {"sounddevice"}


def test_imports_inside_functions_only_defer_heavy_libraries_and_say_so():
    wrong = []
    for path in MODULES:
        lines = path.read_text().split("\n")
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                if isinstance(node, ast.ImportFrom) and node.level:
                    top = "speakerdb"
                else:
                    top = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name).split(".")[0]
                line, before = lines[node.lineno - 1], lines[node.lineno - 2]
                said = "#" in line or before.strip().startswith("#")
                if top not in HEAVY | PLATFORM_ONLY | OPTIONAL | {"speakerdb"} or not said:
                    wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {line.strip()}")
    assert not wrong, "imports inside functions that defer nothing heavy, or say not why: " + "; ".join(wrong)
