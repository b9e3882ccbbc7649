"""``train``: from a data source and a config to a run directory with a model bundle.

The steps, in order: read the data and its split; choose every default
from the data (:mod:`imgclf.recipes`); create the run directory; decode
once into the cache; let the backend's engine (:mod:`imgclf.engines.registry`)
build the model and fit the schedule to ``--time-budget`` if one is given;
train it with the run's callbacks; evaluate on val and test; write the
bundle and a summary.
``--resume RUN`` re-enters the same steps from the run's saved config,
split and last checkpoint.

Under torchrun every rank runs these steps with the same config: rank 0
makes the run directory (the others learn its path from it), decodes the
cache while the others wait and then open it read-only, and alone prints,
keeps the books (callbacks) and writes the bundle and summary; the others
train quietly beside it and return once the fit ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.config import TrainConfig, parse_duration
from imgclf.console import console
from imgclf.data.hierarchy import cut_labels, label_tree
from imgclf.data.inspect import imbalance_warning
from imgclf.data.shards import training_pixels
from imgclf.data.sources import ImageDataset, write_manifest
from imgclf.data.splits import require_training_images
from imgclf.engines.callbacks import Callback, standard_callbacks
from imgclf.engines.divergence import DivergenceGuard, check_finite_weights
from imgclf.engines.registry import get_backend
from imgclf.errors import ImgclfError
from imgclf.files import write_problem_list
from imgclf.recipes import DataFacts, check_members, member_configs, resolve, uses_photo_plan
from imgclf.runs import RunDirectory, new_run_directory, user_options
from imgclf.thresholds import ThresholdGoal, parse_goal, positive_class

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch loads only when training starts
    from imgclf.deploy.classifier import Classifier
    from imgclf.distributed import World
    from imgclf.engines.contract import Engine, FitResult, TrainingData

SIZE_SAMPLE = 256  # images whose header is read to choose the image size


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_dir: Path
    model_dir: Path | None
    config: TrainConfig
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    interrupted: bool = False
    multilabel: bool = False
    # each held-out image's probabilities from the finished bundle, by path: the run's report reads them
    held_out_probabilities: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    stopped_early: bool = False  # early stopping ended it before --epochs


def data_facts(dataset: ImageDataset) -> DataFacts:
    """Training-split size and median image side (from a sample of file headers)."""
    from imgclf.data.decode import peek_size

    train = dataset.split_items("train")
    step = max(1, len(train) // SIZE_SAMPLE)
    sides = [max(size) for item in train[::step][:SIZE_SAMPLE] if (size := peek_size(item.path))]
    if not train:
        raise ImgclfError(f"{dataset.source}: no training images; check the folder layout (see docs/guides/data.md)")
    if not sides:
        raise ImgclfError(f"{dataset.source}: none of the sampled training images could be read; run imgclf inspect")
    return DataFacts(train_images=len(train), median_side=int(median(sides)),
                     multilabel=dataset.multilabel)


def plan(config: TrainConfig, archive: str | Path | None = None) -> tuple[TrainConfig, ImageDataset]:
    """The resolved config and the split dataset, without training (``--dry-run``)."""
    from imgclf.data.splits import load_dataset
    from imgclf.distributed import current_world

    if not config.data:
        raise ImgclfError("no data given; pass a folder, a CSV manifest or cifar10 (imgclf train DATA)")
    backend = get_backend(config.backend)
    config, weights_source = backend.prepare(config)
    dataset = load_dataset(config.data, archive=archive, val_fraction=config.val_fraction,
                           test_fraction=config.test_fraction, seed=config.split_seed, group_by=config.group_by,
                           corrections=config.corrections, rename=config.rename)
    if config.label_depth:  # after the split: it stays stratified by the full paths
        dataset = cut_labels(dataset, config.label_depth)
    label_tree(dataset.classes, dataset.source)  # path labels must parse now, not when the bundle is loaded
    if len(dataset.classes) < 2:
        raise ImgclfError(f"{dataset.source}: found {len(dataset.classes)} class; a classifier needs at least 2")
    require_training_images(dataset)
    positive_class(dataset.classes, config.positive, dataset.multilabel)  # --positive refused before any work
    facts = data_facts(dataset)
    if uses_photo_plan(config, facts) and not config.ensemble:
        config = _photo_plan(config, dataset, weights_source)
    if config.ensemble:  # each member's options are checked now, before the first one trains for minutes
        check_members(config, dataset.multilabel, len(dataset.split_items("val")))
        for member in member_configs(config, Path(config.out or ".")):
            member, member_weights = backend.prepare(member)  # an unknown name or missing weights: said now
            backend.check(resolve(member, facts, member_weights))
        return config, dataset
    resolved = resolve(config, facts, weights_source)
    backend.check(resolved)
    backend.check_processes(current_world().size)
    return resolved, dataset


def _photo_plan(config: TrainConfig, dataset: ImageDataset, weights_source: Callable[[str], str | None]) -> TrainConfig:
    """The default model, size and views for pretrained photos, chosen to fit the time budget (engines.planner)."""
    from imgclf.distributed import current_world
    from imgclf.engines.planner import DEFAULT_BUDGET_S, EnsemblePlan, choose_plan, measure_trunk_seconds

    budget = parse_duration(config.time_budget) if config.time_budget else DEFAULT_BUDGET_S
    chosen = choose_plan(len(dataset.split_items("train")), len(dataset.split_items("val")), budget,
                         measure_trunk_seconds(config.precision), lambda trunk: weights_source(trunk) is not None,
                         tail=current_world().size == 1)  # the tail runs in one process: --nproc gets the probe
    if isinstance(chosen, EnsemblePlan):
        members = ",".join(f"{member.model}@{member.image_size}" for member in chosen.members)
        log.info(f"photo recipe for {budget:.0f} s: an ensemble of {len(chosen.members)} tail models, "
                 f"{members.replace(',', ', ')} (what each plan measured: docs/reference/plans.md)")
        return replace(config, ensemble=members)
    views = "with mirror images (flip TTA)" if chosen.views == 2 else "plain view"
    tail = f", then its last {chosen.tail_blocks} block(s) on kept activations" if chosen.tail_blocks else ""
    log.info(f"photo recipe for {budget:.0f} s: {chosen.model} at {chosen.image_size}px, {views}{tail} "
             f"(flowers val {chosen.flowers_accuracy:.1%})")
    planned: dict[str, Any] = {"strategy": "tail", "tail_blocks": chosen.tail_blocks} if chosen.tail_blocks else {}
    return replace(config, model=chosen.model, image_size=config.image_size or chosen.image_size,
                   tta=chosen.views > 1 if config.tta is None else config.tta, **planned)


def train(config: TrainConfig, *, archive: str | Path | None = None, overwrite: bool = False,
          resume: str | Path | None = None, callbacks: list[Callback] | None = None,
          warm_start: Path | None = None, planned: tuple[TrainConfig, ImageDataset] | None = None) -> TrainResult:
    """Train as ``config`` says (or continue ``resume``; or start from the bundle ``warm_start``) and write the bundle.

    ``callbacks`` see the training events after the run's own bookkeeping (see :mod:`imgclf.engines.callbacks`).
    ``planned``: what :func:`plan` already made of ``config`` (it is not planned, nor its trunks timed, twice).
    """
    from imgclf import distributed

    resuming = resume is not None
    world = distributed.current_world()
    if not world.is_main:
        console.quiet = True  # rank 0 alone prints: its messages (the CLI's handler prints on the console) and bars
    if resume is not None:
        run = RunDirectory(Path(resume))
        config = run.read_config()
        dataset = run.read_split()
        get_backend(config.backend).check_processes(world.size)
        _join(world, config)
    else:
        chosen_by_user = user_options(config)
        config, dataset = planned or plan(config, archive)
        if config.ensemble:
            raise ImgclfError(f"{'--ensemble' if chosen_by_user.get('ensemble') else 'this budget'} makes an "
                              "ensemble of several runs, which only imgclf train (imgclf.train) writes; tune, "
                              "cross-validation and update train one model: give --model, or a budget of 5m or less")
        _join(world, config)
        config = distributed.broadcast_from_main(config)  # the planner times trunks: rank 0's choice
        run = new_run(world, config, dataset, overwrite, chosen_by_user)
        config = replace(config, out=str(run.path))
    imbalance = imbalance_warning(dataset.split_items("train"))
    if imbalance:
        log.warning(f"warning: {imbalance}")
    backend = get_backend(config.backend)
    backend.require()
    engine = backend.engine(config, run)
    data = _decode(dataset, config, run, warm_start)
    resumed = engine.build(data, resuming)
    if config.time_budget and not resumed:
        config = engine.fit_to_budget(parse_duration(config.time_budget))
        if world.is_main:
            run.write_config(config)
    _print_start(config, data, engine)
    # the guard runs on every rank (so all stop at the same non-finite step), after the epoch's line is printed
    bookkeeping: list[Callback] = ([*standard_callbacks(config, run), DivergenceGuard(), *(callbacks or [])]
                                   if world.is_main else [DivergenceGuard()])
    result = engine.fit(bookkeeping)
    if engine.config.probe_c != config.probe_c:  # the C the probe's cross-validation chose: an update reuses it
        config = replace(config, probe_c=engine.config.probe_c)
        if world.is_main:
            run.write_config(config)
    distributed.barrier()
    distributed.stop()
    if not world.is_main:  # rank 0 writes the bundle, scores it and prints the summary
        return TrainResult(run.path, None, config, result.history, {}, interrupted=result.interrupted)
    if result.interrupted:
        log.warning(f"interrupted; checkpoint saved. Continue with: imgclf train --resume {run.path}")
        return TrainResult(run.path, None, config, result.history, {}, interrupted=True)
    return _finish(run, config, engine, data, result)


def _finish(run: RunDirectory, config: TrainConfig, engine: Engine, data: TrainingData,
            result: FitResult) -> TrainResult:
    """A finished fit's bundle: written, calibrated, decided, scored, and its monitoring reference stored."""
    check_finite_weights(result.model)
    model_dir = _write_bundle(run, config, engine, data, {})
    held_out = HeldOut.of(model_dir, data)  # one pass of val and test through the bundle serves all below
    calibration = _calibrate(model_dir, data, held_out)  # before scoring: val/test losses are the calibrated model's
    calibration.update(_choose_label_thresholds(model_dir, data, config, held_out))  # on what users get
    decision = _decide(model_dir, data, config, held_out)  # on calibrated probabilities, before scoring
    metrics = _final_metrics(engine, data, result, model_dir, held_out, {**calibration, **decision})
    _write_reference(model_dir, data, held_out, engine.kept_features("train"))
    held_out.keep_logits(run, model_dir, data)
    return TrainResult(run.path, model_dir, config, result.history, metrics, multilabel=data.multilabel,
                       held_out_probabilities=held_out.probabilities_by_path(model_dir, data),
                       stopped_early=result.stopped_early)


