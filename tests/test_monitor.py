"""Monitoring: the training reference, drift and novelty verdicts, ``imgclf monitor`` on a log, serve's gauges."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FASTNET, make_class_folder, make_image, run_cli, untrained_bundle

from imgclf.deploy.metadata import bundle_content_id
from imgclf.errors import ImgclfError
from imgclf.watch.monitor import Records, monitor_records, parse_window, reference_facts
from imgclf.watch.reference import Reference, build_reference, load_reference, write_reference

DIM = 16
CLASSES = ["blue", "green", "red"]  # the untrained bundle's


class World:
    """Three Gaussian clusters of embeddings standing in for three classes of photos, and a head that tells them apart."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.normal(size=(3, DIM)) * 3
        # the Bayes classifier of three unit-variance clusters: the model's linear head on these features
        self.head = (self.centres, -0.5 * (self.centres ** 2).sum(axis=1))

    def draw(self, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        labels = self.rng.integers(0, 3, n)
        direction = np.ones(DIM) / np.sqrt(DIM)
        return self.centres[labels] + self.rng.normal(size=(n, DIM)) + shift * direction, labels

    def novel(self, n: int) -> np.ndarray:
        """A new kind of thing: a cluster of its own, near none of the three."""
        return self.rng.normal(size=(n, DIM)) + self.rng.normal(size=DIM) * 3

    def reference(self, head: bool = True) -> Reference:
        train, labels = self.draw(1500)
        val, _ = self.draw(600)
        return build_reference(train, val, CLASSES, np.bincount(labels, minlength=3) / len(labels), False, "test",
                               self.head if head else None)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def reference(world: World) -> Reference:
    return world.reference()


def records_of(embeddings: np.ndarray, labels: np.ndarray, start: float = 1.8e9,
               images: list[str | None] | None = None) -> Records:
    n = len(embeddings)
    return Records(start + np.arange(n, dtype=np.float64), [CLASSES[label] for label in labels],
                   np.full(n, 0.9), embeddings.astype(np.float32), np.ones(n, dtype=bool), images or [None] * n)


def test_drift_flags_a_shifted_window_and_not_in_distribution_ones(world: World, reference: Reference) -> None:
    assert reference.drift.false_alarm_rate <= 0.05
    calm = [reference.drift_test(world.draw(300)[0], seed=seed) for seed in range(20)]
    assert sum(statistic > threshold for statistic, threshold, _, _ in calm) <= 1
    statistic, threshold, p_value, tested = reference.drift_test(world.draw(300, shift=4.0)[0])
    assert statistic > threshold and p_value < 0.01 and tested == reference.drift.test_size


def test_false_alarms_on_fresh_no_drift_windows_hold_near_the_level(world: World, reference: Reference) -> None:
    """Windows of fresh photos like val's, never seen by the reference, alarm about ALPHA of the time; a shift always."""
    verdicts = [reference.drift_test(world.draw(200)[0], seed=seed) for seed in range(40)]
    assert sum(statistic > threshold for statistic, threshold, _, _ in verdicts) <= 2  # 1% nominal: 0.4 expected
    p_values = np.array([p_value for _, _, p_value, _ in verdicts])
    assert 0.25 < np.mean(p_values < 0.5) < 0.75  # spread over (0, 1], as a valid test's are under no drift
    shifted = [reference.drift_test(world.draw(200, shift=2.5)[0], seed=seed) for seed in range(5)]
    assert all(statistic > threshold for statistic, threshold, _, _ in shifted)


def test_a_small_window_is_tested_against_its_own_permutations(world: World, reference: Reference) -> None:
    statistic, threshold, _, tested = reference.drift_test(world.draw(25)[0])
    assert tested == 25 and statistic <= threshold
    assert threshold > reference.drift_test(world.draw(200)[0])[1]  # fewer embeddings, more noise, a higher bar
    statistic, threshold, _, tested = reference.drift_test(world.draw(25, shift=8.0)[0])
    assert tested == 25 and statistic > threshold


def test_novelty_flags_a_new_cluster_and_few_in_distribution_ones(world: World, reference: Reference) -> None:
    assert reference.head is not None and reference.novelty_score.kind == "max-logit"
    known_scores, known = reference.novelty(world.draw(2000)[0])
    assert known.mean() < 0.03
    scores, novel = reference.novelty(world.novel(200))
    assert novel.mean() > 0.9 and np.median(scores) > np.quantile(known_scores, 0.99)
    far = world.rng.normal(size=(200, DIM)) * 3  # nowhere near a cluster
    assert reference.novelty(far)[1].mean() > 0.9


def test_without_a_linear_head_novelty_is_the_nearest_training_distance(world: World) -> None:
    reference = world.reference(head=False)
    assert reference.head is None and reference.novelty_score.kind == "nearest-distance"
    assert reference.novelty(world.draw(2000)[0])[1].mean() < 0.03
    scores, novel = reference.novelty(world.novel(200))
    assert novel.mean() > 0.9 and scores.min() >= 0


def test_monitor_windows_flag_the_drifted_and_novel_window(world: World, reference: Reference) -> None:
    calm, calm_labels = world.draw(600)
    drifted, drifted_labels = world.draw(300, shift=4.0)
    records = records_of(np.concatenate([calm, drifted]), np.concatenate([calm_labels, drifted_labels]))
    report = monitor_records(records, parse_window("300"), CLASSES, reference, 0.5)
    assert [window.requests for window in report.windows] == [300, 300, 300]
    assert [window.drift for window in report.windows] == [False, False, True]
    assert report.windows[0].class_p is not None and report.windows[0].low_confidence_share == 0.0
    json.loads(report.dumps())


def test_windows_by_time_and_bad_windows() -> None:
    assert parse_window("1h").size == 3600 and parse_window("1000 requests").kind == "requests"
    for bad in ("soon", "0", "-1h"):
        with pytest.raises(ImgclfError, match="--window"):
            parse_window(bad)


def test_reference_round_trip_and_damage(tmp_path: Path, world: World, reference: Reference) -> None:
    write_reference(reference, tmp_path)
    loaded = load_reference(tmp_path)
    assert loaded is not None and loaded.novelty_threshold == pytest.approx(reference.novelty_threshold)
    assert loaded.drift == reference.drift and loaded.classes == CLASSES and loaded.head is not None
    embeddings = world.draw(50)[0]
    np.testing.assert_allclose(loaded.novelty(embeddings)[0], reference.novelty(embeddings)[0], rtol=1e-5)
    (tmp_path / "reference.safetensors").write_bytes(b"not tensors")
    with pytest.raises(ImgclfError, match="reference.json: the monitoring reference cannot be read"):
        load_reference(tmp_path)
    assert load_reference(tmp_path / "elsewhere") is None


def write_format_1(directory: Path, world: World) -> float:
    """A reference as imgclf wrote it before the permutation test and the max-logit score; its novelty threshold."""
    from safetensors.numpy import save_file

    def unit(rows: np.ndarray) -> np.ndarray:
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)

    train, val = unit(world.draw(1000)[0]), unit(world.draw(400)[0])
    distances = np.sort(1 - (val.astype(np.float32) @ train.astype(np.float32).T).max(axis=1)).astype(np.float32)
    save_file({"train": train, "drift_reference": val[:200], "drift_calibration": val[200:],
               "val_distances": distances}, str(directory / "reference.safetensors"))
    threshold = float(np.quantile(distances, 0.99))
    facts = {"format": 1, "classes": CLASSES, "prior": [1 / 3] * 3, "multilabel": False, "embedding": "old",
             "novelty": {"threshold": threshold, "quantile": 0.99, "val_images": 400}, "train_sample": 1000,
             "drift": {"bandwidth": 0.5, "test_size": 66, "threshold": 1e-4, "false_alarm_rate": 0.02,
                       "null": [0.0, 1e-4], "quantile": 0.99, "null_windows": 2}}
    (directory / "reference.json").write_text(json.dumps(facts))
    return threshold


