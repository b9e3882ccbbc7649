"""Fine-tuning that costs little on a CPU: train a trunk's last blocks on its cached activations.

Fine-tuning a whole pretrained network on a CPU spends nearly all its time
in the early, wide layers, whose output for an image barely needs to
change. Here the trunk is cut before its last ``blocks`` inverted-residual
blocks: the frozen part (stem and the blocks before the cut) runs once per
image and view, its output activations are kept in memory (float16, and
on disk beside the embeddings, so a rerun or a tune trial reads them), and
only the tail (those blocks, ``conv_head``, ``bn2`` and the classifier)
trains, for a few epochs, on the kept activations. The tail's BatchNorm
statistics stay frozen, as whole-network fine-tuning keeps them.

The tail trains the model's own modules in place, so the result is the
ordinary model (one bundle, the same predictions and exports).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from imgclf import paths
from imgclf.console import progress_bar
from imgclf.data.batches import epoch_batches, view_rows
from imgclf.data.views import PLAIN, view_of
from imgclf.embeddings.embedder import SAVE_EVERY
from imgclf.embeddings.store import EmbeddingStore, image_key
from imgclf.errors import ImgclfError
from imgclf.models.device import autocast, choose_device, choose_precision
from imgclf.models.folding import inference_copy
from imgclf.models.stack import TrunkStack

if TYPE_CHECKING:
    from imgclf.config import TrainConfig
    from imgclf.engines.contract import TrainingData

log = logging.getLogger(__name__)

# timm's EfficientNet layout (stem, block stages, head conv): the trunks a tail can be cut from
TRUNK_PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")
PASS_BATCH = 64  # images per batch of the activation pass
STORED_ROWS = "float16 activations of the frozen part, then its pooled features"  # in the cache's key: the layout
DISK_SPARE_BYTES = 2**30  # the disk keeps at least this free beyond twice the activations, or they stay in memory


def supports_tail(model: nn.Module) -> bool:
    """Whether the model (or every trunk of a stack) has timm's EfficientNet layout and a linear head."""
    trunks = list(model.trunks) if isinstance(model, TrunkStack) else [model]
    return all(all(hasattr(trunk, part) for part in TRUNK_PARTS) for trunk in trunks) and isinstance(
        model.get_classifier(), nn.Linear)  # type: ignore[operator]  # timm's/our models' method; nn.Module's hint does not know it


def _flat_blocks(trunk: nn.Module) -> list[nn.Module]:
    return [block for stage in trunk.blocks for block in stage]  # type: ignore[union-attr]  # an EfficientNet trunk's stages of blocks


class _Frozen(nn.Module):
    """Stem and the blocks before the cut: images to the activations the tail starts from."""

    def __init__(self, trunk: nn.Module, cut: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(trunk.conv_stem, trunk.bn1)  # type: ignore[arg-type]  # an EfficientNet trunk's layers
        self.blocks = nn.Sequential(*_flat_blocks(trunk)[:cut])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(images))


class _Tail(nn.Module):
    """The blocks from the cut, the head convolution and pooling: activations to pooled features."""

    def __init__(self, trunk: nn.Module, cut: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*_flat_blocks(trunk)[cut:])
        self.finish = nn.Sequential(trunk.conv_head, trunk.bn2, trunk.global_pool)  # type: ignore[arg-type]  # an EfficientNet trunk's layers

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.finish(self.blocks(activations))


