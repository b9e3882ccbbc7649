"""Soak test of ``imgclf serve``: 32 concurrent clients for 5 minutes, on loopback; memory must stay flat.

    flock /tmp/imgclf-bench.lock python benchmarks/serve_soak.py [--seconds 300] [--clients 32]

The server runs as its own process (``imgclf serve``, a small fastnet
bundle at 32 px). Each client loops over a mix of requests: JPEG and PNG
bodies of several sizes, multipart uploads of two files, a broken image
(which must get a 400), and the model and health endpoints. An answer
with any other status, or a failed connection, is an error. The server's
resident memory (RSS) is sampled every 5 s; growth is measured from the
end of a warm-up (the first 10% of the run, when allocator pools and
caches fill) to the end. Prints the figures and writes
benchmarks/results/serve_soak.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results" / "serve_soak.json"


def small_bundle(folder: Path) -> Path:
    import torch

    from imgclf.deploy.bundle import BundleInfo, write_bundle
    from imgclf.models import create_model

    torch.manual_seed(0)
    args = {"widths": [16, 32, 32], "depth": 1}
    model = create_model("fastnet", 3, image_size=32, **args)
    info = BundleInfo("fastnet", args, ["blue", "green", "red"], 32, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    return write_bundle(info, model.state_dict(), folder / "model")


def encoded(side: int, fmt: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def requests_mix() -> list[tuple[str, str, dict[str, object], int]]:
    """(method, path, httpx arguments, expected status) for one client's loop."""
    jpeg = [encoded(side, "JPEG", side) for side in (48, 160, 640)]
    png = encoded(96, "PNG", 7)
    return [
        *[("POST", "/v1/predict", {"content": body, "headers": {"content-type": "image/jpeg"}}, 200) for body in jpeg],
        ("POST", "/v1/predict", {"content": png, "headers": {"content-type": "image/png"}}, 200),
        ("POST", "/v1/predict", {"files": [("file", ("a.jpg", jpeg[0], "image/jpeg")),
                                           ("file", ("b.png", png, "image/png"))]}, 200),
        ("POST", "/v1/predict", {"content": jpeg[1][: len(jpeg[1]) // 2], "headers": {"content-type": "image/jpeg"}},
         400),
        ("GET", "/v1/model", {}, 200),
        ("GET", "/healthz", {}, 200),
    ]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgclf-soak-") as scratch:
        bundle = small_bundle(Path(scratch))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", str(bundle), "--port", str(port),
                                   "--runtime", "torch", "--max-queue", "4096", "--timeout", "60"],
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"imgclf serve did not start: {server.stderr.read() if server.stderr else ''}")
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            figures = soak(url, server.pid, args.seconds, args.clients)
        finally:
            server.terminate()
            server.communicate(timeout=30)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps({key: value for key, value in figures.items() if key != "rss_samples"}, indent=1))
    print(f"wrote {RESULTS}")


def soak(url: str, pid: int, seconds: float, clients: int) -> dict[str, object]:
    mix = requests_mix()
    stop = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    error_samples: list[str] = []

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            step = number
            while not stop.is_set():
                method, path, request, expected = mix[step % len(mix)]
                step += 1
                started = time.perf_counter()
                try:
                    status = http.request(method, path, **request).status_code  # type: ignore[arg-type]
                    problem = "" if status == expected else f"{method} {path}: {status}, expected {expected}"
                except httpx.HTTPError as error:
                    problem = f"{method} {path}: {type(error).__name__} {error}"
                with lock:
                    counts["requests"] += 1
                    latencies.append(time.perf_counter() - started)
                    if problem:
                        counts["errors"] += 1
                        if len(error_samples) < 10:
                            error_samples.append(problem)

    threads = [threading.Thread(target=client, args=(number,), daemon=True) for number in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, int]] = []
    while time.monotonic() - started < seconds:
        samples.append((round(time.monotonic() - started, 1), rss_bytes(pid)))
        time.sleep(5)
    stop.set()
    for thread in threads:
        thread.join(90)
    samples.append((round(time.monotonic() - started, 1), rss_bytes(pid)))
    warm = [rss for at, rss in samples if at >= seconds * 0.1]
    baseline, final = warm[0], warm[-1]
    ordered = sorted(latencies)
    return {
        "seconds": round(time.monotonic() - started, 1), "clients": clients, "requests": counts["requests"],
        "requests_per_second": round(counts["requests"] / seconds, 1), "errors": counts["errors"],
        "error_samples": error_samples,
        "latency_ms": {"p50": round(statistics.median(ordered) * 1000, 1),
                       "p99": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 1)},
        "rss_mb": {"after_warm_up": round(baseline / 2**20, 1), "final": round(final / 2**20, 1),
                   "max": round(max(rss for _, rss in samples) / 2**20, 1)},
        "rss_growth_percent": round((final - baseline) / baseline * 100, 2),
        "rss_samples": [[at, round(rss / 2**20, 1)] for at, rss in samples],
        "machine": f"{os.cpu_count()} CPUs, shared; loopback only",
    }


if __name__ == "__main__":
    main()
