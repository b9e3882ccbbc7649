"""The prediction log (``serve --log``, ``predict --log``) and its review queue: rows, features, failures, retention."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import make_class_folder, run_cli, untrained_bundle
from fastapi.testclient import TestClient
from PIL import Image

import imgclf
from imgclf.data.sources import read_manifest
from imgclf.deploy.metadata import bundle_content_id
from imgclf.errors import ImgclfError
from imgclf.serve.app import create_app
from imgclf.watch import queue
from imgclf.watch.log import LogOptions, parse_age
from imgclf.watch.records import read_embedding
from imgclf.watch.schema import PREDICTIONS, SCHEMA_VERSION, SCHEMA_VERSIONS, database_url, migrate, open_engine
from imgclf.watch.writer import LogWriter, Retention, delete_old

# the columns docs/guides/watching.md documents, in its table's order
DOCUMENTED = ["id", "created_at", "source", "model_version", "model_name", "request_id", "image_name", "prediction",
              "confidence", "top_k", "threshold", "unknown", "level", "image_sha256", "image_bytes", "image_width",
              "image_height", "image_format", "image_path", "embedding", "embedding_dtype", "embedding_dim",
              "novelty", "novel", "queue_reason", "review_status", "review_label", "reviewed_at"]
GUIDE = Path(__file__).parents[1] / "docs" / "guides" / "watching.md"


def encoded(colour: tuple[int, int, int], fmt: str = "PNG", size: int = 24, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


RED, BLUE = encoded((220, 30, 30)), encoded((30, 40, 220), "JPEG", size=32)


def rows_of(log: str | Path) -> list[Any]:
    """Every row of the log, in the order written."""
    engine = open_engine(log)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(PREDICTIONS).order_by(PREDICTIONS.c.id)))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_bundle(tmp_path_factory.mktemp("watch"))


class StubReference:
    """Stands for the bundle's reference statistics (the monitor's ``Reference``): novel above a bar on feature 0."""

    def __init__(self, bar: float) -> None:
        self.bar = bar

    def novelty(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = embeddings[:, 0].astype(np.float64)
        return scores, scores > self.bar


def serve_and_post(bundle: Path, options: LogOptions, bodies: list[list[bytes]], reference: Any = None
                   ) -> tuple[list[Any], str]:
    """Serve ``bundle`` with ``options`` in-process, post each request (a list of images), wait for the log:
    (the answers, the /metrics text)."""
    classifier = imgclf.load(bundle, runtime="torch")
    app = create_app(classifier, "colours", "torch", log=options, reference=reference)
    with TestClient(app) as client:
        answers = [client.post("/v1/predict", files=[("file", (f"image{i}.img", body)) for i, body in enumerate(images)])
                   for images in bodies]
        assert app.state.served.log.flush(60)
        metrics = client.get("/metrics").text
    return answers, metrics


def test_served_requests_become_rows_with_the_documented_fields(bundle: Path, tmp_path: Path) -> None:
    db, copies = tmp_path / "log" / "predictions.db", tmp_path / "copies"
    bodies = [[RED], [BLUE, RED], [RED], [BLUE]]
    answers, metrics = serve_and_post(bundle, LogOptions(db, images=copies, review_below=0.0), bodies)
    assert all(answer.status_code == 200 for answer in answers)
    rows = rows_of(db)
    assert len(rows) == 5 and list(rows[0]._fields) == DOCUMENTED
    classifier = imgclf.load(bundle, runtime="torch")
    expected = classifier.predict_pixels_with_features(np.stack([classifier._pixels(Image.open(io.BytesIO(RED)))]))
    for row, (answer, index) in zip(rows, [(a, i) for a, images in zip(answers, bodies) for i in range(len(images))]):
        served = answer.json()["predictions"][index]
        body = bodies[answers.index(answer)][index]
        assert (row.source, row.model_version, row.model_name) == ("serve", bundle_content_id(bundle), bundle.parent.name)
        assert row.request_id == answer.headers["x-request-id"] and row.image_name == served["name"]
        assert (row.prediction, row.confidence) == (served["prediction"], pytest.approx(served["confidence"], abs=1e-6))
        assert row.image_sha256 == hashlib.sha256(body).hexdigest() and row.image_bytes == len(body)
        assert (row.image_format, row.image_width) == (("PNG", 24) if body == RED else ("JPEG", 32))
        assert Path(row.image_path).read_bytes() == body
        assert row.embedding_dtype == "float16" and row.embedding_dim == expected.features.shape[1]
        assert not row.unknown and row.threshold is None and row.queue_reason is None and row.review_status is None
        if body == RED:  # the features of the forward pass that answered: the same as a pass of its own
            np.testing.assert_allclose(read_embedding(row), expected.features[0], rtol=2e-3, atol=2e-3)
    assert sorted(path.name.split(".")[1] for path in copies.glob("*/*")) == ["jpg", "png"]  # one copy per content
    assert 'imgclf_log_rows_total{outcome="written"} 5.0' in metrics
    assert 'imgclf_log_rows_total{outcome="failed"} 0.0' in metrics


def test_the_guide_documents_every_column() -> None:
    section = GUIDE.read_text().split("### The `predictions` table")[1].split("\n#")[0]
    documented = [line.split("|")[1].strip(" `") for line in section.splitlines() if line.startswith("| `")]
    assert documented == DOCUMENTED


def test_probabilities_and_features_come_from_one_forward_pass(bundle: Path) -> None:
    classifier = imgclf.load(bundle, runtime="torch", tta=True)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    outputs = classifier.predict_pixels_with_features(pixels)
    np.testing.assert_allclose(outputs.probabilities, classifier.predict_pixels(pixels), atol=1e-6)
    assert outputs.features is not None and outputs.features.shape == (3, classifier.runtime.model.num_features)
    assert len(outputs[1:]) == 2 and outputs[1:].features.shape[0] == 2  # type: ignore[union-attr]
    calls: list[int] = []
    original = classifier.runtime.logits_and_features
    classifier.runtime.logits_and_features = lambda batch: calls.append(len(batch)) or original(batch)  # type: ignore[method-assign]
    classifier.predict_pixels_with_features(pixels)
    assert calls == [3, 3]  # TTA's two views, each one pass giving both


def test_doubtful_answers_enter_the_review_queue_and_decisions_become_labels(bundle: Path, tmp_path: Path) -> None:
    novel_db, doubtful_db, copies = tmp_path / "novel.db", tmp_path / "doubtful.db", tmp_path / "copies"
    serve_and_post(bundle, LogOptions(novel_db, review_below=0.0), [[RED], [BLUE]], reference=StubReference(-1e9))
    assert [(row.queue_reason, row.novel) for row in rows_of(novel_db)] == [("novel", True)] * 2
    serve_and_post(bundle, LogOptions(doubtful_db, images=copies, review_below=1.0, audit_rate=1.0),
                   [[RED], [BLUE], [RED, BLUE]], reference=StubReference(1e9))
    assert {row.queue_reason for row in rows_of(doubtful_db)} == {"low-confidence,audit"}
    engine = queue.open_log(doubtful_db)
    items = queue.pending(engine)
    assert [item.id for item in items] == [1, 2, 3, 4] and queue.queue_size(engine) == 4
    assert queue.pending(engine, limit=2, after_id=2)[0].id == 3 and items[0].image_path is not None
    confirmed = queue.decide(engine, 1, "confirm")
    assert (confirmed.review_status, confirmed.review_label) == ("confirmed", items[0].prediction)
    queue.decide(engine, 2, "correct", "teal")  # a new class
    queue.decide(engine, 3, "skip")
    assert queue.queue_size(engine) == 1 and [item.id for item in queue.reviewed(engine)] == [1, 2]
    [window] = queue.accuracy_over_time(engine)
    assert (window.reviewed, window.correct, window.audited, window.audited_correct) == (2, 1, 2, 1)
    written = queue.export_labels(engine, tmp_path / "labels.csv")
    manifest = read_manifest(tmp_path / "labels.csv")
    assert written == 2 and sorted(manifest.classes) == sorted({items[0].prediction, "teal"})
    assert all(item.path.is_file() for item in manifest.items)
    with pytest.raises(ImgclfError, match="correct needs the right class"):
        queue.decide(engine, 4, "correct", " ")
    with pytest.raises(ImgclfError, match="prediction 99 is not in the review queue"):
        queue.decide(engine, 99, "confirm")
    engine.dispose()


def unwritable(tmp_path: Path) -> Path:
    """A log path where nothing can be written: under /proc for root (who ignores permissions), else a read-only
    folder."""
    if os.geteuid() == 0:
        return Path("/proc/imgclf-no-such/predictions.db")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "predictions.db"


def test_an_unwritable_log_keeps_serving_and_says_so_once(bundle: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="imgclf.watch"):
        answers, metrics = serve_and_post(bundle, LogOptions(unwritable(tmp_path)), [[RED], [BLUE], [RED, RED]])
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert 'imgclf_log_rows_total{outcome="failed"} 4.0' in metrics
    assert 'imgclf_log_rows_total{outcome="written"} 0.0' in metrics
    warnings = [record.message for record in caplog.records if "cannot be written" in record.message]
    assert len(warnings) == 1 and "requests go on" in warnings[0]


def stuck_writer(path: Path, release: threading.Event, counts: dict[str, int], **limits: Any) -> LogWriter:
    """A writer whose first batch waits for ``release``: once it has taken that row, the queue only fills."""
    def slow(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        release.wait(60)
        return items

    def count(outcome: str, rows: int) -> None:
        counts[outcome] = counts.get(outcome, 0) + rows

    writer = LogWriter(path, slow, batch_rows=1, flush_s=0.0, count=count, **limits)
    writer.submit(row_values())
    deadline = time.monotonic() + 30
    while writer.waiting:  # the writer has taken the first row and is stuck in prepare
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return writer


@pytest.mark.parametrize("limit", ["rows", "bytes"])
def test_a_full_queue_drops_rows_and_counts_them(tmp_path: Path, limit: str) -> None:
    release, counts = threading.Event(), {}
    limits = {"max_queue": 2} if limit == "rows" else {"size_of": lambda item: 600, "max_queue_bytes": 1300}
    writer = stuck_writer(tmp_path / "log.db", release, counts, **limits)
    for _ in range(5):
        writer.submit(row_values())
    assert counts == {"dropped": 3}  # two wait in the queue (2 rows; 1,200 of 1,300 bytes)
    release.set()
    writer.close()
    assert counts == {"written": 3, "dropped": 3} and len(rows_of(tmp_path / "log.db")) == 3


def row_values(**values: Any) -> dict[str, Any]:
    """A minimal valid ``predictions`` row."""
    return {"created_at": time.time(), "source": "serve", "model_version": "0" * 12, "model_name": "m",
            "request_id": "r", "image_name": "x.png", "prediction": "red", "top_k": "[]", "unknown": False, **values}


def test_retention_deletes_by_age_and_row_count_and_keeps_reviewed_rows(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "log.db")
    migrate(engine)
    now = 1_000_000.0
    ages = [10 * 86400, 9 * 86400, 2 * 86400, 3600, 60, 1]  # seconds old
    with engine.begin() as connection:
        connection.execute(PREDICTIONS.insert(), [row_values(created_at=now - age) for age in ages])
        connection.execute(PREDICTIONS.update().where(PREDICTIONS.c.id == 1).values(review_status="corrected"))
    with engine.begin() as connection:
        assert delete_old(connection, Retention(max_age_s=parse_age("7d")), now) == 1  # row 2; row 1 was reviewed
        assert delete_old(connection, Retention(max_rows=2), now) == 2  # rows 3, 4 (row 1 stays)
        assert [row.id for row in connection.execute(sa.select(PREDICTIONS.c.id))] == [1, 5, 6]
    engine.dispose()
    assert parse_age("12h") == 43200 and parse_age("1.5m") == 90
    with pytest.raises(ImgclfError, match="--log-keep 30 days"):
        parse_age("30 days")


def test_schema_versions_and_log_values(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "new" / "log.db")
    assert migrate(engine) == SCHEMA_VERSION and migrate(engine) == SCHEMA_VERSION  # idempotent
    with engine.begin() as connection:
        connection.execute(SCHEMA_VERSIONS.insert().values(version=SCHEMA_VERSION + 1, applied_at=0.0))
    with pytest.raises(ImgclfError, match="newer than this imgclf's"):
        migrate(engine)
    engine.dispose()
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(ImgclfError, match="--log mysql://...: not a database imgclf logs to"):
        database_url("mysql://u@h/db")


def test_predict_log_records_every_file(bundle: Path, tmp_path: Path) -> None:
    images = make_class_folder(tmp_path / "images", per_class=2)
    db = tmp_path / "predict.db"
    result = run_cli("predict", str(bundle), str(images), "--format", "csv", "--out", str(tmp_path / "p.csv"),
                     "--log", str(db), "--min-confidence", "0.9", "--runtime", "torch")
    assert result.returncode == 0, result.stderr
    rows = rows_of(db)
    assert len(rows) == 6 and {row.source for row in rows} == {"predict"} and len({row.request_id for row in rows}) == 1
    assert all(Path(row.image_name).is_file() and row.embedding_dim and row.threshold == 0.9 for row in rows)
    assert all(row.unknown == (row.prediction == "unknown") for row in rows)
    refused = run_cli("predict", str(bundle), str(images), "--log-keep", "3d")
    assert refused.returncode == 2 and "--log-keep works with --log" in refused.stderr


def test_rows_name_the_bundle_that_answered(bundle: Path, tmp_path: Path) -> None:
    from imgclf.deploy.bundle import read_bundle_info, update_bundle_info
    from imgclf.watch.log import PredictionLog
    from imgclf.watch.records import Observation

    swapped = untrained_bundle(tmp_path / "swapped")
    update_bundle_info(swapped, thresholds={"red": 0.7})  # another model.json: another version
    log = PredictionLog(LogOptions(tmp_path / "log.db"), bundle, read_bundle_info(bundle), reference=None)
    answer = dict(created_at=time.time(), source="serve", request_id="r", name="x.png", prediction="red",
                  confidence=0.9, top=[("red", 0.9)], threshold=None, unknown=False, level=None, image=RED,
                  features=None)
    log.record([Observation(**answer), Observation(**answer, bundle=swapped), Observation(**answer, bundle=bundle)])
    log.close()
    versions = [row.model_version for row in rows_of(tmp_path / "log.db")]
    assert versions == [bundle_content_id(bundle), bundle_content_id(swapped), bundle_content_id(bundle)]
    assert versions[0] != versions[1]


def test_serve_refuses_log_values_it_cannot_use_with_one_line(bundle: Path) -> None:
    refused = run_cli("serve", str(bundle), "--runtime", "torch", "--log", "mysql://h/db")
    assert refused.returncode == 2 and "--log mysql://...: not a database imgclf logs to" in refused.stderr
    refused = run_cli("serve", str(bundle), "--runtime", "torch", "--log", "x.db", "--review-below", "2")
    assert refused.returncode == 2 and "--review-below must be a probability" in refused.stderr


def test_the_log_applies_its_retention_options(bundle: Path, tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    serve_and_post(bundle, LogOptions(db, max_rows=2, keep="30d"), [[RED, BLUE, RED, BLUE, RED]])
    assert [row.id for row in rows_of(db)] == [4, 5]  # after the first batch and at the end: the newest two


def test_onnx_exports_give_the_same_features_from_their_one_run(bundle: Path, tmp_path: Path) -> None:
    import shutil

    from imgclf.deploy.export import export

    copied = Path(shutil.copytree(bundle, tmp_path / "model"))
    export(copied, "onnx")
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    by_torch = imgclf.load(copied, runtime="torch", precision="fp32").predict_pixels_with_features(pixels)
    onnx = imgclf.load(copied, runtime="onnx")
    by_onnx = onnx.predict_pixels_with_features(pixels)
    assert onnx.gives_features and by_onnx.features is not None and by_torch.features is not None
    np.testing.assert_allclose(by_onnx.features, by_torch.features, atol=1e-4)
    np.testing.assert_allclose(by_onnx.probabilities, by_torch.probabilities, atol=1e-5)


def test_a_failing_log_hook_still_answers(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclf.serve.watching

    def broken(classifier: Any) -> float:
        raise RuntimeError("a bug in the hook")

    monkeypatch.setattr(imgclf.serve.watching, "decision_threshold", broken)
    answers, metrics = serve_and_post(bundle, LogOptions(tmp_path / "log.db"), [[RED], [BLUE, RED]])
    assert [answer.status_code for answer in answers] == [200, 200]
    assert 'imgclf_log_rows_total{outcome="failed"} 3.0' in metrics