def test_a_reference_from_before_the_permutation_test_is_read_and_tested_the_new_way(tmp_path: Path,
                                                                                    world: World) -> None:
    threshold = write_format_1(tmp_path, world)
    reference = load_reference(tmp_path)
    assert reference is not None and reference.head is None and reference.novelty_threshold == threshold
    assert len(reference.drift_reference) == 400 and reference.drift.test_size == 200  # both val halves
    assert reference_facts(reference)["drift_false_alarm_rate"] is None  # measured for the old threshold: dropped
    calm = [reference.drift_test(world.draw(200)[0], seed=seed) for seed in range(10)]
    assert sum(statistic > bar for statistic, bar, _, _ in calm) <= 1
    statistic, bar, _, _ = reference.drift_test(world.draw(200, shift=4.0)[0])
    assert statistic > bar
    assert reference.novelty(world.novel(100))[1].mean() > 0.9 and reference.novelty(world.draw(500)[0])[1].mean() < 0.05


def write_log(path: Path, version: str, records: Records) -> Path:
    """A prediction log with the columns the monitor reads, as serve --log writes them."""
    # TODO log: write it through the prediction log itself once it lands
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{path}")
    table = sa.Table("predictions", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("created_at", sa.Float), sa.Column("model_version", sa.String),
                     sa.Column("prediction", sa.Text), sa.Column("confidence", sa.Float), sa.Column("top_k", sa.Text),
                     sa.Column("embedding", sa.LargeBinary), sa.Column("embedding_dtype", sa.String),
                     sa.Column("image_sha256", sa.String), sa.Column("image_path", sa.Text))
    table.metadata.create_all(engine)
    assert records.embeddings is not None
    rows = [{"created_at": float(records.times[i]), "model_version": version, "prediction": records.predicted[i],
             "confidence": 0.9, "top_k": json.dumps([[records.predicted[i], 0.9]]),
             "embedding": records.embeddings[i].astype("<f2").tobytes(), "embedding_dtype": "float16",
             "image_sha256": f"{i:064x}", "image_path": records.images[i]} for i in range(len(records))]
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    engine.dispose()
    return path


