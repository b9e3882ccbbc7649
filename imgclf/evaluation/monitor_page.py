"""``imgclf monitor --out``: the monitor report as one self-contained HTML page with its charts and examples.

The charts (matplotlib) are drawn into a temporary folder and inlined as
base64 PNGs by :mod:`imgclf.evaluation.pages`, as the run report's are.
"""

from __future__ import annotations

import html
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.evaluation.pages import card_row, image, page, percent, section, table
from imgclf.files import write_text_atomic
from imgclf.watch.monitor import MonitorReport, WindowReport

EXAMPLE_WINDOWS = 3  # the latest windows with novel images whose examples are shown
TILE = 128


def write_monitor_page(report: MonitorReport, path: Path) -> Path:
    """Write the report's page at ``path`` (atomically)."""
    with tempfile.TemporaryDirectory(prefix="imgclf-monitor-") as folder:
        charts = _charts(report, Path(folder)) if report.windows else {}
        sections = [("summary", "Summary", _summary(report)),
                    ("reference", "Thresholds", _reference(report)),
                    ("timeline", "Over time", image(charts.get("timeline"), "drift, novelty and confidence over time")),
                    ("classes", "Predicted classes", image(charts.get("classes"), "class shares per window")
                     + _class_note(report)),
                    ("confidence", "Confidence", image(charts.get("confidence"), "confidence histogram")),
                    ("windows", "Windows", _windows(report)),
                    ("novel", "Novel images", _examples(report, Path(folder)))]
        nav = "".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title, _ in sections)
        body = "".join(section(anchor, title, content) for anchor, title, content in sections)
        title = f"imgclf monitor: {Path(report.model).name or report.model}"
        return write_text_atomic(path, page(title, f"<h1>{html.escape(title)}</h1><p class=\"muted\">log: "
                                                   f"{html.escape(report.log)}; windows of {html.escape(report.window)}"
                                                   f"</p><nav>{nav}</nav>{body}"))


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _summary(report: MonitorReport) -> str:
    windows = report.windows
    requests = sum(window.requests for window in windows)
    alarms = {kind: sum(kind in window.alarms for window in windows) for kind in ("drift", "novelty", "class-shares")}
    latest = windows[-1] if windows else None
    cards = [("requests", f"{requests:,}"), ("windows", f"{len(windows):,}"),
             ("drift alarms", f"{alarms['drift']:,}"), ("novelty alarms", f"{alarms['novelty']:,}"),
             ("class-share alarms", f"{alarms['class-shares']:,}"),
             ("latest novelty", percent(latest.novelty_share) if latest else "n/a"),
             ("latest below confidence", percent(latest.low_confidence_share) if latest else "n/a")]
    span = f"<p>From {_when(windows[0].start)} to {_when(windows[-1].end)} UTC.</p>" if windows else \
        "<p>The log has no predictions of this model yet.</p>"
    return card_row(cards) + span


def _reference(report: MonitorReport) -> str:
    facts = report.reference
    if facts is None:
        return ("<p>This model has no monitoring reference (trained before monitoring existed, a Keras model, or too "
                "few val images), so there is no drift or novelty test: retrain it to get one.</p>")
    rows = [[f"novelty: {facts['novelty_score']} above", facts["novelty_threshold"]],
            ["(the 99th percentile of val images' scores; val images measured)", facts["val_images"]],
            ["drift: a window's MMD² against val embeddings, permutation test's p at most", facts["drift_alpha"]],
            ["val embeddings in the drift reference; at most this many of a window",
             f"{facts['drift_reference']:,}; {facts['drift_test_size']:,}"],
            ["drift false-alarm rate on val windows (no drift)", percent(facts["drift_false_alarm_rate"])],
            ["below confidence: top probability under", report.min_confidence]]
    return table(["test", "value"], rows) + f'<p class="muted">Embeddings: {html.escape(facts["embedding"])}; ' \
        f'{facts["train_sample"]:,} training images kept.</p>'


def _class_note(report: MonitorReport) -> str:
    if report.prior is None:
        return '<p class="muted">No training prior in this bundle: the class shares are not tested.</p>'
    prior = ", ".join(f"{name} {share:.1%}" for name, share in zip(report.classes, report.prior))
    return f"<p>Training prior: {html.escape(prior)}. A window is flagged when the chi-square test's p is below 0.001.</p>"


def _windows(report: MonitorReport) -> str:
    header = ["start (UTC)", "requests", "mean confidence", "below confidence", "novel", "MMD²", "threshold",
              "class-share p", "alarms"]
    rows = [[_when(window.start), window.requests, window.confidence_mean, percent(window.low_confidence_share),
             percent(window.novelty_share), window.drift_mmd2, window.drift_threshold, window.class_p,
             ", ".join(window.alarms) or "none"] for window in report.windows]
    return table(header, rows)


