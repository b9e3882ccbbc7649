"""The run directory: everything one training run leaves behind, in one folder.

```
runs/NAME/
  config.yaml          the resolved config (every default filled in)
  choices.json         the options the user set (the rest of config.yaml was chosen by imgclf from the data)
  split.csv            every image with the split it was given (read back by --resume and evaluate)
  data_manifest.csv    every image's content hash (path, hash): with split.csv, what the run saw, for imgclf diff
  metrics.csv          one row per epoch
  tensorboard/         TensorBoard event files
  checkpoints/last.pt  model, optimiser, schedule and position, each epoch (and on Ctrl-C)
  checkpoints/best.pt  the weights with the best validation score so far
  model/               the bundle: model.json + weights.safetensors + MODEL_CARD.md
  gate.json            imgclf update only: the regression gate's verdict, class by class
  added_data.csv       imgclf update only: the images it added (path, labels, split, hash)
  model/lineage.json   imgclf update only: the bundle's parent, the data it added and the gate's verdict
  held_out_logits.json the bundle's raw logits for each val/test image (an update's gate reads them as "before")
```
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imgclf.config import TrainConfig, config_names, with_split_seed
from imgclf.data.sources import ImageDataset, Item, read_manifest
from imgclf.errors import ImgclfError, one_line
from imgclf.files import PATH_BYTES, write_text_atomic
from imgclf.paths import absolute_path

MARKER = ".imgclf-run"  # only folders carrying it are ever deleted by --overwrite

# The split a run is judged on: its test split, else its validation split. Quantisation reads the order
# the other way round (val first), so that calibrating int8 never spends the test images.
HELD_OUT = ("test", "val")

METRIC_COLUMNS = ("epoch", "stage", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                  "images_per_second", "planned_epochs")


@dataclass(frozen=True)
class RunDirectory:
    """One run's folder; a bundle's run is the folder holding it (``RunDirectory(bundle.parent)``)."""

    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def split_file(self) -> Path:
        return self.path / "split.csv"

    @property
    def data_manifest_file(self) -> Path:
        return self.path / "data_manifest.csv"

    @property
    def choices_file(self) -> Path:
        return self.path / "choices.json"

    @property
    def corrections_file(self) -> Path:
        """What ``--corrections``/``--rename`` did to the data: the file, its digest, what applied (when given)."""
        return self.path / "corrections.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def has_split(self) -> bool:
        return self.split_file.is_file()

    def read_split(self) -> ImageDataset:
        """Every image of the run with the split it was given (``split.csv``)."""
        if not self.has_split():
            raise ImgclfError(f"{self.path} has no split.csv; is it an imgclf run directory?")
        return read_manifest(self.split_file)

    def write_data_manifest(self, paths: list[str], digests: list[str]) -> None:
        """Each image's content hash (the decode cache's blake2b of its bytes, so free), beside split.csv's labels.

        Labels and splits stay in split.csv alone: ``imgclf diff`` joins the
        two by path. A file that could not be read has an empty hash.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "blake2b"])
        writer.writerows([absolute_path(path), digest] for path, digest in zip(paths, digests))
        write_text_atomic(self.data_manifest_file, buffer.getvalue())

    def read_data_manifest(self) -> dict[str, str]:
        """Path -> content hash, or an empty mapping for a run from before data_manifest.csv."""
        try:
            with open(self.data_manifest_file, newline="", encoding="utf-8", errors=PATH_BYTES) as handle:
                return {row["path"]: row["blake2b"] for row in csv.DictReader(handle)}
        except (OSError, KeyError, csv.Error):
            return {}

    def write_config(self, config: TrainConfig) -> None:
        write_text_atomic(self.config_file, config.to_yaml())

    def read_config(self) -> TrainConfig:
        if not self.config_file.exists():
            raise ImgclfError(f"{self.path}: no config.yaml there; is it an imgclf run directory?")
        try:
            values = with_split_seed(yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {})
            return TrainConfig(**{name: value for name, value in values.items() if name in config_names()})
        except (yaml.YAMLError, UnicodeDecodeError, TypeError, AttributeError) as error:
            raise ImgclfError(f"{self.config_file} is damaged ({one_line(error)}); "
                              "restore it or start a new run") from None

    def write_choices(self, user_options: dict[str, Any]) -> None:
        """Record which options the user set, so the report and model card can tell them from imgclf's choices."""
        write_text_atomic(self.choices_file, json.dumps({"user_options": user_options}, indent=2, default=str))

    def read_choices(self) -> dict[str, Any] | None:
        """The options the user set, or None for a run from before choices.json (or a damaged one)."""
        try:
            values = json.loads(self.choices_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        options = values.get("user_options") if isinstance(values, dict) else None
        return options if isinstance(options, dict) else None

    def write_corrections(self, record: dict[str, Any] | None) -> None:
        """Keep which corrections made the run's data (``ImageDataset.corrections``); nothing when none were given."""
        if record is not None:
            write_text_atomic(self.corrections_file, json.dumps(record, indent=2))

    def read_corrections(self) -> dict[str, Any] | None:
        """The corrections the run's data was made with, or None (none given, or a run from before them)."""
        try:
            values = json.loads(self.corrections_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return values if isinstance(values, dict) else None

    @property
    def held_out_logits_file(self) -> Path:
        return self.path / "held_out_logits.json"

    def write_held_out_logits(self, weights: str, logits: dict[str, list[float]]) -> None:
        """The bundle's raw logits (TTA included, before temperature) by image path, for the weights digest ``weights``."""
        write_text_atomic(self.held_out_logits_file, json.dumps({"weights": weights, "logits": logits}))

    def read_held_out_logits(self, weights: str) -> dict[str, list[float]]:
        """The raw logits kept for the weights ``weights``; empty when none were kept or they are another model's."""
        try:
            values = json.loads(self.held_out_logits_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        fresh = isinstance(values, dict) and values.get("weights") == weights and isinstance(values.get("logits"), dict)
        return values["logits"] if fresh else {}

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv from the whole history, so a resumed run's file has no gaps or repeats."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        write_text_atomic(self.metrics_file, buffer.getvalue())


def user_options(config: TrainConfig) -> dict[str, Any]:
    """The options of ``config`` (before imgclf fills in its choices) that differ from the defaults: what the user set."""
    defaults = TrainConfig().to_dict()
    return {name: value for name, value in config.to_dict().items() if value != defaults[name]}


def held_out_split(dataset: ImageDataset, order: tuple[str, ...] = HELD_OUT) -> str | None:
    """The first split of ``order`` that has images, or None: the one held-out rule of evaluate, export,
    quantize, compare and the run report."""
    return next((name for name in order if dataset.split_items(name)), None)


def held_out_items(dataset: ImageDataset, order: tuple[str, ...] = HELD_OUT) -> list[Item]:
    """The images of :func:`held_out_split`, or every image when the data names none of those splits."""
    split = held_out_split(dataset, order)
    return dataset.split_items(split) if split else dataset.items


def new_run_directory(out: str | None, data_source: str, overwrite: bool) -> RunDirectory:
    """``out`` as given (refused if it holds a run, unless ``overwrite``), else the next free ``runs/<data>[-N]``."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ImgclfError(f"--out {path} is a file; give a folder for the run")
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise ImgclfError(f"--out {path} already exists; pass --overwrite to replace it, "
                                  f"or --resume {path} to continue it")
            if not (path / MARKER).exists():
                raise ImgclfError(f"--out {path} is a non-empty folder that is not an imgclf run; "
                                  "refusing to delete it, pick another --out")
            shutil.rmtree(path)
    else:
        name = slug(data_source, "run")
        path = Path("runs") / name
        number = 2
        while path.exists():
            path = Path("runs") / f"{name}-{number}"
            number += 1
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("This folder is an imgclf run; imgclf train --overwrite may replace it.\n")
    return RunDirectory(path)


def slug(source: str, fallback: str) -> str:
    """A file-name-safe short name for a data source (its last path component)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(source).name if source else "") or fallback
