"""The model folder commands: ``promote`` a run into a model folder, ``rollback`` it, list its ``versions``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgclf import api
from imgclf.cli.options import JsonOption, Opt
from imgclf.cli.render.promotion import print_promotion, print_versions, versions_json


def promote(
    model: Annotated[str, typer.Argument(help="A run directory (runs/NAME) or a model bundle folder.",
                                         show_default=False)],
    to: Annotated[Path, Opt("--to", help="The model folder (e.g. models/shop); created on the first promotion.",
                            show_default=False)],
) -> None:
    """Copy a trained model into a model folder and make it the current version (refused if its regression gate failed)."""
    print_promotion(api.promote(model, to))


def rollback(
    folder: Annotated[Path, typer.Argument(help="The model folder (e.g. models/shop).", show_default=False)],
    to: Annotated[Optional[str], Opt("--to", help="The version to make current (its id or a unique prefix; "
                                                  "default: the one promoted before the current one).",
                                     show_default=False)] = None,
) -> None:
    """Make the previous version of a model folder current again; a server of the folder switches within a second."""
    print_promotion(api.rollback(folder, to=to))


def versions(
    folder: Annotated[Path, typer.Argument(help="The model folder (e.g. models/shop).", show_default=False)],
    as_json: JsonOption = False,
) -> None:
    """List a model folder's versions: which is current, when each was promoted, its parent, added data and gate."""
    found = api.versions(folder)
    if as_json:
        print(json.dumps(versions_json(found), indent=2))
    else:
        print_versions(folder, found)


COMMANDS = {
    "promote": (promote, "Examples: imgclf promote runs/shop-2 --to models/shop  |  imgclf serve models/shop"),
    "rollback": (rollback, "Examples: imgclf rollback models/shop  |  imgclf rollback models/shop --to 3f2a"),
    "versions": (versions, "Examples: imgclf versions models/shop  |  imgclf versions models/shop --json"),
}
