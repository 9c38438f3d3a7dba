"""BucketService over the wire: create, delete, list, scopes, tenants and error precedence."""

from __future__ import annotations

import time

import pytest
from purerpc import StatusCode
from purerpc.wrappers import extract_message_from_singleton_stream

from anvil_trio._proto.anvil.v1 import bucket_pb2, object_pb2
from anvil_trio.testing import anvil_server, code_of, status_of  # noqa: F401

# The contract holds on both backends (SQLite + files; PostgreSQL + S3): see conftest.py.
pytestmark = pytest.mark.usefixtures("backend")

LIST = bucket_pb2.ListBucketsRequest()


def create(name: str, versioning: bool = False) -> bucket_pb2.CreateBucketRequest:
    return bucket_pb2.CreateBucketRequest(bucket_name=name, versioning=versioning)


def delete(name: str) -> bucket_pb2.DeleteBucketRequest:
    return bucket_pb2.DeleteBucketRequest(bucket_name=name)


async def names(ts, metadata=None) -> list[str]:
    reply = await ts.buckets.ListBuckets(LIST, metadata=metadata or ts.metadata)
    return [b.name for b in reply.buckets]


async def test_create_list_delete_round_trip(anvil_server):
    """A created bucket is listed with its versioning flag and creation time; delete removes it."""
    ts = anvil_server
    before = time.time()
    made = await ts.buckets.CreateBucket(create("photos", versioning=True), metadata=ts.metadata)
    await ts.buckets.CreateBucket(create("docs"), metadata=ts.metadata)
    assert made.name == "photos" and made.versioning
    assert before - 5 <= made.created_at.ToNanoseconds() / 1e9 <= time.time() + 5
    listed = (await ts.buckets.ListBuckets(LIST, metadata=ts.metadata)).buckets
    assert [(b.name, b.versioning) for b in listed] == [("docs", False), ("photos", True)]
    assert listed[1].created_at == made.created_at
    await ts.buckets.DeleteBucket(delete("photos"), metadata=ts.metadata)
    assert await names(ts) == ["docs"]


async def test_duplicate_is_already_exists_and_missing_is_not_found(anvil_server):
    """Creating an existing bucket is ALREADY_EXISTS; deleting a missing one is NOT_FOUND."""
    ts = anvil_server
    await ts.buckets.CreateBucket(create("dup"), metadata=ts.metadata)
    assert await code_of(ts.buckets.CreateBucket(create("dup"), metadata=ts.metadata)) == (
        StatusCode.ALREADY_EXISTS
    )
    assert await code_of(ts.buckets.DeleteBucket(delete("nope"), metadata=ts.metadata)) == (
        StatusCode.NOT_FOUND
    )


async def test_delete_bucket_holding_versions_or_markers_is_failed_precondition(anvil_server):
    """A bucket with any object, version or delete marker cannot be deleted."""
    ts = anvil_server
    await ts.buckets.CreateBucket(create("keep", versioning=True), metadata=ts.metadata)
    put = await ts.put("keep", "k", b"data")
    assert await code_of(ts.buckets.DeleteBucket(delete("keep"), metadata=ts.metadata)) == (
        StatusCode.FAILED_PRECONDITION
    )
    marker = await ts.objects.DeleteObject(
        object_pb2.DeleteObjectRequest(bucket_name="keep", object_key="k"), metadata=ts.metadata
    )
    assert marker.delete_marker
    await ts.objects.DeleteObject(
        object_pb2.DeleteObjectRequest(bucket_name="keep", object_key="k",
                                       version_id=put.version_id),
        metadata=ts.metadata,
    )
    # Only the delete marker remains: still not empty.
    assert await code_of(ts.buckets.DeleteBucket(delete("keep"), metadata=ts.metadata)) == (
        StatusCode.FAILED_PRECONDITION
    )
    await ts.objects.DeleteObject(
        object_pb2.DeleteObjectRequest(bucket_name="keep", object_key="k",
                                       version_id=marker.version_id),
        metadata=ts.metadata,
    )
    await ts.buckets.DeleteBucket(delete("keep"), metadata=ts.metadata)
    assert await names(ts) == []


@pytest.mark.parametrize(
    "name", ["", "ab", "Upper", "a..b", "192.168.1.2", "-abc", "abc-", "x" * 64, "a_b", "a/b"]
)
async def test_invalid_bucket_names_are_invalid_argument(anvil_server, name):
    """Names breaking API.md's rules are INVALID_ARGUMENT for create and delete."""
    ts = anvil_server
    assert await code_of(ts.buckets.CreateBucket(create(name), metadata=ts.metadata)) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(ts.buckets.DeleteBucket(delete(name), metadata=ts.metadata)) == (
        StatusCode.INVALID_ARGUMENT
    )


