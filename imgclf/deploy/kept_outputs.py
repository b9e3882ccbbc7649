"""A bundle's probabilities on its run's held-out images, from the logits its training kept where it can.

Training passes val and test through the finished bundle once and keeps the
raw logits (``held_out_logits.json``, keyed by the weights' digest). What
later judges the bundle on those images (an update's gate, an ensemble's
weights and scores) reads them instead of decoding and predicting every
image again; an image without kept logits (another model's file, a run from
before they were kept, an image the run never saw) is predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.paths import absolute_path

if TYPE_CHECKING:
    from imgclf.deploy.classifier import Classifier


def kept_probabilities(run_dir: Path, classifier: Classifier) -> dict[str, np.ndarray]:
    """The probabilities of the bundle in ``run_dir`` from its kept logits, by absolute path; {} when none are fresh."""
    from imgclf.deploy.metadata import weights_file_digest
    from imgclf.runs import RunDirectory

    run = RunDirectory(run_dir)
    if not run.model_dir.is_dir():
        return {}
    kept = run.read_held_out_logits(weights_file_digest(run.model_dir))
    if not kept:
        return {}
    paths = list(kept)
    rows = classifier.probabilities_of(np.asarray([kept[path] for path in paths], dtype=np.float32))
    return {absolute_path(path): row for path, row in zip(paths, rows)}


def probabilities_by_path(classifier: Classifier, paths: Sequence[str | Path], known: dict[str, np.ndarray],
                          batch_size: int = 64) -> dict[str, np.ndarray]:
    """Each readable path's probabilities by absolute path: those in ``known`` as given, the rest predicted."""
    rows = {absolute_path(path): row for path, row in known.items()}
    missing = [Path(absolute_path(path)) for path in paths if absolute_path(path) not in rows]
    for path, row, _ in classifier.file_probabilities(missing, batch_size, None):
        if row is not None:
            rows[absolute_path(path)] = row
    return rows
