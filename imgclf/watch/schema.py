"""The prediction log's database: its tables, how a ``--log`` value opens one, and the migrations that build it.

One table, ``predictions``, holds a row per classified image (the fields
are documented in ``docs/guides/watching.md``); ``schema_version`` lists the
migrations applied, so a log written by an older imgclf is brought up to
date when a newer one opens it, and never written by an imgclf older than
it. The same SQLAlchemy Core tables run on SQLite (a file path: one
machine, WAL journal) and PostgreSQL (a ``postgresql://`` URL: several
serve replicas writing one log).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa  # installed with optuna; the `watch` extra pins it and adds PostgreSQL's driver

from imgclf.errors import ImgclfError

SCHEMA_VERSION = 1
SERVER_SCHEMES = ("postgresql://", "postgresql+psycopg://", "postgres://")
_ADVISORY_LOCK = 0x1A6C1F  # PostgreSQL: one process migrates at a time


def tables() -> tuple[sa.MetaData, sa.Table, sa.Table]:
    """(metadata, predictions, schema_version): the tables as SQLAlchemy Core declares them."""
    metadata = sa.MetaData()
    key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only
    predictions = sa.Table(
        "predictions", metadata,
        sa.Column("id", key, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Float, nullable=False, index=True),  # Unix time, seconds (UTC)
        sa.Column("source", sa.String(16), nullable=False),  # serve | predict
        sa.Column("model_version", sa.String(32), nullable=False),  # deploy.metadata.bundle_content_id
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False, index=True),
        sa.Column("image_name", sa.Text, nullable=False),  # the upload's file name, or predict's path
        sa.Column("prediction", sa.Text, nullable=False),  # the answer given: a class, 'unknown', 'a|b'
        sa.Column("confidence", sa.Float),  # the answer's probability (null for a multi-label answer)
        sa.Column("top_k", sa.Text, nullable=False),  # JSON [[class, probability], ...], the decided class first
        sa.Column("threshold", sa.Float),  # a binary model's threshold, or predict's --min-confidence
        sa.Column("unknown", sa.Boolean, nullable=False),  # the answer was 'unknown' (below --min-confidence)
        sa.Column("level", sa.Integer),  # a category model: the depth answered (1 = top category)
        sa.Column("image_sha256", sa.String(64)),
        sa.Column("image_bytes", sa.Integer),
        sa.Column("image_width", sa.Integer),
        sa.Column("image_height", sa.Integer),
        sa.Column("image_format", sa.String(16)),  # Pillow's name: JPEG, PNG, WEBP, ...
        sa.Column("image_path", sa.Text),  # the stored copy (--log-images), else null
        sa.Column("embedding", sa.LargeBinary),  # little-endian float16 (embedding_dtype), null without one
        sa.Column("embedding_dtype", sa.String(8)),
        sa.Column("embedding_dim", sa.Integer),
        sa.Column("novelty", sa.Float),  # novelty score against the bundle's reference, null without one
        sa.Column("novel", sa.Boolean),
        sa.Column("queue_reason", sa.String(64)),  # comma-separated: low-confidence, novel, audit; null: not queued
        sa.Column("review_status", sa.String(16)),  # pending | confirmed | corrected | skipped; null: not queued
        sa.Column("review_label", sa.Text),  # the class a reviewer confirmed or corrected to
        sa.Column("reviewed_at", sa.Float),
        sa.Index("ix_predictions_review", "review_status", "id"),
    )
    versions = sa.Table("schema_version", metadata,
                        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
                        sa.Column("applied_at", sa.Float, nullable=False))
    return metadata, predictions, versions


METADATA, PREDICTIONS, SCHEMA_VERSIONS = tables()


def _create_v1(connection: Any) -> None:
    PREDICTIONS.create(connection, checkfirst=True)


# version -> the step that brings a log from version - 1 to it; a later schema appends (never edits) a step
MIGRATIONS: dict[int, Callable[[Any], None]] = {1: _create_v1}


def database_url(log: str | Path, named: str = "--log ") -> str:
    """The SQLAlchemy URL of a ``--log`` value: a file path is SQLite, a ``postgresql://`` URL PostgreSQL.

    ``named`` starts a refusal (the option's name, or nothing for a command's argument).
    """
    text = str(log)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().absolute()}"
    if not text.startswith(SERVER_SCHEMES):
        raise ImgclfError(f"{named}{text.split('://')[0]}://...: not a database imgclf logs to; give a file path "
                          "(SQLite) or a postgresql://user@host/db URL")
    if importlib.util.find_spec("psycopg") is None:
        raise ImgclfError(f"{named}{text.split('://')[0]}://...: PostgreSQL needs its driver; "
                          "pip install 'imgclf[watch]'")
    return "postgresql+psycopg://" + text.split("://", 1)[1]


def open_engine(log: str | Path, named: str = "--log ") -> Any:
    """An SQLAlchemy engine for the log (nothing is connected yet): SQLite in WAL mode, or PostgreSQL via psycopg."""
    url = database_url(log, named)
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True, pool_size=2)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _wal(connection: Any, _: Any) -> None:  # WAL: readers never block the writer; NORMAL: a killed process loses
        cursor = connection.cursor()  # no committed row (only a power cut can lose the last commits)
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def migrate(engine: Any) -> int:
    """Bring the log's schema up to :data:`SCHEMA_VERSION` (creating it when new); the version it has now.

    A log written by a newer imgclf is refused rather than written in a
    shape this version does not know.
    """
    if engine.dialect.name == "sqlite":  # the log's folder: created here so a path in a new folder just works
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":  # two replicas starting together: one migrates, the other waits
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
        SCHEMA_VERSIONS.create(connection, checkfirst=True)
        current = connection.execute(sa.select(sa.func.max(SCHEMA_VERSIONS.c.version))).scalar() or 0
        if current > SCHEMA_VERSION:
            raise ImgclfError(f"the prediction log {engine.url.render_as_string()} has schema version {current}, newer "
                              f"than this imgclf's {SCHEMA_VERSION}; upgrade imgclf or give another --log")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](connection)
            connection.execute(SCHEMA_VERSIONS.insert().values(version=version, applied_at=time.time()))
    return SCHEMA_VERSION
