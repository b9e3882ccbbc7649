"""Messages: any exception quoted on one line, and library messages through logging."""

from __future__ import annotations

import pytest

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
