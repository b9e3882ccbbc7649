"""Screenshots of the review page for the docs: ``imgclf review`` on a dataset, and a served model's review queue.

    python scripts/review_screenshots.py   # writes docs/img/review-data.png, review-queue.png (needs chromium)

Both are made here in a temporary folder from the bundled CIFAR-10 sample: four classes with planted problems
(a copy under another label, a copy inside a class, a broken file, a darkened photo) and a short training run for
its likely label errors; and a prediction log whose queue holds sample photos, some decided on earlier days.
Run it when the page's look changes; the PNGs are committed (one viewport each, 8-bit palette).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "examples" / "cifar10-sample"
PICTURES = ROOT / "docs" / "img"
VIEWPORT = {"width": 1100, "height": 760}
CLASSES = ("cat", "dog", "ship", "truck")


def planted(work: Path) -> Path:
    """Four sample classes, 40 photos each, with the problems the page is for."""
    from PIL import Image, ImageEnhance

    data = work / "pets-and-vehicles"
    for name in CLASSES:
        (data / name).mkdir(parents=True)
        for image in sorted((SAMPLE / "train" / name).glob("*.jpg"))[:40]:
            shutil.copy(image, data / name / image.name)
    first_cat = sorted((data / "cat").glob("*.jpg"))[0]
    shutil.copy(first_cat, data / "dog" / "copied-cat.jpg")
    shutil.copy(sorted((data / "ship").glob("*.jpg"))[1], data / "ship" / "again.jpg")
    (data / "truck" / "broken.jpg").write_bytes(b"\xff\xd8 cut off during the download")
    dark = ImageEnhance.Brightness(Image.open(sorted((data / "truck").glob("*.jpg"))[2])).enhance(0.12)
    dark.save(data / "truck" / "dark.jpg")
    return data


def serve(app: object) -> tuple[str, object]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))  # type: ignore[arg-type]
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server


def queue_log(work: Path) -> Path:
    """A prediction log whose queue holds sample test photos; a few decided on each of the three days before."""

    from imgclf.watch import queue
    from imgclf.watch.schema import PREDICTIONS

    db = work / "predictions.db"
    engine = queue.open_log(db)
    now = time.time()
    photos = [(name, image) for name in CLASSES for image in sorted((SAMPLE / "test" / name).glob("*.jpg"))[:5]]
    with engine.begin() as connection:
        for number, (name, image) in enumerate(photos):
            guess = name if number % 3 else CLASSES[(CLASSES.index(name) + 1) % len(CLASSES)]
            confidence = 0.35 + 0.03 * (number % 7)
            second = name if guess != name else CLASSES[(CLASSES.index(name) + 2) % len(CLASSES)]
            top = [[guess, confidence], [second, round((1 - confidence) / 2, 2)]]
            connection.execute(PREDICTIONS.insert().values(
                created_at=now - 86400 * (3 - number % 4), source="serve", model_version="3f9c2a71d0b4",
                model_name="pets", request_id=f"r{number}", image_name=image.name, prediction=guess,
                confidence=confidence, top_k=json.dumps(top), unknown=False, image_path=str(image),
                queue_reason="low-confidence" if number % 5 else "audit", review_status="pending"))
    for number in range(1, 9):
        truth = photos[number - 1][0]
        item = next(item for item in queue.pending(engine, limit=50) if item.id == number)
        queue.decide(engine, number, "confirm" if item.prediction == truth else "correct", truth)
    return db


def shoot(page: object, url: str, path: Path) -> None:
    from PIL import Image

    page.goto(url)  # type: ignore[attr-defined]
    page.wait_for_selector("article")  # type: ignore[attr-defined]
    page.wait_for_load_state("networkidle")  # type: ignore[attr-defined]  # the images in view have come
    page.wait_for_timeout(1000)  # type: ignore[attr-defined]
    page.screenshot(path=str(path))  # type: ignore[attr-defined]
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def main() -> None:
    from fastapi import FastAPI
    from screenshots import browser_page

    from imgclf import train
    from imgclf.review.component import review_router
    from imgclf.review.data_source import open_data_review
    from imgclf.review.queue_source import QueueReview
    from imgclf.serve.review_server import create_review_source_app

    with browser_page(VIEWPORT) as (work, page):
        data = planted(work)
        run = train(data, out=work / "run", epochs=3).run_dir
        source = open_data_review(data, run=run, corrections=work / "corrections.csv")
        url, server = serve(create_review_source_app(source))
        page.goto(url)
        page.wait_for_selector("article")
        page.locator("article").nth(1).locator(".reason").click()
        page.keyboard.press("2")  # one decision, to show how a decided card looks
        shoot(page, url, PICTURES / "review-data.png")
        server.should_exit = True  # type: ignore[attr-defined]
        queue_app = FastAPI()
        queue_app.include_router(review_router(QueueReview(queue_log(work), lambda: list(CLASSES), work / "labels.csv"),
                                               page="/review", api="/v1/queue"))
        url, server = serve(queue_app)
        shoot(page, url + "/review", PICTURES / "review-queue.png")
        server.should_exit = True  # type: ignore[attr-defined]
    print(f"wrote review-data.png, review-queue.png to {PICTURES.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