def _join(world: World, config: TrainConfig) -> None:
    """Join the job's process group (gloo on the CPU, nccl on CUDA); nothing in a world of one."""
    if world.is_distributed:
        from imgclf.distributed import start
        from imgclf.models.device import choose_device

        start(choose_device(config.device))


def new_run(world: World, config: TrainConfig, dataset: ImageDataset, overwrite: bool,
             chosen_by_user: dict[str, Any]) -> RunDirectory:
    """The new run directory with its config, split and the user's options, made by rank 0; every rank gets it."""
    made: str | ImgclfError
    if world.is_main:
        try:
            run = new_run_directory(config.out, dataset.source, overwrite)
            run.write_config(replace(config, out=str(run.path)))
            run.write_choices(chosen_by_user)
            write_manifest(dataset, run.split_file)
            run.write_corrections(dataset.corrections)
            made = str(run.path)
        except ImgclfError as error:
            made = error
    from imgclf.distributed import broadcast_from_main

    made = broadcast_from_main(made if world.is_main else None)  # type: ignore[assignment]  # rank 0 always sends one
    if isinstance(made, ImgclfError):
        raise made
    return RunDirectory(Path(made))


def _print_start(config: TrainConfig, data: TrainingData, engine: Engine) -> None:
    schedule = f"{config.epochs:g} epoch{'' if config.epochs == 1 else 's'}"
    schedule += " from the run's weights" if engine.warm_pretrained else ""
    log.info(f"training {config.model} ({config.strategy}) on {len(data.rows['train']):,} images at "
             f"{config.image_size}px, {schedule}, batch {config.batch_size}, {engine.machine}")


