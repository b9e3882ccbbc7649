"""Screenshots for the docs: the run report, the serve page with a prediction, and the catalogue review page.

    python scripts/screenshots.py     # writes docs/img/{report,serve,review}.png (needs chromium and the serve extra)

Everything is made here from the bundled CIFAR-10 sample, in a temporary folder: a short training run (its
``report.html``), ``imgclf serve`` on it, and ``imgclf serve --catalog`` on a catalogue of sample images. Run it
when a page's look changes; the PNGs are committed (small: one viewport each, 8-bit palette).
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "cifar10-sample"
PICTURES = ROOT / "docs" / "img"
VIEWPORT = {"width": 1000, "height": 720}


def imgclf(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "imgclf", *args], cwd=cwd, check=True, env=_env())


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(*args: str, cwd: Path) -> Iterator[str]:
    """``imgclf serve ARGS`` in the background until the block ends; yields its address once it answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", *args, "--port", str(port)], cwd=cwd,
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(address + "/", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)


def catalogue(work: Path) -> tuple[Path, Path]:
    """A catalogue of sample train images (category: the class) and new products from the test images."""
    catalog, queries = work / "catalog.csv", work / "new.csv"
    with open(catalog, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "name", "category"])
        for folder in sorted((SAMPLE / "train").iterdir()):
            for number, image in enumerate(sorted(folder.glob("*.jpg"))[:30]):
                writer.writerow([image, f"{folder.name} print no. {number}", f"Prints/{folder.name}"])
    with open(queries, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "name"])
        for folder in sorted((SAMPLE / "test").iterdir())[:4]:
            writer.writerow([sorted(folder.glob("*.jpg"))[0], f"new {folder.name} print"])
    return catalog, queries


@contextmanager
def browser_page(viewport: dict[str, int]) -> Iterator[tuple[Path, Any]]:
    """(a temporary work folder, also the IMGCLF_HOME's parent; a headless Chromium page) for one screenshot script."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        work = Path(folder)
        os.environ["IMGCLF_HOME"] = str(work / "home")
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield work, browser.new_page(viewport=viewport)
        finally:
            browser.close()


def main() -> None:
    with browser_page(VIEWPORT) as (work, page):
        (work / SAMPLE.name).symlink_to(SAMPLE)  # the report names the data as given: a short relative path
        imgclf("train", SAMPLE.name, "--out", "run", "--epochs", "3", cwd=work)
        page.goto((work / "run" / "report.html").as_uri())
        page.screenshot(path=str(PICTURES / "report.png"))
        with serving("run", cwd=work) as address:
            page.goto(address)
            page.set_input_files("#file", str(sorted((SAMPLE / "test" / "ship").glob("*.jpg"))[0]))
            page.wait_for_selector("#probabilities tr", timeout=60_000)
            page.click("#explain")
            page.wait_for_function("document.querySelector('#heatmap').complete && "
                                   "document.querySelector('#heatmap').naturalWidth > 0", timeout=120_000)
            page.screenshot(path=str(PICTURES / "serve.png"))
        catalog, queries = catalogue(work)
        with serving("--catalog", str(catalog), "--queries", str(queries), cwd=work) as address:
            page.goto(address)
            page.wait_for_function("!document.querySelector('#summary').textContent.startsWith('Loading')",
                                   timeout=240_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(PICTURES / "review.png"))
    print(f"wrote report.png, serve.png, review.png to {PICTURES.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
