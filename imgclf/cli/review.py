"""The ``review`` command: a local page to decide inspect's and a run's findings, or a corrected copy of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from imgclf.api import DEFAULT_EMBEDDING_MODEL
from imgclf.cli.options import Opt, Source
from imgclf.console import console


def review(
    data: Source,
    run: Annotated[Optional[Path], Opt(help="A run trained on DATA: also its likely label errors (held-out, or "
                                            "out-of-fold after `imgclf evaluate RUN --split train --label-issues "
                                            "--folds 5`) and its worst mistakes, beside the nearest images of each "
                                            "class.")] = None,
    corrections: Annotated[Optional[Path], Opt(help="The corrections CSV the decisions go to (read again when the "
                                                    "page opens; default corrections-<dataset name>.csv).",
                                               show_default=False)] = None,
    near_duplicates: Annotated[bool, Opt("--near-duplicates", help="Also find resized, re-encoded or mirrored "
                                                                   "copies by image embeddings.")] = False,
    outliers: Annotated[bool, Opt("--outliers", help="Also find images far from the rest of their class in a "
                                                     "pretrained backbone's embeddings.")] = False,
    embedding_model: Annotated[str, Opt(help="Backbone or trained model for --near-duplicates and --outliers.")] =
        DEFAULT_EMBEDDING_MODEL,
    host: Annotated[str, Opt(help="Address to bind; loopback by default (0.0.0.0 exposes it to the network).")] =
        "127.0.0.1",
    port: Annotated[int, Opt(help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], Opt(envvar="IMGCLF_API_KEY", show_default=False, help=(
        "Require this key on the page's API (the page asks for it); prefer the IMGCLF_API_KEY environment "
        "variable."))] = None,
    export: Annotated[Optional[Path], Opt(help="Instead of the page: write DATA with the corrections applied to "
                                               "this folder (class folders of hard links, copies across file "
                                               "systems).", show_default=False)] = None,
) -> None:
    """Review a dataset's findings on a local web page: relabel, exclude or keep each; decisions go to a corrections CSV."""
    from imgclf.data.sources import load_source
    from imgclf.review.data_source import default_corrections
    from imgclf.review.export import export_corrected
    from imgclf.serve.review_server import serve_data_review

    if export is not None:
        dataset = load_source(data)
        done = export_corrected(dataset, corrections or default_corrections(dataset), export)
        console.print(f"wrote {done.out}: {done.linked + done.copied:,} images ({done.linked:,} linked, "
                      f"{done.copied:,} copied), {done.excluded:,} excluded by the corrections")
        return
    serve_data_review(data, host=host, port=port, api_key=api_key, run=run, corrections=corrections,
                      near_duplicates=near_duplicates, outliers=outliers, embedding_model=embedding_model)


COMMANDS = {
    "review": (review, "Examples: imgclf review photos/  |  imgclf review photos/ --run runs/photos "
                       "--corrections fixes.csv  |  imgclf review photos/ --corrections fixes.csv --export photos-fixed"),
}
