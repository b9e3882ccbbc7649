"""The monitor's view of the prediction log: one model version's rows, oldest first, as :class:`Records`.

It reads the ``predictions`` table through SQLAlchemy Core, so a SQLite
file and a PostgreSQL URL read alike, and only the columns the monitor
needs: when, the answer's ranking and confidence, the embedding, and where
the image's copy is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import ImgclfError, one_line
from imgclf.watch.monitor import Records

ALL_VERSIONS = "all"
COLUMNS = ("created_at", "model_version", "prediction", "confidence", "top_k", "embedding", "embedding_dtype",
           "image_sha256", "image_path")


def read_records(log: str | Path, model_version: str = ALL_VERSIONS) -> Records:
    """The log's rows of ``model_version`` (every row for ``all``), oldest first.

    A missing file, a database without a ``predictions`` table or a version
    with no rows is a one-line error that says what the log holds.
    """
    import sqlalchemy as sa

    from imgclf.watch.schema import open_engine

    if "://" not in str(log) and not Path(log).is_file():
        raise ImgclfError(f"{log}: no such prediction log; give the file serve --log wrote (or a postgresql:// URL)")
    try:
        engine = open_engine(log, named="")
    except sa.exc.ArgumentError as error:
        raise ImgclfError(f"{log}: not a database URL SQLAlchemy reads ({one_line(error)})") from None
    try:
        return records_of(_rows(engine, str(log), model_version))
    except sa.exc.SQLAlchemyError as error:
        raise ImgclfError(f"{log}: cannot read its predictions table ({one_line(error)})") from None
    finally:
        engine.dispose()


def _rows(engine: Any, log: str, model_version: str) -> list[Any]:
    import sqlalchemy as sa

    table = sa.Table("predictions", sa.MetaData(), autoload_with=engine)
    missing = [name for name in COLUMNS if name not in table.c]
    if missing:
        raise ImgclfError(f"{log}: its predictions table lacks {', '.join(missing)}; is it an imgclf prediction log?")
    query = sa.select(*(table.c[name] for name in COLUMNS)).order_by(table.c.created_at)
    with engine.connect() as connection:
        rows = connection.execute(query if model_version == ALL_VERSIONS else
                                  query.where(table.c.model_version == model_version)).all()
        if not rows and model_version != ALL_VERSIONS:
            versions = connection.execute(sa.select(table.c.model_version).distinct()).scalars().all()
            raise ImgclfError(f"{log} has no predictions of model version {model_version} (it has "
                              f"{', '.join(versions) or 'none'}); pass --model-version VERSION or all")
    return list(rows)


def records_of(rows: list[Any]) -> Records:
    """The rows' columns as arrays; embeddings of one length, zero rows where a prediction has none."""
    tops = [json.loads(row.top_k) if row.top_k else [] for row in rows]
    vectors = [None if row.embedding is None else
               np.frombuffer(row.embedding, dtype=np.dtype(row.embedding_dtype or "float16").newbyteorder("<"))
               for row in rows]
    dims = {len(vector) for vector in vectors if vector is not None}
    if len(dims) > 1:
        raise ImgclfError(f"the log's embeddings have {sorted(dims)} dimensions: rows of several models; "
                          "pass --model-version to read one model's rows")
    embeddings = None
    if dims:
        embeddings = np.zeros((len(rows), dims.pop()), dtype=np.float32)
        for index, vector in enumerate(vectors):
            if vector is not None:
                embeddings[index] = vector
    return Records(times=np.array([float(row.created_at) for row in rows], dtype=np.float64),
                   predicted=[str(top[0][0]) if top else str(row.prediction) for row, top in zip(rows, tops)],
                   confidence=np.array([np.nan if row.confidence is None else float(row.confidence) for row in rows]),
                   embeddings=embeddings, has_embedding=np.array([vector is not None for vector in vectors], dtype=bool),
                   images=[row.image_path or row.image_sha256 for row in rows])
