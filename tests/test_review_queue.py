"""The review queue of ``serve --log`` on the review page: confirm, correct (to a new class), skip, undo, reload, the
labels CSV ``update --add`` reads, accuracy over time, images by id only and the API key."""

from __future__ import annotations

import csv
from pathlib import Path

import httpx
import pytest
from conftest import browser_page, untrained_bundle
from test_review import KEY
from test_review_page import state
from test_serve import start_server
from test_watch import BLUE, RED, serve_and_post

import imgclf
from imgclf.data.sources import read_manifest
from imgclf.review.queue_source import QueueReview, accuracy_by_day, default_labels
from imgclf.serve.app import create_app
from imgclf.watch import queue
from imgclf.watch.log import LogOptions


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_bundle(tmp_path_factory.mktemp("queue"))


def logged(bundle: Path, folder: Path) -> LogOptions:
    """A log of four served images, all queued for review (below a confidence of 1), with their copies."""
    options = LogOptions(folder / "predictions.db", images=folder / "copies", review_below=1.0)
    serve_and_post(bundle, options, [[RED], [BLUE], [RED, BLUE]], reference=None)
    return options


def served(bundle: Path, options: LogOptions, api_key: str | None = None) -> tuple[str, object, object]:
    return start_server(create_app(imgclf.load(bundle, runtime="torch"), "colours", "torch", log=options,
                                   api_key=api_key, reference=None))


def test_the_queue_page_confirms_corrects_skips_and_undoes_in_a_browser(bundle: Path, tmp_path: Path,
                                                                        chromium: str) -> None:
    options = logged(bundle, tmp_path)
    url, server, thread = served(bundle, options)
    try:
        with browser_page(chromium) as (page, requests):
            page.goto(url + "/review")
            page.wait_for_selector("article[data-key='4']")
            assert page.locator("section.kind h2").first.inner_text() == "low-confidence (4)"
            page.locator("article[data-key='1'] button[data-action='confirm']").click()
            state(page, "1", "confirm")
            second = page.locator("article[data-key='2']")
            second.locator("select.label-choice").select_option(label="new class...")
            second.locator("input.new-label").fill("teal")
            second.locator("button[data-action='correct']").click()
            state(page, "2", "correct \u2192 teal")
            page.locator("article[data-key='3'] .reason").click()
            page.keyboard.press("3")  # skip
            state(page, "3", "skip")
            page.keyboard.press("u")
            state(page, "3", "")
            page.wait_for_selector("#accuracy .bar")
            chart = page.inner_text("#accuracy")
            page.reload()
            state(page, "2", "correct \u2192 teal")
            state(page, "1", "confirm")
            summary = page.inner_text("#summary")
    finally:
        server.should_exit = True
        thread.join(10)
    assert "measured accuracy 50%" in chart and "2 reviewed" in chart
    assert "4 to review, 2 decided, 2 left" in summary and str(default_labels(options.target)) in summary
    assert all("/v1/queue/image/" not in address or address.rsplit("/", 1)[1].isdigit() for address in requests)
    labels = read_manifest(default_labels(options.target))
    confirmed = next(item for item in queue.reviewed(options.target) if item.id == 1)
    assert sorted(item.label for item in labels.items) == sorted(["teal", confirmed.prediction])
    assert queue.queue_size(options.target) == 2  # the undone skip is pending again


def test_the_queue_api_serves_stored_copies_by_id_behind_the_api_key(bundle: Path, tmp_path: Path) -> None:
    options = logged(bundle, tmp_path)
    url, server, thread = served(bundle, options, api_key=KEY)
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}) as http:
            assert httpx.get(f"{url}/v1/queue/items").status_code == 401
            assert httpx.get(f"{url}/review").status_code == 200  # the page itself asks for the key
            listed = http.get("/v1/queue/items").json()
            assert listed["actions"] == ["confirm", "correct", "skip"] and listed["bulk"] == []
            first = listed["items"][0]
            assert first["suggestions"][0]["label"] == first["answer"] and first["kind"] == "low-confidence"
            assert http.get(f"/v1/queue/image/{first['image']}").content == RED
            assert http.get("/v1/queue/image/99").status_code == 404
            assert http.get("/v1/queue/image/..%2Fpredictions.db").status_code in (404, 422)
            refused = http.post("/v1/queue/decide", json={"changes": [{"key": "1", "action": "correct", "label": ""}]})
            assert refused.status_code == 422
            done = http.post("/v1/queue/decide", json={"changes": [{"key": "1", "action": "correct", "label": "red"}]})
            assert done.json()["previous"] == {"1": None} and done.json()["decisions"]["1"]["label"] == "red"
    finally:
        server.should_exit = True
        thread.join(10)
    with open(default_labels(options.target), newline="") as handle:
        assert [row["label"] for row in csv.DictReader(handle)] == ["red"]


def test_accuracy_is_measured_per_day_on_reviewed_items(bundle: Path, tmp_path: Path) -> None:
    options = logged(bundle, tmp_path)
    for number, action in ((1, "confirm"), (2, "correct"), (3, "skip")):
        queue.decide(options.target, number, action, "teal" if action == "correct" else None)
    [today] = accuracy_by_day(options.target)
    assert (today["reviewed"], today["correct"], today["accuracy"], today["audited"]) == (2, 1, 0.5, 0)
    assert QueueReview(options.target, lambda: ["red"], tmp_path / "l.csv").counts().accuracy == [today]
    assert default_labels("postgresql://host/db") == Path("review-labels.csv")
    assert default_labels(tmp_path / "predictions.db") == tmp_path / "predictions-labels.csv"


def test_the_queue_offers_the_classes_of_the_version_answering_after_a_reload(bundle: Path, tmp_path: Path) -> None:
    """A correction to a class the promoted version added needs no server restart."""
    import torch

    from imgclf.deploy.bundle import BundleInfo, write_bundle
    from imgclf.lifecycle.model_folder import VERSIONS, ModelFolder
    from imgclf.models import create_model
    from imgclf.serve.reload import Reloader

    torch.manual_seed(0)
    widened = write_bundle(BundleInfo("fastnet", {"widths": [8, 16, 16], "depth": 1},
                                      ["blue", "green", "red", "yellow"], 16, [0.5] * 3, [0.25] * 3),
                           create_model("fastnet", 4, image_size=16, widths=[8, 16, 16], depth=1).state_dict(),
                           tmp_path / "widened" / "model")
    folder = tmp_path / "models" / "shop"
    first = imgclf.promote(bundle, folder).version
    model_folder = ModelFolder.open(folder)
    app = create_app(imgclf.load(folder / VERSIONS / first, runtime="torch"), "shop", "torch", version=first,
                     reloader=Reloader(model_folder, lambda path: imgclf.load(path, runtime="torch"), poll_s=3600),
                     log=LogOptions(tmp_path / "predictions.db", review_below=1.0), reference=None)
    url, server, thread = start_server(app)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.get("/v1/queue/items").json()["classes"] == ["blue", "green", "red"]
            imgclf.promote(widened, folder)
            assert http.post("/v1/reload").json()["reloaded"] is True
            assert http.get("/v1/queue/items").json()["classes"] == ["blue", "green", "red", "yellow"]
    finally:
        server.should_exit = True
        thread.join(10)
