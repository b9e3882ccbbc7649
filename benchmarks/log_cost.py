"""What the prediction log costs a server: requests/s and p99 with ``--log`` against without, and bytes per row.

Usage: python benchmarks/log_cost.py [--model runs/benchmarks/flowers-default] [--images ../shared/datasets/flowers/val]
                                     [--clients 16] [--seconds 20] [--rounds 2] [--quick]

``imgclf serve MODEL --runtime torch`` (the runtime that logs embeddings) is
started as a user starts it, three ways: without a log, with ``--log`` (SQLite),
and with ``--log --log-images``; each is driven by ``--clients`` concurrent
clients posting the JPEG files one per request for ``--seconds``. The three
run in turns, ``--rounds`` times (off, log, log+images, off, ...), so load from
elsewhere hits all alike; each case keeps its best round. After each logged
round the server is stopped with Ctrl-C (which writes its queue) and the log's
size on disk (database, WAL, image copies) is divided by its rows. Clients and
server share this machine's cores.

Goal (issue 28): with SQLite, at most 10% fewer requests/s than without a log.
``--quick`` (a smoke run: 4 clients, 3 s, one round, 200 images; an untrained
fastnet where the model is missing) checks the script, not the figures.
Writes ``benchmarks/results/log_cost.json`` with the CPU model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from serve_load import drive, free_port

from imgclf.data.sources import IMAGE_EXTENSIONS
from imgclf.deploy.runtime_choice import cpu_model

RESULTS = Path(__file__).parent / "results" / "log_cost.json"
CASES = {"no_log": [], "log": ["--log", "{dir}/predictions.db"],
         "log_and_images": ["--log", "{dir}/predictions.db", "--log-images", "{dir}/images"]}


def start(model: Path, options: list[str]) -> tuple[subprocess.Popen[str], str]:
    """``imgclf serve MODEL --runtime torch OPTIONS`` on a free port, once it answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", str(model), "--port", str(port),
                               "--runtime", "torch", *options], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"imgclf serve did not start: {server.stderr.read() if server.stderr else ''}")
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


def one_round(model: Path, case: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """One case driven once: the load figures, and for a logged case its rows and bytes on disk per row."""
    with tempfile.TemporaryDirectory(prefix="imgclf-log-cost-") as scratch:
        server, url = start(model, [part.format(dir=scratch) for part in CASES[case]])
        try:
            asyncio.run(drive(url, bodies[:64], min(clients, 4), 2.0))  # warm-up
            figures: dict[str, Any] = asyncio.run(drive(url, bodies, clients, seconds))
            metrics = httpx.get(url + "/metrics").text
        finally:
            server.send_signal(signal.SIGINT)  # the log writes its queue before the server stops
            server.wait(120)
        if case != "no_log":
            rows = {outcome: float(value) for outcome, value in
                    re.findall(r'^imgclf_log_rows_total\{outcome="(\w+)"\} (\S+)', metrics, re.M)}
            written = max(rows.get("written", 0.0), 1.0)
            database = sum(path.stat().st_size for path in Path(scratch).glob("predictions.db*"))
            figures.update(rows_written=int(written), rows_dropped=int(rows.get("dropped", 0)),
                           rows_failed=int(rows.get("failed", 0)), log_bytes_per_row=round(database / written),
                           image_copy_bytes_per_row=round(folder_bytes(Path(scratch) / "images") / written))
    return figures


def untrained_model(folder: Path) -> Path:
    """A tiny untrained fastnet bundle (``--quick`` without a trained model): it exercises the path, not the speed."""
    import torch

    from imgclf.deploy.bundle import BundleInfo, write_bundle
    from imgclf.models import create_model

    torch.manual_seed(0)
    model = create_model("fastnet", 5, image_size=32)
    info = BundleInfo("fastnet", {}, [f"class{i}" for i in range(5)], 32, [0.5] * 3, [0.25] * 3)
    return write_bundle(info, model.state_dict(), folder / "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/benchmarks/flowers-default"))
    parser.add_argument("--images", type=Path, default=Path("../shared/datasets/flowers/val"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="A smoke run: 4 clients, 3 s, one round, 200 images.")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.rounds = 4, 3.0, 1
    paths = sorted(path for path in args.images.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
    bodies = [path.read_bytes() for path in paths[:200 if args.quick else 2000]]
    if not bodies:
        raise SystemExit(f"no images under {args.images}; give --images")
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if not (model / "model.json").is_file() and not (model / "model" / "model.json").is_file():
            if not args.quick:
                raise SystemExit(f"no bundle at {model}: run benchmarks/flowers.py first, or give --model")
            model = untrained_model(Path(scratch))
        best: dict[str, dict[str, Any]] = {}
        for _ in range(args.rounds):
            for case in CASES:
                figures = one_round(model, case, bodies, args.clients, args.seconds)
                if case not in best or figures["requests_per_second"] > best[case]["requests_per_second"]:
                    best[case] = figures
    base = best["no_log"]["requests_per_second"]
    for case, figures in best.items():
        figures["slowdown"] = round(1 - figures["requests_per_second"] / base, 3)
        print(f"{case:<16}{figures['requests_per_second']:>8,.1f} req/s  p99 {figures['p99_ms']:>7} ms  "
              f"slowdown {figures['slowdown']:+.1%}  " + (f"{figures['log_bytes_per_row']:,} B/row log, "
                                                        f"{figures['image_copy_bytes_per_row']:,} B/row images"
                                                        if case != "no_log" else ""))
    results = {"machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
               "model": str(args.model), "clients": args.clients, "seconds": args.seconds, "rounds": args.rounds,
               "images": len(bodies), "quick": args.quick, "cases": best}
    if not args.quick:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
