"""A throwaway PostgreSQL server for the tests and benchmarks (real, never a mock).

``start_server()`` runs ``initdb`` into a temporary directory and ``pg_ctl start`` on a free
loopback port; ``stop()`` stops it at once and removes the directory. The server binaries
refuse to run as root, so as root they run as the ``postgres`` user (``runuser``), which
Debian's ``postgresql-15`` package creates. ``find_bindir()`` looks for the binaries in
``$ORCHESTRATOR_PG_BINDIR`` (only there when it is set), ``pg_config --bindir``,
``/usr/lib/postgresql/*/bin`` and the ``PATH``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Final

import attrs

INSTALL_HINT: Final = (
    "PostgreSQL tests skipped: no PostgreSQL server binaries (initdb, pg_ctl) found; "
    "`apt-get install postgresql-15` (or set ORCHESTRATOR_PG_BINDIR) to run them"
)
REQUIRE_ENV: Final = "ORCHESTRATOR_REQUIRE_POSTGRES"


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None``."""
    if os.environ.get("ORCHESTRATOR_PG_BINDIR"):  # that one only
        candidates = [Path(os.environ["ORCHESTRATOR_PG_BINDIR"])]
        return next((d for d in candidates if (d / "initdb").is_file()), None)
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            output = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(Path(output))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.frozen
class PostgresServer:
    """A running throwaway server; ``url`` reaches its ``postgres`` database as superuser."""

    bindir: Path
    directory: Path
    port: int
    as_user: tuple[str, ...]

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop at once (no checkpoint: the data is thrown away) and remove the directory."""
        subprocess.run(
            [
                *self.as_user,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.directory / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def start_server(*, durable: bool = False, attempts: int = 3) -> PostgresServer:
    """Start a throwaway server (about half a second).

    Args:
        durable: keep fsync and synchronous commits on (benchmarks); the tests turn them off.

    Raises:
        FileNotFoundError: no server binaries (see :func:`find_bindir`).
        RuntimeError: the server did not start (its log is in the message).
    """
    bindir = find_bindir()
    if bindir is None:
        raise FileNotFoundError(INSTALL_HINT)
    directory = Path(tempfile.mkdtemp(prefix="orchestrator-pg-"))
    as_user: tuple[str, ...] = ()
    if os.geteuid() == 0:
        shutil.chown(directory, user="postgres", group="postgres")
        as_user = ("runuser", "-u", "postgres", "--")
    os.chmod(directory, 0o700)
    try:
        initdb = subprocess.run(
            [
                *as_user,
                str(bindir / "initdb"),
                "-D",
                str(directory / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr[-2000:]}")
        settings = ["-c listen_addresses=127.0.0.1", "-c max_connections=200"]
        if not durable:
            settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        for _ in range(attempts):
            port = _free_port()
            started = subprocess.run(
                [
                    *as_user,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(directory / "data"),
                    "-l",
                    str(directory / "log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {port} -k {directory} " + " ".join(settings),
                    "start",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if started.returncode == 0:
                return PostgresServer(bindir, directory, port, as_user)
        log = (
            (directory / "log").read_text(errors="replace") if (directory / "log").exists() else ""
        )
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log[-2000:]}")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def create_database(server: PostgresServer, name: str) -> str:
    """A new empty database on ``server``; returns its URL."""
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server.url_for(name)


def create_schema(server: PostgresServer, name: str) -> str:
    """A new empty schema in the server's ``postgres`` database (milliseconds, where a
    database takes a third of a second); returns a URL whose sessions use only it."""
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{name}"')
    return f"{server.url}?options=-csearch_path%3D{name}"
