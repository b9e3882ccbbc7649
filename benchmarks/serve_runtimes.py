"""``imgclf serve`` with each runtime: requests/s and p50/p99 latency at 1 and 32 concurrent clients.

Usage: python benchmarks/serve_runtimes.py [--datasets ../shared/datasets] [--runs runs/benchmarks]
                                           [--seconds 20] [--results PATH]

For the bundles of ``benchmarks/serve_load.py`` (fastnet at 32 px, lite0 at
224 px): the bundle is exported to ONNX and OpenVINO (fp32, parity-checked;
OpenVINO when installed), then ``imgclf serve --runtime R`` is started as a
user starts it, for R in torch, onnx, openvino and auto, and driven by 1 and
by 32 clients posting real JPEG files one per request (the driver of
``serve_load.py``). Goal (issue 30): the best runtime at least 2x PyTorch at 1
client. Writes ``benchmarks/results/serve_runtimes.json`` with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from serve_load import CASES, load_test

from imgclf.data.sources import IMAGE_EXTENSIONS
from imgclf.deploy.bundle import find_bundle
from imgclf.deploy.export import export
from imgclf.deploy.runtime_choice import cpu_model
from imgclf.errors import ImgclfError

RESULTS = Path(__file__).parent / "results" / "serve_runtimes.json"
RUNTIMES = ("torch", "onnx", "openvino", "auto")
CLIENTS = (1, 32)


def serve_case(directory: Path, bodies: list[bytes], seconds: float) -> dict[str, object]:
    """Every runtime that could be exported, at each client count; and the best against torch at 1 client."""
    runtimes = ["torch", "auto"]
    skipped = {}
    for format in ("onnx", "openvino"):
        try:
            export(directory, format)
            runtimes.insert(-1, format)
        except ImgclfError as error:  # OpenVINO not installed: say so in the results
            skipped[format] = str(error).splitlines()[0]
    rows = [load_test(directory, runtime, bodies, clients, seconds) for runtime in runtimes for clients in CLIENTS]
    for row in rows:
        print(f"--runtime {row['runtime_requested']} ({row['runtime']}), {row['clients']} clients: "
              f"{row['requests_per_second']:,.0f} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
              f"{row['errors']} errors", flush=True)
    single = {row["runtime_requested"]: row["requests_per_second"] for row in rows if row["clients"] == 1}
    best = max(single, key=single.__getitem__)
    return {"load": rows, "skipped": skipped, "best_at_1_client": best,
            "best_over_torch_at_1_client": round(single[best] / single["torch"], 2), "goal": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--runs", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: dict[str, object] = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "seconds": args.seconds}
    for name, run, folder in CASES:
        if not (args.runs / run / "model" / "model.json").is_file():
            print(f"skipping {name}: no bundle at {args.runs / run} (run the training benchmark first)")
            continue
        paths = sorted(path for path in (args.datasets / folder).rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
        print(f"\n{name}")
        results[name] = serve_case(find_bundle(args.runs / run), [path.read_bytes() for path in paths[:2000]],
                                   args.seconds)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
