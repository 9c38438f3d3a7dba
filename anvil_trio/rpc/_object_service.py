"""``anvil.v1.ObjectService``: keyed, optionally versioned objects inside a tenant's buckets.

Invariants:

* Every handler checks in API.md's order: the bearer token (UNAUTHENTICATED), then the
  request's arguments — names and keys, ranges, page sizes, prefixes, metadata, the order of
  stream messages (INVALID_ARGUMENT) — then the scope (PERMISSION_DENIED), then storage
  (NOT_FOUND and the rest). Page tokens are opaque to this layer: storage checks that one was
  issued by this server (``Storage.check_page_token``, pure) before the scope check, so a forged
  token is INVALID_ARGUMENT even without ``list`` scope; whether an issued token belongs to
  this listing is checked by storage after authorization.
* ``PutObject`` authenticates before it reads the stream; its first message must be the
  metadata. Request messages are decoded by :func:`decode_put_request`, so a chunk reaches
  storage as a ``memoryview`` into the received message, never copied. The remaining messages
  reach :meth:`Storage.put_object` as an async generator of chunks, so the object becomes
  visible only in storage's one commit after the client ended its stream and the bytes are
  durable. A second metadata message, a reset stream, a broken
  connection, the client's deadline or any storage error before the commit leaves nothing
  visible. Puts are not retried (their input cannot be replayed).
* ``GetObject`` sends the object's info first, then chunks of at most 1 MiB (storage's reader
  chunk size), each serialized straight into its frame (:func:`~._messages.bytes_field_message`:
  one copy of the bytes); the reader is closed however the call ends (the edge closes the
  handler's generator on cancellation).
* Handlers raise domain errors; the edge maps them through the one table in ``_status``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from .._proto.anvil.v1 import object_grpc, object_pb2
from ..auth import Principal
from ..storage import InvalidArgumentError, ObjectInfo
from ..storage._validation import (
    check_range,
    decode_prefix,
    normalize_max_keys,
    parse_expected_hash,
    validate_metadata_map,
)
from ._bucket_service import to_timestamp
from ._calls import CallContext
from ._common import ServiceContext, call_storage, principal
from ._messages import PreFramed, bytes_field_message

__all__ = ["MAX_RESPONSE_CHUNK_BYTES", "ObjectService", "object_info_message"]

#: API.md: response data chunks are at most 1 MiB.
MAX_RESPONSE_CHUNK_BYTES = 1 << 20


def object_info_message(info: ObjectInfo) -> object_pb2.ObjectInfo:
    """The wire form of an object version (a delete marker has size 0 and an empty etag)."""
    return object_pb2.ObjectInfo(
        bucket_name=info.bucket,
        object_key=info.key,
        version_id=info.version_id,
        size=info.size,
        etag=info.etag,
        content_type=info.content_type,
        user_metadata=dict(info.user_metadata),
        last_modified=to_timestamp(info.last_modified),
    )


def _version_id(message) -> str | None:
    """The optional ``version_id`` of a request; absent or empty means "the current one"."""
    if message.HasField("version_id") and message.version_id:
        return message.version_id
    return None


def _byte_range(message: object_pb2.GetObjectRequest) -> tuple[int, int | None]:
    """``(start, end)`` of the optional range (``end`` None: to the end).

    Raises:
        InvalidArgumentError: a negative start or ``end < start``.
    """
    if not message.HasField("range"):
        return 0, None
    wanted = message.range
    start = wanted.start
    end = wanted.end if wanted.HasField("end") else None
    check_range(start, end)
    return start, end


def _chunk_view(raw: bytes) -> memoryview | None:
    """The payload of a serialized ``PutObjectRequest`` that holds only ``chunk``, without a copy.

    That encoding is the tag byte ``0x12`` (field 2, length-delimited), a varint length, then
    exactly that many bytes. Anything else (metadata, unknown or repeated fields) returns
    ``None`` and is left to the protobuf parser.
    """
    if len(raw) < 2 or raw[0] != 0x12:
        return None
    length = shift = 0
    position = 1
    while position < len(raw) and position <= 10:
        byte = raw[position]
        position += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if position + length != len(raw):
                return None
            return memoryview(raw)[position:]
        shift += 7
    return None


def decode_put_request(raw: bytes) -> object_pb2.PutObjectRequest | memoryview:
    """Decode one PutObject request message: a chunk-only message becomes a zero-copy
    ``memoryview`` of its bytes, anything else a parsed ``PutObjectRequest``.

    Raises:
        google.protobuf.message.DecodeError: the bytes are not a ``PutObjectRequest``.
    """
    view = _chunk_view(raw)
    if view is not None:
        return view
    message = object_pb2.PutObjectRequest()
    message.ParseFromString(raw)
    return message


async def _chunks(
    messages: AsyncIterator[object_pb2.PutObjectRequest | memoryview],
) -> AsyncIterator[bytes | memoryview]:
    """The ``chunk`` payloads of the rest of a PutObject stream.

    Raises:
        InvalidArgumentError: a message that is not a chunk (a second metadata, or neither).
    """
    async for message in messages:
        if isinstance(message, memoryview):
            if message:
                yield message
            continue
        kind = message.WhichOneof("data")
        if kind != "chunk":
            raise InvalidArgumentError(
                "PutObject: after the metadata every message must be a chunk"
                f" (got {kind or 'an empty message'})"
            )
        chunk = message.chunk
        if chunk:
            yield chunk


class ObjectService(object_grpc.ObjectServiceServicer):
    """Serves the six object RPCs of API.md.

    Args:
        ctx: the shared service context.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def _who(self, request: CallContext) -> Principal:
        return principal(self._ctx, request)

    async def PutObject(  # noqa: N802 - gRPC method name
        self, input_messages: AsyncIterator[object_pb2.PutObjectRequest], request: CallContext
    ) -> object_pb2.PutObjectResponse:
        """Store an object from ``metadata`` then ``chunk`` messages (needs
        ``write:bucket:NAME/KEY``).

        Raises:
            UnauthenticatedError; InvalidArgumentError (no metadata first, messages out of order,
            bad metadata, size or checksum mismatch), InvalidResourceError (bad name or key);
            PermissionDeniedError; NotFoundError (bucket); AlreadyExistsError
            (``if_none_match``); ObjectTooLargeError, QuotaExceededError, StorageFullError;
            StorageUnavailableError. In every case nothing becomes visible.
        """
        who = self._who(request)
        first = await anext(aiter(input_messages), None)
        if (first is None or isinstance(first, memoryview)
                or first.WhichOneof("data") != "metadata"):
            raise InvalidArgumentError("PutObject: the first message must carry the metadata")
        meta = first.metadata
        user_metadata = validate_metadata_map(dict(meta.user_metadata), what="user metadata")
        expected = parse_expected_hash(meta.expected_sha256 or None)
        length = meta.content_length if meta.HasField("content_length") else None
        if length is not None and length < 0:
            raise InvalidArgumentError("content_length must not be negative")
        who.require_operation("PutObject", bucket=meta.bucket_name, key=meta.object_key)
        async with contextlib.aclosing(_chunks(input_messages)) as chunks:
            result = await self._ctx.storage.put_object(
                who.tenant, meta.bucket_name, meta.object_key, chunks,
                content_type=meta.content_type, user_metadata=user_metadata,
                content_length=length, expected_sha256=expected,
                if_none_match=meta.if_none_match,
            )
        return object_pb2.PutObjectResponse(
            etag=result.etag, version_id=result.version_id, size=result.size
        )

    PutObject.request_decoder = decode_put_request

    async def GetObject(  # noqa: N802 - gRPC method name
        self, input_message: object_pb2.GetObjectRequest, request: CallContext
    ) -> AsyncIterator[object_pb2.GetObjectResponse | PreFramed]:
        """Stream an object (or a version, or a range of either): info, then chunks of at most
        1 MiB (needs ``read:bucket:NAME/KEY``).

        Raises:
            UnauthenticatedError; InvalidArgumentError (``end < start``), InvalidResourceError;
            PermissionDeniedError; NotFoundError (bucket, key, version, delete marker);
            OutOfRangeError (start at or past the end of a non-empty object);
            StorageUnavailableError.
        """
        who = self._who(request)
        start, end = _byte_range(input_message)
        bucket, key = input_message.bucket_name, input_message.object_key
        who.require_operation("GetObject", bucket=bucket, key=key)
        info, reader = await call_storage(
            self._ctx, self._ctx.storage.get_object, who.tenant, bucket, key,
            version_id=_version_id(input_message), start=start, end=end,
        )
        async with reader:
            yield object_pb2.GetObjectResponse(info=object_info_message(info))
            async for chunk in reader:
                for offset in range(0, len(chunk), MAX_RESPONSE_CHUNK_BYTES):
                    piece = chunk[offset:offset + MAX_RESPONSE_CHUNK_BYTES]
                    # GetObjectResponse{chunk = 2}, serialized straight into its frame.
                    yield bytes_field_message(2, piece)

    async def HeadObject(  # noqa: N802 - gRPC method name
        self, input_message: object_pb2.HeadObjectRequest, request: CallContext
    ) -> object_pb2.HeadObjectResponse:
        """An object's info without its bytes (needs ``read:bucket:NAME/KEY``).

        Raises:
            UnauthenticatedError, InvalidResourceError, PermissionDeniedError, NotFoundError,
            StorageUnavailableError.
        """
        who = self._who(request)
        bucket, key = input_message.bucket_name, input_message.object_key
        who.require_operation("HeadObject", bucket=bucket, key=key)
        info = await call_storage(
            self._ctx, self._ctx.storage.head_object, who.tenant, bucket, key,
            version_id=_version_id(input_message),
        )
        return object_pb2.HeadObjectResponse(info=object_info_message(info))

    async def DeleteObject(  # noqa: N802 - gRPC method name
        self, input_message: object_pb2.DeleteObjectRequest, request: CallContext
    ) -> object_pb2.DeleteObjectResponse:
        """Delete an object, or one version of it (needs ``delete:bucket:NAME/KEY``); deleting
        a key that does not exist succeeds.

        Raises:
            UnauthenticatedError, InvalidResourceError, PermissionDeniedError, NotFoundError
            (bucket, or the given version), StorageUnavailableError.
        """
        who = self._who(request)
        bucket, key = input_message.bucket_name, input_message.object_key
        who.require_operation("DeleteObject", bucket=bucket, key=key)
        result = await call_storage(
            self._ctx, self._ctx.storage.delete_object, who.tenant, bucket, key,
            version_id=_version_id(input_message),
        )
        return object_pb2.DeleteObjectResponse(
            version_id=result.version_id, delete_marker=result.delete_marker
        )

    async def ListObjects(  # noqa: N802 - gRPC method name
        self, input_message: object_pb2.ListObjectsRequest, request: CallContext
    ) -> object_pb2.ListObjectsResponse:
        """One page of current objects and common prefixes (needs ``list:bucket:NAME``).

        Raises:
            UnauthenticatedError; InvalidArgumentError (negative ``max_keys``, bad prefix,
            delimiter or page token), InvalidResourceError; PermissionDeniedError;
            NotFoundError; StorageUnavailableError.
        """
        who = self._who(request)
        message = input_message
        normalize_max_keys(message.max_keys)
        decode_prefix(message.prefix, what="prefix")
        decode_prefix(message.delimiter, what="delimiter")
        self._ctx.storage.check_page_token(message.page_token)
        who.require_operation("ListObjects", bucket=message.bucket_name)
        page = await call_storage(
            self._ctx, self._ctx.storage.list_objects, who.tenant, message.bucket_name,
            prefix=message.prefix, delimiter=message.delimiter, max_keys=message.max_keys,
            page_token=message.page_token,
        )
        return object_pb2.ListObjectsResponse(
            objects=[object_info_message(info) for info in page.objects],
            common_prefixes=list(page.common_prefixes),
            next_page_token=page.next_page_token,
        )

    async def ListObjectVersions(  # noqa: N802 - gRPC method name
        self, input_message: object_pb2.ListObjectVersionsRequest, request: CallContext
    ) -> object_pb2.ListObjectVersionsResponse:
        """One page of versions and delete markers: keys ascending, newest first within a key
        (needs ``list:bucket:NAME``).

        Raises:
            UnauthenticatedError; InvalidArgumentError, InvalidResourceError;
            PermissionDeniedError; NotFoundError; StorageUnavailableError.
        """
        who = self._who(request)
        message = input_message
        normalize_max_keys(message.max_keys)
        decode_prefix(message.prefix, what="prefix")
        self._ctx.storage.check_page_token(message.page_token)
        who.require_operation("ListObjectVersions", bucket=message.bucket_name)
        page = await call_storage(
            self._ctx, self._ctx.storage.list_object_versions, who.tenant, message.bucket_name,
            prefix=message.prefix, max_keys=message.max_keys, page_token=message.page_token,
        )
        return object_pb2.ListObjectVersionsResponse(
            versions=[
                object_pb2.ObjectVersion(
                    info=object_info_message(info),
                    is_latest=info.is_latest,
                    delete_marker=info.delete_marker,
                )
                for info in page.versions
            ],
            next_page_token=page.next_page_token,
        )
