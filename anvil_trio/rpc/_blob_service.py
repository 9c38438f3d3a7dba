"""``anvil.v1.BlobService``: read, inspect, delete and list a tenant's content-addressed blobs.

Invariants:

* Every handler checks in API.md's order: authenticate (UNAUTHENTICATED), validate the request
  (INVALID_ARGUMENT: a key that is not the ASCII text ``sha256:<64 lowercase hex>``, a range
  with a negative start or an end before its start, a negative limit), authorize
  (PERMISSION_DENIED; ``read:blob:KEY``, ``delete:blob:KEY``, ``list:blob:*``), then storage
  (NOT_FOUND, OUT_OF_RANGE and the rest).
* Everything is inside the token's tenant: another tenant's blob does not exist (NOT_FOUND).
* ``GetBlob`` streams ``BlobChunk`` messages of at most :data:`MAX_CHUNK_BYTES` (1 MiB) whose
  ``offset`` is the absolute position of the chunk's first byte in the blob; the chunks are
  contiguous from the range's (clamped) start to its (clamped) end. An empty range or blob
  yields no chunk. Each is serialized straight into its frame
  (:func:`~._messages.bytes_field_message`: one copy of the bytes).
* ``ListBlobs`` streams ``BlobMetadata`` in ascending key order, strictly after
  ``start_after``; ``limit`` 0 means 1000 and larger limits are capped at 1000.
* Handlers only translate; errors are raised and mapped to statuses by the edge's one table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp

from .._proto.anvil.v1 import blob_pb2
from .._proto.anvil.v1.blob_grpc import BlobServiceServicer
from ..storage import BlobInfo, InvalidArgumentError, parse_blob_key
from ._calls import CallContext
from ._common import ServiceContext, call_storage, principal
from ._messages import PreFramed, bytes_field_message, varint_field

__all__ = ["MAX_CHUNK_BYTES", "BlobService", "blob_metadata", "timestamp_from_seconds"]

#: The largest ``BlobChunk.data`` the server sends (API.md: response chunks are at most 1 MiB).
MAX_CHUNK_BYTES = 1 << 20


def timestamp_from_seconds(seconds: float) -> Timestamp:
    """A ``google.protobuf.Timestamp`` for ``seconds`` since the epoch (microsecond precision,
    rounded to nearest)."""
    micros = round(seconds * 1_000_000)
    whole, rest = divmod(micros, 1_000_000)
    return Timestamp(seconds=whole, nanos=rest * 1000)


def blob_metadata(info: BlobInfo) -> blob_pb2.BlobMetadata:
    """The wire form of a stored blob: key as ASCII bytes, attributes as given at upload."""
    return blob_pb2.BlobMetadata(
        key=info.key.encode("ascii"),
        size=info.size,
        content_type=info.content_type,
        attributes=dict(info.attributes),
        created_at=timestamp_from_seconds(info.created_at),
    )


def _requested_range(message: blob_pb2.GetBlobRequest) -> tuple[int, int | None]:
    """``(start, end)`` of a GetBlob request (whole blob when no range is given).

    Raises:
        InvalidArgumentError: a negative start, or an end before the start.
    """
    if not message.HasField("range"):
        return 0, None
    start = message.range.start
    end = message.range.end if message.range.HasField("end") else None
    if start < 0:
        raise InvalidArgumentError("range start must not be negative")
    if end is not None and end < start:
        raise InvalidArgumentError(f"range end {end} is before its start {start}")
    return start, end


class BlobService(BlobServiceServicer):
    """The BlobService handlers (see the module docstring for the rules they keep).

    Args:
        ctx: the shared service context (storage, authenticator, retry schedule).
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def GetBlob(  # noqa: N802 - gRPC method name
        self, message: blob_pb2.GetBlobRequest, request: CallContext
    ) -> AsyncIterator[PreFramed]:
        """Stream ``[range.start, range.end)`` of a blob (whole blob without a range).

        Yields:
            ``BlobChunk{data, offset}`` with at most 1 MiB of data and absolute offsets.

        Raises:
            UnauthenticatedError, InvalidArgumentError (bad key or range),
            PermissionDeniedError (no ``read:blob:KEY``), NotFoundError (no such blob in this
            tenant), OutOfRangeError (the range starts at or past the end of a non-empty blob).
        """
        who = principal(self._ctx, request)
        parse_blob_key(message.key)
        start, end = _requested_range(message)
        who.require_operation("GetBlob", blob_key=message.key)
        storage = self._ctx.storage
        _info, reader = await call_storage(
            self._ctx, storage.get_blob, who.tenant, message.key, start=start, end=end
        )
        async with reader:
            offset = reader.start
            async for data in reader:
                for at in range(0, len(data), MAX_CHUNK_BYTES):
                    piece = data[at : at + MAX_CHUNK_BYTES]
                    # BlobChunk{data = 1, offset = 2}, serialized straight into its frame.
                    yield bytes_field_message(1, piece, varint_field(2, offset))
                    offset += len(piece)

    async def StatBlob(  # noqa: N802 - gRPC method name
        self, message: blob_pb2.StatBlobRequest, request: CallContext
    ) -> blob_pb2.BlobMetadata:
        """A blob's key, size, content type, attributes and creation time.

        Raises:
            UnauthenticatedError, InvalidArgumentError (bad key), PermissionDeniedError (no
            ``read:blob:KEY``), NotFoundError.
        """
        who = principal(self._ctx, request)
        parse_blob_key(message.key)
        who.require_operation("StatBlob", blob_key=message.key)
        info = await call_storage(self._ctx, self._ctx.storage.stat_blob, who.tenant, message.key)
        return blob_metadata(info)

    async def DeleteBlob(  # noqa: N802 - gRPC method name
        self, message: blob_pb2.DeleteBlobRequest, request: CallContext
    ) -> blob_pb2.DeleteBlobResponse:
        """Remove a blob from the tenant (its bytes are reclaimed once nothing references them).

        Raises:
            UnauthenticatedError, InvalidArgumentError (bad key), PermissionDeniedError (no
            ``delete:blob:KEY``), NotFoundError (no such blob in this tenant).
        """
        who = principal(self._ctx, request)
        parse_blob_key(message.key)
        who.require_operation("DeleteBlob", blob_key=message.key)
        await call_storage(self._ctx, self._ctx.storage.delete_blob, who.tenant, message.key)
        return blob_pb2.DeleteBlobResponse()

    async def ListBlobs(  # noqa: N802 - gRPC method name
        self, message: blob_pb2.ListBlobsRequest, request: CallContext
    ) -> AsyncIterator[blob_pb2.BlobMetadata]:
        """Stream the tenant's blobs in key order, strictly after ``start_after`` (empty: from
        the first), at most ``limit`` of them (0: 1000; capped at 1000).

        Raises:
            UnauthenticatedError, InvalidArgumentError (negative limit, malformed
            ``start_after``), PermissionDeniedError (no ``list:blob:*``).
        """
        who = principal(self._ctx, request)
        if message.limit < 0:
            raise InvalidArgumentError("limit must not be negative")
        if message.start_after:
            parse_blob_key(message.start_after)
        who.require_operation("ListBlobs")
        infos = await call_storage(
            self._ctx,
            self._ctx.storage.list_blobs,
            who.tenant,
            limit=message.limit,
            start_after=message.start_after,
        )
        for info in infos:
            yield blob_metadata(info)