def test_monitor_command_on_a_log(tmp_path: Path, world: World, reference: Reference) -> None:
    bundle = untrained_bundle(tmp_path)
    write_reference(reference, bundle)
    calm, calm_labels = world.draw(400)
    far = world.novel(200)  # a new kind of thing, near no cluster
    images = [None] * 400 + [str(make_image(tmp_path / "images" / f"{i}.png", (200, 200, 0))) for i in range(200)]
    records = records_of(np.concatenate([calm, far]), np.concatenate([calm_labels, np.zeros(200, int)]),
                         images=images)
    log = write_log(tmp_path / "log.db", bundle_content_id(bundle), records)
    page = tmp_path / "monitor.html"
    result = run_cli("monitor", str(bundle), str(log), "--window", "200", "--json", "--out", str(page))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [window["requests"] for window in report["windows"]] == [200, 200, 200]
    assert [window["drift"] for window in report["windows"]] == [False, False, True]
    assert "novelty" in report["windows"][2]["alarms"] and report["windows"][2]["novelty_share"] > 0.5
    assert report["windows"][2]["novel_examples"][0].endswith(".png")
    text = page.read_text()
    assert text.count("data:image/png;base64") >= 4 and "Novel images" in text and "window from" in text
    shown = run_cli("monitor", str(bundle), str(log), "--window", "1h")
    assert shown.returncode == 0 and "1 window(s)" in shown.stderr and "drift threshold" in shown.stderr


def test_monitor_refuses_a_missing_log_and_another_version(tmp_path: Path, world: World) -> None:
    bundle = untrained_bundle(tmp_path)
    result = run_cli("monitor", str(bundle), str(tmp_path / "none.db"))
    assert result.returncode == 2 and "none.db: no such prediction log" in result.stderr
    log = write_log(tmp_path / "log.db", "0123456789ab", records_of(*world.draw(5)))
    result = run_cli("monitor", str(bundle), str(log))
    assert result.returncode == 2 and "has no predictions of model version" in result.stderr
    assert "0123456789ab" in result.stderr
    result = run_cli("monitor", str(bundle), "mysql://shop@db/log")
    assert result.returncode == 2 and "mysql://...: not a database imgclf logs to" in result.stderr
    result = run_cli("monitor", str(bundle), str(log), "--window", "soon")
    assert result.returncode == 2 and "--window 'soon' is not a window" in result.stderr
    result = run_cli("monitor", str(bundle), str(log), "--model-version", "all", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["reference"] is None


def test_gauges_on_metrics(tmp_path: Path, world: World, reference: Reference) -> None:
    from fastapi.testclient import TestClient

    import imgclf
    from imgclf.serve.app import create_app

    bundle = untrained_bundle(tmp_path)
    write_reference(reference, bundle)
    app = create_app(imgclf.load(bundle, runtime="torch"), "colours", "torch")
    with TestClient(app) as client:
        image = make_image(tmp_path / "one.png", (200, 30, 30)).read_bytes()
        assert client.post("/v1/predict", content=image, headers={"content-type": "image/png"}).status_code == 200
        before = client.get("/metrics").text
        assert re.search(r"imgclf_monitor_drift_mmd2 NaN", before) and "imgclf_monitor_novelty_share" in before
        live = app.state.served.model.live  # the version answering now
        calm, labels = world.draw(300)
        live.observe(np.eye(3)[labels], labels, calm)  # the features the log's forward pass hands over
        live.refresh()
        after = client.get("/metrics").text
    assert re.search(r"imgclf_monitor_window_predictions 301", after)
    assert re.search(r"imgclf_monitor_drift_alarm 0\.0", after)
    assert re.search(r"imgclf_monitor_low_confidence_share 0\.0", after)


@pytest.mark.slow
def test_training_writes_a_reference_that_flags_darker_photos(tmp_path: Path) -> None:
    import imgclf
    from imgclf.data.decode import decode_file
    from imgclf.watch.reference import features_of

    data = make_class_folder(tmp_path / "data", per_class=60)
    result = imgclf.train(data, out=tmp_path / "run", epochs=4, val_fraction=0.5, **TINY_FASTNET)
    reference = load_reference(result.run_dir)
    assert reference is not None and reference.classes == CLASSES and reference.prior.sum() == pytest.approx(1)
    assert reference.novelty_score.kind == "max-logit"  # the model's linear head is kept for the score
    fresh = make_class_folder(tmp_path / "fresh", per_class=40, seed=7)
    pixels = np.stack([decode_file(path, (16, 16)).pixels for path in sorted(fresh.rglob("*.png"))])
    features = features_of(result.model_dir)
    darker = (pixels * 0.35).astype(np.uint8)  # a new camera, a dim shop: the same things, darker
    for seed in range(3):
        statistic, threshold, _, _ = reference.drift_test(features(pixels), seed=seed)
        assert statistic <= threshold
    statistic, threshold, _, _ = reference.drift_test(features(darker))
    assert statistic > threshold
    assert reference.novelty(features(pixels))[1].mean() < 0.1
