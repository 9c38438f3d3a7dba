"""ObjectService over the wire: streams, ranges, versions, listing, limits and error codes."""

from __future__ import annotations

import datetime
import hashlib
import os
import socket

import anyio.abc
import pytest
import trio
from purerpc import StatusCode
from purerpc.wrappers import extract_message_from_singleton_stream

from anvil_trio._proto.anvil.v1 import blob_pb2, bucket_pb2, common_pb2, object_pb2
from _held import held_digests, writes_in_flight
from anvil_trio.testing import (  # noqa: F401

    anvil_server,
    code_of,
    open_test_server,
    put_messages,
    status_of,
)

# The contract holds on both backends (SQLite + files; PostgreSQL + S3): see conftest.py.
pytestmark = pytest.mark.usefixtures("backend")

MiB = 1 << 20


async def make_bucket(ts, name: str = "bkt", *, versioning: bool = False) -> None:
    await ts.buckets.CreateBucket(
        bucket_pb2.CreateBucketRequest(bucket_name=name, versioning=versioning),
        metadata=ts.metadata,
    )


def head_req(key: str, bucket: str = "bkt", **fields) -> object_pb2.HeadObjectRequest:
    return object_pb2.HeadObjectRequest(bucket_name=bucket, object_key=key, **fields)


def delete_req(key: str, bucket: str = "bkt", **fields) -> object_pb2.DeleteObjectRequest:
    return object_pb2.DeleteObjectRequest(bucket_name=bucket, object_key=key, **fields)


def list_req(bucket: str = "bkt", **fields) -> object_pb2.ListObjectsRequest:
    return object_pb2.ListObjectsRequest(bucket_name=bucket, **fields)


def versions_req(bucket: str = "bkt", **fields) -> object_pb2.ListObjectVersionsRequest:
    return object_pb2.ListObjectVersionsRequest(bucket_name=bucket, **fields)


async def nothing_stored(ts, bucket: str = "bkt") -> bool:
    """No version of anything in ``bucket``, no bytes counted, no unfinished write left."""
    versions = await ts.objects.ListObjectVersions(versions_req(bucket), metadata=ts.metadata)
    used = (await ts.storage.get_tenant(ts.tenant)).used_bytes
    return not versions.versions and used == 0 and not await writes_in_flight(ts.storage)


async def wait_until(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def wait_for(predicate, timeout: float = 10.0) -> None:
    """``wait_until`` for an async predicate."""
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.01)


# ---------------------------------------------------------------- put / get / head


async def test_put_get_head_round_trip(anvil_server):
    """A put's etag, size, content type and user metadata come back from get and head."""
    ts = anvil_server
    await make_bucket(ts)
    data = b"hello, anvil"
    put = await ts.put("bkt", "dir/greeting.txt", data, content_type="text/plain",
                       user_metadata={"lang": "en", "x": "1"})
    assert put.etag == hashlib.sha256(data).hexdigest()
    assert put.size == len(data) and put.version_id
    info, got, _ = await ts.get("bkt", "dir/greeting.txt")
    assert got == data
    assert (info.bucket_name, info.object_key, info.version_id) == (
        "bkt", "dir/greeting.txt", put.version_id
    )
    assert (info.size, info.etag, info.content_type) == (len(data), put.etag, "text/plain")
    assert dict(info.user_metadata) == {"lang": "en", "x": "1"}
    assert info.last_modified.seconds > 0
    head = await ts.objects.HeadObject(head_req("dir/greeting.txt"), metadata=ts.metadata)
    assert head.info == info
    empty = await ts.put("bkt", "empty", b"")
    info, got, _ = await ts.get("bkt", "empty")
    assert (got, info.size, info.content_type) == (b"", 0, "application/octet-stream")
    assert empty.etag == hashlib.sha256(b"").hexdigest()


