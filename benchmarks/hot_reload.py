"""Hot reload under load: ``imgclf serve models/shop`` answering 32 clients while versions are promoted and rolled back.

Usage: flock /tmp/imgclf-bench.lock python benchmarks/hot_reload.py [--run runs/benchmarks/flowers-default]
                                                                   [--clients 32] [--seconds 60] [--quick]

Three versions of one trained run (copies whose ``model.json`` differs, so
each has its own content id and is loaded afresh, as a new version would
be) go into a model folder; the first is promoted and served as a user
serves it (``imgclf serve models/shop``, a subprocess on loopback). Then
``--clients`` concurrent clients post one JPEG per request for
``--seconds`` while this script promotes the second version at a quarter
of the time, the third at half, and rolls back (to the second) at three
quarters, through ``imgclf.promote``/``rollback`` as the commands do; the
server notices each switch by itself (its one-second watch of the pointer).

Figures: requests; errors (any answer but 200); dropped requests (a
connection error or no answer); answers that do not name a version the
folder holds; clients that saw versions out of the order they were made
current (a client may skip a version while one long request spans a
switch, but never goes back to an earlier one);
for each switch, seconds from the pointer changing to ``/healthz`` naming
the new version; p50/p99 latency of the requests that overlap a switch
(from the pointer changing to one second after the server names the new
version: the old model's last requests) against those outside. Goals
(issue 27): 0 errors, 0 dropped, every answer naming its version. The
CPU model is recorded beside the figures. ``--quick`` serves a small
generated fastnet bundle for 10 s (a check that the script runs; it
writes no result unless ``--out`` is given). Writes
``benchmarks/results/hot_reload.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from serve_soak import small_bundle  # the generated fastnet bundle --quick serves

import imgclf
from imgclf.deploy.bundle import find_bundle
from imgclf.deploy.runtime_choice import cpu_model

RESULTS = Path(__file__).resolve().parent / "results" / "hot_reload.json"
DEFAULT_RUNS = (Path("runs/benchmarks/flowers-default"), Path("runs/benchmarks/cifar10-fastnet-15s"))
SWITCHES = ((0.25, "promote", 1), (0.5, "promote", 2), (0.75, "rollback", None))  # (when, what, which version)
DRAIN_S = 1.0  # after the server names the new version, the old one's last requests still count as the switch's


def version_copies(bundle: Path, scratch: Path) -> list[Path]:
    """Three bundles with the weights of ``bundle`` and content ids of their own."""
    copies = []
    for number in range(3):
        copy = Path(shutil.copytree(bundle, scratch / f"version-{number}" / "model"))
        values = json.loads((copy / "model.json").read_text(encoding="utf-8"))
        values["metrics"] = {**(values.get("metrics") or {}), "benchmark_copy": float(number)}
        (copy / "model.json").write_text(json.dumps(values, indent=1), encoding="utf-8")
        copies.append(copy)
    return copies


def jpeg_bodies(count: int = 16, side: int = 256) -> list[bytes]:
    bodies = []
    for seed in range(count):
        pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        bodies.append(buffer.getvalue())
    return bodies


def start_server(folder: Path, runtime: str) -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", str(folder), "--port", str(port),
                               "--runtime", runtime], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "200"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"imgclf serve did not start: {server.communicate()[1][-2000:]}")
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)


async def client_loop(http: httpx.AsyncClient, number: int, bodies: list[bytes], stop: float,
                      answers: list[dict[str, Any]]) -> None:
    """Post one image after another until ``stop``; every request's start, end, status and version is kept."""
    index = number
    while time.perf_counter() < stop:
        started = time.perf_counter()
        row: dict[str, Any] = {"client": number, "start": started}
        try:
            answer = await http.post("/v1/predict", content=bodies[index % len(bodies)],
                                     headers={"content-type": "image/jpeg"}, params={"top_k": 1})
            row.update(status=answer.status_code, version=answer.json().get("model_version"))
        except (httpx.HTTPError, ValueError) as error:
            row.update(status=None, version=None, error=type(error).__name__)
        row["end"] = time.perf_counter()
        answers.append(row)
        index += len(bodies)


async def switch(http: httpx.AsyncClient, folder: Path, action: str, bundle: Path | None) -> dict[str, Any]:
    """Promote or roll back, then wait until the server names the new version: the switch's record."""
    changed = time.perf_counter()
    if action == "promote":
        version = (await asyncio.to_thread(imgclf.promote, bundle, folder)).version
    else:
        version = (await asyncio.to_thread(imgclf.rollback, folder)).version
    pointer_written = time.perf_counter()
    while (await http.get("/healthz")).json().get("model_version") != version:
        await asyncio.sleep(0.05)
    served = time.perf_counter()
    return {"action": action, "version": version, "start": changed, "served": served,
            "command_s": round(pointer_written - changed, 3), "pointer_to_served_s": round(served - pointer_written, 3)}


