"""``anvil.v1.BucketService``: create, delete and list a tenant's buckets.

Invariants:

* Every handler checks in API.md's order: the bearer token (UNAUTHENTICATED), then the bucket
  name (INVALID_ARGUMENT, raised while building the scope the call needs), then the scope
  (PERMISSION_DENIED), then storage (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION...).
* Everything happens inside the token's tenant: another tenant's bucket of the same name is a
  different bucket, and a bucket of another tenant does not exist for this token.
* ``ListBuckets`` is never denied: it is a filter, returning only the buckets for which the
  token holds ``list:bucket:NAME``.
* Handlers raise domain errors; the edge maps them through the one table in ``_status``.
"""

from __future__ import annotations

import math

from google.protobuf.timestamp_pb2 import Timestamp

from .._proto.anvil.v1 import bucket_grpc, bucket_pb2
from ..auth import required_scope_for
from ..storage import BucketInfo
from ._calls import CallContext
from ._common import ServiceContext, call_storage, principal

__all__ = ["BucketService", "bucket_message", "to_timestamp"]


def to_timestamp(seconds: float) -> Timestamp:
    """A ``google.protobuf.Timestamp`` for ``seconds`` since the epoch (nanosecond precision).

    Raises:
        ValueError: ``seconds`` is not finite.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite time: {seconds!r}")
    whole, nanos = divmod(round(seconds * 1e9), 1_000_000_000)  # nanos in [0, 1e9), as required
    return Timestamp(seconds=whole, nanos=nanos)


def bucket_message(info: BucketInfo) -> bucket_pb2.Bucket:
    """The wire form of a bucket."""
    return bucket_pb2.Bucket(
        name=info.name, created_at=to_timestamp(info.created_at), versioning=info.versioning
    )


class BucketService(bucket_grpc.BucketServiceServicer):
    """Serves ``CreateBucket``, ``DeleteBucket`` and ``ListBuckets``.

    Args:
        ctx: the shared service context.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def CreateBucket(  # noqa: N802 - gRPC method name
        self, input_message: bucket_pb2.CreateBucketRequest, request: CallContext
    ) -> bucket_pb2.Bucket:
        """Create a bucket (needs ``write:bucket:NAME``).

        Raises:
            UnauthenticatedError, InvalidResourceError (bad name), PermissionDeniedError,
            AlreadyExistsError, StorageUnavailableError.
        """
        who = principal(self._ctx, request)
        name = input_message.bucket_name
        who.require_operation("CreateBucket", bucket=name)
        info = await call_storage(
            self._ctx, self._ctx.storage.create_bucket, who.tenant, name,
            versioning=input_message.versioning,
        )
        return bucket_message(info)

    async def DeleteBucket(  # noqa: N802 - gRPC method name
        self, input_message: bucket_pb2.DeleteBucketRequest, request: CallContext
    ) -> bucket_pb2.DeleteBucketResponse:
        """Delete an empty bucket (needs ``delete:bucket:NAME``).

        Raises:
            UnauthenticatedError, InvalidResourceError, PermissionDeniedError, NotFoundError,
            FailedPreconditionError (any version or delete marker remains),
            StorageUnavailableError.
        """
        who = principal(self._ctx, request)
        name = input_message.bucket_name
        who.require_operation("DeleteBucket", bucket=name)
        await call_storage(self._ctx, self._ctx.storage.delete_bucket, who.tenant, name)
        return bucket_pb2.DeleteBucketResponse()

    async def ListBuckets(  # noqa: N802 - gRPC method name
        self, input_message: bucket_pb2.ListBucketsRequest, request: CallContext
    ) -> bucket_pb2.ListBucketsResponse:
        """The tenant's buckets, by name, that the token may list (``list:bucket:NAME``).

        Raises:
            UnauthenticatedError, StorageUnavailableError.
        """
        who = principal(self._ctx, request)
        buckets = await call_storage(self._ctx, self._ctx.storage.list_buckets, who.tenant)
        visible = [
            bucket_message(info)
            for info in buckets
            if who.allows(required_scope_for("ListBuckets", bucket=info.name))
        ]
        return bucket_pb2.ListBucketsResponse(buckets=visible)
