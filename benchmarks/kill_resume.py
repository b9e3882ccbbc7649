"""kill -9 at random moments: training resumes to the same weights; embed, index build, predict --out and export
never leave a half-written output and finish on the next run.

    flock /tmp/imgclf-bench.lock python benchmarks/kill_resume.py [--trials 24] [--other-trials 5]

Training trials cycle through four moments (while decoding, during a step,
while a checkpoint is written, while the bundle is written), each with a
random delay; the run is then resumed and its bundle compared bit for bit
with an uninterrupted run's. For the other commands the process is killed
at a random time, the output is checked (absent, or complete and readable),
the command is run again and its output compared with an uninterrupted
run's. (``tune`` does not exist yet.) Prints a table and writes
benchmarks/results/kill_resume.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY_FASTNET, make_class_folder  # noqa: E402
from crashes import MOMENTS, bundle_weights, kill_at, leftovers, same_weights  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "kill_resume.json"


def train_options(data: Path, out: Path) -> dict[str, object]:
    return {**TINY_FASTNET, "data": str(data), "out": str(out), "epochs": 4, "seed": 5}


def resume(run: Path) -> None:
    from imgclf.config import make_config
    from imgclf.training import train

    train(make_config(), resume=run)


def training_trials(work: Path, data: Path, trials: int, rng: random.Random) -> list[dict[str, object]]:
    from imgclf.config import make_config
    from imgclf.training import train

    reference = train(make_config(**train_options(data, work / "reference"))).run_dir
    expected = bundle_weights(reference)
    moments = list(MOMENTS)
    rows = []
    for trial in range(trials):
        moment = moments[trial % len(moments)]
        delay = round(rng.uniform(0.0, 3.0), 3) if moment == "step" else round(rng.uniform(0.0, 0.05), 3)
        run = work / f"trial-{trial:02d}"
        started = time.monotonic()
        killed = kill_at(train_options(data, run), moment, delay)
        stray = [path.name for path in leftovers(run)]
        error = ""
        try:
            resume(run)
            same = same_weights(bundle_weights(run), expected)
        except Exception as failure:  # noqa: BLE001  recorded as a failed trial, not a crashed benchmark
            error, same = f"{type(failure).__name__}: {failure}", False
        rows.append({"trial": trial, "moment": moment, "delay_s": delay, "killed": killed,
                     "partial_files_at_kill": stray, "resumed": not error, "same_weights": same,
                     "leftovers_after_resume": [path.name for path in leftovers(run)], "error": error,
                     "seconds": round(time.monotonic() - started, 1)})
        print(f"train trial {trial:2d} {moment:16s} +{delay:.3f}s killed={killed!s:5s} partial={len(stray)} "
              f"resumed={not error!s:5s} same weights={same}", flush=True)
        shutil.rmtree(run, ignore_errors=True)
    return rows


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "imgclf", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})


def finish(*args: str) -> None:
    process = cli(*args)
    _, stderr = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"imgclf {' '.join(args)} failed: {stderr.strip().splitlines()[-1:]}")


def read_output(kind: str, path: Path) -> object:
    """The output's content, comparable between runs; raises if it is not complete and readable."""
    if kind == "embed":
        with np.load(path, allow_pickle=False) as loaded:
            return loaded["paths"].tolist(), loaded["vectors"].round(3).tolist(), loaded["errors"].tolist()
    if kind == "index build":
        with (path / "items.csv").open(newline="", encoding="utf-8") as handle:
            items = list(csv.DictReader(handle))
        return items, np.load(path / "vectors.npy", allow_pickle=False).round(3).tolist()
    if kind == "predict --out":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [(row["path"], row["prediction"]) for row in rows]
    import onnx

    from imgclf.deploy.metadata import file_digest

    model = onnx.load(str(path / "model.onnx"))  # a file cut short does not parse
    onnx.checker.check_model(model)
    meta = path / "model.onnx.json"
    if not meta.is_file() or json.loads(meta.read_text())["file_sha256"] != file_digest(path / "model.onnx"):
        raise StaleMetadata  # killed between the file and its metadata: runtimes treat it as not exported
    return json.loads(meta.read_text())["weights_sha256"]


