"""The ``imgclf`` command: parse options, call :mod:`imgclf.api`, render with Rich.

Errors a user can fix are printed as one line; ``--debug`` (or
``IMGCLF_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.table import Table

from imgclf import __version__, api
from imgclf.console import console
from imgclf.data.augment_presets import PRESETS
from imgclf.data.decode import DEFAULT_MAX_PIXELS
from imgclf.errors import ImgclfError

app = typer.Typer(
    name="imgclf",
    help="From a folder of labelled images to a trained, evaluated, deployed image classifier.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)

_debug = os.environ.get("IMGCLF_DEBUG") == "1"

# Options shared by every command that reads a dataset: one name, one meaning.
Source = Annotated[str, typer.Argument(help="A folder of class folders, a CSV manifest, or cifar10 / cifar100.",
                                       show_default=False)]
ArchiveOption = Annotated[Optional[Path], typer.Option("--from", help="Local copy of the CIFAR archive (no download).")]
Seed = Annotated[int, typer.Option(help="Seed for splits and augmentation.")]


def _version(value: bool) -> None:
    if value:
        print(f"imgclf {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """From a folder of labelled images to a trained, evaluated, deployed image classifier."""
    global _debug
    _debug = _debug or debug


@app.command(epilog="Example: imgclf inspect photos/ --out inspect-photos")
def inspect(
    source: Source,
    out: Annotated[Optional[Path], typer.Option(help="Folder for report.json, samples.png, broken_files.txt.")] = None,
    archive: ArchiveOption = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels (decompression bombs).")] = DEFAULT_MAX_PIXELS,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Count classes per split as given, check every file, find duplicates and leakage."""
    result = api.inspect(source, out=out, archive=archive, max_pixels=max_pixels)
    if as_json:
        print(json.dumps(result.report.to_json(), indent=2))
        return
    _print_report(result)


def _print_report(result: api.InspectResult) -> None:
    report = result.report
    console.print(f"[bold]{report.source}[/]: {len(report.classes)} classes, "
                  f"{sum(report.split_totals.values()):,} images", soft_wrap=True)
    table = Table()
    table.add_column("class")
    for split in report.splits:
        table.add_column(split, justify="right")
    for name in report.classes:
        table.add_row(name, *(f"{report.counts[name].get(split, 0):,}" for split in report.splits))
    table.add_section()
    table.add_row("[bold]total", *(f"[bold]{report.split_totals[split]:,}" for split in report.splits))
    console.print(table)
    if report.sizes:
        width, height = report.sizes["width"], report.sizes["height"]
        console.print(f"sizes: width {width['min']}-{width['max']} (median {width['median']:g}), "
                      f"height {height['min']}-{height['max']} (median {height['median']:g}); "
                      f"modes: {', '.join(f'{mode} {count:,}' for mode, count in report.modes.items())}")
    if report.ignored:
        console.print(f"ignored {len(report.ignored)} file(s) that are not images inside class folders")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if result.broken_list:
        console.print(f"broken files listed in {result.broken_list}")
    console.print(f"report: {result.out / 'report.json'}" + (f", samples: {result.samples}" if result.samples else ""))


@app.command("preview-augment", epilog="Example: imgclf preview-augment photos/ --augment strong --out aug.png")
def preview_augment(
    source: Source,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("augment-preview.png"),
    augment: Annotated[str, typer.Option(help=f"Preset: {', '.join(PRESETS)}.")] = "standard",
    index: Annotated[int, typer.Option(help="Which training image to show.")] = 0,
    image_size: Annotated[Optional[int], typer.Option(help="Side in pixels (default: the image's, at most 224).")] = None,
    archive: ArchiveOption = None,
    seed: Seed = 0,
    grayscale: Annotated[bool, typer.Option(help="Decode as one grey channel.")] = False,
) -> None:
    """Draw one image augmented nine times, to see what a preset does."""
    path = api.preview_augment(source, out, augment=augment, index=index, seed=seed, image_size=image_size,
                               archive=archive, grayscale=grayscale)
    console.print(f"wrote {path}")


def main() -> None:
    """Console-script entry point: one-line errors unless --debug."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="imgclf", standalone_mode=False)
    except ImgclfError as error:
        if _debug:
            raise
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        console.print("interrupted")
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