def _decode(dataset: ImageDataset, config: TrainConfig, run: RunDirectory, warm_start: Path | None) -> TrainingData:
    import torch

    from imgclf.data.cache import build_cache
    from imgclf.data.decode import DEFAULT_MAX_PIXELS
    from imgclf.distributed import barrier, current_world
    from imgclf.engines.contract import TrainingData

    size = (config.image_size, config.image_size)
    world = current_world()
    if not world.is_main:
        barrier()  # rank 0 decodes; the others then find its entry and open it read-only
    cache = build_cache([item.path for item in dataset.items], size=size, policy=config.resize,  # type: ignore[arg-type]  # a resolved recipe's resize is a policy
                        grayscale=config.grayscale, max_pixels=config.max_pixels or DEFAULT_MAX_PIXELS,
                        workers=config.workers, source=dataset.source)
    if world.is_main:
        barrier()
    if world.is_main:
        run.write_data_manifest([str(item.path) for item in dataset.items], [str(digest) for digest in cache.digests])
    broken = cache.broken()
    if broken and world.is_main:
        write_problem_list(run.path / "broken_files.txt", [(str(path), reason) for path, reason in broken])
        log.warning(f"skipped {len(broken)} unreadable image(s); listed in {run.path / 'broken_files.txt'}")
    ok = cache.ok
    rows = {split: np.array([index for index, item in enumerate(dataset.items) if item.split == split and ok[index]],
                            dtype=np.int64) for split in ("train", "val", "test")}
    if not len(rows["train"]):
        raise ImgclfError(f"{dataset.source}: no training image could be decoded; run imgclf inspect to see why")
    require_training_images(dataset.with_items([item for item, good in zip(dataset.items, ok) if good]),
                            "readable training images", "replace the files listed in broken_files.txt")
    index = {name: position for position, name in enumerate(dataset.classes)}
    if dataset.multilabel:
        targets = torch.zeros(len(dataset.items), len(dataset.classes))
        for row, item in enumerate(dataset.items):
            targets[row, [index[label] for label in item.labels]] = 1.0
    else:
        targets = torch.tensor([index[item.labels[0]] for item in dataset.items], dtype=torch.int64)
    return TrainingData(pixels=training_pixels(cache),  # type: ignore[arg-type]  # PixelRows indexes as the array does
                        rows=rows, targets=targets, classes=list(dataset.classes),
                        multilabel=dataset.multilabel, mean=(0.0,), std=(1.0,),
                        paths=[item.path for item in dataset.items], warm_start=warm_start)


