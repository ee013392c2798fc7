"""scripts/ is one kit: each script says what it measures and which documented table it feeds,
nothing edits sys.path, and scripts and tests never import each other.

Imports are read with ``ast`` (nothing is imported); the ``--help`` of every script runs as
a process, as a user runs it.
"""

from __future__ import annotations

import ast
import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPTS = REPO / "scripts"
TESTS = REPO / "tests"
KIT = SCRIPTS / "kit.py"  # the shared module: imported by the scripts, run by none
RUNNABLE = sorted(p for p in SCRIPTS.glob("*.py") if p != KIT)
PATH_EDITS = ("sys.path." + "insert", "sys.path." + "append")  # spelled apart, so that this file does not find itself


def _imported(path: Path) -> set[str]:
    """Top-level names of the modules that ``path`` imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_nothing_edits_sys_path():
    """Scripts find kit.py as a sibling and tests find conftest.py through pytest: no hack needed."""
    offenders = [
        f"{p.relative_to(REPO)}:{n}"
        for p in [*SCRIPTS.glob("*.py"), *TESTS.glob("*.py")]
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if any(edit in line for edit in PATH_EDITS)
    ]
    assert not offenders


def test_tests_do_not_import_scripts():
    scripts = {p.stem for p in SCRIPTS.glob("*.py")}
    offenders = {p.name: sorted(_imported(p) & scripts) for p in TESTS.glob("*.py")}
    assert not {name: found for name, found in offenders.items() if found}
    assert not [
        p.name
        for p in TESTS.glob("*.py")
        if "spec_from_file_location" in p.read_text() and "scripts" in p.read_text() and p.name != Path(__file__).name
    ]


def test_scripts_do_not_import_tests():
    """The PostgreSQL server they need is run as a program (python tests/pgserver.py), not imported."""
    tests = {p.stem for p in TESTS.glob("*.py")}
    offenders = {p.name: sorted(_imported(p) & tests) for p in SCRIPTS.glob("*.py")}
    assert not {name: found for name, found in offenders.items() if found}


def test_every_script_says_what_it_measures_and_which_table_it_feeds():
    # All at once: each --help is an interpreter start and a few imports.
    runs = {
        p.name: subprocess.Popen(
            [sys.executable, str(p), "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
        )
        for p in RUNNABLE
    }
    helps = {name: (run.communicate(timeout=120)[0], run.returncode) for name, run in runs.items()}
    failed = {name: out[-500:] for name, (out, code) in helps.items() if code != 0}
    assert not failed
    # "Feeds: docs/PAGE.md, ..." or "Feeds: no table; ..." (a builder says what it builds for whom).
    silent = [name for name, (out, _) in helps.items() if "\nFeeds: " not in out]
    assert not silent
    for name, (out, _) in helps.items():
        feeds = out.split("\nFeeds: ", 1)[1].split("\n\n", 1)[0]
        for page in {w.strip("(),;\"'") for w in feeds.split() if w.strip("(),;\"'").startswith("docs/")}:
            assert (REPO / page).is_file(), f"{name} feeds {page}, which does not exist"


def test_the_scripts_random_checkpoint_is_the_tests(tiny_checkpoint, tmp_path):
    """tests/builders.py and scripts/kit.py each hold the builder (neither side imports the other): same files."""
    pytest.importorskip("torch")
    out = tmp_path / "from-script"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "make_random_checkpoint.py"), str(out), "--size", "tiny"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in tiny_checkpoint.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    _, mismatch, errors = filecmp.cmpfiles(tiny_checkpoint, out, names, shallow=False)
    assert not mismatch and not errors
