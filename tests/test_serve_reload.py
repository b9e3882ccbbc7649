"""Hot reload: a server of a model folder follows promotions and rollbacks under a client loop with no failed request,
every answer naming the version that gave it; a request in flight finishes on the old version, whose worker then
stops; ``POST /v1/reload`` behind the API key; a version that fails to load leaves the old one serving."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import start_serving, stop
from test_model_folders import version_bundle
from test_serve import LIMITS, RED, start_server

import imgclf
from imgclf.errors import ImgclfError
from imgclf.lifecycle.model_folder import VERSIONS, ModelFolder
from imgclf.serve.app import create_app
from imgclf.serve.reload import Reloader

KEY = "a-test-key-of-sixteen-or-more"


def predict(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", content=RED, headers={"content-type": "image/jpeg", **(headers or {})},
                      timeout=60)  # a hang guard on a loaded machine


def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Wait until ``condition()`` holds (a hang guard, never a measurement)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.02)


def torch_load(directory: Path) -> Any:
    return imgclf.load(directory, runtime="torch")


@contextmanager
def folder_server(folder: Path, poll_s: float, load: Callable[[Path], Any] = torch_load,
                  api_key: str | None = None) -> Iterator[str]:
    """An in-process server of the model folder ``folder``: its URL."""
    model_folder = ModelFolder.open(folder)
    version = model_folder.current().current
    app = create_app(load(folder / VERSIONS / version), folder.name, "torch", LIMITS, max_wait_ms=1, version=version,
                     reloader=Reloader(model_folder, load, poll_s=poll_s), api_key=api_key)
    url, server, thread = start_server(app)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def test_reload_under_a_client_loop_answers_every_request_and_names_its_version(tmp_path: Path) -> None:
    first, second = version_bundle(tmp_path, 1), version_bundle(tmp_path, 2)
    folder = tmp_path / "models" / "shop"
    one = imgclf.promote(first, folder).version
    answers: list[tuple[int, int, str | None]] = []  # (client, status, version that answered)
    done = threading.Event()

    def client(number: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not done.is_set():
                answer = http.post("/v1/predict", content=RED, headers={"content-type": "image/jpeg"})
                answers.append((number, answer.status_code, answer.json().get("model_version")))

    def answered_by(version: str) -> Callable[[], bool]:
        seen = len(answers)
        return lambda: any(row[2] == version for row in answers[seen:])

    with folder_server(folder, poll_s=0.05) as url, httpx.Client(base_url=url) as http:
        clients = [threading.Thread(target=client, args=(number, url)) for number in range(4)]
        for thread in clients:
            thread.start()
        try:
            eventually(answered_by(one), "answers from the first version")
            two = imgclf.promote(second, folder).version
            eventually(answered_by(two), "answers from the promoted version")
            assert http.get("/healthz").json() == {"status": "ok", "model_version": two}
            assert http.get("/v1/model").json()["model_version"] == two
            imgclf.rollback(folder)
            eventually(answered_by(one), "answers after the rollback")
            assert http.get("/healthz").json()["model_version"] == one
        finally:
            done.set()
            for thread in clients:
                thread.join(60)
    assert {status for _, status, _ in answers} == {200}
    assert {version for _, _, version in answers} == {one, two}
    for number in range(4):  # each client saw one, then two, then one again: never back and forth
        mine = [version for who, _, version in answers if who == number]
        assert sum(a != b for a, b in zip(mine, mine[1:])) <= 2, mine


def test_post_reload_needs_the_key_and_keeps_the_old_version_when_the_new_one_fails(tmp_path: Path) -> None:
    first, second, third = (version_bundle(tmp_path, tag) for tag in (1, 2, 3))
    folder = tmp_path / "models" / "shop"
    one = imgclf.promote(first, folder).version
    broken = imgclf.promote(third, tmp_path / "elsewhere").version

    def load(directory: Path) -> Any:
        if directory.name == broken:
            raise ImgclfError(f"{directory}: weights do not match")
        return torch_load(directory)

    with folder_server(folder, poll_s=3600, load=load, api_key=KEY) as url:  # only POST /v1/reload switches
        two = imgclf.promote(second, folder).version
        assert httpx.post(f"{url}/v1/reload").status_code == 401
        keyed = {"x-api-key": KEY}
        assert predict(url, keyed).json()["model_version"] == one
        switched = httpx.post(f"{url}/v1/reload", headers=keyed)
        assert switched.json() == {"model_version": two, "previous": one, "reloaded": True}
        assert httpx.post(f"{url}/v1/reload", headers={"authorization": f"Bearer {KEY}"}).json()["reloaded"] is False
        imgclf.promote(third, folder)
        failed = httpx.post(f"{url}/v1/reload", headers=keyed)
        assert failed.status_code == 500 and "weights do not match" in failed.json()["error"]
        assert f"still serving {two}" in failed.json()["error"]
        answer = predict(url, keyed)
        assert answer.status_code == 200 and answer.json()["model_version"] == two


def test_a_request_in_flight_finishes_on_the_old_version_which_then_stops(tmp_path: Path) -> None:
    first, second = version_bundle(tmp_path, 1), version_bundle(tmp_path, 2)
    folder = tmp_path / "models" / "shop"
    one = imgclf.promote(first, folder).version
    old, entered, release = torch_load(folder / VERSIONS / one), threading.Event(), threading.Event()
    original = old.predict_pixels

    def held(pixels: Any) -> Any:  # the old model is busy with a request until the test releases it
        entered.set()
        release.wait(60)
        return original(pixels)

    old.predict_pixels = held
    app = create_app(old, "shop", "torch", LIMITS, max_wait_ms=1, version=one,
                     reloader=Reloader(ModelFolder.open(folder), torch_load, poll_s=3600))
    first_model = app.state.served.model
    url, server, thread = start_server(app)
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(predict, url)
            assert entered.wait(60)
            two = imgclf.promote(second, folder).version
            assert httpx.post(f"{url}/v1/reload", timeout=60).json()["reloaded"] is True
            assert predict(url).json()["model_version"] == two  # a new request goes to the new version at once
            assert first_model.batcher.alive  # the old one waits for the request it holds
            release.set()
            answer = in_flight.result(60)
        assert answer.status_code == 200 and answer.json()["model_version"] == one
        eventually(lambda: not first_model.batcher.alive, "the old version's worker stopping")
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)


def test_a_server_of_one_bundle_names_its_version_and_has_nothing_to_reload(tmp_path: Path) -> None:
    bundle = version_bundle(tmp_path, 1)
    url, server, thread = start_server(create_app(torch_load(bundle), "shop", "torch", LIMITS, version="abc"))
    try:
        refused = httpx.post(f"{url}/v1/reload")
        assert refused.status_code == 409 and "not a model folder" in refused.json()["error"]
        assert predict(url).json()["model_version"] == "abc"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.subprocess
def test_cli_serve_of_a_model_folder_follows_its_pointer(tmp_path: Path) -> None:
    first, second = version_bundle(tmp_path, 1), version_bundle(tmp_path, 2)
    folder = tmp_path / "models" / "shop"
    one = imgclf.promote(first, folder).version
    process, url = start_serving(folder)
    try:
        assert httpx.get(f"{url}/healthz").json()["model_version"] == one
        answer = predict(url).json()
        assert answer["model"] == "shop" and answer["model_version"] == one
        two = imgclf.promote(second, folder).version
        eventually(lambda: httpx.get(f"{url}/healthz").json()["model_version"] == two, "the server following", 120)
    finally:
        _, stderr = stop(process, signal.SIGINT, timeout_s=30)
    assert f"now serving {two}" in stderr and "Traceback" not in stderr