@dataclass
class HeldOut:
    """The written bundle's runtime and its raw logits (TTA included, before temperature) on val and test.

    Calibration, the thresholds, the binary decision and the final scores
    all read these logits: each used to pass the images through the bundle
    again (three times for a binary model's val), and on pretrained photos
    forward passes are the whole cost of a run.
    """

    logits: dict[str, np.ndarray]
    classifier: Classifier | None
    val_features: np.ndarray | None = None  # val's pooled features from the same passes: the monitoring reference's

    @classmethod
    def of(cls, model_dir: Path, data: TrainingData) -> HeldOut:
        from imgclf.deploy.classifier import Classifier

        splits = [split for split in ("val", "test") if len(data.rows[split])]
        if not splits:
            return cls({}, None)
        classifier = Classifier.load(model_dir)
        val_logits, val_features = classifier.rows_logits_and_features(data.pixels, data.rows["val"])
        logits = {split: val_logits if split == "val" else classifier.rows_logits(data.pixels, data.rows[split])
                  for split in splits}
        return cls(logits, classifier, val_features)

    def bundle_now(self, model_dir: Path) -> Classifier:
        """The same runtime with ``model.json`` read again: the temperature and thresholds chosen since loading."""
        from imgclf.deploy.bundle import read_bundle_info
        from imgclf.deploy.classifier import Classifier

        assert self.classifier is not None, "no held-out images"
        return Classifier(self.classifier.runtime, read_bundle_info(model_dir), directory=model_dir)

    def keep_logits(self, run: RunDirectory, model_dir: Path, data: TrainingData) -> None:
        """Write the raw logits into the run: an update's gate reads them as its "before" instead of a second pass."""
        from imgclf.deploy.metadata import weights_file_digest

        if self.logits:
            run.write_held_out_logits(weights_file_digest(model_dir), {
                str(data.paths[row]): values for split, logits in self.logits.items()
                for row, values in zip(data.rows[split], np.round(logits.astype(np.float64), 5).tolist())})

    def probabilities_by_path(self, model_dir: Path, data: TrainingData) -> dict[str, np.ndarray]:
        """Each held-out image's probabilities as ``predict`` gives them now, keyed by its path.

        The report evaluates the same bundle on the same split; reading these
        spares it a second decode and forward pass of every held-out image
        (on pretrained photos, forward passes are the cost of a run).
        """
        if not self.logits:
            return {}
        classifier = self.bundle_now(model_dir)
        return {str(data.paths[row]): probabilities for split, logits in self.logits.items()
                for row, probabilities in zip(data.rows[split], classifier.probabilities_of(logits))}

    def val_probabilities(self, model_dir: Path) -> np.ndarray:
        """val's probabilities as predict gives them now (temperature included)."""
        return self.bundle_now(model_dir).probabilities_of(self.logits["val"])


