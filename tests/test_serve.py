"""``imgclf serve``: every endpoint, every bad input (answered with the right 4xx, server still healthy), the page."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import browser_page, make_image, run_cli
from PIL import Image
from processes import start_serving, stop

import imgclf
from imgclf.serve.app import create_app
from imgclf.serve.batcher import DynamicBatcher
from imgclf.serve.uploads import Limits

LIMITS = Limits(max_bytes=200_000, max_pixels=1_000_000, max_files=3, timeout_s=10.0)


@pytest.fixture(scope="module")
def run(tiny_run: Path) -> Path:
    """The shared tiny run: serving only reads it."""
    return tiny_run


def start_server(app: object) -> tuple[str, uvicorn.Server, threading.Thread]:
    """Serve ``app`` on a free loopback port in a background thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


@pytest.fixture(scope="module")
def client(run: Path) -> Iterator[httpx.Client]:
    classifier = imgclf.load(run, runtime="torch")
    url, server, thread = start_server(create_app(classifier, "colours", "torch", LIMITS, max_wait_ms=1))
    with httpx.Client(base_url=url, timeout=30) as http:
        yield http
    server.should_exit = True
    thread.join(10)


def encoded(colour: tuple[int, int, int], fmt: str = "JPEG", size: int = 48) -> bytes:
    rng = np.random.default_rng(1)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


RED, BLUE = encoded((220, 30, 30)), encoded((30, 40, 220), "PNG")


