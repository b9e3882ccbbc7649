"""Messages: any exception quoted on one line, and library messages through logging."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image

import imgclf
from imgclf.console import ConsoleHandler
from imgclf.errors import one_line


@pytest.mark.parametrize(("error", "expected"), [
    (ValueError("bad value\nsecond line"), "bad value"),
    (ValueError(""), "ValueError"),  # the idiom it replaces raised IndexError here
    (OSError("\n  \n  indented first line  \nmore"), "indented first line"),
    (KeyboardInterrupt(), "KeyboardInterrupt"),
    (KeyError("key"), "'key'"),
])
def test_one_line_is_the_first_non_blank_line_or_the_type(error: BaseException, expected: str) -> None:
    assert one_line(error) == expected


def _split_folders_beside_another(root: Path) -> Path:
    """A dataset whose loading warns: split folders beside a folder that is not a split."""
    for folder in ("train/cat", "train/dog", "test/cat", "unlabeled/cat"):
        (root / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / folder / "x.png")
    return root


def test_a_python_caller_captures_library_warnings_and_nothing_reaches_stderr(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    data = _split_folders_beside_another(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="imgclf"):
        imgclf.load_dataset(data)
    warning = next(record for record in caplog.records if record.levelno == logging.WARNING)
    assert warning.name.startswith("imgclf.") and "ignored 1 other folder(s): unlabeled" in warning.getMessage()
    assert "[" not in warning.getMessage()  # plain text: no Rich markup for other handlers to show
    caplog.clear()
    imgclf.load_dataset(data)  # no handler of the caller's: silent (the library's NullHandler, not lastResort)
    assert capfd.readouterr().err == ""


def test_the_cli_prints_library_warnings_on_stderr_as_one_line_and_removes_its_handler(tmp_path: Path) -> None:
    data = _split_folders_beside_another(tmp_path / "data")
    result = run_cli("inspect", str(data), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stderr.splitlines() if "using the split folders" in line)
    assert line.startswith("warning: ") and line.endswith("ignored 1 other folder(s): unlabeled")
    logger = logging.getLogger("imgclf")
    assert not [handler for handler in logger.handlers if isinstance(handler, ConsoleHandler)]
    assert logger.propagate and logger.level == logging.NOTSET