async def test_multi_mib_round_trip_with_sha256_and_bounded_chunks(anvil_server):
    """Several MiB survive put and get byte for byte; response chunks are at most 1 MiB."""
    ts = anvil_server
    await make_bucket(ts)
    data = os.urandom(5 * MiB + 12345)
    digest = hashlib.sha256(data).hexdigest()
    put = await ts.put("bkt", "big", data, chunk_size=MiB, expected_sha256=digest,
                       content_length=len(data))
    assert (put.etag, put.size) == (digest, len(data))
    info, got, sizes = await ts.get("bkt", "big")
    assert hashlib.sha256(got).hexdigest() == digest and info.size == len(data)
    assert max(sizes) <= MiB and len(sizes) >= 6


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, slice(0, 100)),
        (10, None, slice(10, 100)),
        (10, 20, slice(10, 20)),
        (95, 1000, slice(95, 100)),
        (0, 0, slice(0, 0)),
        (99, 100, slice(99, 100)),
    ],
)
async def test_ranged_get(anvil_server, start, end, expected):
    """A range returns [start, end) clamped to the size, and info.size is the whole size."""
    ts = anvil_server
    await make_bucket(ts)
    data = bytes(range(100))
    await ts.put("bkt", "r", data)
    byte_range = common_pb2.ByteRange(start=start)
    if end is not None:
        byte_range.end = end
    info, got, _ = await ts.get("bkt", "r", range=byte_range)
    assert got == data[expected]
    assert info.size == 100


async def test_bad_ranges(anvil_server):
    """end < start is INVALID_ARGUMENT; a start at or past the end is OUT_OF_RANGE."""
    ts = anvil_server
    await make_bucket(ts)
    await ts.put("bkt", "r", b"0123456789")
    await ts.put("bkt", "empty", b"")
    backwards = common_pb2.ByteRange(start=5, end=2)
    assert await code_of(ts.get("bkt", "r", range=backwards)) == StatusCode.INVALID_ARGUMENT
    negative = common_pb2.ByteRange(start=-1)
    assert await code_of(ts.get("bkt", "r", range=negative)) == StatusCode.INVALID_ARGUMENT
    for start in (10, 11, 1 << 40):
        past = common_pb2.ByteRange(start=start)
        assert await code_of(ts.get("bkt", "r", range=past)) == StatusCode.OUT_OF_RANGE
    info, got, _ = await ts.get("bkt", "empty", range=common_pb2.ByteRange(start=0))
    assert (got, info.size) == (b"", 0)


