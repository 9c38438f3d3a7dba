"""The anvil_trio client (layer 6): a Trio client for the object and blob store.

::

    from anvil_trio.client import AnvilClient, NotFoundError

    async with AnvilClient.connect("127.0.0.1", 50051, client_id=..., client_secret=...) as client:
        await client.create_bucket("photos")
        await client.put_object("photos", "cat.jpg", pathlib.Path("cat.jpg"))
        info = await client.download_object("photos", "cat.jpg", "copy.jpg")
        result = await client.upload_blob(b"...")           # resumes by itself on UNAVAILABLE

What it guarantees (details in ``_client``, ``_client_blobs``, ``_client_streams``,
``_client_wire`` and ``_client_sources``):

- One HTTP/2 connection (purerpc's machinery, run in the client's own nursery), re-dialled when
  it breaks; a dead connection ends its calls with :class:`UnavailableError` instead of hanging.
- Access tokens from ``GetAccessToken``, refreshed at 80 % of their lifetime and once more
  when the server answers UNAUTHENTICATED.
- Retries with a :class:`~anvil_trio.Schedule` (default: capped exponential backoff with
  jitter, 6 retries) for UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED only. Streaming
  uploads are retried only when their source can be replayed (``bytes`` or a path); an async
  iterable only if the failure came before anything was read from it.
- Downloads resume mid-stream at the next byte of the same version; blob uploads resume from
  the bytes the server acknowledged, under the same ``upload_id``.
- Each failure is one exception: an :class:`AnvilError` subclass carrying ``.code`` (a
  ``purerpc.StatusCode``), never an exception group.
"""

from ._client import AnvilClient, ByteStream, default_retry_schedule
from ._client_sources import SourceChangedError, SourceConsumedError, SourceError
from ._client_types import (
    RETRYABLE_CODES,
    AlreadyExistsError,
    AnvilError,
    BlobInfo,
    Bucket,
    ChecksumMismatchError,
    ClientClosedError,
    DeadlineExceededError,
    DeleteResult,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ObjectInfo,
    ObjectPage,
    ObjectVersion,
    OutOfRangeError,
    PermissionDeniedError,
    PutResult,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UploadProgress,
    UploadResult,
    VersionPage,
    error_for_status,
)

__all__ = [
    "RETRYABLE_CODES",
    "AlreadyExistsError",
    "AnvilClient",
    "AnvilError",
    "BlobInfo",
    "Bucket",
    "ByteStream",
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
    "ResourceExhaustedError",
    "SourceChangedError",
    "SourceConsumedError",
    "SourceError",
    "UnauthenticatedError",
    "UnavailableError",
    "UploadProgress",
    "UploadResult",
    "VersionPage",
    "default_retry_schedule",
    "error_for_status",
]
