"""fastnet's throughput knobs on this CPU: images/s of the real training step, every setting interleaved in one process.

Usage: flock /tmp/imgclf-bench.lock python benchmarks/cifar10_throughput.py [--rounds 4] [--steps 6]
[--cases default,threads-1,...] [--processes --data ../shared/datasets/cifar10]

Each case is a :class:`~imgclf.engines.torch_engine.TorchEngine` built as
``imgclf train`` builds it for CIFAR-10 (the recipe that
:func:`imgclf.recipes.resolve` gives 50,000 images of 32 px: airbench
augmentation in the loader's thread, lookahead, bf16 autocast,
channels_last), with one knob changed; its
:meth:`~imgclf.engines.torch_engine.TorchEngine.measure_step_seconds` (the
method the time budget plans with: the median gap between finished steps, so
waiting for batches counts) times ``--steps`` steps. The cases take turns,
round after round (the order rotates), so a change in the machine's load
touches them all alike; a case's figure is its median over the rounds. The
images are seeded random pixels (a dense conv costs the same whatever they
hold), so no decoding is needed. ``default`` is what the 5-minute budget
trains today: widths 32/128/128, batch 512, torch's 2 threads. The
``fp32-onednn-bf16`` case trains in fp32 with oneDNN's implicit bf16 for
fp32 convs and matmuls (``torch.backends.mkldnn.{conv,matmul}.fp32_precision``,
PyTorch's MKLDNN notes) instead of autocast. Results go to
``benchmarks/results/cifar10_throughput.json`` with the load average before
and after; run it under the lock on a quiet machine.

``--processes`` instead compares one process of 2 threads with two gloo
processes of 1 thread each (``--nproc 2``, torch.distributed), which cannot
share a process: whole ``imgclf train`` runs of the default's recipe, one
epoch of a class-balanced CIFAR-10 subset (``distributed.py``'s), taking
turns; the figure is the epoch's training images/s (metrics.csv), under
``processes`` in the same JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from distributed import subset_manifest, train

from imgclf.config import TrainConfig
from imgclf.engines.contract import TrainingData
from imgclf.engines.registry import get_backend
from imgclf.recipes import DataFacts, resolve
from imgclf.runs import RunDirectory

RESULTS = Path(__file__).parent / "results" / "cifar10_throughput.json"
PROCESS_SUBSET_PER_CLASS = 2500  # --processes: 22,500 training images (airbench scale), ~18 s an epoch
IMAGES = 10_240  # enough for 20 batches of 512: an epoch never ends inside a measurement
DEFAULT = dict(widths=(32, 128, 128), batch=512, threads=2, channels_last=True, precision="bf16")
CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "threads-1": dict(threads=1),
    "batch-1024": dict(batch=1024),
    "channels-last-off": dict(channels_last=False),
    "fp32-onednn-bf16": dict(precision="fp32", onednn_bf16=True),
    "widths-24-96-96": dict(widths=(24, 96, 96)),
    "widths-48-192-192": dict(widths=(48, 192, 192)),
    "widths-64-256-256": dict(widths=(64, 256, 256)),
    "widths-64-256-256-batch-1024": dict(widths=(64, 256, 256), batch=1024),
}


def synthetic_cifar() -> TrainingData:
    """Seeded random 32 px images in 10 classes, every row a training row."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(IMAGES, 32, 32, 3), dtype=np.uint8)
    targets = torch.from_numpy(rng.integers(0, 10, size=IMAGES))
    return TrainingData(pixels=pixels, rows={"train": np.arange(IMAGES), "val": np.arange(0), "test": np.arange(0)},
                        targets=targets, classes=[f"class{index}" for index in range(10)], multilabel=False,
                        mean=(0.0,), std=(1.0,))


def case_config(knobs: dict[str, Any]) -> TrainConfig:
    """The config ``imgclf train cifar10`` resolves for 50,000 images of 32 px, with ``knobs`` applied."""
    wanted = TrainConfig(data="cifar10", model="fastnet", model_args={"widths": list(knobs["widths"])},
                         batch_size=knobs["batch"], channels_last=knobs["channels_last"], precision=knobs["precision"],
                         val_fraction=0.0, epochs=8.0, workers=1)
    return resolve(wanted, DataFacts(train_images=50_000, median_side=32), lambda name: None)