def open_fds_to(path) -> int:
    """How many of this process's descriptors point at ``path`` (Linux /proc)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.embedded_only  # watches the blob file's descriptor
async def test_get_abandoned_mid_stream_closes_the_reader(anvil_server):
    """A client that goes away in the middle of a GetObject leaves no blob file open."""
    ts = anvil_server
    await make_bucket(ts)
    put = await ts.put("bkt", "big", os.urandom(8 * MiB), chunk_size=MiB)
    blob = ts.storage.blobs.blob_path(put.etag)
    async with ts.open_channel() as channel:
        stream = await channel._grpc_socket.start_request(
            "http", "anvil.v1.ObjectService", "GetObject", "anvil.v1.GetObjectRequest",
            f"127.0.0.1:{ts.port}", custom_metadata=ts.metadata,
        )
        stream.expect_message_type(object_pb2.GetObjectResponse)
        await stream.send_message(object_pb2.GetObjectRequest(bucket_name="bkt", object_key="big"))
        await stream.close()
        first = await stream.receive_message()
        assert first.WhichOneof("data") == "info"
        # The server is now blocked on flow control with the blob open.
        await wait_until(lambda: open_fds_to(blob) == 1)
        raw = channel._grpc_socket._socket._stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.shutdown(socket.SHUT_RDWR)
    await wait_until(lambda: ts.server.edge.statistics().active_calls == 0)
    await wait_until(lambda: open_fds_to(blob) == 0)


# ---------------------------------------------------------------- the put stream


async def test_put_stream_must_start_with_metadata(anvil_server):
    """Metadata not first, an empty stream or a second metadata: INVALID_ARGUMENT, no object."""
    ts = anvil_server
    await make_bucket(ts)

    async def chunk_first():
        yield object_pb2.PutObjectRequest(chunk=b"abc")
        yield object_pb2.PutObjectRequest(
            metadata=object_pb2.ObjectMetadata(bucket_name="bkt", object_key="k")
        )

    async def empty():
        return
        yield  # an async generator that yields nothing

    async def metadata_twice():
        async for message in put_messages("bkt", "k", b"x" * 1000, chunk_size=100):
            yield message
        yield object_pb2.PutObjectRequest(
            metadata=object_pb2.ObjectMetadata(bucket_name="bkt", object_key="k")
        )

    async def neither():
        yield object_pb2.PutObjectRequest(
            metadata=object_pb2.ObjectMetadata(bucket_name="bkt", object_key="k")
        )
        yield object_pb2.PutObjectRequest()

    for stream in (chunk_first(), empty(), metadata_twice(), neither()):
        status = await status_of(ts.objects.PutObject(stream, metadata=ts.metadata))
        assert status.status_code == StatusCode.INVALID_ARGUMENT, status
    assert await nothing_stored(ts)


async def test_put_preconditions_and_checks_leave_nothing(anvil_server):
    """if_none_match, a wrong sha256 and a wrong content_length fail with their codes."""
    ts = anvil_server
    await make_bucket(ts)
    first = await ts.put("bkt", "k", b"one")
    again = ts.put("bkt", "k", b"two", if_none_match=True)
    assert await code_of(again) == StatusCode.ALREADY_EXISTS
    assert await code_of(ts.put("bkt", "new", b"abc", expected_sha256="00" * 32)) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(ts.put("bkt", "new", b"abc", expected_sha256="xyz")) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(ts.put("bkt", "new", b"abc", content_length=4)) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(ts.put("bkt", "new", b"abc", content_length=-1)) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(ts.objects.HeadObject(head_req("new"), metadata=ts.metadata)) == (
        StatusCode.NOT_FOUND
    )
    info, data, _ = await ts.get("bkt", "k")
    assert (data, info.version_id) == (b"one", first.version_id)
    assert (await ts.put("bkt", "fresh", b"ok", if_none_match=True)).size == 2


async def test_stream_broken_mid_put_leaves_nothing(anvil_server):
    """A client connection that dies in the middle of a put leaves no object and no bytes."""
    ts = anvil_server
    await make_bucket(ts)
    async with ts.open_channel() as channel:
        # The raw stream API: the stream is never half-closed, the connection just goes away.
        stream = await channel._grpc_socket.start_request(
            "http", "anvil.v1.ObjectService", "PutObject", "anvil.v1.PutObjectRequest",
            f"127.0.0.1:{ts.port}", custom_metadata=ts.metadata,
        )
        # More than one write batch (a part file's 4 MiB; an S3 part's 8 MiB), so the byte
        # store holds some of it already.
        size = ts.storage.blobs.batch_size + (1 << 20)
        async for message in put_messages("bkt", "half", b"z" * size, chunk_size=1 << 20):
            await stream.send_message(message)
        await wait_for(lambda: writes_in_flight(ts.storage))
        # purerpc's channel never closes its TCP connection itself: cut it here.
        raw = channel._grpc_socket._socket._stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.shutdown(socket.SHUT_RDWR)
    await wait_until(lambda: ts.server.edge.statistics().active_calls == 0)
    assert await code_of(ts.objects.HeadObject(head_req("half"), metadata=ts.metadata)) == (
        StatusCode.NOT_FOUND
    )
    assert await nothing_stored(ts)


async def test_cancelled_purerpc_put_with_content_length_leaves_nothing(anvil_server):
    """A cancelled purerpc put (which still half-closes) with content_length stores nothing."""
    ts = anvil_server
    await make_bucket(ts)
    sent = trio.Event()

    async def messages():
        async for message in put_messages("bkt", "cut", b"z" * 1000, content_length=5000):
            yield message
        sent.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def put():
            await ts.objects.PutObject(messages(), metadata=ts.metadata)

        nursery.start_soon(put)
        await sent.wait()
        await wait_until(lambda: ts.server.edge.statistics().active_calls == 1)
        nursery.cancel_scope.cancel()
    await wait_until(lambda: ts.server.edge.statistics().active_calls == 0)
    assert await nothing_stored(ts)


async def test_client_deadline_is_deadline_exceeded_and_leaves_nothing(anvil_server):
    """A put whose client deadline passes mid-stream ends DEADLINE_EXCEEDED, storing nothing."""
    ts = anvil_server
    await make_bucket(ts)
    # purerpc's stubs cannot send grpc-timeout; its socket API can.
    stream = await ts.channel._grpc_socket.start_request(
        "http", "anvil.v1.ObjectService", "PutObject", "anvil.v1.PutObjectRequest",
        f"127.0.0.1:{ts.port}", timeout=datetime.timedelta(seconds=0.3),
        custom_metadata=ts.metadata,
    )
    stream.expect_message_type(object_pb2.PutObjectResponse)
    async for message in put_messages("bkt", "late", b"y" * 1000):
        await stream.send_message(message)
    with trio.fail_after(10):
        status = await status_of(extract_message_from_singleton_stream(stream))
    assert status.status_code == StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: ts.server.edge.statistics().active_calls == 0)
    assert await nothing_stored(ts)


# ---------------------------------------------------------------- versions and deletes


async def test_versioning_on(anvil_server):
    """Versioned buckets keep every put, add delete markers, and delete single versions."""
    ts = anvil_server
    await make_bucket(ts, versioning=True)
    v1 = await ts.put("bkt", "k", b"first")
    v2 = await ts.put("bkt", "k", b"second")
    assert v1.version_id != v2.version_id
    assert (await ts.get("bkt", "k"))[1] == b"second"
    assert (await ts.get("bkt", "k", version_id=v1.version_id))[1] == b"first"
    marker = await ts.objects.DeleteObject(delete_req("k"), metadata=ts.metadata)
    assert marker.delete_marker and marker.version_id
    assert await code_of(ts.get("bkt", "k")) == StatusCode.NOT_FOUND
    assert await code_of(ts.get("bkt", "k", version_id=marker.version_id)) == (
        StatusCode.NOT_FOUND
    )
    old = await ts.objects.HeadObject(head_req("k", version_id=v1.version_id),
                                      metadata=ts.metadata)
    assert old.info.size == 5
    listing = await ts.objects.ListObjectVersions(versions_req(), metadata=ts.metadata)
    assert [(v.info.version_id, v.is_latest, v.delete_marker) for v in listing.versions] == [
        (marker.version_id, True, True),
        (v2.version_id, False, False),
        (v1.version_id, False, False),
    ]
    assert (await ts.objects.ListObjects(list_req(), metadata=ts.metadata)).objects == []
    await ts.objects.DeleteObject(delete_req("k", version_id=marker.version_id),
                                  metadata=ts.metadata)
    assert (await ts.get("bkt", "k"))[1] == b"second"
    removed = await ts.objects.DeleteObject(delete_req("k", version_id=v2.version_id),
                                            metadata=ts.metadata)
    assert not removed.delete_marker
    assert (await ts.get("bkt", "k"))[1] == b"first"
    missing = delete_req("k", version_id="0" * 32)
    assert await code_of(ts.objects.DeleteObject(missing, metadata=ts.metadata)) == (
        StatusCode.NOT_FOUND
    )


async def test_versioning_off(anvil_server):
    """Unversioned buckets replace objects, reclaim old bytes, and delete idempotently."""
    ts = anvil_server
    await make_bucket(ts)
    first = await ts.put("bkt", "k", b"old bytes")
    second = await ts.put("bkt", "k", b"new")
    assert first.version_id != second.version_id
    listing = await ts.objects.ListObjectVersions(versions_req(), metadata=ts.metadata)
    assert [v.info.version_id for v in listing.versions] == [second.version_id]
    await ts.storage.sync()  # the old bytes go right after the reply
    assert first.etag not in await held_digests(ts.storage)
    assert (await ts.storage.get_tenant("t1")).used_bytes == 3
    gone = await ts.objects.DeleteObject(delete_req("k"), metadata=ts.metadata)
    assert not gone.delete_marker
    again = await ts.objects.DeleteObject(delete_req("k"), metadata=ts.metadata)
    assert not again.delete_marker
    never = await ts.objects.DeleteObject(delete_req("never-was"), metadata=ts.metadata)
    assert never.version_id == "" and not never.delete_marker
    assert await nothing_stored(ts)


# ---------------------------------------------------------------- listing


async def test_list_objects_order_prefixes_and_pages(anvil_server):
    """Keys list in UTF-8 byte order; common prefixes count toward max_keys; pages chain."""
    ts = anvil_server
    await make_bucket(ts)
    keys = ["b", "a/1", "a/2", "Z", "é", "a", "c/x/y", "ab"]
    for key in keys:
        await ts.put("bkt", key, key.encode())
    everything = await ts.objects.ListObjects(list_req(), metadata=ts.metadata)
    expected = sorted(keys, key=lambda k: k.encode("utf-8"))
    assert [o.object_key for o in everything.objects] == expected
    assert everything.next_page_token == ""
    grouped = await ts.objects.ListObjects(list_req(delimiter="/"), metadata=ts.metadata)
    assert [o.object_key for o in grouped.objects] == ["Z", "a", "ab", "b", "é"]
    assert list(grouped.common_prefixes) == ["a/", "c/"]
    prefixed = await ts.objects.ListObjects(list_req(prefix="a/"), metadata=ts.metadata)
    assert [o.object_key for o in prefixed.objects] == ["a/1", "a/2"]
    seen: list[str] = []
    token = ""
    while True:
        page = await ts.objects.ListObjects(
            list_req(delimiter="/", max_keys=2, page_token=token), metadata=ts.metadata
        )
        assert len(page.objects) + len(page.common_prefixes) <= 2
        seen += [o.object_key for o in page.objects] + list(page.common_prefixes)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen, key=lambda k: k.encode()) == ["Z", "a", "a/", "ab", "b", "c/", "é"]


async def test_list_object_versions_pages(anvil_server):
    """ListObjectVersions pages through keys ascending and versions newest first."""
    ts = anvil_server
    await make_bucket(ts, versioning=True)
    ids = {}
    for key in ("x", "y"):
        ids[key] = [(await ts.put("bkt", key, f"{key}{n}".encode())).version_id for n in range(3)]
    seen = []
    token = ""
    while True:
        page = await ts.objects.ListObjectVersions(versions_req(max_keys=2, page_token=token),
                                                   metadata=ts.metadata)
        assert len(page.versions) <= 2
        seen += [(v.info.object_key, v.info.version_id) for v in page.versions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [("x", v) for v in reversed(ids["x"])] + [("y", v) for v in reversed(ids["y"])]


async def test_bad_listing_arguments_are_invalid_argument(anvil_server):
    """A page token the server did not issue, or a negative max_keys, is INVALID_ARGUMENT."""
    ts = anvil_server
    await make_bucket(ts)
    for request in (list_req(page_token="forged"), list_req(max_keys=-1)):
        assert await code_of(ts.objects.ListObjects(request, metadata=ts.metadata)) == (
            StatusCode.INVALID_ARGUMENT
        )
    for request in (versions_req(page_token="forged"), versions_req(max_keys=-5)):
        assert await code_of(ts.objects.ListObjectVersions(request, metadata=ts.metadata)) == (
            StatusCode.INVALID_ARGUMENT
        )
    # A token for another listing (another prefix) is not accepted either.
    for key in ("p1", "p2", "p3"):
        await ts.put("bkt", key, b".")
    page = await ts.objects.ListObjects(list_req(max_keys=1), metadata=ts.metadata)
    assert page.next_page_token
    reused = list_req(prefix="p", max_keys=1, page_token=page.next_page_token)
    assert await code_of(ts.objects.ListObjects(reused, metadata=ts.metadata)) == (
        StatusCode.INVALID_ARGUMENT
    )


# ---------------------------------------------------------------- names, scopes, precedence


@pytest.mark.parametrize("key", ["", "nul\x00key", "k" * 1025])
async def test_invalid_keys_are_invalid_argument(anvil_server, key):
    """Empty, NUL-holding and over-long keys are INVALID_ARGUMENT on every object RPC."""
    ts = anvil_server
    await make_bucket(ts)
    md = ts.metadata
    calls = [
        ts.put("bkt", key, b"x"),
        ts.get("bkt", key),
        ts.objects.HeadObject(head_req(key), metadata=md),
        ts.objects.DeleteObject(delete_req(key), metadata=md),
    ]
    for call in calls:
        assert await code_of(call) == StatusCode.INVALID_ARGUMENT


async def test_longest_key_and_odd_keys_work(anvil_server):
    """A 1024-byte key, and keys with '..', '*', spaces or ':' are plain names."""
    ts = anvil_server
    await make_bucket(ts)
    for key in ("k" * 1024, "../../etc/passwd", "a*b", " spaced key ", "x:y", "é" * 512):
        await ts.put("bkt", key, key.encode())
        assert (await ts.get("bkt", key))[1] == key.encode()


async def test_object_rpcs_need_their_scopes(anvil_server):
    """Each object RPC needs its action on bucket:NAME/KEY (list on bucket:NAME)."""
    ts = anvil_server
    await make_bucket(ts)
    await ts.put("bkt", "a/k", b"data")
    reader = await ts.metadata_for(["read:bucket:bkt/a/*"])
    assert (await ts.get("bkt", "a/k", metadata=reader))[1] == b"data"
    denied = [
        ts.get("bkt", "b/k", metadata=reader),
        ts.put("bkt", "a/k", b"new", metadata=reader),
        ts.objects.DeleteObject(delete_req("a/k"), metadata=reader),
        ts.objects.ListObjects(list_req(), metadata=reader),
        ts.objects.ListObjectVersions(versions_req(), metadata=reader),
    ]
    for call in denied:
        assert await code_of(call) == StatusCode.PERMISSION_DENIED
    writer = await ts.metadata_for(["write:bucket:bkt/*", "list:bucket:bkt"])
    await ts.put("bkt", "w", b"w", metadata=writer)
    assert await code_of(ts.objects.HeadObject(head_req("w"), metadata=writer)) == (
        StatusCode.PERMISSION_DENIED
    )
    listed = await ts.objects.ListObjects(list_req(), metadata=writer)
    assert [o.object_key for o in listed.objects] == ["a/k", "w"]
    # The bucket scope does not cover the objects in it.
    bucket_only = await ts.metadata_for(["*:bucket:bkt"])
    assert await code_of(ts.get("bkt", "a/k", metadata=bucket_only)) == (
        StatusCode.PERMISSION_DENIED
    )


async def test_not_found_cases(anvil_server):
    """Missing bucket, key or version, and another tenant's bucket, are NOT_FOUND."""
    ts = anvil_server
    await make_bucket(ts)
    await ts.put("bkt", "k", b"v")
    other = await ts.metadata_for(["*:*"], tenant="t2")
    calls = [
        ts.put("nobucket", "k", b"x"),
        ts.get("nobucket", "k"),
        ts.get("bkt", "missing"),
        ts.get("bkt", "k", version_id="f" * 32),
        ts.objects.HeadObject(head_req("missing"), metadata=ts.metadata),
        ts.objects.DeleteObject(delete_req("k", bucket="nobucket"), metadata=ts.metadata),
        ts.objects.ListObjects(list_req(bucket="nobucket"), metadata=ts.metadata),
        ts.objects.ListObjectVersions(versions_req(bucket="nobucket"), metadata=ts.metadata),
        ts.get("bkt", "k", metadata=other),
        ts.put("bkt", "k", b"x", metadata=other),
        ts.objects.ListObjects(list_req(), metadata=other),
    ]
    for call in calls:
        assert await code_of(call) == StatusCode.NOT_FOUND