def _final_metrics(engine: Engine, data: TrainingData, result: FitResult, model_dir: Path, held_out: HeldOut,
                   calibration: dict[str, Any]) -> dict[str, Any]:
    """The run's figures, val/test scored by the written bundle as ``imgclf evaluate`` scores them; saved in it.

    Scoring the bundle rather than the engine's training-time model means
    the summary, ``model.json``, the report and ``evaluate`` give one number
    for one model on one split (the engine's view differs in precision, and
    a probe scores float16 embeddings).
    """
    from imgclf.deploy.bundle import write_bundle_metrics

    metrics: dict[str, Any] = {"epochs_trained": len(result.history), "best_epoch": result.best_epoch,
                               "train_seconds": round(sum(row["seconds"] for row in result.history), 2),
                               "parameters": engine.parameter_count(), **calibration}
    if engine.config.time_budget:  # the budget's opening plan, and what the run trained after re-planning it
        metrics.update(budget_epochs_planned=engine.config.epochs, budget_epochs_trained=result.trained_epochs)
    if held_out.logits:
        classifier = held_out.bundle_now(model_dir)
        for split, logits in held_out.logits.items():
            scores = classifier.score_logits(logits, data.split_targets(split).numpy())
            metrics[f"{split}_loss"] = round(scores["loss"], 6)
            metrics[f"{split}_accuracy"] = round(scores["accuracy"], 6)
            metrics[f"{split}_images"] = len(data.rows[split])
    write_bundle_metrics(model_dir, metrics)
    return metrics


def _write_reference(model_dir: Path, data: TrainingData, held_out: HeldOut, train_features: np.ndarray | None) -> None:
    """What monitoring compares production with (:mod:`imgclf.watch.reference`), from training and val images.

    val's features come from the held-out pass already made (no second pass over val); the training
    sample's from what the engine kept (a tail's activations), when it kept any.
    """
    from imgclf.watch.reference import reference_from_training

    position = {row: index for index, row in enumerate(data.rows["train"])}
    kept = None if train_features is None else (
        lambda rows: train_features[[position[row] for row in rows]])
    reference_from_training(model_dir, data.pixels, data.rows, data.targets.numpy(), data.classes, data.multilabel,
                            val_features=held_out.val_features, train_features=kept)


