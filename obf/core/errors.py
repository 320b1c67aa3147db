"""One exception type for every user-facing error.

The CLI turns an `ObfError` into a one-line message and a non-zero exit; anything else is a
bug and keeps its traceback.
"""

from typing import Any


class ObfError(Exception):
    """A clear, user-facing problem with input, parameters or storage."""


class StorageError(ObfError):
    """A storage location is missing, unreadable or unsafe (`obf.core.storage`)."""


class NotFoundError(StorageError):
    """A file, folder or prefix that is not there (as opposed to one that could not be read)."""


class ConflictError(StorageError):
    """A conditional write lost: the object exists (create) or changed since it was read (swap)."""


def worth_retrying(err: BaseException | None) -> bool:
    """Whether a second try may fix `err`: an error that is not obf's (a store client's timeout or
    reset connection), a plain StorageError (the store's own failure) or a lost conditional write
    may; an obf error about the input (a missing source or registry, a bad name, a corrupt dataset,
    a bad setting) fails the same way again."""
    return not isinstance(err, ObfError) or type(err) in (StorageError, ConflictError)


def prefect_retry_condition(_task: Any, _task_run: Any, state: Any) -> bool:
    """`worth_retrying` as Prefect's `retry_condition_fn` (the flows' storage-facing tasks): a bad
    input fails the run at once with its one line, not after the retries' 42 s of waits."""
    err = getattr(state, "data", None)
    if not isinstance(err, BaseException):
        try:
            err = state.result(raise_on_failure=False)
        except Exception:  # unreadable result: retry, as without a condition
            return True
    return worth_retrying(err if isinstance(err, BaseException) else None)