async def test_object_error_precedence(anvil_server):
    """UNAUTHENTICATED beats INVALID_ARGUMENT beats PERMISSION_DENIED beats NOT_FOUND."""
    ts = anvil_server
    await make_bucket(ts)
    junk = (("authorization", "Bearer junk"),)
    no_scope = await ts.metadata_for(["read:bucket:elsewhere/*"])
    backwards = common_pb2.ByteRange(start=9, end=1)
    assert await code_of(ts.get("BAD", "", metadata=junk)) == StatusCode.UNAUTHENTICATED
    assert await code_of(ts.put("BAD", "k", b"", metadata=junk)) == StatusCode.UNAUTHENTICATED
    assert await code_of(ts.get("bkt", "k", range=backwards, metadata=no_scope)) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(ts.get("BAD", "k", metadata=no_scope)) == StatusCode.INVALID_ARGUMENT
    assert await code_of(ts.put("bkt", "k", b"", metadata=no_scope, content_length=-2)) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(ts.objects.ListObjects(list_req(max_keys=-1), metadata=no_scope)) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(ts.get("nobucket", "k", metadata=no_scope)) == (
        StatusCode.PERMISSION_DENIED
    )
    assert await code_of(ts.get("nobucket", "k")) == StatusCode.NOT_FOUND


async def test_list_argument_errors_beat_missing_list_scope(anvil_server):
    """A page token (or start_after) the server did not issue is INVALID_ARGUMENT with or
    without the list scope; an issued token without the scope is PERMISSION_DENIED."""
    ts = anvil_server
    await make_bucket(ts)
    await make_bucket(ts, "other")
    for key in ("k1", "k2"):
        await ts.put("bkt", key, b".")
    issued = await ts.objects.ListObjects(list_req(max_keys=1), metadata=ts.metadata)
    versions = await ts.objects.ListObjectVersions(versions_req(max_keys=1), metadata=ts.metadata)
    assert issued.next_page_token and versions.next_page_token
    head, _, mac = issued.next_page_token.rpartition(".")
    tampered = f"{head}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
    no_scope = await ts.metadata_for(["read:bucket:bkt/*", "read:blob:*"])
    for metadata in (no_scope, ts.metadata):
        for token in ("forged", tampered, "v1..", versions.next_page_token + "x"):
            assert await code_of(ts.objects.ListObjects(
                list_req(page_token=token), metadata=metadata
            )) == StatusCode.INVALID_ARGUMENT
            assert await code_of(ts.objects.ListObjectVersions(
                versions_req(page_token=token), metadata=metadata
            )) == StatusCode.INVALID_ARGUMENT

        async def list_blobs(md=metadata):
            request = blob_pb2.ListBlobsRequest(start_after=b"sha256:nothex")
            return [blob async for blob in ts.blobs.ListBlobs(request, metadata=md)]

        assert await code_of(list_blobs()) == StatusCode.INVALID_ARGUMENT
    # Tokens the server issued pass the early check: without the scope, PERMISSION_DENIED ...
    assert await code_of(ts.objects.ListObjects(
        list_req(page_token=issued.next_page_token), metadata=no_scope
    )) == StatusCode.PERMISSION_DENIED
    assert await code_of(ts.objects.ListObjectVersions(
        versions_req(page_token=versions.next_page_token), metadata=no_scope
    )) == StatusCode.PERMISSION_DENIED
    # ... also on another listing (that is checked after authorization) ...
    assert await code_of(ts.objects.ListObjects(
        list_req("other", page_token=issued.next_page_token), metadata=no_scope
    )) == StatusCode.PERMISSION_DENIED
    assert await code_of(ts.objects.ListObjects(
        list_req("other", page_token=issued.next_page_token), metadata=ts.metadata
    )) == StatusCode.INVALID_ARGUMENT
    # ... and with the scope they continue the listing.
    page = await ts.objects.ListObjects(list_req(page_token=issued.next_page_token),
                                        metadata=ts.metadata)
    assert [o.object_key for o in [*issued.objects, *page.objects]] == ["k1", "k2"]


