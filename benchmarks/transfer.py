"""Transfer learning in seconds: embeddings + a linear probe on the flowers photos, against a plain script.

Usage: python benchmarks/transfer.py [--data ../shared/datasets/flowers] [--sections baseline,probe,fold,similarity,tail]

- ``baseline``: the plain script the issue describes, run in this process:
  single-threaded PIL decode (centre crop, 224 px), torch bf16 channels_last
  forward at batch 64, scikit-learn logistic regression (C chosen on val,
  as ours does). Its seconds and val accuracy are the yardstick.
- ``probe``: ``imgclf.train(flowers, strategy="probe")`` from the JPEG files
  with an empty cache (a fresh ``IMGCLF_HOME``), then again with the
  embeddings cached: wall seconds of the whole call (decode, embed, fit,
  metrics, bundle, report) and val accuracy; and ``imgclf.embed`` alone.
- ``fold``: images/s of the embedding forward pass with and without
  BatchNorm folded into the convolutions, same process, same batches.
- ``similarity``: the cosine scores behind ``imgclf similar``'s verdicts:
  images against their mirror image, a 90% crop, a half-size JPEG copy,
  and random pairs of the same and of different classes.
- ``search``: the flowers photos as a catalogue (``name`` = the Flickr file
  name, which says nothing about the flower): ``imgclf match --evaluate``
  accuracy and seconds, and near-duplicate pairs found by ``inspect
  --near-duplicates``. There is no public product catalogue with names on
  this machine; the name side is tested on generated catalogues instead.

- ``views``: what the default photo recipe rests on. Embeddings of lite0,
  lite1 and lite2 (each at its native size, and lite0 at 240 as the stack
  runs it) for the views the probes use (the centre crop, its mirror image,
  a 0.875 zoomed centre crop, its mirror), each with its wall and CPU
  seconds; then
  probes fitted by ``imgclf``'s own ``fit_linear_head`` (C by
  cross-validation on train) on concatenations of backbones and on sets of
  views (TTA: probabilities averaged over the same views of each val
  image), and an ensemble of single-backbone probes. ``--embeddings DIR``
  keeps the vectors as ``.npy`` files and reuses them, so the probes can be
  refitted without the forward passes (their costs are recorded when
  computed, in ``DIR/costs.json``).

- ``tail``: the probe against the probe + a tail fine-tune (``--strategy
  tail``, :mod:`imgclf.engines.tail`) from the same decoded images in the
  same process: per tail length (``--tail-cases BLOCKSxEPOCHS,...``) one
  pass of the frozen part over train and val, both views (wall and CPU
  seconds), the probe on its embeddings, then the tail for each epoch count
  (wall and CPU seconds, val accuracy with flip TTA for both). ``--tail-model
  A+B --tail-size 240`` measures a stack (each trunk's tail, one head).

The two-stage fine-tuning figure for comparison is read from
``results/flowers.json`` (``benchmarks/flowers.py``, case ``lite0-5m``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from training_runs import save

RESULTS = Path(__file__).parent / "results" / "transfer.json"
MODEL = "tf_efficientnet_lite0"


def baseline(data: Path) -> dict:
    """The plain script: decode, embed, fit, with nothing cached and nothing overlapped."""
    from sklearn.linear_model import LogisticRegression

    from imgclf.models import create_model, load_pretrained

    started = time.perf_counter()
    model = create_model(MODEL, 0)
    weights = load_pretrained(model, MODEL)
    model = model.eval().to(memory_format=torch.channels_last)
    mean = torch.tensor(weights.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(weights.std).view(1, 3, 1, 1) * 255

    def features(files: list[Path]) -> np.ndarray:
        out = []
        for start in range(0, len(files), 64):
            batch = []
            for file in files[start:start + 64]:
                image = Image.open(file).convert("RGB")
                side = min(image.size)
                left, top = (image.width - side) // 2, (image.height - side) // 2
                batch.append(np.asarray(image.crop((left, top, left + side, top + side)).resize((224, 224),
                                                                                               Image.BICUBIC)))
            pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float()
            images = ((pixels - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                out.append(model(images).float().numpy())
        return np.concatenate(out)

    splits = {split: sorted((data / split).glob("*/*.jpg")) for split in ("train", "val")}
    classes = sorted(path.name for path in (data / "train").iterdir())
    x = {split: features(files) for split, files in splits.items()}
    y = {split: np.array([classes.index(path.parent.name) for path in files]) for split, files in splits.items()}
    mean_x, std_x = x["train"].mean(0), x["train"].std(0) + 1e-6
    best = max((LogisticRegression(C=c, max_iter=2000).fit((x["train"] - mean_x) / std_x, y["train"])
                for c in (0.03, 0.1, 0.3, 1.0, 3.0)),
               key=lambda fitted: fitted.score((x["val"] - mean_x) / std_x, y["val"]))
    accuracy = best.score((x["val"] - mean_x) / std_x, y["val"])
    return {"wall_seconds": round(time.perf_counter() - started, 1), "val_accuracy": round(float(accuracy), 4)}


def probe(data: Path) -> dict:
    """``imgclf.train(strategy="probe")`` cold and cached, and ``imgclf.embed`` alone, in a fresh IMGCLF_HOME."""
    import imgclf

    record: dict = {}
    previous_home = os.environ.get("IMGCLF_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["IMGCLF_HOME"] = home
        for label in ("cold", "cached"):
            started = time.perf_counter()
            run = imgclf.train(data, out=Path(home) / f"run-{label}", strategy="probe", model=MODEL)
            record[label] = {"wall_seconds": round(time.perf_counter() - started, 1),
                             "probe_stage_seconds": round(run.history[0]["seconds"], 1),
                             "val_accuracy": round(run.metrics["val_accuracy"], 4)}
            print(label, record[label], flush=True)
    with tempfile.TemporaryDirectory() as home:
        os.environ["IMGCLF_HOME"] = home
        files = sorted(data.glob("*/*/*.jpg"))
        started = time.perf_counter()
        embedded = imgclf.embed(MODEL, [Path(file) for file in files])
        seconds = time.perf_counter() - started
        record["embed_command"] = {"images": len(files), "seconds": round(seconds, 1),
                                   "images_per_second": round(len(files) / seconds, 1),
                                   "computed": embedded.computed}
        started = time.perf_counter()
        imgclf.embed(MODEL, [Path(file) for file in files])
        record["embed_command"]["cached_seconds"] = round(time.perf_counter() - started, 2)
    if previous_home is None:
        os.environ.pop("IMGCLF_HOME")
    else:
        os.environ["IMGCLF_HOME"] = previous_home
    print("embed", record["embed_command"], flush=True)
    return record


def fold(data: Path) -> dict:
    """Embedding forward images/s, BatchNorm folded against not, alternating on the same decoded batches."""
    from imgclf.data.decode import decode_file
    from imgclf.embeddings.embedder import Embedder

    embedder = Embedder.load(MODEL)
    files = sorted(data.glob("train/*/*.jpg"))[:256]
    pixels = np.stack([decode_file(file, (224, 224), "crop").pixels for file in files])
    folded_model = embedder.model
    plain_model = embedder.model = _unfolded(MODEL).to(memory_format=torch.channels_last)
    embedder.embed_pixels(pixels[:64])  # warm-up of both
    embedder.model = folded_model
    embedder.embed_pixels(pixels[:64])
    seconds = {"folded": 0.0, "plain": 0.0}
    for _ in range(3):
        for label, network in (("plain", plain_model), ("folded", folded_model)):
            embedder.model = network
            started = time.perf_counter()
            embedder.embed_pixels(pixels)
            seconds[label] += time.perf_counter() - started
    rates = {label: round(3 * len(pixels) / value, 1) for label, value in seconds.items()}
    return {"images_per_second": rates, "speedup": round(rates["folded"] / rates["plain"], 2),
            "precision": embedder.precision}


def _unfolded(name: str) -> torch.nn.Module:
    from imgclf.models import create_model, load_pretrained

    model = create_model(name, 0)
    load_pretrained(model, name)
    return model.eval().requires_grad_(False)


def similarity(data: Path) -> dict:
    """Cosine of images with edited copies of themselves, and of random same-/different-class pairs."""
    from imgclf.embeddings.embedder import Embedder
    from imgclf.embeddings.similarity import normalise

    embedder = Embedder.load(MODEL)
    files = sorted(data.glob("*/*/*.jpg"))
    vectors = normalise(embedder.embed_files(files, description="Embedding the photos").vectors)
    labels = np.array([file.parent.name for file in files])
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(files), 150, replace=False)
    edits = {"mirror": lambda image: ImageOps.mirror(image),
             "crop 90%": lambda image: image.crop((image.width // 20, image.height // 20,
                                                   image.width - image.width // 20, image.height - image.height // 20)),
             "half size, JPEG q60": lambda image: image.resize((image.width // 2, image.height // 2))}
    record = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, edit in edits.items():
            copies = []
            for index in chosen:
                copy = Path(folder) / f"{name[:4]}-{index}.jpg"
                edit(Image.open(files[index]).convert("RGB")).save(copy, quality=60 if "q60" in name else 95)
                copies.append(copy)
            copied = normalise(embedder.embed_files(copies, description=name).vectors)
            scores = (copied * vectors[chosen]).sum(axis=1)
            record[name] = _percentiles(scores)
    first, second = rng.integers(len(files), size=(2, 20000))
    keep = first != second
    scores = (vectors[first[keep]] * vectors[second[keep]]).sum(axis=1)
    same = labels[first[keep]] == labels[second[keep]]
    record["same class"] = _percentiles(scores[same])
    record["different class"] = _percentiles(scores[~same])
    return record


def search(data: Path) -> dict:
    """Catalogue matching and near-duplicate search on the real photos."""
    import csv

    import imgclf

    files = sorted(data.glob("*/*/*.jpg"))
    record: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        catalog = Path(folder) / "catalog.csv"
        with catalog.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "name", "category"])
            writer.writerows([str(file.resolve()), file.stem, file.parent.name] for file in files)
        started = time.perf_counter()
        evaluation = imgclf.evaluate_match(catalog)
        record["match_evaluate"] = {"seconds": round(time.perf_counter() - started, 1),
                                    "image_weight_chosen": evaluation.image_weight,
                                    "test_accuracy": {k: round(r.accuracy, 4) for k, r in evaluation.results.items()},
                                    "items": [evaluation.reference_items, evaluation.test_items]}
        started = time.perf_counter()
        result = imgclf.inspect(data, out=Path(folder) / "inspect", near_duplicates=True)
        pairs = result.report.near_duplicates or []
        kinds = {kind: sum(pair["kind"] == kind for pair in pairs)
                 for kind in ("leakage", "label-conflict", "within-split")}
        record["near_duplicates"] = {"seconds": round(time.perf_counter() - started, 1), "pairs": len(pairs),
                                     **kinds, "examples": pairs[:3]}
    return record


VIEW_NAMES = {"c": "centre crop", "f": "mirrored centre crop", "z": "0.875 zoom", "zf": "mirrored 0.875 zoom"}
VIEW_PROBES = (  # (backbones as name-size, views); the stack as trained (lite0 at 240, c+f) is flowers.py's default
    (["lite0-224"], ["c"]), (["lite0-224"], ["c", "f"]), (["lite1-240"], ["c", "f"]), (["lite2-260"], ["c", "f"]),
    (["lite0-224", "lite1-240"], ["c"]), (["lite0-224", "lite1-240"], ["c", "f"]), (["lite0-240", "lite1-240"], ["c"]),
    (["lite0-224"], ["c", "f", "z", "zf"]), (["lite0-224", "lite1-240"], ["c", "f", "z", "zf"]),
    (["lite0-224", "lite1-240", "lite2-260"], ["c", "f"]),
)


def views(data: Path, saved: Path) -> dict:
    """Embedding costs per backbone and view, then probes on backbone concatenations and view sets."""
    from imgclf.data.cache import build_cache
    from imgclf.embeddings.embedder import Embedder
    from imgclf.engines.linear_probe import fit_linear_head

    saved.mkdir(parents=True, exist_ok=True)
    files = {split: sorted((data / split).glob("*/*.jpg")) for split in ("train", "val")}
    every = files["train"] + files["val"]
    classes = sorted(path.name for path in (data / "train").iterdir())
    labels = np.array([classes.index(path.parent.name) for path in every])
    is_val = np.arange(len(every)) >= len(files["train"])
    costs_file = saved / "costs.json"
    costs = json.loads(costs_file.read_text()) if costs_file.exists() else {}
    needed = sorted({(backbone, view) for backbones, view_set in VIEW_PROBES for backbone in backbones
                     for view in view_set})
    for backbone, view in needed:
        name, size = backbone.split("-")[0], int(backbone.split("-")[1])
        target = saved / f"{backbone}-{view}.npy"
        if target.exists():
            continue
        zoomed = round(size / 0.875) if view.startswith("z") else size
        wall, cpu = time.perf_counter(), time.process_time()
        pixels = build_cache(every, size=(zoomed, zoomed), policy="crop", source=str(data)).pixels
        offset = (zoomed - size) // 2
        pixels = pixels[:, offset:offset + size, offset:offset + size]
        if view.endswith("f"):
            pixels = pixels[:, :, ::-1]
        vectors = Embedder.load(f"tf_efficientnet_{name}", image_size=size).embed_pixels(np.ascontiguousarray(pixels))
        costs[target.stem] = {"images": len(every), "wall_seconds": round(time.perf_counter() - wall, 1),
                              "cpu_seconds": round(time.process_time() - cpu, 1)}
        np.save(target, vectors.astype(np.float16))
        costs_file.write_text(json.dumps(costs, indent=2))
        print(target.stem, costs[target.stem], flush=True)

    def features(backbones: list[str], view: str) -> np.ndarray:
        return np.concatenate([np.load(saved / f"{backbone}-{view}.npy").astype(np.float32)
                               for backbone in backbones], axis=1)

    def probabilities(backbones: list[str], view_set: list[str]) -> tuple[np.ndarray, float]:
        per_view = [features(backbones, view) for view in view_set]
        fit = fit_linear_head([rows[~is_val] for rows in per_view], labels[~is_val], None, None, len(classes))
        logits = [rows[is_val] @ fit.weight.T + fit.bias for rows in per_view]
        soft = [np.exp(logit - logit.max(1, keepdims=True)) for logit in logits]
        return np.mean([row / row.sum(1, keepdims=True) for row in soft], axis=0), fit.regularisation

    record: dict = {"embedding_costs": costs, "probes": {}}
    singles = {}
    for backbones, view_set in VIEW_PROBES:
        started = time.perf_counter()
        probability, regularisation = probabilities(backbones, view_set)
        label = f"{'+'.join(backbones)} views {'+'.join(view_set)}"
        record["probes"][label] = {"val_accuracy": round(float((probability.argmax(1) == labels[is_val]).mean()), 4),
                                   "C": regularisation, "fit_seconds": round(time.perf_counter() - started, 1)}
        if len(backbones) == 1 and view_set == ["c", "f"]:
            singles[backbones[0]] = probability
        print(label, record["probes"][label], flush=True)
    ensemble = np.mean(list(singles.values()), axis=0)
    record["ensemble_of_probes"] = {"members": list(singles), "views": "c+f",
                                    "val_accuracy": round(float((ensemble.argmax(1) == labels[is_val]).mean()), 4)}
    record["view_names"] = VIEW_NAMES
    return record


TAIL_CASES = ((1, 3), (1, 5), (1, 10), (2, 5))  # (blocks, epochs)


def tail(data: Path, model_name: str = MODEL, size: int = 224, cases: tuple = TAIL_CASES, lr: float = 1e-3,
         batch_size: int = 32) -> dict:
    """The probe against probe + tail fine-tune on kept activations: same decoded images, same process.

    For each tail length the frozen part runs once per image and view (plain
    and mirrored), giving the activations and the probe's embeddings in one
    pass (its wall and CPU seconds recorded); the probe (C by CV on train,
    both views) initialises the head, then the tail trains (AdamW, one-cycle,
    label smoothing 0.1, BatchNorm statistics frozen, alternating views).
    Val is scored with flip TTA (probabilities of both views averaged) for both.
    """
    import copy

    import torch.nn.functional as F

    from imgclf.data.augment import augment_batch
    from imgclf.data.augment_presets import PRESETS
    from imgclf.data.cache import build_cache
    from imgclf.engines.linear_probe import fit_linear_head, load_into_head
    from imgclf.engines.optim import build_scheduler
    from imgclf.engines.tail import ActivationLoader, ActivationPass, activation_bytes, split_model
    from imgclf.models import create_model, load_pretrained
    from imgclf.models.device import autocast, choose_precision
    from imgclf.recipes import TAIL_WARMUP_EPOCHS

    torch.manual_seed(0)
    files = {split: sorted((data / split).glob("*/*.jpg")) for split in ("train", "val")}
    classes = sorted(path.name for path in (data / "train").iterdir())
    labels = {split: np.array([classes.index(path.parent.name) for path in found]) for split, found in files.items()}
    decoded = {split: build_cache(found, size=(size, size), policy="crop", source=str(data / split)).pixels
               for split, found in files.items()}
    model = create_model(model_name, len(classes), image_size=size)
    weights = load_pretrained(model, model_name)
    model = model.eval().to(memory_format=torch.channels_last)
    pristine = copy.deepcopy(model.state_dict())
    device, precision = torch.device("cpu"), choose_precision("auto", torch.device("cpu"))
    record: dict = {"model": model_name, "image_size": size, "precision": precision, "lr": lr,
                    "batch_size": batch_size, "train_images": len(files["train"]), "val_images": len(files["val"]),
                    "cases": {}}

    def images_of(pixels: np.ndarray) -> torch.Tensor:
        return augment_batch(torch.from_numpy(np.array(pixels)), PRESETS["none"], torch.Generator(),
                             weights.mean, weights.std)

    def probabilities(logits: list[np.ndarray]) -> np.ndarray:
        soft = [np.exp(logit - logit.max(1, keepdims=True)) for logit in logits]
        return np.mean([row / row.sum(1, keepdims=True) for row in soft], axis=0)

    for blocks in sorted({blocks for blocks, _ in cases}):
        model.load_state_dict(pristine)
        split = split_model(model, blocks, size)
        wall, cpu = time.perf_counter(), time.process_time()
        passes = ActivationPass(split, images_of(decoded["train"][:2]), device, precision)
        kept, features = {}, {}
        for name in ("train", "val"):
            for view in ("plain", "hflip"):
                pixels = decoded[name] if view == "plain" else decoded[name][:, :, ::-1]
                batches = [passes(images_of(pixels[start:start + 64])) for start in range(0, len(pixels), 64)]
                kept[name, view] = torch.cat([acts for acts, _ in batches])
                features[name, view] = torch.cat([feats for _, feats in batches]).numpy()
        pass_seconds = {"images": 2 * (len(files["train"]) + len(files["val"])),
                        "wall_seconds": round(time.perf_counter() - wall, 1),
                        "cpu_seconds": round(time.process_time() - cpu, 1)}
        started = time.perf_counter()
        probe = fit_linear_head([features["train", "plain"], features["train", "hflip"]], labels["train"], None, None,
                                len(classes))
        val_logits = [features["val", view] @ probe.weight.T + probe.bias for view in ("plain", "hflip")]
        probe_accuracy = float((probabilities(val_logits).argmax(1) == labels["val"]).mean())
        record["probe"] = {"val_accuracy": round(probe_accuracy, 4), "C": probe.regularisation,
                           "fit_seconds": round(time.perf_counter() - started, 1)}
        memory = activation_bytes(split, 2 * len(files["train"]))
        print(f"tail {blocks}: activations {split.shapes}, {memory / 2**20:.0f} MiB for train x 2 views; pass "
              f"{pass_seconds}; probe {record['probe']}", flush=True)
        load_into_head(split.head, probe)
        probed = copy.deepcopy(model.state_dict())
        targets = torch.from_numpy(labels["train"])
        for case_blocks, epochs in cases:
            if case_blocks != blocks:
                continue
            model.load_state_dict(probed)
            model.eval()  # BatchNorm statistics frozen, as fine-tuning keeps them
            model.requires_grad_(False)
            split.requires_grad_(True)
            decayed = [p for p in split.parameters() if p.ndim > 1]
            others = [p for p in split.parameters() if p.ndim <= 1]
            optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.05},
                                           {"params": others, "weight_decay": 0.0}], lr=lr)
            loader = ActivationLoader((kept["train", "plain"], kept["train", "hflip"]), targets, batch_size, 0, device)
            scheduler = build_scheduler(optimizer, epochs * len(loader), round(TAIL_WARMUP_EPOCHS * len(loader)),
                                        "cosine")  # as the engine's tail stage runs it
            wall, cpu = time.perf_counter(), time.process_time()
            for epoch in range(epochs):
                loader.set_epoch(epoch)
                for packed, batch_targets in loader:
                    with autocast(device, precision):
                        logits = split(packed)
                    loss = F.cross_entropy(logits.float(), batch_targets, label_smoothing=0.1)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
            seconds = {"wall_seconds": round(time.perf_counter() - wall, 1),
                       "cpu_seconds": round(time.process_time() - cpu, 1)}
            with torch.inference_mode(), autocast(device, precision):
                val = [torch.cat([split(kept["val", view][start:start + 256].float()).float()
                                  for start in range(0, len(kept["val", view]), 256)]).numpy()
                       for view in ("plain", "hflip")]
            accuracy = float((probabilities(val).argmax(1) == labels["val"]).mean())
            label = f"tail {blocks} blocks, {epochs} epochs"
            record["cases"][label] = {"val_accuracy": round(accuracy, 4), "probe_val_accuracy": record["probe"]
                                      ["val_accuracy"], "gain_points": round(100 * (accuracy - probe_accuracy), 2),
                                      "activations": [list(shape) for shape in split.shapes],
                                      "train_activation_mib": round(memory / 2**20), "activation_pass": pass_seconds,
                                      **seconds, "seconds_per_epoch": round(seconds["wall_seconds"] / epochs, 1)}
            print(label, record["cases"][label], flush=True)
    return record

def _percentiles(scores: np.ndarray) -> dict:
    return {name: round(float(np.percentile(scores, q)), 3)
            for name, q in (("min", 0), ("p5", 5), ("median", 50), ("p95", 95), ("p99", 99), ("max", 100))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers"))
    parser.add_argument("--sections", default="baseline,probe,fold,similarity,search,views")
    parser.add_argument("--embeddings", type=Path, default=Path("/tmp/imgclf-transfer-views"),
                        help="where the views section keeps (and reuses) its embeddings")
    parser.add_argument("--tail-model", default=MODEL, help="the tail section's model (a stack: lite0+lite1 names)")
    parser.add_argument("--tail-size", type=int, default=224, help="the tail section's input size")
    parser.add_argument("--tail-cases", default=",".join(f"{b}x{e}" for b, e in TAIL_CASES),
                        help="the tail section's BLOCKSxEPOCHS cases, comma-separated")
    parser.add_argument("--tail-lr", type=float, default=1e-3, help="the tail section's peak learning rate")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: the flowers dataset is missing (see ../shared/datasets/README.md)")
    sections = {"baseline": baseline, "probe": probe, "fold": fold, "similarity": similarity, "search": search,
                "views": lambda data: views(data, args.embeddings),
                "tail": lambda data: tail(data, args.tail_model, args.tail_size, tuple(
                    tuple(int(part) for part in case.split("x")) for case in args.tail_cases.split(",")), args.tail_lr)}
    for name in args.sections.split(","):
        print(f"\n=== {name}", flush=True)
        record = sections[name](args.data)
        print(json.dumps(record, indent=2), flush=True)
        key = name if name != "tail" or args.tail_model == MODEL else f"tail {args.tail_model} @{args.tail_size}"
        save(RESULTS, {key: record})
    flowers = RESULTS.parent / "flowers.json"
    if flowers.exists():
        two_stage = json.loads(flowers.read_text())["cases"].get("lite0-5m")
        if two_stage:
            save(RESULTS, {"two_stage_finetune_for_comparison": {
                "val_accuracy": two_stage["val_accuracy"], "wall_seconds": two_stage["wall_seconds"],
                "source": "results/flowers.json lite0-5m"}})


if __name__ == "__main__":
    main()