async def drive(url: str, folder: Path, copies: list[Path], clients: int, seconds: float) -> dict[str, Any]:
    """The clients' loops and the three switches at their times; what every request and switch recorded."""
    answers: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        began = time.perf_counter()
        stop = began + seconds
        loops = [asyncio.create_task(client_loop(http, number, jpeg_bodies(), stop, answers))
                 for number in range(clients)]
        events = []
        for fraction, action, which in SWITCHES:
            await asyncio.sleep(max(0.0, began + fraction * seconds - time.perf_counter()))
            events.append(await switch(http, folder, action, copies[which] if which is not None else None))
        await asyncio.gather(*loops)
    return {"answers": answers, "events": events, "seconds": time.perf_counter() - began}


def summarise(run: dict[str, Any], order: list[str], known: set[str]) -> dict[str, Any]:
    """The figures the docstring names, from every request's record and the switches'."""
    answers, events = run["answers"], run["events"]
    windows = [(event["start"], event["served"] + DRAIN_S) for event in events]
    overlaps = [any(row["start"] < end and row["end"] > start for start, end in windows) for row in answers]
    during = [row for row, overlap in zip(answers, overlaps) if overlap]
    outside = [row for row, overlap in zip(answers, overlaps) if not overlap]
    out_of_order = sum(not _follows(order, [row["version"] for row in answers if row["client"] == number])
                       for number in {row["client"] for row in answers})
    return {"requests": len(answers), "requests_per_second": round(len(answers) / run["seconds"], 1),
            "errors": sum(row["status"] not in (200, None) for row in answers),
            "dropped": sum(row["status"] is None for row in answers),
            "unnamed": sum(row["status"] == 200 and row["version"] not in known for row in answers),
            "clients_out_of_order": out_of_order,
            "answers_by_version": {version: sum(row["version"] == version for row in answers) for version in known},
            "switches": [{key: value for key, value in event.items() if key not in ("start", "served")}
                         for event in events],
            "latency_during_switch": _latency(during), "latency_outside": _latency(outside)}


def _follows(order: list[str], seen: list[str]) -> bool:
    """Whether one client's versions, repeats collapsed, come in the order the versions were made current (a client
    whose request spanned a whole switch may skip a version, never go back)."""
    remaining = iter(order)
    changes = [version for index, version in enumerate(seen) if index == 0 or seen[index - 1] != version]
    return all(any(version == candidate for candidate in remaining) for version in changes)


def _latency(rows: list[dict[str, Any]]) -> dict[str, Any]:
    milliseconds = np.array([row["end"] - row["start"] for row in rows]) * 1000
    if not len(milliseconds):
        return {"requests": 0}
    return {"requests": len(rows), "p50_ms": round(float(np.percentile(milliseconds, 50)), 1),
            "p99_ms": round(float(np.percentile(milliseconds, 99)), 1),
            "max_ms": round(float(milliseconds.max()), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="The run (or bundle) whose copies are the versions "
                                                  "(default: the first of runs/benchmarks/flowers-default, "
                                                  "cifar10-fastnet-15s that exists).")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--quick", action="store_true", help="A generated small bundle for 10 s; no result written.")
    parser.add_argument("--out", type=Path, help=f"Where the JSON goes (default {RESULTS}; none with --quick).")
    args = parser.parse_args()
    seconds = 10.0 if args.quick else args.seconds
    out = args.out or (None if args.quick else RESULTS)
    with tempfile.TemporaryDirectory(prefix="imgclf-hot-reload-") as scratch_name:
        scratch = Path(scratch_name)
        bundle = small_bundle(scratch / "small") if args.quick else find_bundle(_default_run(args.run))
        copies = version_copies(bundle, scratch)
        folder = scratch / "models" / "shop"
        first = imgclf.promote(copies[0], folder).version
        server, url = start_server(folder, args.runtime)
        try:
            runtime = httpx.get(f"{url}/v1/model").json()["runtime"]
            run = asyncio.run(drive(url, folder, copies, args.clients, seconds))
        finally:
            server.terminate()
            server.communicate(timeout=60)
    order = [first, *(event["version"] for event in run["events"])]
    figures = {"machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
               "model": "generated fastnet 32 px" if args.quick else str(args.run or _default_run(None)),
               "runtime": runtime, "clients": args.clients, "seconds": seconds,
               **summarise(run, order, set(order))}
    print(json.dumps(figures, indent=1))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {out}")


def _default_run(run: Path | None) -> Path:
    if run is not None:
        return run
    found = next((candidate for candidate in DEFAULT_RUNS if candidate.exists()), None)
    if found is None:
        raise SystemExit(f"none of {', '.join(map(str, DEFAULT_RUNS))} exists; give --run RUN (or train one with "
                         f"benchmarks/flowers.py) or --quick")
    return found


if __name__ == "__main__":
    main()
