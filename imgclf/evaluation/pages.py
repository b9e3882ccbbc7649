"""The building blocks of our self-contained HTML pages (the run report, the backend comparison).

Pictures are embedded as base64 PNGs and the style is inline, so a page
needs no network and no other file.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5rem; color: #1d2330; background: #fff; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #e3e7ef; padding-bottom: 0.3rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #d9dee8; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f5f9; }
img { max-width: 100%; height: auto; border: 1px solid #e3e7ef; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; }
.card { background: #f3f5f9; border-radius: 8px; padding: 0.7rem 1.1rem; min-width: 9rem; }
.card b { display: block; font-size: 1.5rem; }
.muted { color: #66708a; }
nav a { margin-right: 0.8rem; }
"""


def image(path: Path | None, alt: str) -> str:
    """The PNG at ``path`` inline, or a muted note when it was not drawn."""
    if path is None or not Path(path).is_file():
        return f'<p class="muted">({html.escape(alt)}: not available)</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table, every cell escaped; floats with four decimals, ``None`` empty."""
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def percent(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else "n/a"


def card_row(items: list[tuple[str, Any]]) -> str:
    """A row of figure cards: each a muted name over its value."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><span class="muted">{html.escape(name)}</span><b>{html.escape(str(value))}</b></div>'
        for name, value in items) + "</div>"


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def page(title: str, body: str) -> str:
    """A whole document: ``title`` in the head, the shared style inline."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}</body></html>")
