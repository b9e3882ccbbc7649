"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl on a temporary folder and a free loopback port.

Debian's ``postgresql`` package provides the programs (``make test`` installs
it, as it installs Chromium). PostgreSQL refuses to run as root, so as root
(CI) the server runs as the ``postgres`` user the package creates. Where the
programs are missing the tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

USER = "imgclf"


def _programs() -> Path | None:
    """The folder with initdb and pg_ctl: on the PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda path: int(path.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    """``command`` as the user who may run PostgreSQL: this one, or ``postgres`` when this one is root."""
    if os.geteuid() != 0:
        return command
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{part}'" for part in command)]


@contextmanager
def postgres_server() -> Iterator[str]:
    """A running server (trust authentication, loopback only) for as long as the block runs: its base URL."""
    programs = _programs()
    if programs is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is missing under CI; `make test` installs it (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql, as root)")
    folder = Path(tempfile.mkdtemp(prefix="imgclf-pg-"))
    data, port = folder / "data", _free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    try:
        subprocess.run(_as_server_user([str(programs / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
                                        "--no-sync", "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
        subprocess.run(_as_server_user([str(programs / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"),
                                        "-w", "-t", "60", "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 "
                                        "-c fsync=off", "start"]), check=True, capture_output=True, timeout=120)
        try:
            yield f"postgresql://{USER}@127.0.0.1:{port}"
        finally:
            subprocess.run(_as_server_user([str(programs / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(server: str) -> str:
    """A new, empty database on ``server``: its URL (each test gets its own)."""
    import sqlalchemy as sa

    name = f"log_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(server.replace("postgresql://", "postgresql+psycopg://") + "/postgres",
                              isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server}/{name}"