class StaleMetadata(Exception):
    """An export whose file is complete but whose metadata does not describe it."""


def other_trials(work: Path, model: Path, images: Path, trials: int, rng: random.Random) -> list[dict[str, object]]:
    commands = {
        "embed": lambda out: ("embed", str(model), str(images), "--out", str(out)),
        "index build": lambda out: ("index", "build", str(model), str(images), "--out", str(out)),
        "predict --out": lambda out: ("predict", str(model), str(images), "--out", str(out)),
        "export": lambda out: ("export", str(model), "--format", "onnx", "--out", str(out)),
    }
    suffix = {"embed": ".npz", "index build": "", "predict --out": ".csv", "export": ""}
    rows = []
    for kind, make in commands.items():
        reference_out = work / f"reference-{kind.replace(' ', '-')}{suffix[kind]}"
        started = time.monotonic()
        finish(*make(reference_out))
        duration = time.monotonic() - started
        expected = read_output(kind, reference_out)
        for trial in range(trials):
            out = work / f"{kind.replace(' ', '-')}-{trial}{suffix[kind]}"
            delay = round(rng.uniform(0.3, duration), 2)
            process = cli(*make(out))
            time.sleep(delay)
            killed = process.poll() is None
            process.kill()
            process.communicate(timeout=60)
            state = "absent"
            if out.exists() and (kind != "export" or (out / "model.onnx").exists()):
                try:
                    read_output(kind, out)
                    state = "complete"
                except StaleMetadata:
                    state = "no metadata yet (refused)"
                except Exception:  # noqa: BLE001
                    state = "HALF-WRITTEN"
            finish(*make(out))
            same = read_output(kind, out) == expected
            stray = [path.name for path in leftovers(out.parent) if path.name.startswith(f".{out.name}")]
            rows.append({"command": kind, "trial": trial, "delay_s": delay, "killed": killed,
                         "output_after_kill": state, "rerun_same_output": same, "leftovers_after_rerun": stray})
            print(f"{kind:14s} trial {trial} +{delay:5.2f}s killed={killed!s:5s} output after kill: {state:9s} "
                  f"rerun same={same}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="training trials (at least 20)")
    parser.add_argument("--other-trials", type=int, default=5, help="trials per other command")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="imgclf-kill-") as scratch:
        work = Path(scratch)
        os.environ["IMGCLF_HOME"] = str(work / "home")
        data = make_class_folder(work / "data", per_class=20)
        images = make_class_folder(work / "images", per_class=100, size=32, seed=1)
        train_rows = training_trials(work / "train", data, args.trials, rng)
        model = work / "train" / "reference"
        other_rows = other_trials(work / "other", model, images, args.other_trials, rng)
    killed = [row for row in train_rows if row["killed"]]
    summary = {
        "training_trials": len(train_rows), "killed_before_finishing": len(killed),
        "resumed": sum(bool(row["resumed"]) for row in train_rows),
        "exact_resumes": sum(bool(row["same_weights"]) for row in train_rows),
        "by_moment": {moment: {"trials": sum(row["moment"] == moment for row in train_rows),
                               "killed": sum(row["moment"] == moment and bool(row["killed"]) for row in train_rows),
                               "exact": sum(row["moment"] == moment and bool(row["same_weights"]) for row in train_rows)}
                      for moment in MOMENTS},
        "other_trials": len(other_rows),
        "half_written_outputs": sum(row["output_after_kill"] == "HALF-WRITTEN" for row in other_rows),
        "reruns_with_the_same_output": sum(bool(row["rerun_same_output"]) for row in other_rows),
        "tune": "not built yet (no imgclf tune command)",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"summary": summary, "training": train_rows, "other": other_rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
