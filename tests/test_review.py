"""The review page component and ``imgclf review``: findings, decisions in the corrections file, images by index,
bulk actions, undo, two people at once, the API key and ``--export``; the page itself in headless Chromium."""

from __future__ import annotations

import csv
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import make_class_folder, make_image, run_cli
from test_serve import start_server

from imgclf.data.sources import load_source
from imgclf.review.data_source import DataReview, open_data_review
from imgclf.review.export import MARKER
from imgclf.review.findings import ImageIndex
from imgclf.review.items import Decision, ReviewItem
from imgclf.review.run_findings import run_findings
from imgclf.serve.review_server import create_review_source_app

KEY = "a-long-enough-test-key"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (60, 110, 250)}  # bright enough not to be "dark"


def review_data(root: Path) -> Path:
    """Three colour classes with planted problems: a broken file, a copy under another label, a copy in one class and
    a dark photo."""
    data = make_class_folder(root / "data", per_class=6, colours=COLOURS)
    make_image(data / "green" / "dark.png", (12, 20, 10))
    (data / "red" / "broken.png").write_bytes(b"not an image at all")
    shutil.copy(data / "red" / "000.png", data / "green" / "copied.png")
    shutil.copy(data / "blue" / "000.png", data / "blue" / "again.png")
    return data


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return review_data(tmp_path)


@pytest.fixture
def source(data: Path, tmp_path: Path) -> DataReview:
    return open_data_review(data, corrections=tmp_path / "corrections.csv")


@pytest.fixture
def served(source: DataReview) -> Iterator[tuple[str, DataReview]]:
    url, server, thread = start_server(create_review_source_app(source))
    yield url, source
    server.should_exit = True
    thread.join(10)


def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def test_inspect_findings_become_items_by_kind_with_the_duplicates_side_by_side(data: Path, source: DataReview) -> None:
    kinds = {(item.kind, item.key) for item in source.items()}
    assert kinds == {("broken file", "red/broken.png"), ("duplicate across labels", "red/000.png"),
                     ("duplicate across labels", "green/copied.png"), ("duplicate", "blue/000.png"),
                     ("duplicate", "blue/again.png"), ("quality: dark", "green/dark.png")}
    copied = next(item for item in source.items() if item.key.endswith("copied.png"))
    assert [source.image(e.image) for e in copied.evidence] == [data / "red" / "000.png"]
    assert "red" in copied.evidence[0].caption and copied.label == "green"
    assert [item.kind for item in source.items()][0] == "duplicate across labels"  # the costliest kind first
    dark = next(item for item in source.items() if item.kind == "quality: dark")
    assert "too dark" in dark.reason or "dark" in dark.reason and "score" in dark.reason
    assert source.counts().items == 6 and source.counts().decided == 0


def test_decisions_relabel_exclude_bulk_and_undo_go_to_the_corrections_file(served: tuple[str, DataReview]) -> None:
    url, source = served
    copied, again = (next(item.key for item in source.items() if item.key.endswith(name))
                     for name in ("copied.png", "again.png"))
    with httpx.Client(base_url=url) as http:
        listed = http.get("/v1/review/items").json()
        assert listed["actions"] == ["keep", "exclude", "relabel"] and listed["classes"] == ["blue", "green", "red"]
        assert {bulk["name"] for bulk in listed["bulk"]} == {"keep-one", "exclude-broken"}
        answer = http.post("/v1/review/decide", json={"changes": [{"key": copied, "action": "relabel", "label": "red"},
                                                                  {"key": again, "action": "exclude"}]}).json()
        assert answer["previous"] == {copied: None, again: None} and answer["counts"]["decided"] == 2
        bulk = http.post("/v1/review/bulk/keep-one").json()
        assert bulk["previous"][again]["action"] == "exclude" and bulk["counts"]["decided"] == 3
        written = rows(source.corrections)
        assert {Path(p).name if "blue" not in p else "blue/" + Path(p).name: (r["action"], r["label"])
                for p, r in written.items()} == {"copied.png": ("relabel", "red"), "blue/again.png": ("exclude", ""),
                                                 "blue/000.png": ("keep", "")}  # a label conflict is not "kept one"
        undo = [{"key": key, **({"action": d["action"], "label": d["label"]} if d else {})}
                for key, d in bulk["previous"].items()]
        http.post("/v1/review/decide", json={"changes": undo})
        assert {Path(p).name: (r["action"], r["label"]) for p, r in rows(source.corrections).items()} == {
            "copied.png": ("relabel", "red"), "again.png": ("exclude", "")}
        assert written[copied]["reason"] == "duplicate across labels" and written[copied]["time"]
        bad = [http.post("/v1/review/decide", json={"changes": [change]}) for change in (
            {"key": copied, "action": "delete"}, {"key": copied, "action": "relabel", "label": "a//b"},
            {"key": "/etc/passwd", "action": "keep"}, {"key": copied, "action": "relabel", "label": "../../etc"})]
        assert [reply.status_code for reply in bad] == [422, 422, 422, 422]
        assert "not one of keep, exclude, relabel" in bad[0].json()["error"]
        assert http.post("/v1/review/bulk/everything").status_code == 404
    reopened = open_data_review(source.index.paths[0].parent.parent, corrections=source.corrections)
    assert reopened.decisions()[copied] == Decision("relabel", "red", rows(source.corrections)[copied]["time"])


