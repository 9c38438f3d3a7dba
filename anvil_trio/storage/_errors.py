"""Errors of the storage layer.

Every error raised by ``anvil_trio.storage`` derives from :class:`StorageError` and carries a
human-readable message (``str(err)``) that is safe to show to the client of the tenant whose
request caused it. The RPC layer maps each class to exactly one status code, in one table:

=========================  ======================  ==========
class                      status                  retryable
=========================  ======================  ==========
NotFoundError              NOT_FOUND               no
AlreadyExistsError         ALREADY_EXISTS          no
FailedPreconditionError    FAILED_PRECONDITION     no
InvalidArgumentError       INVALID_ARGUMENT        no
ChecksumMismatchError      INVALID_ARGUMENT        no
OutOfRangeError            OUT_OF_RANGE            no
QuotaExceededError         RESOURCE_EXHAUSTED      after a delay
ObjectTooLargeError        RESOURCE_EXHAUSTED      no (same bytes)
StorageFullError           RESOURCE_EXHAUSTED      after a delay
StorageIOError             INTERNAL                maybe
StorageUnavailableError    UNAVAILABLE             yes
=========================  ======================  ==========

"You asked for something wrong" (the first six) differs from "it broke" (the I/O errors) and
from "try again" (:class:`StorageUnavailableError`).
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "ChecksumMismatchError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "ObjectTooLargeError",
    "OutOfRangeError",
    "QuotaExceededError",
    "StorageError",
    "StorageFullError",
    "StorageIOError",
    "StorageUnavailableError",
]


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose.

    Args:
        message: a human-readable explanation, safe to send to the requesting client.
    """

    #: Whether the same request may succeed if simply retried later.
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(StorageError, LookupError):
    """A tenant, bucket, object, version, blob or upload does not exist (for this tenant)."""


class AlreadyExistsError(StorageError):
    """A bucket of that name exists, or ``if_none_match`` was set and the key exists."""


class FailedPreconditionError(StorageError):
    """The operation is not allowed in the current state (e.g. deleting a non-empty bucket)."""


class InvalidArgumentError(StorageError, ValueError):
    """A name, key, page token, offset, size or other argument is malformed or inconsistent."""


class ChecksumMismatchError(InvalidArgumentError):
    """The bytes received do not hash to the SHA-256 the client declared; nothing was kept."""


class OutOfRangeError(StorageError, IndexError):
    """A byte range starts at or past the end of a non-empty object or blob."""


class QuotaExceededError(StorageError):
    """The tenant's byte quota would be exceeded by this write; nothing was kept."""

    retryable = True


class ObjectTooLargeError(StorageError):
    """The object or blob is larger than the configured size limit; nothing was kept."""


class StorageFullError(StorageError, OSError):
    """The disk (or backing store) is full (ENOSPC), or the write would take free space below
    the configured floor (``min_free_bytes``, see ``_space``); nothing was kept."""

    retryable = True


class StorageIOError(StorageError, OSError):
    """An I/O error other than a full disk (EIO and other ``OSError``) hit the store."""


class StorageUnavailableError(StorageError):
    """A storage actor is down or restarting, or storage is stopping; retry after a moment."""

    retryable = True


class DataDirInUseError(StorageError):
    """Another storage process (a second server) already runs on this data dir; two byte-writing
    processes would reap each other's in-flight files, so the second one refuses to start."""
