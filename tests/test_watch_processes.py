"""The prediction log where the process is the behaviour: kill -9, a full disk, two servers writing one PostgreSQL log."""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import untrained_bundle
from crashes import file_size_limit
from postgres import fresh_database, postgres_server
from processes import start_serving, stop, wait_until
from test_watch import BLUE, RED, rows_of, serve_and_post

from imgclf.watch.log import LogOptions
from imgclf.watch.schema import PREDICTIONS, migrate, open_engine

pytestmark = pytest.mark.subprocess


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_bundle(tmp_path_factory.mktemp("watch-processes"))


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server for this module's tests (skipped without one, except under CI=true)."""
    if importlib.util.find_spec("psycopg") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("psycopg is missing under CI; `make install` installs the watch extra")
        pytest.skip("psycopg is not installed (pip install 'imgclf[watch]')")
    with postgres_server() as url:
        yield url


def start_logging_server(bundle: Path, *options: str, preexec_fn: Callable[[], None] | None = None
                         ) -> tuple[subprocess.Popen[str], str]:
    """``imgclf serve BUNDLE --runtime torch OPTIONS`` (the runtime that logs embeddings), once it answers."""
    return start_serving(bundle, "--runtime", "torch", *options, preexec_fn=preexec_fn)


def post(url: str, body: bytes = RED, request_id: str | None = None) -> httpx.Response:
    headers = {"content-type": "image/png", **({"x-request-id": request_id} if request_id else {})}
    answer = httpx.post(f"{url}/v1/predict", content=body, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer


def count_rows(log: str | Path) -> int:
    engine = open_engine(log)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(PREDICTIONS)).scalar() or 0)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # not created yet (SQLite; PostgreSQL's UndefinedTable)
        return 0
    finally:
        engine.dispose()


def test_the_log_survives_kill_9_losing_at_most_the_last_batch(bundle: Path, tmp_path: Path) -> None:
    db = tmp_path / "predictions.db"
    process, url = start_logging_server(bundle, "--log", str(db))
    try:
        for index in range(10):
            post(url, request_id=f"first-{index}")
        wait_until(lambda: count_rows(db) == 10, process, "the first ten rows committed", timeout_s=60)
        for index in range(10):
            post(url, request_id=f"second-{index}")
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    with sqlite3.connect(db) as connection:  # the killed writer's WAL is replayed; nothing is torn
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = rows_of(db)
    assert 10 <= len(rows) <= 20
    assert [row.request_id for row in rows] == [f"first-{i}" for i in range(10)] + [f"second-{i}"
                                                                                   for i in range(len(rows) - 10)]
    engine = open_engine(db)  # and the log takes new rows
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(PREDICTIONS.insert().values(**{**rows[0]._asdict(), "id": None}))
    engine.dispose()
    assert len(rows_of(db)) == len(rows) + 1


def test_a_full_disk_keeps_serving_and_reports_on_metrics(bundle: Path, tmp_path: Path) -> None:
    db = tmp_path / "predictions.db"
    migrate(open_engine(db))  # the log exists; the server may not grow any file past 8 KiB (RLIMIT_FSIZE)
    process, url = start_logging_server(bundle, "--log", str(db), preexec_fn=file_size_limit(8192))
    try:
        for _ in range(3):
            post(url)

        def failed() -> bool:
            return 'imgclf_log_rows_total{outcome="failed"} 3.0' in httpx.get(f"{url}/metrics").text

        wait_until(failed, process, "the failed rows counted on /metrics", timeout_s=60)
        post(url, BLUE)  # still serving
    finally:
        _, stderr = stop(process, signal.SIGINT, timeout_s=60)
    assert stderr.count("cannot be written") == 1 and "Traceback" not in stderr
    assert count_rows(db) == 0


def test_postgresql_log_rows_match_sqlite_ones(bundle: Path, postgres: str) -> None:
    database = fresh_database(postgres)
    serve_and_post(bundle, LogOptions(database, review_below=1.0), [[RED], [BLUE, RED]])
    rows = rows_of(database)
    assert len(rows) == 3 and {row.queue_reason for row in rows} == {"low-confidence"}
    assert all(row.embedding_dim and row.image_sha256 for row in rows)


def test_two_servers_write_one_postgresql_log(bundle: Path, postgres: str) -> None:
    database = fresh_database(postgres)
    servers = [start_logging_server(bundle, "--log", database) for _ in range(2)]
    try:
        for index in range(12):
            process, url = servers[index % 2]
            post(url, RED if index % 3 else BLUE, request_id=f"server{index % 2}-{index}")
        wait_until(lambda: count_rows(database) == 12, servers[0][0], "both servers' rows in the log", timeout_s=60)
    finally:
        for process, _ in servers:
            stop(process, signal.SIGINT, timeout_s=60)
    rows = rows_of(database)
    assert sorted(row.request_id for row in rows) == sorted(f"server{i % 2}-{i}" for i in range(12))
    assert len({row.id for row in rows}) == 12
