"""``imgclf predict`` as one rank of a torchrun job: this rank's share of the images, then rank 0 joins the parts.

Each rank classifies its pieces (:mod:`imgclf.deploy.parts`) into part files
in the output's format (JSON as JSON Lines), written atomically; rank 0
waits for every rank and writes the usual CSV / JSON / JSONL output, the
rows in input order, exactly as one process writes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from imgclf import distributed
from imgclf.console import progress_bar
from imgclf.deploy.bundle import find_bundle
from imgclf.deploy.classifier import Classifier
from imgclf.deploy.parts import file_fingerprints, job_digest, parts_folder, plan_parts, wait_for_parts
from imgclf.deploy.writers import join_parts, open_writer, part_format
from imgclf.distributed import World


@dataclass
class PartsSummary:
    """What rank 0 reports: rows written, how many were unreadable, how many a killed run had done."""

    images: int
    errors: int
    resumed: int
    seconds: float
    processes: int

    @property
    def rate(self) -> float:
        return (self.images - self.resumed) / self.seconds if self.seconds > 0 else 0.0


def predict_in_parts(model: str | Path, paths: list[Path], output_format: str, out: Path | None, world: World, *,
                     top_k: int, min_confidence: float, tta: bool | None, batch_size: int, runtime: str,
                     device: str) -> PartsSummary | None:
    """Classify this rank's share into parts; on rank 0, join every part into ``out``. None on other ranks."""
    started = time.perf_counter()
    bundle = find_bundle(model)
    job = {"kind": "predict", "model": file_fingerprints(sorted(path for path in bundle.rglob("*") if path.is_file())),
           "inputs": file_fingerprints(paths), "top_k": top_k, "min_confidence": min_confidence, "tta": tta,
           "runtime": runtime, "format": part_format(output_format)}
    parts = plan_parts(parts_folder(out, "predict", job_digest(job)), len(paths), world,
                       f".{part_format(output_format)}")
    if parts.mine:
        classifier = Classifier.load(bundle, device=distributed.rank_device(device, world), tta=tta,
                                     runtime=runtime, batch_size=batch_size)
        with progress_bar(disable=not world.is_main) as bar:
            task = bar.add_task(f"Predicting (rank 0's share of {world.size})", total=sum(map(len, parts.mine)))
            for piece in parts.mine:
                rows = classifier.predict_files(paths[piece.start:piece.stop], top_k=top_k,
                                                min_confidence=min_confidence, batch_size=batch_size)
                with open_writer(part_format(output_format), parts.path(piece), classifier.classes,
                                 classifier.info.multilabel) as write:
                    for row in rows:
                        write(row)
                        bar.advance(task)
    wait_for_parts(parts, world)
    if not world.is_main:
        return None
    images, errors = join_parts(output_format, parts.all_paths(), out)
    parts.remove()
    return PartsSummary(images, errors, parts.resumed, time.perf_counter() - started, world.size)