# ---------------------------------------------------------------- limits


async def test_tenant_quota_is_resource_exhausted(anvil_server):
    """A put past the tenant's quota is RESOURCE_EXHAUSTED and leaves nothing."""
    ts = anvil_server
    await make_bucket(ts)
    await ts.storage.set_tenant_quota("t1", 1000)
    await ts.put("bkt", "fits", b"x" * 600)
    assert await code_of(ts.put("bkt", "big", b"y" * 600)) == StatusCode.RESOURCE_EXHAUSTED
    assert await code_of(ts.put("bkt", "big", b"y" * 600, content_length=600)) == (
        StatusCode.RESOURCE_EXHAUSTED
    )
    assert (await ts.storage.get_tenant("t1")).used_bytes == 600
    assert await code_of(ts.objects.HeadObject(head_req("big"), metadata=ts.metadata)) == (
        StatusCode.NOT_FOUND
    )


async def test_object_size_limit_is_resource_exhausted(tmp_path):
    """Objects over max_object_bytes are RESOURCE_EXHAUSTED, declared or not."""
    async with open_test_server(tmp_path, config_overrides={"max_object_bytes": 1024}) as ts:
        await make_bucket(ts)
        assert (await ts.put("bkt", "ok", b"a" * 1024)).size == 1024
        assert await code_of(ts.put("bkt", "big", b"b" * 1025, chunk_size=100)) == (
            StatusCode.RESOURCE_EXHAUSTED
        )
        assert await code_of(ts.put("bkt", "big", b"b", content_length=4096)) == (
            StatusCode.RESOURCE_EXHAUSTED
        )
        assert await code_of(ts.objects.HeadObject(head_req("big"), metadata=ts.metadata)) == (
            StatusCode.NOT_FOUND
        )