def test_predict_multipart_files_in_order_with_top_k(client: httpx.Client) -> None:
    files = [("file", ("red.jpg", RED, "image/jpeg")), ("file", ("blue.png", BLUE, "image/png"))]
    answer = client.post("/v1/predict", files=files, params={"top_k": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "colours" and body["runtime"] == "torch"
    assert [(row["name"], row["prediction"]) for row in body["predictions"]] == [("red.jpg", "red"), ("blue.png", "blue")]
    top = body["predictions"][0]["top_k"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
    assert body["predictions"][0]["confidence"] == top[0]["probability"]


def test_predict_raw_body(client: httpx.Client) -> None:
    answer = client.post("/v1/predict", content=BLUE, headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    prediction = answer.json()["predictions"][0]
    assert prediction["prediction"] == "blue" and len(prediction["top_k"]) == 3  # top_k 5 capped at 3 classes
    assert abs(sum(item["probability"] for item in prediction["top_k"]) - 1) < 1e-5


def test_explain_answers_a_heat_map_png_of_one_image(client: httpx.Client) -> None:
    answer = client.post("/v1/explain", files=[("file", ("red.jpg", RED, "image/jpeg"))])
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    heat = np.asarray(Image.open(io.BytesIO(answer.content)))
    assert heat.shape == (16, 16, 3)  # the model's input size
    two = client.post("/v1/explain", files=[("file", ("a.jpg", RED, "image/jpeg")), ("file", ("b.png", BLUE, "image/png"))])
    assert two.status_code == 400 and "exactly one image" in two.json()["error"]


def test_model_health_metrics_docs_and_page(client: httpx.Client) -> None:
    model = client.get("/v1/model").json()
    assert model["classes"] == ["blue", "green", "red"] and model["image_size"] == 16
    assert model["architecture"] == "fastnet" and model["version"] == imgclf.__version__
    assert model["limits"]["max_files"] == 3 and "val_accuracy" in model["metrics"]
    assert client.get("/healthz").json() == {"status": "ok", "model_version": None}  # create_app given no version
    client.post("/v1/predict", content=RED, headers={"content-type": "image/jpeg"})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert re.search(r'imgclf_requests_total\{route="/v1/predict",status="200"\} [1-9]', metrics.text)
    assert 'imgclf_request_duration_seconds_bucket{le="0.005",route="/v1/predict"}' in metrics.text
    assert re.search(r"imgclf_images_total [1-9]", metrics.text)
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    docs = client.get("/docs").text
    assert "swagger-ui-bundle.js" in docs and "cdn" not in docs  # served locally: works offline
    page = client.get("/").text
    assert 'id="file"' in page and "http://" not in page and "https://" not in page


def big_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")  # compresses to a few KB: a decompression bomb in small
    return buffer.getvalue()


def too_long() -> Iterator[bytes]:
    for _ in range(30):  # 300 KB sent chunked, with no Content-Length to refuse it by
        yield b"x" * 10_000


BAD_REQUESTS = {
    "empty body": (dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "empty file"),
    "not an image": (dict(content=b"hello, world", headers={"content-type": "image/png"}), 400, "not an image"),
    "truncated JPEG": (dict(content=RED[:len(RED) * 2 // 3], headers={"content-type": "image/jpeg"}), 400,
                       "cannot decode image"),
    "huge dimensions": (dict(content=big_png(2000, 1000), headers={"content-type": "image/png"}), 413,
                        "2000x1000 = 2,000,000 pixels, over the limit"),
    "wrong content type": (dict(content=b"{}", headers={"content-type": "application/json"}), 415,
                           "Content-Type 'application/json' is not accepted"),
    "wrong part type": (dict(files={"file": ("a.txt", b"text", "text/plain")}), 415, "a.txt: Content-Type 'text/plain'"),
    "too many files": (dict(files=[("file", (f"{n}.jpg", RED, "image/jpeg")) for n in range(4)]), 413,
                       "4 files in one request; at most 3"),
    "no file parts": (dict(data={"note": "no image"}, files={}), 400, "no file parts"),
    "too many bytes": (dict(content=b"x" * 300_000, headers={"content-type": "image/png"}), 413, "over 200,000 bytes"),
    "too many bytes, chunked": (dict(content=too_long(), headers={"content-type": "image/png"}), 413, "over 200,000 bytes"),
    "bad top_k": (dict(content=RED, headers={"content-type": "image/jpeg"}, params={"top_k": 0}), 422, "top_k"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(client: httpx.Client, case: str) -> None:
    request, status, message = BAD_REQUESTS[case]
    if case == "no file parts":  # httpx sends multipart only when files are given; build the body by hand
        boundary = "imgclf-test"
        body = f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nno image\r\n--{boundary}--\r\n'
        request = dict(content=body.encode(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    answer = client.post("/v1/predict", **request)  # type: ignore[arg-type]
    assert answer.status_code == status, answer.text
    assert answer.json()["status"] == status and message in answer.json()["error"]
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/predict", content=RED, headers={"content-type": "image/jpeg"}).status_code == 200


def test_concurrent_clients_are_all_answered(client: httpx.Client) -> None:
    def post(index: int) -> str:
        body, kind = (RED, "image/jpeg") if index % 2 else (BLUE, "image/png")
        answer = client.post("/v1/predict", content=body, headers={"content-type": kind})
        return answer.json()["predictions"][0]["prediction"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, range(16))) == ["blue", "red"] * 8


def test_unknown_routes_and_methods_answer_json(client: httpx.Client) -> None:
    assert client.get("/nothing").json() == {"error": "Not Found", "status": 404}
    assert client.get("/v1/predict").status_code == 405 and client.get("/v1/predict").json()["status"] == 405


def test_concurrent_requests_share_model_calls() -> None:
    calls: list[int] = []

    def predict(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return pixels.reshape(len(pixels), -1)[:, :2].astype(np.float32)

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher(predict, max_batch=8, max_wait_s=0.05)
        batcher.start()
        images = [np.full((n, 1, 1, 2), n, dtype=np.uint8) for n in (1, 2, 3)]
        results = await asyncio.gather(*(batcher.submit(image) for image in images))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert calls == [6]  # three requests, one model call
    assert [result[:, 0].tolist() for result in results] == [[1], [2, 2], [3, 3, 3]]  # each got its own rows


def test_slow_models_and_slow_uploads_time_out_and_the_server_recovers(run: Path) -> None:
    classifier = imgclf.load(run, runtime="torch")
    stuck, first_call = threading.Event(), iter([True])

    def slow(pixels: np.ndarray) -> np.ndarray:
        if next(first_call, False):
            assert stuck.wait(timeout=60), "the test never released the stuck model call"
        return classifier.predict_pixels(pixels)

    stand_in = SimpleNamespace(info=classifier.info, classes=classifier.classes, tta=False, predict_pixels=slow,
                               ranking=classifier.ranking)
    url, server, thread = start_server(create_app(stand_in, "slow", "torch", Limits(timeout_s=1.0)))
    with httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post("/v1/predict", content=RED, headers={"content-type": "image/jpeg"})
        assert answer.status_code == 503 and "no answer within 1 s" in answer.json()["error"]
        stuck.set()  # the stuck model call finishes; the next request is answered
        assert http.post("/v1/predict", content=RED, headers={"content-type": "image/jpeg"}).status_code == 200
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as stalled:  # promises 1,000 bytes, sends 10
        stalled.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
                        b"Content-Length: 1000\r\n\r\n" + RED[:10])
        reply = b""
        while not reply.endswith(b"}"):  # headers and body may come in separate segments
            chunk = stalled.recv(4096)
            if not chunk:
                break
            reply += chunk
    reply_text = reply.decode()
    assert reply_text.startswith("HTTP/1.1 408") and "did not finish within 1 s" in reply_text
    server.should_exit = True
    thread.join(10)


def test_web_page_classifies_an_uploaded_image_in_a_browser(client: httpx.Client, chromium: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a red thing.png", (220, 30, 30), size=64)
    base = str(client.base_url).rstrip("/")
    with browser_page(chromium) as (page, requests):
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('about').textContent.includes('3 classes')")
        # before any image: no image element is shown without a picture (a broken-image icon)
        shown_empty = page.eval_on_selector_all(
            "img", "images => images.filter(i => i.getClientRects().length && !i.naturalWidth).map(i => i.id)")
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.getElementById('prediction').textContent !== ''")
        prediction = page.inner_text("#prediction")
        rows = page.eval_on_selector_all("#probabilities tr", "rows => rows.map(row => row.innerText)")
        preview = page.eval_on_selector("#preview", "image => image.complete && image.naturalWidth")
        page.click("#explain")
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0")
        heatmap = page.eval_on_selector("#heatmap", "image => !image.hidden && image.naturalWidth")
    assert prediction == "red"
    assert len(rows) == 3 and rows[0].startswith("red") and rows[0].rstrip().endswith("%")
    assert preview == 64 and heatmap == 16
    assert shown_empty == []
    assert all(url.startswith((base, "blob:")) for url in requests), requests


@pytest.mark.subprocess
def test_cli_serve_binds_loopback_and_stops_on_ctrl_c(run: Path) -> None:
    process, url = start_serving(run)
    try:
        answer = httpx.post(f"{url}/v1/predict", content=RED, headers={"content-type": "image/jpeg"})
        assert answer.json()["predictions"][0]["prediction"] == "red"
    finally:
        _, stderr = stop(process, signal.SIGINT, timeout_s=30)
    assert f"on {url}" in stderr and "Traceback" not in stderr
    refused = run_cli("serve", str(run), "--port", "70000")
    assert refused.returncode == 2 and "--port 70000 is not a TCP port" in refused.stderr
