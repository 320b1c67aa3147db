"""One exception type for every user-facing error.

The CLI turns an `ObfError` into a one-line message and a non-zero exit; anything else is a
bug and keeps its traceback.
"""


class ObfError(Exception):
    """A clear, user-facing problem with input, parameters or storage."""