class TailModel(nn.Module):
    """A model split at its tail: per trunk the frozen part and the tail (the model's own modules), and the head.

    Its ``forward`` takes a batch of packed activations (every trunk's
    flattened, side by side, as :class:`ActivationPass` keeps them) and
    returns logits: what a training step of the tail stage runs.
    """

    def __init__(self, frozen: list[_Frozen], tails: list[_Tail], head: nn.Linear,
                 shapes: list[tuple[int, int, int]]) -> None:
        super().__init__()
        self.frozen = frozen  # a plain list: not trained, not part of this module's parameters
        self.tails = nn.ModuleList(tails)
        self.head = head
        self.shapes = shapes
        self.width = sum(int(np.prod(shape)) for shape in shapes)

    def unpack(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """Per trunk (B, C, H, W) channels_last activations from packed (B, width) rows."""
        parts, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape))
            parts.append(packed[:, start:start + size].reshape(-1, *shape).contiguous(
                memory_format=torch.channels_last))
            start += size
        return parts

    def features(self, activations: list[torch.Tensor]) -> torch.Tensor:
        """Pooled features (the probe's embedding) from each trunk's activations, trunks side by side."""
        return torch.cat([tail(part) for tail, part in zip(self.tails, activations)], dim=1)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.unpack(packed)))


def split_model(model: nn.Module, blocks: int, image_size: int, channels: int = 3) -> TailModel:
    """``model`` (an EfficientNet-layout trunk or a stack of them) cut before each trunk's last ``blocks`` blocks."""
    trunks = list(model.trunks) if isinstance(model, TrunkStack) else [model]
    frozen, tails = [], []
    for trunk in trunks:
        count = len(_flat_blocks(trunk))
        if not 1 <= blocks <= count:
            raise ImgclfError(f"--tail-blocks {blocks}: the trunk has {count} blocks; give 1 to {count} "
                              "(1, the default, is the cheapest)")
        frozen.append(_Frozen(trunk, count - blocks))
        tails.append(_Tail(trunk, count - blocks))
    head = model.get_classifier()  # type: ignore[operator]  # timm's/our models' method; nn.Module's hint does not know it
    assert isinstance(head, nn.Linear)
    parameter = next(model.parameters())
    example = torch.zeros(1, channels, image_size, image_size, device=parameter.device)
    with torch.no_grad():
        shapes = [tuple(part.eval()(example).shape[1:]) for part in frozen]
    return TailModel(frozen, tails, head, shapes)


def activation_bytes(split: TailModel, images: int) -> int:
    """Memory the float16 activations of ``images`` images take (each view of an image counts as one)."""
    return 2 * split.width * images


class ActivationPass:
    """The frozen parts as inference copies (BatchNorm folded): images to packed float16 activations and embeddings."""

    def __init__(self, split: TailModel, example: torch.Tensor, device: torch.device, precision: str) -> None:
        self.split, self.device, self.precision = split, device, precision
        example = example.to(device).contiguous(memory_format=torch.channels_last)
        self.frozen = [inference_copy(part, example) for part in split.frozen]

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed float16 (B, width) activations, float32 pooled features of the unchanged tails) for one batch."""
        with autocast(self.device, self.precision):
            activations = [part(images) for part in self.frozen]
            features = self.split.features(activations).float()
        packed = torch.cat([part.flatten(1) for part in activations], dim=1)  # (C, H, W) order, like unpack
        return packed.to(torch.float16).cpu(), features.cpu()


class ActivationLoader:
    """Training batches of kept activations, read as the engine reads a :class:`~imgclf.data.batches.BatchLoader`.

    ``views`` are (N, width) float16 activations of the same N images, one
    per view (plain, mirrored, zoomed...); each image is in one of its
    views per epoch (:func:`~imgclf.data.batches.view_rows`); each batch is (float32 (B, width), targets).
    """

    def __init__(self, views: Sequence[torch.Tensor], targets: torch.Tensor, batch_size: int, seed: int,
                 device: torch.device) -> None:
        self.views, self.targets, self.batch_size, self.seed, self.device = views, targets, batch_size, seed, device
        self.epoch = self.start_batch = 0

    def __len__(self) -> int:  # epoch_batches' count (the ragged last batch dropped), without drawing an order
        return max(1, len(self.targets) // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, first = self.epoch, self.start_batch
        self.epoch, self.start_batch = epoch + 1, 0
        count = len(self.targets)
        seen_in = view_rows(count, len(self.views), self.seed, epoch)
        for rows in epoch_batches(count, self.batch_size, self.seed, epoch, drop_last=count > self.batch_size)[first:]:
            batch = torch.empty(len(rows), self.views[0].shape[1], dtype=self.views[0].dtype)
            for view, activations in enumerate(self.views):
                here = np.flatnonzero(seen_in[rows] == view)
                batch[here] = activations[torch.from_numpy(rows[here])]
            yield batch.to(self.device).float(), self.targets[torch.from_numpy(rows)].to(self.device)


def kept_views(views: Sequence[str]) -> list[tuple[str, str]]:
    """The (split, view) activations a tail keeps: the training images in each view, val plain (its epoch scores)."""
    return [("train", view) for view in views] + [("val", PLAIN)]


def memory_limit_bytes() -> int:
    """The kept activations may take a quarter of this machine's memory (the decode cache's streaming rule)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