def _write_bundle(run: RunDirectory, config: TrainConfig, engine: Engine, data: TrainingData,
                  metrics: dict[str, Any]) -> Path:
    from imgclf.deploy.bundle import BundleInfo

    info = BundleInfo(architecture=config.model or "", model_args=dict(config.model_args), classes=data.classes,
                      image_size=config.image_size or 0, mean=list(data.mean), std=list(data.std),
                      multilabel=data.multilabel, channels=1 if config.grayscale else 3,
                      resize=config.resize,  # type: ignore[arg-type]  # a resolved recipe's resize is a policy
                      tta=bool(config.tta), tta_shift=config.tta_shift or 0, tta_zoom=config.tta_zoom or 0.0,
                      backend=config.backend, config=config.to_dict(), metrics=metrics)
    return engine.write_bundle(info, run.model_dir)


def _calibrate(model_dir: Path, data: TrainingData, held_out: HeldOut) -> dict[str, Any]:
    """Temperature scaling on the validation split, stored in the bundle (nothing for multi-label or no val)."""
    from imgclf.deploy.calibration import calibrate_logits, store_calibration

    val = data.rows["val"]
    if data.multilabel or len(val) < 2:
        return {}
    calibration = calibrate_logits(held_out.logits["val"], data.targets[val].numpy())
    store_calibration(model_dir, calibration)
    return {"calibration": asdict(calibration)}


def _choose_label_thresholds(model_dir: Path, data: TrainingData, config: TrainConfig,
                             held_out: HeldOut) -> dict[str, Any]:
    """A multi-label bundle's per-label thresholds, chosen on val for ``--threshold-for`` (0.5 without val).

    Multi-label models are not temperature-scaled (:func:`_calibrate`): one
    temperature moves no label's ranking, and each label's threshold is
    chosen on the probabilities exactly as the bundle will give them.
    """
    from imgclf.deploy.bundle import update_bundle_info
    from imgclf.thresholds import choose_label_thresholds, parse_goal

    val = data.rows["val"]
    if not data.multilabel or not len(val):
        return {}
    goal = parse_goal(config.threshold_for)
    probabilities = held_out.val_probabilities(model_dir)
    choices = choose_label_thresholds(probabilities, data.targets[val].numpy(), data.classes, goal)
    update_bundle_info(model_dir, thresholds={name: round(choice.threshold, 6) for name, choice in choices.items()},
                       threshold_goal=str(goal))
    return {"thresholds": {name: {"threshold": round(choice.threshold, 6), "precision": round(choice.precision, 6),
                                  "recall": round(choice.recall, 6), "f1": round(choice.f1, 6), "met": choice.met}
                           for name, choice in choices.items()}, "threshold_goal": str(goal)}


def _decide(model_dir: Path, data: TrainingData, config: TrainConfig, held_out: HeldOut) -> dict[str, Any]:
    """A two-class model's decision threshold, chosen on val's calibrated P(positive) and stored in the bundle.

    Engine-independent: it reads only the written bundle's probabilities.
    Without validation images a goal other than a fixed threshold cannot
    be met, so the model decides at 0.5 and says so.
    """
    from imgclf.deploy.decision import choose_decision, store_decision

    positive = positive_class(data.classes, config.positive, data.multilabel)
    if positive is None:
        return {}
    goal = parse_goal(config.threshold_for)
    val = data.rows["val"]
    if not len(val) and goal.kind != "fixed":
        log.warning(f"no validation images to choose the threshold for {goal} on; deciding '{positive}' at 0.5")
        goal = ThresholdGoal("fixed", 0.5)
    probabilities = held_out.val_probabilities(model_dir) if len(val) else np.zeros((0, len(data.classes)))
    choice = choose_decision(probabilities, data.targets[val].numpy(), data.classes, positive, goal)
    store_decision(model_dir, positive, goal, choice)
    if not choice.met:
        log.warning(f"no threshold reaches {goal} on val; kept the closest, {choice.threshold:.4g} "
                    f"(precision {choice.precision:.3f}, recall {choice.recall:.3f})")
    return {"decision": {"positive": positive, "goal": str(goal), "threshold": choice.threshold, "met": choice.met,
                         "val_precision": round(choice.precision, 6), "val_recall": round(choice.recall, 6),
                         "val_f1": round(choice.f1, 6)}}