def test_images_are_served_by_index_only(served: tuple[str, DataReview]) -> None:
    url, source = served
    with httpx.Client(base_url=url) as http:
        first = http.get("/v1/review/image/0")
        assert first.status_code == 200 and first.content == source.index.paths[0].read_bytes()
        for refused in ("/v1/review/image/-1", f"/v1/review/image/{len(source.index.paths)}",
                        f"/v1/review/image/{source.index.paths[0]}", "/v1/review/image/..%2F..%2Fetc%2Fpasswd",
                        "/v1/review/image?path=/etc/passwd", f"/{source.index.paths[0]}"):
            reply = http.get(refused)
            assert reply.status_code in (404, 422), refused
            assert reply.content != source.index.paths[0].read_bytes()


def test_two_people_deciding_at_once_keep_every_decision(source: DataReview) -> None:
    keys = sorted({item.key for item in source.items()})
    app = create_review_source_app(source)
    url, server, thread = start_server(app)
    try:
        def decide(key: str, action: str) -> None:
            with httpx.Client(base_url=url) as http:
                for _ in range(5):
                    assert http.post("/v1/review/decide", json={"changes": [{"key": key, "action": action}]}
                                     ).status_code == 200

        people = [threading.Thread(target=decide, args=(key, "keep" if n % 2 else "exclude"))
                  for n, key in enumerate(keys)]
        for person in people:
            person.start()
        for person in people:
            person.join(60)
    finally:
        server.should_exit = True
        thread.join(10)
    assert {key: row["action"] for key, row in rows(source.corrections).items()} == {
        key: "keep" if n % 2 else "exclude" for n, key in enumerate(keys)}


def test_the_corrections_file_is_never_half_written(source: DataReview, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgclf import files

    keys = sorted({item.key for item in source.items()})
    source.decide({keys[0]: Decision("keep")})
    before = source.corrections.read_bytes()
    stop, seen = threading.Event(), []

    def read_while_writing() -> None:
        while not stop.is_set():
            text = source.corrections.read_text()
            seen.append(text.startswith("path,action,label,reason,time\n") and text.endswith("\n"))

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    for round_ in range(30):
        source.decide({key: Decision("exclude" if round_ % 2 else "keep") for key in keys})
    stop.set()
    reader.join(10)
    assert seen and all(seen)
    source.decide({key: None for key in keys[1:]})
    before = source.corrections.read_bytes()

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "_flush_to_disk", disk_full)
    url, server, thread = start_server(create_review_source_app(source))
    try:
        reply = httpx.post(f"{url}/v1/review/decide", json={"changes": [{"key": keys[1], "action": "exclude"}]})
    finally:
        server.should_exit = True
        thread.join(10)
    monkeypatch.undo()
    assert reply.status_code == 507 and "No space left" in reply.json()["error"]
    assert source.corrections.read_bytes() == before
    assert [p.name for p in source.corrections.parent.iterdir() if ".tmp-" in p.name] == []  # no partial file left


