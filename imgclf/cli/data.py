"""The data commands: ``inspect`` a dataset, ``preview-augment`` what a preset does to one image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

from imgclf import api
from imgclf.cli.options import ArchiveOption, CorrectionsOption, Opt, RenameOption, Source, config_flags
from imgclf.cli.render.data import print_report
from imgclf.console import console
from imgclf.data.decode import DEFAULT_MAX_PIXELS


@config_flags(max_pixels=DEFAULT_MAX_PIXELS)
def inspect(
    source: Source,
    out: Annotated[Optional[Path], Opt(help="Folder for report.json, samples.png, findings.png, broken_files.txt.")] = None,
    archive: ArchiveOption = None,
    as_json: Annotated[bool, Opt("--json", help="Print the report as JSON on stdout.")] = False,
    near_duplicates: Annotated[bool, Opt(
        "--near-duplicates", help="Also find resized, re-encoded or mirrored copies by image embeddings.")] = False,
    embedding_model: Annotated[str, Opt(help="Backbone or trained model for --near-duplicates and --outliers.")] =
        api.DEFAULT_EMBEDDING_MODEL,
    similarity_threshold: Annotated[Optional[float], Opt(
        help="Lowest similarity (0..1) reported by --near-duplicates (default 0.9).")] = None,
    outliers: Annotated[bool, Opt(
        "--outliers", help="Also find images far from the rest of their class by image embeddings (needs "
                           "--embedding-model's pretrained weights).")] = False,
    corrections: CorrectionsOption = None,
    rename: RenameOption = None,
    **options: Any,
) -> None:
    """Count classes per split as given, check every file and its quality, find duplicates, leakage and outliers."""
    result = api.inspect(source, out=out, archive=archive, near_duplicates=near_duplicates,
                         embedding_model=embedding_model, similarity_threshold=similarity_threshold,
                         outliers=outliers, corrections=corrections, rename=rename or (), **options)
    if as_json:
        print(json.dumps(result.report.to_json(), indent=2))
        return
    print_report(result)


@config_flags(notes={"image_size": "Default: the image's, at most 224."},
              augment="standard", image_size=None, seed=0, grayscale=False)
def preview_augment(
    source: Source,
    out: Annotated[Path, Opt(help="PNG file to write.")] = Path("augment-preview.png"),
    index: Annotated[int, Opt(help="Which training image to show.")] = 0,
    archive: ArchiveOption = None,
    **options: Any,
) -> None:
    """Draw one image augmented nine times, to see what a preset does."""
    path = api.preview_augment(source, out, index=index, archive=archive, **options)
    console.print(f"wrote {path}")


COMMANDS = {
    "inspect": (inspect, "Examples: imgclf inspect photos/ --out inspect-photos  |  "
                         "imgclf inspect photos/ --near-duplicates --outliers"),
    "preview-augment": (preview_augment, "Example: imgclf preview-augment photos/ --augment strong --out aug.png"),
}
