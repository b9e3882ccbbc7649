"""``tune.html``: the leaderboard, the optimisation history and the parameter importances of a study.

The two pictures are matplotlib PNGs embedded with the run report's page
blocks (:mod:`imgclf.evaluation.pages`), so the page is one offline file.
Importances (Optuna's fANOVA) need at least two complete trials; with fewer
the page says so instead of drawing.
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.evaluation.pages import image, page, section, table
from imgclf.files import write_text_atomic

if TYPE_CHECKING:
    import optuna

MIN_TRIALS_FOR_IMPORTANCE = 2


def write_page(study: optuna.Study, folder: Path, summary: dict[str, Any]) -> Path:
    """Draw both pictures into a scratch folder and write ``folder/tune.html`` with them inline."""
    rows = summary["trials"]
    complete = [row for row in rows if row["state"] == "COMPLETE"]
    importances = _importances(study) if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE else None
    with tempfile.TemporaryDirectory() as scratch:
        history = _draw_history(rows, summary["direction"] == "maximize", summary["monitor"], Path(scratch) / "h.png")
        if importances:
            importance_block = image(_draw_importances(importances, Path(scratch) / "i.png"), "parameter importances")
        elif importances is None:
            importance_block = (f'<p class="muted">Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} '
                                f"complete trials; this study has {len(complete)}.</p>")
        else:
            importance_block = '<p class="muted">No parameter varied between the complete trials.</p>'
        best = summary["best"]
        cards = "".join(f'<div class="card">{html.escape(label)}<b>{html.escape(str(value))}</b></div>' for label, value in (
            ("trials", len(rows)), ("complete", len(complete)),
            ("pruned", sum(row["state"] == "PRUNED" for row in rows)),
            (f"best {summary['monitor']}", "-" if best is None else f"{best['score']:.4f} (trial {best['trial']})")))
        leaderboard = table(["trial", "state", "score", "params", "seconds"],
                            [[row["trial"], row["state"], row["score"], _params(row["params"]), row["seconds"]]
                             for row in rows])
        body = (f"<h1>Tuning: {html.escape(summary['study_name'])}</h1>"
                f'<p class="muted">storage {html.escape(summary["storage"])}</p><div class="cards">{cards}</div>'
                + section("leaderboard", "Leaderboard", leaderboard)
                + section("history", "Optimisation history", image(history, "optimisation history"))
                + section("importances", "Parameter importances", importance_block))
        return write_text_atomic(folder / "tune.html", page(f"imgclf tune {summary['study_name']}", body))


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in params.items())


def _importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances over the complete trials (empty when no parameter varied)."""
    import optuna

    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every complete trial drew the same values
        return {}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_history(rows: list[dict[str, Any]], maximise: bool, monitor: str, path: Path) -> Path | None:
    """Each trial's score by number (pruned ones at their last epoch) and the best so far."""
    scored = sorted((row for row in rows if row["score"] is not None), key=lambda row: row["trial"])
    if not scored:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.6))
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        shown = [row for row in scored if row["state"] == state]
        axis.scatter([row["trial"] for row in shown], [row["score"] for row in shown], marker=marker,
                     label=state.lower())
    best, line = None, []
    for row in scored:
        if row["state"] == "COMPLETE":
            best = row["score"] if best is None else (max if maximise else min)(best, row["score"])
        line.append(best)
    axis.step([row["trial"] for row in scored], line, where="post", color="tab:red", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel(monitor)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _draw_importances(importances: dict[str, float], path: Path) -> Path:
    plt = _pyplot()
    names = list(importances)[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.5 + 0.4 * len(names)))
    axis.barh(names, [importances[name] for name in names])
    axis.set_xlabel("importance (fANOVA)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