def test_the_api_key_guards_the_review_api_but_not_the_page(source: DataReview) -> None:
    url, server, thread = start_server(create_review_source_app(source, api_key=KEY))
    try:
        with httpx.Client(base_url=url) as http:
            assert http.get("/").status_code == 200
            for path in ("/v1/review/items", "/v1/review/image/0", "/v1/review/decisions"):
                assert http.get(path).status_code == 401, path
            assert http.post("/v1/review/decide", json={"changes": []}).status_code == 401
            assert http.get("/v1/review/items", headers={"X-API-Key": KEY}).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
    short = run_cli("review", str(source.index.paths[0].parent.parent), "--api-key", "short")
    assert short.returncode == 2 and "--api-key is too short" in short.stderr


def test_run_findings_suggest_a_label_with_the_nearest_images_of_both_classes(tiny_run: Path, colours: Path,
                                                                             tmp_path: Path) -> None:
    from conftest import copy_run

    run = copy_run(tiny_run, tmp_path)
    wrong = colours / "red" / "003.png"
    (run / "evaluation" / "label_issues.csv").write_text(
        "path,given,predicted,given_probability,predicted_probability,evidence\n"
        f"{wrong},red,green,0.1,0.85,0.75\n/elsewhere/not-in-data.png,red,blue,0.2,0.7,0.5\n")
    (run / "evaluation" / "worst_mistakes.csv").write_text(
        "path,given,predicted,given_probability,predicted_probability,evidence\n"
        f"{colours / 'blue' / '001.png'},blue,green,0.05,0.9,\n")
    source = open_data_review(colours, run=run, corrections=tmp_path / "fixes.csv")
    mistake = next(item for item in source.items() if item.kind == "worst mistake")
    assert mistake.key == "blue/001.png" and mistake.suggestions[0] == ("green", 0.9) and mistake.evidence
    issue = next(item for item in source.items() if item.kind == "likely label error")
    assert issue.key == "red/003.png" and source.image(issue.image) == wrong and issue.suggestions == (("green", 0.85), ("red", 0.1))
    assert "the model says 'green'" in issue.reason
    captions = [e.caption for e in issue.evidence]
    assert sum(c.startswith("nearest red") for c in captions) == 3 and sum(c.startswith("nearest green")
                                                                            for c in captions) == 3
    assert issue.image not in [e.image for e in issue.evidence]
    assert all(source.image(e.image).parent.name == c.split()[1].rstrip(":") for e, c in zip(issue.evidence, captions))
    assert sum(item.kind == "likely label error" for item in source.items()) == 1  # the file not in DATA is left out


def test_label_errors_say_which_split_they_question_and_warn_when_only_held_out_labels_were(
        colours: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    evaluation = tmp_path / "run" / "evaluation"
    evaluation.mkdir(parents=True)
    header = "path,given,predicted,given_probability,predicted_probability,evidence\n"
    (evaluation / "label_issues.csv").write_text(f"{header}{colours / 'red' / '003.png'},red,green,0.1,0.85,0.75\n")
    (evaluation / "worst_mistakes.csv").write_text(header)
    index = ImageIndex(load_source(colours))
    for split, warned in (("train", False), ("val", True)):  # evaluate RUN --label-issues alone checks val's labels
        (evaluation / "metrics.json").write_text(json.dumps({"split": split, "label_issues_from": "5-fold cross-validation"}))
        caplog.clear()
        [issue] = run_findings(tmp_path / "run", index, neighbours=False)
        assert issue.reason == f"the model says 'green' (from 5-fold cross-validation, {split} split)"
        assert ("--split train --label-issues --folds 5" in caplog.text) == warned, caplog.text


def test_a_run_without_evaluation_files_says_which_command_writes_them(colours: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "run").mkdir()
    assert run_findings(tmp_path / "run", ImageIndex(load_source(colours))) == []
    assert "imgclf evaluate" in caplog.text and "--label-issues" in caplog.text
    refused = run_cli("review", str(colours), "--run", str(tmp_path / "missing"), "--port", "1")
    assert refused.returncode == 2 and "--run" in refused.stderr and "does not exist" in refused.stderr


def test_export_writes_a_corrected_copy_of_links(data: Path, tmp_path: Path) -> None:
    corrections = tmp_path / "fixes.csv"
    corrections.write_text("path,action,label,reason,time\n"
                           "green/copied.png,relabel,red,duplicate across labels,\n"
                           f"{data / 'red' / 'broken.png'},exclude,,broken file,\n"  # absolute paths match too
                           "blue,rename,navy,,\n")
    out = tmp_path / "fixed"
    done = run_cli("review", str(data), "--corrections", str(corrections), "--export", str(out))
    assert done.returncode == 0, done.stderr
    assert "21 images (21 linked, 0 copied), 1 excluded" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "green", "navy", "red"]
    assert (out / "red" / "copied.png").samefile(data / "green" / "copied.png")  # a hard link, not a copy
    assert not (out / "green" / "copied.png").exists() and not (out / "red" / "broken.png").exists()
    assert len(list((out / "navy").iterdir())) == 7
    again = run_cli("review", str(data), "--corrections", str(corrections), "--export", str(out))
    assert again.returncode == 0  # an earlier export is replaced
    for target in (data / "fixed", tmp_path / "mine"):
        target.mkdir(exist_ok=True)
        (target / "keep.txt").write_text("mine")
        refused = run_cli("review", str(data), "--corrections", str(corrections), "--export", str(target))
        assert refused.returncode == 2 and "--export" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_export_never_writes_outside_its_folder(data: Path, tmp_path: Path) -> None:
    corrections = tmp_path / "fixes.csv"
    corrections.write_text("path,action,label,reason,time\nred/000.png,relabel,../../escaped,,\n")
    refused = run_cli("review", str(data), "--corrections", str(corrections), "--export", str(tmp_path / "out" / "x"))
    assert refused.returncode == 2 and "would be written outside" in refused.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out" / "x").exists()


