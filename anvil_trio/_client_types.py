"""Client values and errors: what :class:`~anvil_trio.client.AnvilClient` returns and raises.

Invariants:
- Every value is frozen; values are built from wire messages only here (``*_from_pb``), so the
  rest of the client never hands a protobuf message to a caller.
- Every error the client raises for a failed call is an :class:`AnvilError` carrying the gRPC
  status code (``.code``, a ``purerpc.StatusCode``) and the server's message; the class is chosen
  from the code by :func:`error_for_status` (one table, ``_ERROR_BY_CODE``), so
  ``except NotFoundError`` and ``except AnvilError as e: e.code == StatusCode.NOT_FOUND`` agree.
- ``retryable`` is true exactly for UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED
  (API.md's status table); the client retries nothing else.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import attrs
from purerpc import StatusCode

__all__ = [
    "AlreadyExistsError",
    "AnvilError",
    "BlobInfo",
    "Bucket",
    "ChecksumMismatchError",
    "ClientClosedError",
    "DeadlineExceededError",
    "DeleteResult",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "ObjectInfo",
    "ObjectPage",
    "ObjectVersion",
    "OutOfRangeError",
    "PermissionDeniedError",
    "PutResult",
    "RETRYABLE_CODES",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UploadProgress",
    "UploadResult",
    "VersionPage",
    "error_for_status",
]

#: The status codes worth another attempt (after a delay).
RETRYABLE_CODES = frozenset(
    {StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED, StatusCode.RESOURCE_EXHAUSTED}
)


class AnvilError(Exception):
    """A call failed with a gRPC status (from the server, or decided locally).

    Attributes:
        code: the ``purerpc.StatusCode``.
        message: the status message (the server's, or a local explanation).
    """

    default_code = StatusCode.UNKNOWN

    def __init__(self, message: str = "", *, code: StatusCode | None = None) -> None:
        self.code = code if code is not None else self.default_code
        self.message = message
        super().__init__(f"{self.code.name}: {message}" if message else self.code.name)

    @property
    def retryable(self) -> bool:
        """Whether the client's retry policy treats this failure as transient."""
        return self.code in RETRYABLE_CODES


class UnauthenticatedError(AnvilError, PermissionError):
    """No, malformed, expired or badly signed token; or wrong client credentials."""

    default_code = StatusCode.UNAUTHENTICATED


class PermissionDeniedError(AnvilError, PermissionError):
    """The token's scopes do not cover the operation."""

    default_code = StatusCode.PERMISSION_DENIED


class NotFoundError(AnvilError, LookupError):
    """The bucket, object, version, blob or upload does not exist (for this tenant)."""

    default_code = StatusCode.NOT_FOUND


class AlreadyExistsError(AnvilError):
    """The bucket exists, or ``if_none_match`` was set and the object exists."""

    default_code = StatusCode.ALREADY_EXISTS


class FailedPreconditionError(AnvilError):
    """The operation is not allowed in the current state (a bucket that holds objects)."""

    default_code = StatusCode.FAILED_PRECONDITION


class InvalidArgumentError(AnvilError, ValueError):
    """A bad name, key, scope, page token, offset, size or checksum."""

    default_code = StatusCode.INVALID_ARGUMENT


class OutOfRangeError(AnvilError, ValueError):
    """A byte range that starts past the end."""

    default_code = StatusCode.OUT_OF_RANGE


class ResourceExhaustedError(AnvilError):
    """Quota, size limit, too many concurrent calls or a full disk (retried after a delay)."""

    default_code = StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(AnvilError, ConnectionError):
    """The server cannot be reached, is draining, or the connection broke (retried)."""

    default_code = StatusCode.UNAVAILABLE


class DeadlineExceededError(AnvilError, TimeoutError):
    """The call's deadline passed (retried)."""

    default_code = StatusCode.DEADLINE_EXCEEDED


class InternalError(AnvilError):
    """The server failed unexpectedly (the message carries a correlation id), or it broke the
    protocol."""

    default_code = StatusCode.INTERNAL


class ChecksumMismatchError(AnvilError):
    """Downloaded bytes do not hash to the object's etag (the file was not kept)."""

    default_code = StatusCode.DATA_LOSS


class ClientClosedError(AnvilError):
    """The client was used after its ``async with`` block ended (you closed it)."""

    default_code = StatusCode.CANCELLED


_ERROR_BY_CODE: dict[StatusCode, type[AnvilError]] = {
    StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    StatusCode.NOT_FOUND: NotFoundError,
    StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    StatusCode.OUT_OF_RANGE: OutOfRangeError,
    StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    StatusCode.UNAVAILABLE: UnavailableError,
    StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    StatusCode.INTERNAL: InternalError,
    StatusCode.DATA_LOSS: ChecksumMismatchError,
}


def error_for_status(code: int | StatusCode, message: str = "") -> AnvilError:
    """The client error for a status: the subclass for its code, else a plain ``AnvilError``.

    Args:
        code: a ``StatusCode`` or its integer value (an unknown integer becomes UNKNOWN).
        message: the status message.

    Returns:
        An unraised :class:`AnvilError` (subclass) with ``.code`` set.
    """
    try:
        status_code = code if isinstance(code, StatusCode) else StatusCode(int(code))
    except ValueError:
        status_code = StatusCode.UNKNOWN
        message = f"status {code}: {message}"
    klass = _ERROR_BY_CODE.get(status_code, AnvilError)
    return klass(message, code=status_code)


# ---------------------------------------------------------------------- values


def _time(stamp) -> datetime.datetime | None:
    """A protobuf ``Timestamp`` as an aware UTC datetime (``None`` when unset)."""
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return stamp.ToDatetime(tzinfo=datetime.timezone.utc)


def _frozen_map(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@attrs.frozen
class Bucket:
    """A bucket: its name, creation time (UTC) and whether it keeps versions."""

    name: str
    created_at: datetime.datetime | None
    versioning: bool

    @classmethod
    def from_pb(cls, message) -> "Bucket":
        """Build from an ``anvil.v1.Bucket`` message."""
        return cls(message.name, _time(message.created_at), message.versioning)


@attrs.frozen
class ObjectInfo:
    """An object version's metadata. ``etag`` is the lowercase hex SHA-256 of its bytes and
    ``size`` the whole object's size (also on a ranged get)."""

    bucket: str
    key: str
    version_id: str
    size: int
    etag: str
    content_type: str
    user_metadata: dict[str, str] = attrs.field(converter=_frozen_map, hash=False)
    last_modified: datetime.datetime | None = None

    @classmethod
    def from_pb(cls, message) -> "ObjectInfo":
        """Build from an ``anvil.v1.ObjectInfo`` message."""
        return cls(
            bucket=message.bucket_name,
            key=message.object_key,
            version_id=message.version_id,
            size=message.size,
            etag=message.etag,
            content_type=message.content_type,
            user_metadata=message.user_metadata,
            last_modified=_time(message.last_modified),
        )


@attrs.frozen
class PutResult:
    """What a put stored: the etag (hex SHA-256), the new version id and the size."""

    etag: str
    version_id: str
    size: int


@attrs.frozen
class DeleteResult:
    """What a delete did: the version removed or the delete marker added."""

    version_id: str
    delete_marker: bool


@attrs.frozen
class ObjectPage:
    """One page of ``ListObjects``; ``next_page_token`` is empty on the last page."""

    objects: tuple[ObjectInfo, ...]
    common_prefixes: tuple[str, ...]
    next_page_token: str


@attrs.frozen
class ObjectVersion:
    """One entry of ``ListObjectVersions``: a version or a delete marker."""

    info: ObjectInfo
    is_latest: bool
    delete_marker: bool


@attrs.frozen
class VersionPage:
    """One page of ``ListObjectVersions``; ``next_page_token`` is empty on the last page."""

    versions: tuple[ObjectVersion, ...]
    next_page_token: str


@attrs.frozen
class BlobInfo:
    """A content-addressed blob: ``key`` is ``"sha256:<64 hex>"``."""

    key: str
    size: int
    content_type: str
    attributes: dict[str, str] = attrs.field(converter=_frozen_map, hash=False)
    created_at: datetime.datetime | None = None

    @classmethod
    def from_pb(cls, message) -> "BlobInfo":
        """Build from an ``anvil.v1.BlobMetadata`` message."""
        return cls(
            key=message.key.decode("ascii", "replace"),
            size=message.size,
            content_type=message.content_type,
            attributes=message.attributes,
            created_at=_time(message.created_at),
        )


@attrs.frozen
class UploadProgress:
    """An upload's state as the server last acknowledged it (given to ``on_progress``).

    Attributes:
        upload_id: resume the upload with this id.
        received_bytes: bytes the server holds durably.
        total_size: the blob's size.
    """

    upload_id: str
    received_bytes: int
    total_size: int


@attrs.frozen
class UploadResult:
    """A finished upload: the blob key, its size, whether the tenant already had it, and
    how many times the stream was (re)started (1 when it never broke)."""

    key: str
    size: int
    deduplicated: bool
    upload_id: str
    attempts: int = 1
