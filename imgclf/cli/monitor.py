"""The command that watches a deployed model: ``monitor``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from imgclf import api
from imgclf.cli.options import Model, Opt
from imgclf.cli.render.monitor import print_monitor


def monitor(
    model: Model,
    log: Annotated[str, typer.Argument(help="The prediction log: the file serve --log wrote, or a postgresql:// URL.",
                                       show_default=False)],
    window: Annotated[str, Opt(help="A window: a duration (1h, 30m, 1d) or a number of requests (1000).")] = "1000",
    min_confidence: Annotated[float, Opt(help="Count predictions whose top probability is below this.")] = 0.5,
    model_version: Annotated[Optional[str], Opt(help="Rows of this model version (default: MODEL's; 'all': every row).",
                                                show_default=False)] = None,
    out: Annotated[Optional[Path], Opt(help="Write the report page (HTML with charts and novel images) here.",
                                       show_default=False)] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Drift, novelty, class shares and confidence of a model's logged predictions, window by window."""
    report = api.monitor(model, log, window=window, min_confidence=min_confidence, model_version=model_version,
                         out=out)
    if as_json:
        print(report.dumps())
        return
    print_monitor(report, out)


COMMANDS = {
    "monitor": (monitor, "Examples: imgclf monitor runs/shop predictions.db  |  imgclf monitor runs/shop "
                         "predictions.db --window 1h --out monitor.html"),
}