class TailStage:
    """What the engine's tail stage needs: the split model and the kept activations of train (every view) and val.

    One pass of the frozen part over train (in each of its ``views``: plain,
    mirrored, zoomed; the tail's augmentation, one view per image and
    epoch) and val (plain: the tail's epoch scores) gives both the activations and the probe's embeddings (the unchanged
    tail's pooled features), so the probe before the tail costs no forward
    pass of its own. Both are also kept on disk, like embeddings
    (:class:`~imgclf.embeddings.store.EmbeddingStore`, one store per view,
    keyed by the frozen part's identity: the embedder's plus the cut), so a
    second run on the same images, a tune trial or a resumed run reads them
    instead of running the frozen part again.
    """

    def __init__(self, split: TailModel, config: TrainConfig, data: TrainingData,
                 identity: dict[str, Any] | None, views: Sequence[str]) -> None:
        self.model, self.config, self.data = split, config, data
        self.identity = identity
        self.views = list(views)
        self.kept = kept_views(views)
        self.device = choose_device(config.device)
        self.precision = choose_precision(config.precision, self.device)
        self._kept: dict[tuple[str, str], tuple[torch.Tensor, np.ndarray]] = {}

    @classmethod
    def plan(cls, model: nn.Module, config: TrainConfig, data: TrainingData, distributed: bool,
             identity: dict[str, Any] | None, views: Sequence[str]) -> TailStage | None:
        """The stage for ``model``, or None (said in a warning) when its activations would not fit in memory.

        ``identity``: what the frozen trunk's output depends on (the embedder's
        identity: architecture, weights, preprocessing, precision), or None
        when it cannot be known (no weights fingerprint, no image files): the
        activations are then kept in memory only. ``views``: the training
        images' views (:func:`imgclf.data.views.image_views`).
        """
        if distributed:
            raise ImgclfError("--strategy tail runs in one process (its activations are kept in that process's "
                              "memory); drop --nproc, or use --strategy two-stage")
        if not supports_tail(model):
            raise ImgclfError(f"--strategy tail: {config.model} has no EfficientNet block layout to cut a tail "
                              "from; use tf_efficientnet_lite0/1/2 (or a stack of them), or --strategy two-stage")
        channels = 1 if config.grayscale else 3
        split = split_model(model, config.tail_blocks, config.image_size or 0, channels)
        images = sum(len(data.rows.get(name, ())) for name, _ in kept_views(views))
        needed, limit = activation_bytes(split, images), memory_limit_bytes()
        if needed > limit:
            log.warning(f"tail skipped: its activations ({images:,} image views x {split.width:,} values, "
                        f"{needed / 2**30:.1f} GiB) exceed a quarter of this machine's memory "
                        f"({limit / 2**30:.1f} GiB); training the probe alone (--tail-blocks 1 keeps the least)")
            return None
        return cls(split, config, data, identity if data.paths else None, views)

    def _activations(self, split: str, view: str) -> tuple[torch.Tensor, np.ndarray]:
        """(packed float16 activations, float32 embeddings) of ``split`` in ``view``, computed or read once."""
        if (split, view) not in self._kept:
            self._kept.update(self._pass([key for key in self.kept if key not in self._kept]))
        return self._kept[split, view]

    def _store(self, view: str) -> EmbeddingStore | None:
        """The disk cache of one view's activations + features, or None when they cannot be keyed."""
        if self.identity is None:
            return None
        return EmbeddingStore({**self.identity, "view": view,
                               "tail": {"blocks": self.config.tail_blocks, "rows": STORED_ROWS}})

    def _pass(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[torch.Tensor, np.ndarray]]:
        """Every wanted (split, view): read from the disk cache, the rest in one pass of the frozen part.

        Each row is the image's float16 activations followed by its float16
        pooled features, fresh or cached alike, so a rerun on cached rows
        trains the same model as the first run did.
        """
        rows_of = {key: self.data.rows[key[0]] for key in wanted if len(self.data.rows.get(key[0], ()))}
        rows_out, missing, keys = self._cached(rows_of)
        to_compute = sum(len(positions) for positions in missing.values())
        cached = sum(len(rows) for rows in rows_of.values()) - to_compute
        if to_compute:
            self._compute_missing(rows_of, rows_out, missing, keys, to_compute)
        if cached:
            log.info(f"tail: activations of {cached:,} image views read from the cache"
                     + (f", {to_compute:,} computed" if to_compute else ""))
        width = self.model.width
        return {key: (torch.from_numpy(vectors[:, :width]), vectors[:, width:].astype(np.float32))
                for key, vectors in rows_out.items()}

    def _cached(self, rows_of: dict[tuple[str, str], np.ndarray]) -> tuple[
            dict[tuple[str, str], np.ndarray], dict[tuple[str, str], np.ndarray],
            dict[tuple[str, str], list[str | None]]]:
        """Per (split, view): the rows the disk cache holds (zero-width when none), the positions it lacks, the keys."""
        rows_out: dict[tuple[str, str], np.ndarray] = {}
        missing: dict[tuple[str, str], np.ndarray] = {}
        keys: dict[tuple[str, str], list[str | None]] = {}
        for split, view in rows_of:
            store = self._store(view)
            rows = rows_of[split, view]
            if store is None:
                keys[split, view], stored, found = [None] * len(rows), None, np.zeros(len(rows), bool)
            else:
                keys[split, view] = [image_key(self.data.paths[row]) for row in rows]
                stored, found = store.get(keys[split, view], dtype=np.float16)
            rows_out[split, view] = stored if stored is not None else np.zeros((len(rows), 0), np.float16)
            missing[split, view] = np.flatnonzero(~found)
        return rows_out, missing, keys

    def _compute_missing(self, rows_of: dict[tuple[str, str], np.ndarray], rows_out: dict[tuple[str, str], np.ndarray],
                         missing: dict[tuple[str, str], np.ndarray], keys: dict[tuple[str, str], list[str | None]],
                         to_compute: int) -> None:
        """The rows the cache lacks, through the frozen part, into ``rows_out`` (and the cache, if the disk has room)."""
        from imgclf.data.augment import augment_batch
        from imgclf.data.augment_presets import PRESETS

        data = self.data

        def images(rows: np.ndarray, view: str) -> torch.Tensor:
            pixels = view_of(data.pixels[np.sort(rows)][np.argsort(np.argsort(rows))], view)  # the embedder's
            return augment_batch(torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device), PRESETS["none"],
                                 torch.Generator(), data.mean, data.std)

        self.model.eval()
        first_split, first_view = next(key for key, positions in missing.items() if len(positions))
        example = images(rows_of[first_split, first_view][missing[first_split, first_view][:1]], PLAIN)
        runner = ActivationPass(self.model, example, self.device, self.precision)
        writable = self._room_on_disk(to_compute)
        with progress_bar() as bar:
            task = bar.add_task("Activations for the tail", total=to_compute)
            for (split, view), positions in missing.items():
                if len(positions):
                    rows_out[split, view] = self._compute(runner, images, (split, view), positions, rows_out,
                                                          keys, writable, bar, task)

    def _compute(self, runner: ActivationPass, images: Any, key: tuple[str, str], positions: np.ndarray,
                 rows_out: dict[tuple[str, str], np.ndarray], keys: dict[tuple[str, str], list[str | None]],
                 writable: bool, bar: Any, task: Any) -> np.ndarray:
        """The missing rows of one (split, view) through the frozen part, stored every SAVE_EVERY images."""
        split, view = key
        rows = self.data.rows[split]
        vectors = rows_out[key]
        store = self._store(view) if writable else None
        for start in range(0, len(positions), SAVE_EVERY):
            chunk = positions[start:start + SAVE_EVERY]
            parts = []
            for first in range(0, len(chunk), PASS_BATCH):
                packed, features = runner(images(rows[chunk[first:first + PASS_BATCH]], view))
                parts.append(torch.cat([packed, features.to(torch.float16)], dim=1).numpy())
                bar.advance(task, len(chunk[first:first + PASS_BATCH]))
            computed = np.concatenate(parts)
            if vectors.shape[1] == 0:  # nothing was cached: the rows are made here
                vectors = np.zeros((len(rows), computed.shape[1]), np.float16)
            vectors[chunk] = computed
            stored = [(keys[key][position], index) for index, position in enumerate(chunk)
                      if keys[key][position] is not None]
            if store is not None and stored:
                store.put([image for image, _ in stored], computed[[index for _, index in stored]])
        return vectors

    def _room_on_disk(self, views: int) -> bool:
        """Whether the cache's disk has room for ``views`` more rows with plenty to spare (else: memory only)."""
        if self.identity is None:
            return False
        needed = views * (self.model.width + self.model.head.in_features) * 2
        root = paths.cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if free < 2 * needed + DISK_SPARE_BYTES:
            log.warning(f"tail: not keeping its activations on disk ({needed / 2**30:.1f} GiB needed, "
                        f"{free / 2**30:.1f} GiB free under {root}); a rerun computes them again")
            return False
        return True

    def features(self, split: str, view: str = PLAIN) -> np.ndarray:
        """The probe's embeddings of ``split`` from the activation pass."""
        return self._activations(split, view)[1]

    def has(self, split: str) -> bool:
        return (split, PLAIN) in self.kept and len(self.data.rows.get(split, ())) > 0

    def loader(self) -> ActivationLoader:
        """The tail stage's training batches, as many per epoch as the image loader has."""
        views = [self._activations("train", view)[0] for view in self.views]
        return ActivationLoader(views, self.data.split_targets("train"), self.config.batch_size or 1, self.config.seed,
                                self.device)

    def tuned_features(self, split: str, view: str = PLAIN) -> np.ndarray:
        """Pooled features of ``split`` in ``view`` through the tail as it is now, not as the cache kept them.

        The kept features are the pretrained tail's; a tail that starts from
        trained weights (``imgclf update`` going on from a run) gives its own.
        """
        return self._through(split, view, lambda batch: self.model.features(self.model.unpack(batch)),
                             self.model.head.in_features).numpy()

    def logits(self, split: str) -> torch.Tensor:
        """Logits of the current weights for ``split``'s kept plain activations (the tail's epoch scores)."""
        return self._through(split, PLAIN, self.model, self.model.head.out_features)

    @torch.no_grad()
    def _through(self, split: str, view: str, module: Any, width: int) -> torch.Tensor:
        """float32 (N, ``width``) outputs of ``module`` (eval mode) for ``split``'s kept activations in ``view``."""
        packed = self._activations(split, view)[0]
        self.model.eval()
        outputs = [torch.empty(0, width)]
        with autocast(self.device, self.precision):
            for start in range(0, len(packed), 4 * PASS_BATCH):
                outputs.append(module(packed[start:start + 4 * PASS_BATCH].to(self.device).float()).float().cpu())
        return torch.cat(outputs)
