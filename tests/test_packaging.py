"""Habits of the package: one version, typed, a public API that resolves, docs that hold together."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import speakerdb
from speakerdb import errors

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

# The README's test command, which .ci/run runs word for word (CI adds its checks before it).
TEST_COMMAND = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install "torch==2.13.0" '
    '-e ".[dev,resemblyzer]" && python -m pytest -q'
)


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads(PYPROJECT.read_text())


def test_the_version_is_written_once():
    project = _pyproject()
    assert "version" not in project["project"], "pyproject.toml must read the version, not state it"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "speakerdb.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+)?(\.dev\d+)?", speakerdb.__version__)
    # No other file of the package writes the version out; they import __version__.
    literal = re.compile(r"""["']""" + re.escape(speakerdb.__version__) + r"""["']""")
    writers = [
        str(p.relative_to(REPO)) for p in sorted((REPO / "speakerdb").rglob("*.py")) if literal.search(p.read_text())
    ]
    assert writers == ["speakerdb/__init__.py"]


def test_the_cli_prints_the_version():
    out = subprocess.run(
        [sys.executable, "-m", "speakerdb", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert speakerdb.__version__ in out


def test_py_typed_is_shipped(tmp_path):
    """A wheel built from the tree holds speakerdb/py.typed and the version from __version__."""
    assert (REPO / "speakerdb" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["speakerdb"]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "speakerdb", src / "speakerdb", ignore=ignore)
    shutil.copytree(REPO / "migrations", src / "migrations", ignore=ignore)
    out = tmp_path / "dist"
    out.mkdir()
    # In-process build_meta (no pip, no isolation): offline, and the tree under test is the copy.
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"
    name = (
        subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    assert name.startswith(f"speakerdb-{speakerdb.__version__}-"), name
    with zipfile.ZipFile(out / name) as wheel:
        names = set(wheel.namelist())
    assert "speakerdb/py.typed" in names
    assert "speakerdb/migrations/script.py.mako" in names
    # The web page (issue 26) ships as files in the package: no build step, nothing fetched.
    static = REPO / "speakerdb" / "service" / "static"
    shipped = {f"speakerdb/service/static/{p.relative_to(static).as_posix()}" for p in static.rglob("*") if p.is_file()}
    assert shipped <= names
    assert "speakerdb/service/static/index.html" in names and "speakerdb/service/static/views/live.js" in names


def test_every_public_name_resolves():
    assert len(set(speakerdb.__all__)) == len(speakerdb.__all__)
    for name in speakerdb.__all__:
        assert getattr(speakerdb, name) is not None, name
    assert speakerdb.SpeakerDB.__module__ == "speakerdb.api"
    # Every exception users catch is importable from the package itself.
    caught = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.SpeakerDBError)
    }
    assert caught <= set(speakerdb.__all__), caught - set(speakerdb.__all__)
    for name in caught:
        assert getattr(speakerdb, name) is getattr(errors, name)
    with pytest.raises(AttributeError):
        speakerdb.no_such_name  # noqa: B018


def test_importing_the_package_stays_light():
    code = (
        "import sys, speakerdb; heavy = {'numpy', 'sqlalchemy', 'torch', 'faiss'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_readme_is_short_and_keeps_the_test_command():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    assert TEST_COMMAND in text
    assert "\n## Python API\n" in text  # tests/test_resemblyzer.py runs its example


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    fence = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.+)", line)):
            slug = _slug(m.group(1))
            n, unique = 0, slug
            while unique in found:
                n += 1
                unique = f"{slug}-{n}"
            found.add(unique)
    return found


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_files_and_headings(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(link)
    assert not broken, f"{page.name}: {broken}"


def test_every_docs_page_is_reachable_from_the_readme():
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in _links(README)}
    assert {p.resolve() for p in DOCS} <= linked
