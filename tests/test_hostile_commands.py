"""Every command on a folder holding the whole hostile corpus: it finishes, uses every good image, and reports each
bad file exactly once with a reason. (benchmarks/hostile_corpus.py runs the same matrix through the CLI, with the
TensorFlow backend too.)"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import pytest
from conftest import TINY_FASTNET, make_class_folder
from hostile import hostile_bytes, write_hostile_corpus
from processes import run_python
from starlette.testclient import TestClient

import imgclf
from imgclf.config import make_config
from imgclf.files import PATH_BYTES
from imgclf.serve.app import create_app
from imgclf.training import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str], set[str]]:
    """Three colour classes of plain images with the hostile corpus among the red ones: (root, good, bad)."""
    root = make_class_folder(tmp_path_factory.mktemp("hostile") / "data", per_class=6)
    files = write_hostile_corpus(root / "red", colour=(220, 30, 30))
    bad = {os.path.abspath(file.path) for file in files if not file.good}
    everything = {os.path.abspath(os.path.join(folder, name)) for folder, _, names in os.walk(root) for name in names}
    return root, everything - bad, bad


@pytest.fixture(scope="module")
def run(corpus: tuple[Path, set[str], set[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, _, _ = corpus
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLF_HOME", str(tmp_path_factory.mktemp("hostile-home")))
        return train(make_config(**{**TINY_FASTNET, "data": str(root), "out": str(tmp_path_factory.mktemp("r") / "run"),
                                    "epochs": 1})).run_dir


def reported(problems: list[tuple[object, str]] | list[tuple[str, str]]) -> Counter[str]:
    """How often each file was reported, after checking every report has a one-line reason."""
    assert all(reason and "\n" not in reason for _, reason in problems), problems
    return Counter(os.path.abspath(str(path)) for path, _ in problems)


def listed(path: Path) -> list[tuple[str, str]]:
    """A ``path<TAB>reason`` problem list, read back with file names as their bytes."""
    lines = path.read_text(encoding="utf-8", errors=PATH_BYTES).splitlines()
    return [tuple(line.split("\t", 1)) for line in lines]  # type: ignore[misc]


def each_once(counts: Counter[str], bad: set[str]) -> None:
    assert set(counts) == bad, (sorted(set(counts) - bad), sorted(bad - set(counts)))
    assert max(counts.values()) == 1, [path for path, count in counts.items() if count > 1]


def split_of(run: Path) -> dict[str, str]:
    with (run / "split.csv").open(newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
        return {row["path"]: row["split"] for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_inspect_and_train_report_each_bad_file_once(corpus: tuple[Path, set[str], set[str]], run: Path,
                                                      tmp_path: Path) -> None:
    root, good, bad = corpus
    inspected = imgclf.inspect(root, out=tmp_path / "inspect")
    each_once(reported(inspected.report.broken), bad)
    each_once(reported(listed(tmp_path / "inspect" / "broken_files.txt")), bad)
    each_once(reported(listed(run / "broken_files.txt")), bad)
    assert set(split_of(run)) == good | bad  # every file kept in the split; the bad ones skipped when decoding


@pytest.mark.slow
def test_evaluate_and_predict_use_every_good_image(corpus: tuple[Path, set[str], set[str]], run: Path,
                                                   tmp_path: Path) -> None:
    root, good, bad = corpus
    evaluation = imgclf.evaluate(run, root, out=tmp_path / "evaluation")
    each_once(reported(evaluation.skipped), bad)
    assert sum(map(sum, evaluation.metrics["confusion_matrix"])) == len(good)
    rows = list(imgclf.predict(run, root))
    each_once(reported([(row.path, row.error) for row in rows if row.error]), bad)
    assert {os.path.abspath(row.path) for row in rows if not row.error} == good


@pytest.mark.subprocess
def test_predict_cli_prints_file_names_that_are_not_utf8(corpus: tuple[Path, set[str], set[str]], run: Path) -> None:
    root, good, bad = corpus
    result = run_python("-m", "imgclf", "predict", str(run), str(root), "--format", "csv", errors=PATH_BYTES,
                        timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert {row["path"] for row in rows} == good | bad  # the names' own bytes, round-tripped
    assert {row["path"] for row in rows if row["error"]} == bad


@pytest.mark.slow
def test_embed_index_and_match_report_each_bad_file_once(corpus: tuple[Path, set[str], set[str]], run: Path,
                                                         tmp_path: Path) -> None:
    root, good, bad = corpus
    embedded = imgclf.embed(run, root)
    each_once(reported([(path, error) for path, error in zip(embedded.paths, embedded.errors) if error]), bad)
    index, skipped = imgclf.build_index(run, root, tmp_path / "index")
    each_once(reported(skipped), bad)
    assert len(index.items) == len(good)
    catalog = tmp_path / "catalog.csv"
    with catalog.open("w", newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "name", "category"])
        writer.writerows([path, f"item {number}", Path(path).parent.name] for number, path in enumerate(sorted(good | bad)))
    matched = imgclf.match(catalog, image=sorted(good)[0], name="a red thing", model=run)
    each_once(reported(matched.skipped), bad)


@pytest.mark.slow
def test_export_calibration_reports_the_bad_files_it_met(corpus: tuple[Path, set[str], set[str]], run: Path,
                                                         tmp_path: Path) -> None:
    _, _, bad = corpus
    result = imgclf.export(run, "onnx", out=tmp_path / "export", quantize="int8", max_accuracy_drop=1.0)
    used = {path for path, split in split_of(run).items() if split in ("train", "val")}
    assert result.quantization is not None
    each_once(reported(result.quantization.skipped), bad & used)


@pytest.mark.slow
def test_serve_answers_every_hostile_upload_and_keeps_serving(run: Path) -> None:
    classifier = imgclf.load(run, runtime="torch")
    with TestClient(create_app(classifier, "hostile", "torch")) as client:
        for kind, (data, suffix, good) in hostile_bytes().items():
            answer = client.post("/v1/predict", files={"file": (f"{kind}{suffix}", data, "application/octet-stream")})
            assert (answer.status_code == 200) == good, (kind, answer.status_code, answer.text)
            if not good:
                assert 400 <= answer.status_code < 500 and answer.json()["error"].startswith(f"{kind}{suffix}: ")
            assert client.get("/healthz").status_code == 200
