"""How ``export`` shows its result: the parity, speed and quantisation checks as one table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from imgclf.console import console

if TYPE_CHECKING:
    from imgclf.deploy.export import ExportResult


def print_export(result: ExportResult, tolerance: float) -> None:
    """The file written, its parity with the original, its speed, the int8 model's checks, and the metadata file."""
    parity = result.parity
    table = Table(title=f"{result.path} ({result.bytes / 1e6:.1f} MB)", title_justify="left")
    table.add_column("check")
    table.add_column("result", justify="right")
    table.add_row("parity images", f"{parity.images} ({parity.source})")
    table.add_row("max |probability difference|", f"{parity.max_abs_diff:.2e} (tolerance {tolerance:.0e})")
    table.add_row("top-1 agreement", f"{parity.top1_agreement:.1%}")
    table.add_row("dynamic batch checked at", ", ".join(str(size) for size in parity.batch_sizes))
    for name, speeds in result.speed.items():
        if isinstance(speeds, dict):
            label = f"{name} ({result.speed['torch_precision']})" if name == "torch" else f"{name} runtime"
            table.add_row(f"{label} img/s", ", ".join(f"{rate:,.0f} at batch {batch}" for batch, rate in speeds.items()))
    quantized = result.quantization
    if quantized is not None:
        table.add_section()
        table.add_row("int8 file", f"{quantized.path} ({quantized.int8_bytes / 1e6:.1f} MB)")
        table.add_row("accuracy fp32 -> int8", f"{quantized.fp32_accuracy:.2%} -> {quantized.int8_accuracy:.2%} "
                                               f"({quantized.accuracy_change * 100:+.2f} points, {quantized.source})")
        table.add_row("int8 top-1 agreement", f"{quantized.top1_agreement:.1%}")
        table.add_row("int8 speed-up", ", ".join(f"{rate:.2f}x at batch {batch}" for batch, rate in quantized.speedup.items()))
    console.print(table)
    for path, error in quantized.skipped if quantized is not None else []:
        console.print(f"[yellow]skipped {path}: {error}[/]")
    console.print(f"metadata (preprocessing, classes, parity, speed): {result.metadata}")
