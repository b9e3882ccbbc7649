"""Serving under load, and ONNX Runtime against PyTorch: the figures behind ``imgclf serve`` and ``--runtime``.

Usage: python benchmarks/serve_load.py [--datasets ../shared/datasets] [--runs runs/benchmarks]
                                       [--clients 32] [--seconds 20]

For fastnet at 32 px (``cifar10-fastnet-15s``, from ``benchmarks/cifar10.py``)
and tf_efficientnet_lite0 at 224 px (``flowers-default``, from
``benchmarks/flowers.py``):

1. ``imgclf export --format onnx --quantize int8`` into the bundle: parity,
   and the int8 model's accuracy change on the run's validation split.
2. Model-only images/s (decoded images in, logits out; best of three
   interleaved rounds, so load from other processes hits all alike) at batch 1 and 64
   for PyTorch fp32, PyTorch at its default precision (bf16 on CPUs with
   bf16 instructions), ONNX Runtime fp32 and int8, in this one process.
3. ``imgclf serve`` started as a user starts it (loopback, a subprocess),
   driven by ``--clients`` concurrent clients for ``--seconds``, each posting
   real JPEG files one per request: throughput, p50/p95/p99 latency, errors,
   and the mean dynamic batch size, for ``--runtime auto`` and ``torch``.
   Clients and server share this machine's cores, so on a small machine the
   client's own CPU use lowers the figures.

Goals (issue 7): zero errors under 32 concurrent clients; ONNX Runtime at
least 2x PyTorch at batch 1 on CPU. Writes ``benchmarks/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from imgclf.data.sources import IMAGE_EXTENSIONS
from imgclf.deploy.bundle import find_bundle, read_bundle_info
from imgclf.deploy.export import export
from imgclf.deploy.runtime import ONNX_FILES, OnnxRuntime, TorchRuntime, compare_speeds

RESULTS = Path(__file__).parent / "results" / "serve_load.json"
CASES = [  # (name, bundle run, JPEG folder for the load test)
    ("fastnet-32px", "cifar10-fastnet-15s", "cifar10/test"),
    ("tf_efficientnet_lite0-224px", "flowers-default", "flowers/val"),
]
SPEED_ROUNDS, SPEED_SECONDS = 3, 1.0  # best of three interleaved rounds: fair on a shared machine


def runtime_speeds(directory: Path) -> dict[str, dict[str, Any]]:
    """Model-only images/s of each runtime at batch 1 and 64."""
    info = read_bundle_info(directory)
    runtimes = {
        "torch_fp32": TorchRuntime.load(directory, info, precision="fp32"),
        "torch_default": TorchRuntime.load(directory, info),
        "onnx_fp32": OnnxRuntime(directory / ONNX_FILES["onnx"], info),
        "onnx_int8": OnnxRuntime(directory / ONNX_FILES["onnx-int8"], info),
    }
    speeds: dict[str, dict[str, Any]] = compare_speeds(runtimes, info, rounds=SPEED_ROUNDS, seconds=SPEED_SECONDS)
    speeds["torch_default"]["precision"] = runtimes["torch_default"].precision
    return speeds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def drive(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` concurrent loops posting one image each until ``seconds`` have passed."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        stop = time.perf_counter() + seconds

        async def client(offset: int) -> None:
            nonlocal errors
            index = offset
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    answer = await http.post("/v1/predict", content=bodies[index % len(bodies)],
                                             headers={"content-type": "image/jpeg"}, params={"top_k": 1})
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok
                index += clients

        started = time.perf_counter()
        await asyncio.gather(*(client(offset) for offset in range(clients)))
        elapsed = time.perf_counter() - started
        metrics = (await http.get("/metrics")).text
    batch_sum = float(re.search(r"^imgclf_batch_size_sum (\S+)", metrics, re.M).group(1))  # type: ignore[union-attr]
    batch_count = float(re.search(r"^imgclf_batch_size_count (\S+)", metrics, re.M).group(1))  # type: ignore[union-attr]
    milliseconds = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 1),
            "requests_per_second": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(milliseconds, 50)), 1),
            "p95_ms": round(float(np.percentile(milliseconds, 95)), 1),
            "p99_ms": round(float(np.percentile(milliseconds, 99)), 1),
            "mean_batch_size": round(batch_sum / max(batch_count, 1), 2)}


def load_test(directory: Path, runtime: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, object]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", str(directory), "--port", str(port),
                               "--runtime", runtime], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"imgclf serve did not start: {server.stderr.read() if server.stderr else ''}")
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        chosen = httpx.get(url + "/v1/model").json()["runtime"]
        asyncio.run(drive(url, bodies[:64], min(clients, 4), 2.0))  # warm-up
        figures = asyncio.run(drive(url, bodies, clients, seconds))
    finally:
        server.terminate()
        server.wait(30)
    return {"runtime_requested": runtime, "runtime": chosen, "clients": clients, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--runs", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--cases", default=",".join(name for name, _, _ in CASES),
                        help="Comma-separated case names; the others keep their figures in the results file.")
    args = parser.parse_args()
    results: dict[str, object] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update(cpu_count=os.cpu_count(), clients=args.clients, seconds=args.seconds)
    for name, run, folder in CASES:
        if name not in args.cases.split(","):
            continue
        if not (args.runs / run / "model" / "model.json").is_file():
            print(f"skipping {name}: no bundle at {args.runs / run} (run the training benchmark first)")
            continue
        directory = find_bundle(args.runs / run)
        exported = export(directory, "onnx", quantize="int8")
        quantized = exported.quantization
        speeds = runtime_speeds(directory)
        paths = sorted(path for path in (args.datasets / folder).rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
        bodies = [path.read_bytes() for path in paths[:2000]]
        load = [load_test(directory, runtime, bodies, args.clients, args.seconds) for runtime in ("auto", "torch")]
        results[name] = {
            "parity_max_abs_diff": exported.parity.max_abs_diff,
            "int8": {"images": quantized.images, "fp32_accuracy": quantized.fp32_accuracy,
                     "int8_accuracy": quantized.int8_accuracy, "accuracy_change": quantized.accuracy_change,
                     "top1_agreement": quantized.top1_agreement},
            "images_per_second": speeds,
            "onnx_over_torch_fp32_batch1": round(speeds["onnx_fp32"]["1"] / speeds["torch_fp32"]["1"], 2),
            "onnx_over_torch_default_batch64": round(speeds["onnx_fp32"]["64"] / speeds["torch_default"]["64"], 2),
            "load": load,
        }
        print(f"\n{name}: parity {exported.parity.max_abs_diff:.1e}; int8 accuracy {quantized.fp32_accuracy:.2%} -> "
              f"{quantized.int8_accuracy:.2%} on {quantized.images} val images")
        print(f"{'runtime':<16}{'batch 1':>10}{'batch 64':>10}  (model-only images/s)")
        for runtime, rates in speeds.items():
            print(f"{runtime:<16}{rates['1']:>10,.1f}{rates['64']:>10,.1f}")
        for row in load:
            print(f"serve --runtime {row['runtime_requested']} ({row['runtime']}), {row['clients']} clients: "
                  f"{row['requests_per_second']:,.0f} req/s, p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, "
                  f"p99 {row['p99_ms']} ms, {row['errors']} errors, mean batch {row['mean_batch_size']}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