def test_a_bad_corrections_file_is_refused_by_line(data: Path, tmp_path: Path) -> None:
    corrections = tmp_path / "fixes.csv"
    corrections.write_text("path,action,label,reason,time\nred/000.png,keep,,,\nred/001.png,delete,,,\n")
    refused = run_cli("review", str(data), "--corrections", str(corrections), "--export", str(tmp_path / "out"))
    assert refused.returncode == 2 and "fixes.csv:3: unknown action 'delete'" in refused.stderr


def test_outliers_suggest_the_class_of_their_nearest_images(data: Path) -> None:
    from imgclf.review.findings import inspect_findings

    index = ImageIndex(load_source(data))
    report = {"outliers": {"issues": [{"kind": "outlier", "path": str(data / "red" / "002.png"), "score": 2.4,
                                       "nearest_class": "green"},
                                      {"kind": "outlier", "path": str(data / "red" / "003.png"), "score": 1.7,
                                       "nearest_class": "red"}]},
              "near_duplicates": [{"kind": "within-split", "similarity": 0.97, "paths": [
                  str(data / "red" / "004.png"), str(data / "red" / "005.png")], "splits": ["", ""],
                  "labels": ["red", "red"]}]}
    found = inspect_findings(index, report)
    outliers = [item for item in found.items if item.kind == "outlier"]
    assert [item.suggestions for item in outliers] == [(("green", None),), ()]
    assert "most of its nearest images are 'green'" in outliers[0].reason and "score 2.4" in outliers[0].reason
    assert [item.kind for item in found.items if item.group] == ["near-duplicate"] * 2
    assert found.groups == [["red/004.png", "red/005.png"]]
    assert ReviewItem.to_json(outliers[0])["suggestions"] == [{"label": "green", "probability": None}]


@pytest.mark.subprocess
def test_imgclf_review_serves_the_page_on_loopback_until_ctrl_c(data: Path, tmp_path: Path) -> None:
    import signal
    import socket

    from processes import start_python, stop, wait_until

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = start_python("-m", "imgclf", "review", str(data), "--port", str(port), "--corrections",
                           str(tmp_path / "fixes.csv"), env={"IMGCLF_API_KEY": KEY})

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v1/review/items", headers={"X-API-Key": KEY}).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, process, "the review page")
    assert httpx.get(f"http://127.0.0.1:{port}/v1/review/items").status_code == 401  # the key from the environment
    code, stderr = stop(process, signal.SIGINT)
    assert code == 0, stderr
    assert f"http://127.0.0.1:{port}" in stderr and "6 images" in stderr and "fixes.csv" in stderr
    assert "warning" not in stderr  # loopback: nothing to warn about
