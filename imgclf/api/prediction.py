"""Predictions of a trained model: streamed in one process, or written in parts by the ranks of a torchrun job."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import ImgclfError

if TYPE_CHECKING:  # the heavy modules load only when their command runs
    from imgclf.deploy.predict import PredictionRow
    from imgclf.deploy.predict_parts import PartsSummary
    from imgclf.watch.log import LogOptions


def predict(model: str | Path, inputs: str | Path | Sequence[str | Path], *, top_k: int = 5, min_confidence: float = 0.0,
            tta: bool | None = None, batch_size: int = 64, device: str = "auto", runtime: str = "auto",
            log: LogOptions | None = None) -> Iterator[PredictionRow]:
    """Stream a :class:`~imgclf.deploy.predict.PredictionRow` per image for files, folders, globs or @lists.

    With ``log``, every answer is also recorded in the prediction log, with
    the pooled features of the same forward pass (:mod:`imgclf.watch`).
    """
    from imgclf.deploy.classifier import Classifier
    from imgclf.deploy.predict import expand_inputs

    _check_predict_options(top_k, min_confidence, batch_size)
    paths = expand_inputs([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    classifier = Classifier.load(model, device=device, tta=tta, runtime=runtime, batch_size=batch_size)
    rows = classifier.predict_files(paths, top_k=top_k, min_confidence=min_confidence, batch_size=batch_size,
                                    features=log is not None)
    if log is None:
        return rows
    from imgclf.watch.log import PredictionLog, logged_rows
    from imgclf.watch.records import decision_threshold

    prediction_log = PredictionLog(log, classifier.directory, classifier.info)  # type: ignore[arg-type]  # load() sets it
    return logged_rows(rows, prediction_log, decision_threshold(classifier))


def predict_in_parts(model: str | Path, inputs: str | Path | Sequence[str | Path], output_format: str,
                     out: str | Path | None = None, *, top_k: int = 5, min_confidence: float = 0.0,
                     tta: bool | None = None, batch_size: int = 64, device: str = "auto", runtime: str = "auto"
                     ) -> PartsSummary | None:
    """``predict`` as one rank of a torchrun job, written as ``output_format`` to ``out`` (default: stdout).

    Each rank classifies its share of the inputs into parts beside ``out``;
    rank 0 joins them in input order and returns the summary, the other
    ranks return None. A rerun of a killed job skips the finished parts. In
    a plain process (a world of one) it writes the same output in one part.
    """
    from imgclf import distributed
    from imgclf.deploy.predict import expand_inputs
    from imgclf.deploy.predict_parts import predict_in_parts as run_in_parts

    _check_predict_options(top_k, min_confidence, batch_size)
    entries = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    check_distributable(model, entries)
    world = distributed.start(distributed.rank_device(device, distributed.current_world()))
    try:
        return run_in_parts(model, expand_inputs(entries), output_format, Path(out) if out else None, world,
                            top_k=top_k, min_confidence=min_confidence, tta=tta, batch_size=batch_size,
                            runtime=runtime, device=device)
    finally:
        distributed.stop()


def check_distributable(model: str | Path | None, inputs: Sequence[str | Path]) -> None:
    """Refuse what cannot be split among processes: paths on stdin, a TensorFlow (Keras) model."""
    from imgclf.deploy.bundle import find_bundle, read_bundle_info

    if "-" in [str(entry) for entry in inputs]:
        raise ImgclfError("- (paths on stdin) cannot be split among processes, which do not share stdin; write the "
                          "paths to a file and give @list.txt")
    if model is None or not Path(model).is_dir():
        return  # a registry backbone (embed): a torch model
    bundle = find_bundle(model)
    info = read_bundle_info(bundle)
    backends = {info.backend} | {read_bundle_info(bundle / member["path"]).backend for member in info.members}
    if backends - {"torch"}:
        raise ImgclfError(f"{model}: a {'/'.join(sorted(backends - {'torch'}))} model runs in one process; "
                          "--nproc and torchrun are supported for models trained with --backend torch "
                          "(leave out --nproc)")


def _check_predict_options(top_k: int, min_confidence: float, batch_size: int) -> None:
    if not 0.0 <= min_confidence <= 1.0:
        raise ImgclfError(f"--min-confidence must be a probability between 0 and 1, got {min_confidence}")
    if top_k < 1:
        raise ImgclfError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ImgclfError(f"--batch-size must be at least 1, got {batch_size}")
