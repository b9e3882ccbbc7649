"""``match``: suggest catalogue categories for new products from photo and name, in three modes.

One product (``--image``/``--name``), a batch CSV (``--queries --out``), or
an honest evaluation of the catalogue (``--evaluate``). The modes stay one
command, as users spell them; each mode is a function of its own, and the
options that say how a product is scored are one group, passed on whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from imgclf import api
from imgclf.cli.options import JsonOption, Opt, WeightsOption, option_group, with_options
from imgclf.cli.render.match import print_batch, print_match_evaluation, print_suggestion
from imgclf.errors import ImgclfError

# How a product is scored against the catalogue: the same for one product and a batch (--evaluate uses the first three).
SCORING = option_group(
    model=(Annotated[str, Opt(help="Backbone or trained model for the image embeddings.")], api.DEFAULT_EMBEDDING_MODEL),
    weights=(WeightsOption, None),
    k=(Annotated[Optional[int], Opt("-k", "--top-k", help="Closest items shown, and that vote in the blend "
                                                          "(default 5).")], None),
    scoring=(Annotated[str, Opt(help="learned (weights fitted on held-out products), blend (fixed image weight) or "
                                     "auto (learned from 30 products up).")], "auto"),
    image_weight=(Annotated[Optional[float], Opt(help="Share of the photo in the blend, 0..1 (default 0.5); implies "
                                                      "--scoring blend.")], None),
    min_confidence=(Annotated[float, Opt(help="Suggest the deepest category level at least this sure.")], 0.5),
    matcher=(Annotated[Optional[Path], Opt(help="Folder for the fitted matcher (default: in the cache, per catalogue "
                                                "and model).")], None),
)


@with_options(SCORING)
def match(
    catalog: Annotated[Path, typer.Argument(help="Catalogue CSV: image,name,category[,product or sku] (paths "
                                                 "relative to it); a category may be a path like Dairy/Milk.",
                                            show_default=False)],
    image: Annotated[Optional[Path], Opt(help="Photo of the new product.")] = None,
    name: Annotated[Optional[str], Opt(help="Name of the new product.")] = None,
    queries: Annotated[Optional[Path], Opt(help="Batch mode: a CSV of new products (image and/or name "
                                                "columns, others are copied); needs --out.")] = None,
    out: Annotated[Optional[Path], Opt(help="Batch mode: the suggestions CSV to write (resumes a killed run).")] = None,
    evaluate: Annotated[bool, Opt("--evaluate", help="Hold out whole products and report the accuracy of "
                                                     "image, name, blend and learned matching.")] = False,
    batch_size: Annotated[int, Opt(help="Batch mode: products per part written (a killed run redoes at "
                                        "most one part).")] = 512,
    seed: Annotated[int, Opt(help="Seed of the held-out products for --evaluate.")] = 0,
    as_json: JsonOption = False,
    **scoring: Any,
) -> None:
    """Suggest categories for new products from photo and name: one, a batch CSV, or an honest evaluation."""
    if evaluate:
        if image is not None or name is not None or queries is not None:
            raise ImgclfError("--evaluate measures the catalogue itself; leave out --image, --name and --queries")
        _evaluate(catalog, seed, as_json, scoring)
    elif queries is not None or out is not None:
        if queries is None or out is None:
            raise ImgclfError("batch mode needs both --queries new.csv and --out suggestions.csv")
        if image is not None or name is not None:
            raise ImgclfError("--queries matches a whole CSV; leave out --image and --name")
        print_batch(api.match_batch(catalog, queries, out, batch_size=batch_size, **scoring), as_json)
    else:
        print_suggestion(api.match(catalog, image=image, name=name, **scoring), as_json)


def _evaluate(catalog: Path, seed: int, as_json: bool, scoring: dict[str, Any]) -> None:
    """The evaluation mode: held-out products scored by image, name, blend and learned matcher."""
    evaluation = api.evaluate_match(catalog, model=scoring["model"], weights=scoring["weights"], k=scoring["k"],
                                    seed=seed)
    print_match_evaluation(evaluation, as_json)


COMMANDS = {
    "match": (match, "Examples: imgclf match catalog.csv --image new.jpg --name \"blue denim jacket\"  |  "
                     "imgclf match catalog.csv --evaluate  |  "
                     "imgclf match catalog.csv --queries new.csv --out suggestions.csv"),
}