async def test_create_and_delete_need_their_scopes(anvil_server):
    """CreateBucket needs write:bucket:NAME and DeleteBucket delete:bucket:NAME."""
    ts = anvil_server
    md = await ts.metadata_for(["write:bucket:team-*", "delete:bucket:team-a"])
    await ts.buckets.CreateBucket(create("team-a"), metadata=md)
    await ts.buckets.CreateBucket(create("team-b"), metadata=md)
    assert await code_of(ts.buckets.CreateBucket(create("other"), metadata=md)) == (
        StatusCode.PERMISSION_DENIED
    )
    assert await code_of(ts.buckets.DeleteBucket(delete("team-b"), metadata=md)) == (
        StatusCode.PERMISSION_DENIED
    )
    await ts.buckets.DeleteBucket(delete("team-a"), metadata=md)
    object_scope = await ts.metadata_for(["write:bucket:team-c/*"])
    assert await code_of(ts.buckets.CreateBucket(create("team-c"), metadata=object_scope)) == (
        StatusCode.PERMISSION_DENIED
    )


async def test_list_buckets_returns_only_listable_buckets(anvil_server):
    """ListBuckets filters by list:bucket:NAME and never fails for lack of scope."""
    ts = anvil_server
    for name in ("alpha-1", "alpha-2", "beta-1"):
        await ts.buckets.CreateBucket(create(name), metadata=ts.metadata)
    assert await names(ts, await ts.metadata_for(["list:bucket:alpha-*"])) == [
        "alpha-1", "alpha-2"
    ]
    assert await names(ts, await ts.metadata_for(["list:bucket:beta-1"])) == ["beta-1"]
    assert await names(ts, await ts.metadata_for(["*:bucket:*"])) == [
        "alpha-1", "alpha-2", "beta-1"
    ]
    # Object-level list scopes, or other actions, do not reveal the bucket.
    assert await names(
        ts, await ts.metadata_for(["list:bucket:alpha-1/*", "read:bucket:beta-1"])
    ) == []


async def test_tenants_are_isolated(anvil_server):
    """Two tenants may own a bucket of the same name; another tenant's bucket does not exist."""
    ts = anvil_server
    other = await ts.metadata_for(["*:*"], tenant="t2")
    await ts.buckets.CreateBucket(create("shared"), metadata=ts.metadata)
    await ts.buckets.CreateBucket(create("shared"), metadata=other)
    await ts.buckets.CreateBucket(create("mine"), metadata=ts.metadata)
    assert await names(ts) == ["mine", "shared"]
    assert await names(ts, other) == ["shared"]
    assert await code_of(ts.buckets.DeleteBucket(delete("mine"), metadata=other)) == (
        StatusCode.NOT_FOUND
    )
    await ts.put("shared", "k", b"tenant one")
    info, data, _ = await ts.get("shared", "k")
    assert data == b"tenant one"
    get_other = ts.objects.HeadObject(
        object_pb2.HeadObjectRequest(bucket_name="shared", object_key="k"), metadata=other
    )
    assert await code_of(get_other) == StatusCode.NOT_FOUND
    assert await code_of(ts.put("mine", "k", b"x", metadata=other)) == StatusCode.NOT_FOUND
    await ts.buckets.DeleteBucket(delete("shared"), metadata=other)
    assert await names(ts) == ["mine", "shared"]


async def test_error_precedence(anvil_server):
    """UNAUTHENTICATED beats INVALID_ARGUMENT beats PERMISSION_DENIED beats NOT_FOUND."""
    ts = anvil_server
    no_scope = await ts.metadata_for(["read:bucket:elsewhere"])
    bad_token = (("authorization", "Bearer junk"),)
    assert await code_of(ts.buckets.DeleteBucket(delete("BAD"), metadata=bad_token)) == (
        StatusCode.UNAUTHENTICATED
    )
    assert await code_of(ts.buckets.DeleteBucket(delete("BAD"), metadata=no_scope)) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(ts.buckets.DeleteBucket(delete("missing"), metadata=no_scope)) == (
        StatusCode.PERMISSION_DENIED
    )
    assert await code_of(ts.buckets.DeleteBucket(delete("missing"), metadata=ts.metadata)) == (
        StatusCode.NOT_FOUND
    )


class _Undecodable:
    """Stands in for a request message; its bytes are not a valid protobuf encoding."""

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's method name
        return b"\x0a\xff\xff\xff\xff\x0f"


async def test_request_that_does_not_decode_is_invalid_argument(anvil_server):
    """A request message that does not decode as the method's type is INVALID_ARGUMENT."""
    ts = anvil_server
    stream = await ts.channel._grpc_socket.start_request(
        "http", "anvil.v1.BucketService", "CreateBucket", "anvil.v1.CreateBucketRequest",
        f"127.0.0.1:{ts.port}", custom_metadata=ts.metadata,
    )
    stream.expect_message_type(bucket_pb2.Bucket)
    await stream.send_message(_Undecodable())
    await stream.close()
    status = await status_of(extract_message_from_singleton_stream(stream))
    assert status.status_code == StatusCode.INVALID_ARGUMENT
    assert await names(ts) == []
