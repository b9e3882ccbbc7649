"""``monitor``: a model's prediction log cut into windows and compared with the model's training reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import ImgclfError

if TYPE_CHECKING:  # numpy and the monitor load when it runs
    from imgclf.watch.monitor import MonitorReport


def monitor(model: str | Path, log: str | Path, *, window: str = "1000", min_confidence: float = 0.5,
            model_version: str | None = None, out: str | Path | None = None) -> MonitorReport:
    """Drift, novelty, class shares and confidence of ``model``'s logged predictions, window by window.

    ``window`` is a duration (``1h``) or a number of requests (``1000``);
    ``model_version`` picks the log's rows (default: this bundle's version,
    ``all`` for every row); ``out`` writes the HTML page there.
    """
    from imgclf.deploy.bundle import find_bundle, read_bundle_info
    from imgclf.deploy.metadata import bundle_content_id
    from imgclf.watch.logged import read_records
    from imgclf.watch.monitor import monitor_records, parse_window
    from imgclf.watch.reference import load_reference

    if not 0.0 <= min_confidence <= 1.0:
        raise ImgclfError(f"--min-confidence {min_confidence:g} is not a probability; give a value from 0 to 1")
    spec = parse_window(window)
    directory = find_bundle(model)
    classes = read_bundle_info(directory).classes
    reference = load_reference(directory)
    records = read_records(log, model_version or bundle_content_id(directory))
    report = monitor_records(records, spec, list(classes), reference, min_confidence, model=str(model), log=str(log))
    if out is not None:
        from imgclf.evaluation.monitor_page import write_monitor_page

        write_monitor_page(report, Path(out))
    return report
