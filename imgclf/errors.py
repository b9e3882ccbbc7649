"""The one exception type users see.

Every problem a user can fix (a missing folder, a bad option, an unreadable
archive) is raised as :class:`ImgclfError` with a message that says what
happened, what was expected and what to do. The CLI prints it as one line;
anything else is a bug and keeps its traceback.
"""


class ImgclfError(Exception):
    """A user-facing error whose message is complete on one line."""