def _examples(report: MonitorReport, folder: Path) -> str:
    """Thumbnails of the novel images of the latest windows that had some (the files the log kept copies of)."""
    from imgclf.data.decode import decode_file
    from imgclf.pictures import save_image_grid

    shown = [window for window in report.windows if window.novel_examples][-EXAMPLE_WINDOWS:]
    if not shown:
        return "<p>No novel image in any window.</p>"
    parts = []
    for window in shown:
        decoded = [(decode_file(Path(name), (TILE, TILE), policy="pad").pixels, name)
                   for name in window.novel_examples if Path(name).is_file()]
        pictures = [(pixels, Path(name).name[:16]) for pixels, name in decoded if pixels is not None]
        title = f"window from {_when(window.start)}: {percent(window.novelty_share)} novel"
        if pictures:
            grid = save_image_grid([p for p, _ in pictures], [t for _, t in pictures],
                                   folder / f"novel-{window.start:.0f}.png", columns=4)
            parts.append(f"<h3>{html.escape(title)}</h3>" + image(grid, title))
        else:
            names = ", ".join(html.escape(name) for name in window.novel_examples)
            parts.append(f"<h3>{html.escape(title)}</h3><p class=\"muted\">no stored copies (log with --log-images "
                         f"to see them): {names}</p>")
    return "".join(parts)


def _charts(report: MonitorReport, folder: Path) -> dict[str, Path]:
    from imgclf.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    windows = report.windows
    starts = np.arange(len(windows))
    charts = {"timeline": _timeline(plt, windows, starts), "classes": _class_shares(plt, report, starts),
              "confidence": _confidence(plt, windows, report.min_confidence)}
    return {name: _save(figure, folder / f"{name}.png") for name, figure in charts.items()}


def _timeline(plt: Any, windows: list[WindowReport], x: np.ndarray) -> Any:
    figure, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    axes[0].plot(x, [np.nan if w.drift_mmd2 is None else w.drift_mmd2 for w in windows], marker="o", label="MMD²")
    axes[0].plot(x, [np.nan if w.drift_threshold is None else w.drift_threshold for w in windows], "r--",
                 label="threshold")
    drifted = [i for i, w in enumerate(windows) if w.drift]
    axes[0].scatter(drifted, [windows[i].drift_mmd2 for i in drifted], color="red", zorder=3, label="drift")
    axes[0].set_title("embedding drift")
    axes[1].plot(x, [np.nan if w.novelty_share is None else w.novelty_share for w in windows], marker="o",
                 label="novel")
    axes[1].plot(x, [np.nan if w.low_confidence_share is None else w.low_confidence_share for w in windows],
                 marker="s", label="below confidence")
    axes[1].set_title("shares of the window")
    axes[2].bar(x, [w.requests for w in windows], color="#8a9bc0")
    axes[2].set_title("requests")
    axes[2].set_xlabel("window")
    for axis in axes[:2]:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return figure


def _class_shares(plt: Any, report: MonitorReport, x: np.ndarray) -> Any:
    figure, axis = plt.subplots(figsize=(10, 3.8))
    bottom = np.zeros(len(report.windows))
    for name in report.classes:
        shares = np.array([w.class_counts.get(name, 0) / max(1, w.requests) for w in report.windows])
        axis.bar(x, shares, bottom=bottom, label=name)
        bottom += shares
    if report.prior is not None:
        axis.bar([len(x) + 0.5], [1.0], color="none")  # room for the prior's bar
        prior_bottom = 0.0
        for index, share in enumerate(np.asarray(report.prior) / max(1e-12, float(np.sum(report.prior)))):
            axis.bar([len(x) + 0.5], [share], bottom=[prior_bottom], color=f"C{index}", hatch="//")
            prior_bottom += share
    axis.set_xlabel("window (hatched: training prior)")
    axis.set_ylabel("share of predictions")
    axis.legend(fontsize=8, ncol=min(6, max(1, len(report.classes))), loc="upper left", bbox_to_anchor=(0, -0.18))
    return figure


def _confidence(plt: Any, windows: list[WindowReport], min_confidence: float) -> Any:
    figure, axis = plt.subplots(figsize=(7, 3.2))
    counts = np.sum([w.confidence_histogram for w in windows if w.confidence_histogram], axis=0) \
        if any(w.confidence_histogram for w in windows) else np.zeros(10)
    edges = np.linspace(0, 1, len(counts) + 1)
    axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#5b7bb5", edgecolor="white")
    axis.axvline(min_confidence, color="red", linestyle="--", label=f"--min-confidence {min_confidence:g}")
    axis.set_xlabel("top probability")
    axis.set_ylabel("predictions")
    axis.legend(fontsize=8)
    return figure
