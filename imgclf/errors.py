"""The one exception type users see, and how any exception reads on one line.

Every problem a user can fix (a missing folder, a bad option, an unreadable
archive) is raised as :class:`ImgclfError` with a message that says what
happened, what was expected and what to do. The CLI prints it as one line;
anything else is a bug and keeps its traceback.
"""


class ImgclfError(Exception):
    """A user-facing error whose message is complete on one line."""


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for a message: the first non-blank line of its text, or its type's name when it has none.

    Errors from other libraries (YAML, ONNX Runtime, PyTorch) often span many
    lines, or none at all; a message that quotes one must stay one line.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