@contextmanager
def onednn_bf16(enabled: bool) -> Iterator[None]:
    """fp32 convs and matmuls computed by oneDNN in bf16 while the block runs (PyTorch >= 2.9)."""
    backends = (torch.backends.mkldnn.conv, torch.backends.mkldnn.matmul)
    saved = [backend.fp32_precision for backend in backends]
    if enabled:
        for backend in backends:
            backend.fp32_precision = "bf16"
    try:
        yield
    finally:
        for backend, value in zip(backends, saved):
            backend.fp32_precision = value


def compare_processes(data: Path, rounds: int) -> dict[str, Any]:
    """Training img/s of the default recipe in one process and in two gloo processes, runs taking turns."""
    recipe = ["--model", "fastnet", "--model-arg", f"widths={list(DEFAULT['widths'])}", "--batch-size",
              str(DEFAULT["batch"])]  # the default val split: distributed.train reads val accuracy
    rates: dict[str, list[float]] = {"1-process-2-threads": [], "2-processes-1-thread": []}
    with tempfile.TemporaryDirectory() as scratch:
        manifest = subset_manifest(data, PROCESS_SUBSET_PER_CLASS, Path(scratch))
        for round_index in range(rounds):
            for name, nproc in (("1-process-2-threads", None), ("2-processes-1-thread", 2)):
                run = train(manifest, Path(scratch) / f"{name}-{round_index}", 1, 0, nproc, recipe)
                rates[name].append(float(run["train_images_per_second"]))  # type: ignore[arg-type]
                print(f"round {round_index} {name}: {rates[name][-1]:.0f} img/s", flush=True)
    one = median(rates["1-process-2-threads"])
    return {"recipe": recipe, "subset_images": PROCESS_SUBSET_PER_CLASS * 10,
            **{name: {"images_per_second": round(median(values), 1), "ratio_to_1-process": round(median(values) / one, 3),
                      "by_round": values} for name, values in rates.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--processes", action="store_true", help="compare 1 process with 2 gloo processes instead")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/cifar10"))
    args = parser.parse_args()
    if args.processes:
        load_before = os.getloadavg()[0]
        processes = compare_processes(args.data, args.rounds)
        record = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        record["processes"] = {**processes, "load_before": round(load_before, 2),
                               "load_after": round(os.getloadavg()[0], 2)}
        RESULTS.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record["processes"]))
        return
    names = args.cases.split(",")
    load_before = os.getloadavg()[0]
    data = synthetic_cifar()
    engines, knobs = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            knobs[name] = {**DEFAULT, **CASES[name]}
            engine = get_backend("torch").engine(case_config(knobs[name]), RunDirectory(Path(scratch) / name))
            engine.build(replace(data), resume=False)
            engines[name] = engine
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for round_index in range(args.rounds):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                torch.set_num_threads(knobs[name]["threads"])
                with onednn_bf16(knobs[name].get("onednn_bf16", False)):
                    engine = engines[name]
                    seconds[name].append(engine.measure_step_seconds(engine.stages[0], steps=args.steps))
                print(f"round {round_index} {name}: {knobs[name]['batch'] / seconds[name][-1]:.0f} img/s", flush=True)
    base = knobs[names[0]]["batch"] / median(seconds[names[0]])
    cases = {}
    for name in names:
        rate = knobs[name]["batch"] / median(seconds[name])
        cases[name] = {"knobs": {key: list(value) if isinstance(value, tuple) else value
                                 for key, value in knobs[name].items()},
                       "images_per_second": round(rate, 1), f"ratio_to_{names[0]}": round(rate / base, 3),
                       "step_seconds_by_round": [round(value, 4) for value in seconds[name]]}
        print(f"{name:32s} {rate:7.0f} img/s  x{rate / base:.2f}")
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    record = {"rounds": args.rounds, "steps": args.steps, "torch": torch.__version__, "cpu_count": os.cpu_count(),
              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2), "cases": cases,
              **({"processes": previous["processes"]} if "processes" in previous else {})}
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
