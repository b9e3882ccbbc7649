"""Every command, run as a user runs it, on a folder holding the whole hostile corpus (tests/hostile.py).

    python benchmarks/hostile_corpus.py

Three colour classes of plain images with every hostile kind among the red
ones. Each command must exit 0 without a traceback, and report exactly
the bad files it met, each once with a reason: inspect, train (PyTorch and
TensorFlow), evaluate, predict --out, embed --out, index build, match,
export --quantize int8 (its calibration and accuracy images), and serve
(every in-memory kind uploaded). Prints a table and writes
benchmarks/results/hostile_corpus.json.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_class_folder  # noqa: E402
from hostile import hostile_bytes, write_hostile_corpus  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "hostile_corpus.json"
PATH_BYTES = "surrogateescape"
TINY = ["--model", "fastnet", "--model-arg", "widths=[8,16,16]", "--model-arg", "depth=1", "--batch-size", "16",
        "--lr", "0.5", "--label-smoothing", "0", "--precision", "fp32", "--workers", "1", "--epochs", "1"]


def imgclf(*args: str) -> tuple[int, str, str, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "imgclf", *args], capture_output=True, encoding="utf-8",
                            errors=PATH_BYTES, timeout=900, env={**os.environ, "COLUMNS": "100000"})
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


def listed(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.split("\t", 1)[0] for line in path.read_text(encoding="utf-8", errors=PATH_BYTES).splitlines()]


def csv_errors(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
        return [row["path"] for row in csv.DictReader(handle) if row["error"]]


def skipped_lines(stderr: str) -> list[str]:
    return [match.group(1) for match in re.finditer(r"^skipped (.+?): ", stderr, re.MULTILINE)]


def run_split(run: Path) -> dict[str, str]:
    with (run / "split.csv").open(newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
        return {row["path"]: row["split"] for row in csv.DictReader(handle)}


def check(name: str, outcome: tuple[int, str, str, float], reported: Callable[[], list[str]], expected: set[str],
          files: int) -> dict[str, object]:
    code, _, stderr, seconds = outcome
    crashed = code != 0 or "Traceback" in stderr
    paths = Counter(os.path.abspath(path) for path in reported()) if not crashed else Counter()
    row = {"command": name, "files": files, "bad_expected": len(expected), "reported": sum(paths.values()),
           "missing": sorted(expected - set(paths))[:5], "unexpected": sorted(set(paths) - expected)[:5],
           "duplicates": sorted(path for path, count in paths.items() if count > 1)[:5], "exit_code": code,
           "crashed": crashed, "seconds": round(seconds, 1),
           "last_error_line": stderr.strip().splitlines()[-1][:300] if crashed and stderr.strip() else ""}
    row["ok"] = not crashed and not row["missing"] and not row["unexpected"] and not row["duplicates"]
    print(f"{name:24s} files {files:3d}  bad {len(expected):2d}  reported {row['reported']:2d}  "
          f"{'ok' if row['ok'] else 'FAILED ' + str(row['last_error_line'] or (row['missing'], row['unexpected']))}"
          f"  ({seconds:.0f} s)", flush=True)
    return row


def serve_uploads(run: Path) -> dict[str, object]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", str(run), "--port", str(port)],
                              stderr=subprocess.PIPE, text=True)
    wrong, answered = [], 0
    kinds = hostile_bytes()
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None:
                    raise RuntimeError("imgclf serve did not start") from None
                time.sleep(0.2)
        for kind, (data, suffix, good) in kinds.items():
            answer = httpx.post(f"{url}/v1/predict", files={"file": (f"{kind}{suffix}", data)}, timeout=60)
            answered += 1
            fine = answer.status_code == 200 if good else (400 <= answer.status_code < 500 and
                                                            answer.json()["error"].startswith(f"{kind}{suffix}: "))
            if not fine or httpx.get(f"{url}/healthz").status_code != 200:
                wrong.append(f"{kind}: {answer.status_code}")
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    crashed = "Traceback" in stderr
    row = {"command": "serve (uploads)", "files": len(kinds), "bad_expected": sum(not good for _, _, good in
                                                                                  kinds.values()),
           "answered": answered, "wrong_answers": wrong, "crashed": crashed, "ok": not wrong and not crashed,
           "seconds": round(time.monotonic() - started, 1)}
    print(f"{'serve (uploads)':24s} files {len(kinds):3d}  wrong answers {len(wrong)}  "
          f"{'ok' if row['ok'] else 'FAILED'}", flush=True)
    return row


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="imgclf-hostile-") as scratch:
        work = Path(scratch)
        os.environ["IMGCLF_HOME"] = str(work / "home")
        data = make_class_folder(work / "data", per_class=6)
        corpus = write_hostile_corpus(data / "red")
        bad = {os.path.abspath(file.path) for file in corpus if not file.good}
        files = sum(len(names) for _, _, names in os.walk(data))
        run, tf_run = work / "run", work / "run-tf"
        rows = [
            check("inspect", imgclf("inspect", str(data), "--out", str(work / "inspect")),
                  lambda: listed(work / "inspect" / "broken_files.txt"), bad, files),
            check("train (torch)", imgclf("train", str(data), "--out", str(run), *TINY),
                  lambda: listed(run / "broken_files.txt"), bad, files),
            check("train (tensorflow)", imgclf("train", str(data), "--out", str(tf_run), "--backend", "tensorflow",
                                               "--model", "tutorial-cnn", "--image-size", "16", "--batch-size", "16",
                                               "--workers", "1", "--epochs", "1"),
                  lambda: listed(tf_run / "broken_files.txt"), bad, files),
            check("evaluate", imgclf("evaluate", str(run), str(data), "--out", str(work / "evaluation")),
                  lambda: listed(work / "evaluation" / "skipped.txt"), bad, files),
            check("predict --out", imgclf("predict", str(run), str(data), "--out", str(work / "predictions.csv")),
                  lambda: csv_errors(work / "predictions.csv"), bad, files),
        ]
        embedded = work / "embeddings.npz"

        def embed_errors() -> list[str]:
            with np.load(embedded, allow_pickle=False) as loaded:
                return [path for path, error in zip(loaded["paths"].tolist(), loaded["errors"].tolist()) if error]

        rows.append(check("embed --out", imgclf("embed", str(run), str(data), "--out", str(embedded)), embed_errors,
                          bad, files))
        rows.append(check("index build", imgclf("index", "build", str(run), str(data), "--out", str(work / "index")),
                          lambda: listed(work / "index" / "skipped_files.txt"), bad, files))
        catalog = work / "catalog.csv"
        every = sorted(os.path.join(folder, name) for folder, _, names in os.walk(data) for name in names)
        with catalog.open("w", newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "name", "category"])
            writer.writerows([path, f"item {number}", Path(path).parent.name] for number, path in enumerate(every))
        matched = imgclf("match", str(catalog), "--model", str(run), "--name", "a red thing", "--json")
        rows.append(check("match", matched, lambda: [item["image"] for item in json.loads(matched[1])["skipped"]],
                          bad, files))
        used = {path for path, split in run_split(run).items() if split in ("train", "val")}
        exported = imgclf("export", str(run), "--quantize", "int8", "--out", str(work / "export"),
                          "--max-accuracy-drop", "1")
        rows.append(check("export --quantize int8", exported, lambda: skipped_lines(exported[2]), bad & used,
                          len(used)))
        rows.append(serve_uploads(run))
    summary = {"files_x_commands": sum(int(row["files"]) for row in rows), "commands": len(rows),
               "crashes": sum(bool(row["crashed"]) for row in rows),
               "commands_with_wrong_reports": sum(not row["ok"] and not row["crashed"] for row in rows)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"summary": summary, "commands": rows}, indent=1) + "\n")
    print(json.dumps(summary))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
