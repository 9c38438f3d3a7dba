"""BlobService over real sockets on 127.0.0.1 with a purerpc client."""

from __future__ import annotations

import contextlib
import hashlib
import time

import pytest
from purerpc import StatusCode

from anvil_trio._proto.anvil.v1 import blob_pb2, common_pb2, upload_pb2
from anvil_trio.rpc._blob_service import MAX_CHUNK_BYTES, timestamp_from_seconds
from anvil_trio.testing import bearer, open_test_server, rpc_error

# The contract holds on both backends (SQLite + files; PostgreSQL + S3): see conftest.py.
pytestmark = pytest.mark.usefixtures("backend")

MiB = 1 << 20


# ------------------------------------------------------------------------ server


def open_server(tmp_path):
    """The real test server (tenant t1, a *:* token)."""
    return open_test_server(tmp_path)


# ------------------------------------------------------------------------ helpers


@contextlib.asynccontextmanager
async def expect_status(code: StatusCode):
    """Assert that the block fails with ``code``."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - sorted out by rpc_error
        assert rpc_error(exc).status.status_code == code, rpc_error(exc).status
    else:
        pytest.fail(f"expected {code.name}")


def key_of(data: bytes) -> bytes:
    return b"sha256:" + hashlib.sha256(data).hexdigest().encode()


async def put(h, data: bytes, *, attributes=None, metadata=None) -> bytes:
    """Upload ``data`` as a blob; returns its key."""

    async def messages():
        yield upload_pb2.UploadMessage(
            start=upload_pb2.StartUpload(total_size=len(data), attributes=attributes or {})
        )
        for at in range(0, len(data), MiB):
            yield upload_pb2.UploadMessage(
                chunk=upload_pb2.UploadChunk(offset=at, data=data[at : at + MiB])
            )
        yield upload_pb2.UploadMessage(complete=upload_pb2.CompleteUpload())

    acks = [a async for a in h.uploads.Upload(messages(), metadata=h.metadata if metadata is None else metadata)]
    assert acks[-1].complete.key == key_of(data)
    return acks[-1].complete.key


def get_request(key: bytes, start: int | None = None, end: int | None = None):
    if start is None and end is None:
        return blob_pb2.GetBlobRequest(key=key)
    byte_range = common_pb2.ByteRange(start=start or 0)
    if end is not None:
        byte_range.end = end
    return blob_pb2.GetBlobRequest(key=key, range=byte_range)


async def get_chunks(h, request, metadata=None) -> list[blob_pb2.BlobChunk]:
    return [c async for c in h.blobs.GetBlob(request, metadata=h.metadata if metadata is None else metadata)]


async def list_keys(h, *, limit: int = 0, start_after: bytes = b"", metadata=None) -> list[bytes]:
    request = blob_pb2.ListBlobsRequest(limit=limit, start_after=start_after)
    return [m.key async for m in h.blobs.ListBlobs(request, metadata=h.metadata if metadata is None else metadata)]


def assert_contiguous(chunks, start: int, data: bytes) -> None:
    """Chunks are at most 1 MiB, start at ``start``, and their offsets are absolute."""
    position = start
    for c in chunks:
        assert c.offset == position and 0 < len(c.data) <= MAX_CHUNK_BYTES
        position += len(c.data)
    assert b"".join(c.data for c in chunks) == data


DATA = bytes(range(256)) * (5 * MiB // 512) + b"odd tail"  # 2.5 MiB + 8 bytes


# ------------------------------------------------------------------------ GetBlob


async def test_get_whole_blob_in_chunks_of_at_most_1_mib(tmp_path):
    """A 2.5 MiB blob comes back in <= 1 MiB chunks with absolute, contiguous offsets."""
    async with open_server(tmp_path) as h:
        key = await put(h, DATA)
        chunks = await get_chunks(h, get_request(key))
        assert len(chunks) == 3
        assert_contiguous(chunks, 0, DATA)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 10),
        (MiB - 3, MiB + 5),
        (MiB + 17, None),
        (100, len(DATA) + 1000),
        (len(DATA) - 1, None),
        (5, 5),
        (0, 2 * MiB + 1),
    ],
)
async def test_ranged_get_has_absolute_offsets(tmp_path, start, end):
    """A ranged read yields exactly [start, min(end, size)) with absolute offsets."""
    async with open_server(tmp_path) as h:
        key = await put(h, DATA)
        chunks = await get_chunks(h, get_request(key, start, end))
        assert_contiguous(chunks, start, DATA[start:end])


async def test_empty_blob_reads_as_nothing(tmp_path):
    """The empty blob reads as no chunk, with or without a range starting at 0."""
    async with open_server(tmp_path) as h:
        key = await put(h, b"")
        assert await get_chunks(h, get_request(key)) == []
        assert await get_chunks(h, get_request(key, 0, 10)) == []


async def test_range_errors(tmp_path):
    """end < start and a negative start are INVALID_ARGUMENT; start at/after the end is
    OUT_OF_RANGE."""
    async with open_server(tmp_path) as h:
        key = await put(h, b"0123456789")
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await get_chunks(h, get_request(key, 5, 4))
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await get_chunks(h, get_request(key, -1, None))
        async with expect_status(StatusCode.OUT_OF_RANGE):
            await get_chunks(h, get_request(key, 10, None))
        async with expect_status(StatusCode.OUT_OF_RANGE):
            await get_chunks(h, get_request(key, 11, 20))
        # INVALID_ARGUMENT outranks NOT_FOUND: a bad range on a missing blob.
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await get_chunks(h, get_request(key_of(b"missing"), 5, 4))


@pytest.mark.parametrize(
    "key",
    [b"", b"sha256:", b"sha256:" + b"A" * 64, b"sha256:" + b"0" * 63, b"md5:" + b"0" * 64,
     b"sha256:" + b"0" * 64 + b"\n", b"\xff" * 71],
)
async def test_malformed_keys_are_invalid_argument(tmp_path, key):
    """A key that is not sha256:<64 lowercase hex> is INVALID_ARGUMENT for every key RPC."""
    async with open_server(tmp_path) as h:
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await get_chunks(h, get_request(key))
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await h.blobs.StatBlob(blob_pb2.StatBlobRequest(key=key), metadata=h.metadata)
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await h.blobs.DeleteBlob(blob_pb2.DeleteBlobRequest(key=key), metadata=h.metadata)
        if key:
            async with expect_status(StatusCode.INVALID_ARGUMENT):
                await list_keys(h, start_after=key)


# ------------------------------------------------------------------------ StatBlob, DeleteBlob


async def test_stat_reports_content_type_and_attributes(tmp_path):
    """StatBlob gives key, size, attributes as given, content_type from them, and created_at."""
    async with open_server(tmp_path) as h:
        before = time.time()
        typed = await put(h, b"<p>hi</p>", attributes={"content-type": "text/html", "x": "y"})
        plain = await put(h, b"raw", attributes={"owner": "me"})
        stat = await h.blobs.StatBlob(blob_pb2.StatBlobRequest(key=typed), metadata=h.metadata)
        assert stat.key == typed and stat.size == 9
        assert stat.content_type == "text/html"
        assert dict(stat.attributes) == {"content-type": "text/html", "x": "y"}
        assert before - 5 <= stat.created_at.ToSeconds() <= time.time() + 5
        stat = await h.blobs.StatBlob(blob_pb2.StatBlobRequest(key=plain), metadata=h.metadata)
        assert stat.content_type == "application/octet-stream"
        assert dict(stat.attributes) == {"owner": "me"}


def test_timestamps_keep_microseconds():
    """created_at seconds map to a Timestamp with the fraction in nanos."""
    ts = timestamp_from_seconds(1_700_000_000.25)
    assert (ts.seconds, ts.nanos) == (1_700_000_000, 250_000_000)


async def test_delete_then_not_found(tmp_path):
    """After DeleteBlob the blob is NOT_FOUND for stat, get, delete and absent from the list."""
    async with open_server(tmp_path) as h:
        key = await put(h, b"short-lived")
        keep = await put(h, b"stays")
        assert await h.blobs.DeleteBlob(blob_pb2.DeleteBlobRequest(key=key), metadata=h.metadata) \
            == blob_pb2.DeleteBlobResponse()
        async with expect_status(StatusCode.NOT_FOUND):
            await h.blobs.StatBlob(blob_pb2.StatBlobRequest(key=key), metadata=h.metadata)
        async with expect_status(StatusCode.NOT_FOUND):
            await get_chunks(h, get_request(key))
        async with expect_status(StatusCode.NOT_FOUND):
            await h.blobs.DeleteBlob(blob_pb2.DeleteBlobRequest(key=key), metadata=h.metadata)
        assert await list_keys(h) == [keep]
        # The same content can be uploaded again, as a new blob.
        assert await put(h, b"short-lived") == key


# ------------------------------------------------------------------------ ListBlobs


async def test_list_is_ordered_with_limit_and_start_after(tmp_path):
    """ListBlobs is in key order; limit bounds it (0: all); start_after is exclusive."""
    async with open_server(tmp_path) as h:
        keys = sorted([await put(h, f"blob {i}".encode()) for i in range(7)])
        assert await list_keys(h) == keys
        assert await list_keys(h, limit=3) == keys[:3]
        assert await list_keys(h, limit=5000) == keys
        assert await list_keys(h, start_after=keys[2]) == keys[3:]
        assert await list_keys(h, start_after=keys[2], limit=2) == keys[3:5]
        assert await list_keys(h, start_after=keys[-1]) == []
        request = blob_pb2.ListBlobsRequest(limit=1)
        [meta] = [m async for m in h.blobs.ListBlobs(request, metadata=h.metadata)]
        assert meta.size == len(b"blob 0") and meta.content_type == "application/octet-stream"
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await list_keys(h, limit=-1)


async def test_list_of_an_empty_tenant_is_empty(tmp_path):
    """A tenant without blobs lists nothing."""
    async with open_server(tmp_path) as h:
        assert await list_keys(h) == []


# ------------------------------------------------------------------------ tenants and auth


async def test_another_tenants_blob_does_not_exist(tmp_path):
    """A blob of tenant t1 is NOT_FOUND and unlisted for a *:* token of tenant t2."""
    async with open_server(tmp_path) as h:
        key = await put(h, b"tenant one only")
        other = bearer(await h.token_for(("*:*",), tenant="t2"))
        async with expect_status(StatusCode.NOT_FOUND):
            await h.blobs.StatBlob(blob_pb2.StatBlobRequest(key=key), metadata=other)
        async with expect_status(StatusCode.NOT_FOUND):
            await get_chunks(h, get_request(key), metadata=other)
        async with expect_status(StatusCode.NOT_FOUND):
            await h.blobs.DeleteBlob(blob_pb2.DeleteBlobRequest(key=key), metadata=other)
        assert await list_keys(h, metadata=other) == []
        assert await list_keys(h) == [key]


async def test_each_operation_needs_its_scope(tmp_path):
    """read:blob:KEY, delete:blob:KEY and list:blob:* are each needed, and suffice."""
    async with open_server(tmp_path) as h:
        key = await put(h, b"guarded")
        other_key = await put(h, b"other")
        text = key.decode()
        reader = bearer(await h.token_for((f"read:blob:{text}",)))
        deleter = bearer(await h.token_for((f"delete:blob:{text}",)))
        lister = bearer(await h.token_for(("list:blob:*",)))
        stat = blob_pb2.StatBlobRequest
        delete = blob_pb2.DeleteBlobRequest
        # Each token works for its own operation ...
        assert (await h.blobs.StatBlob(stat(key=key), metadata=reader)).size == 7
        assert b"".join(c.data for c in await get_chunks(h, get_request(key), reader)) == b"guarded"
        assert await list_keys(h, metadata=lister) == sorted([key, other_key])
        # ... and for nothing else.
        for md in (deleter, lister):
            async with expect_status(StatusCode.PERMISSION_DENIED):
                await h.blobs.StatBlob(stat(key=key), metadata=md)
            async with expect_status(StatusCode.PERMISSION_DENIED):
                await get_chunks(h, get_request(key), md)
        for md in (reader, lister):
            async with expect_status(StatusCode.PERMISSION_DENIED):
                await h.blobs.DeleteBlob(delete(key=key), metadata=md)
        for md in (reader, deleter):
            async with expect_status(StatusCode.PERMISSION_DENIED):
                await list_keys(h, metadata=md)
        # A key-specific scope does not reach another key, even one that does not exist.
        async with expect_status(StatusCode.PERMISSION_DENIED):
            await h.blobs.StatBlob(stat(key=other_key), metadata=reader)
        async with expect_status(StatusCode.PERMISSION_DENIED):
            await h.blobs.StatBlob(stat(key=key_of(b"nothing")), metadata=reader)
        # INVALID_ARGUMENT outranks PERMISSION_DENIED.
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await h.blobs.StatBlob(stat(key=b"sha256:bad"), metadata=deleter)
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await get_chunks(h, get_request(key, 3, 2), deleter)
        await h.blobs.DeleteBlob(delete(key=key), metadata=deleter)
        async with expect_status(StatusCode.NOT_FOUND):
            await h.blobs.StatBlob(stat(key=key), metadata=reader)


async def test_wildcard_read_scope_covers_every_blob(tmp_path):
    """read:blob:* reads any blob of the tenant."""
    async with open_server(tmp_path) as h:
        key = await put(h, b"any")
        md = bearer(await h.token_for(("read:blob:*",)))
        assert (await h.blobs.StatBlob(blob_pb2.StatBlobRequest(key=key), metadata=md)).size == 3


async def test_missing_or_bad_token_is_unauthenticated_first(tmp_path):
    """No token (or a bad one) is UNAUTHENTICATED for every RPC, even with a bad key."""
    async with open_server(tmp_path) as h:
        key = await put(h, b"x")
        for md in ((), (("authorization", "Bearer not.a.jwt"),), (("authorization", "Basic x"),)):
            for bad in (key, b"sha256:nope"):
                async with expect_status(StatusCode.UNAUTHENTICATED):
                    await h.blobs.StatBlob(blob_pb2.StatBlobRequest(key=bad), metadata=md)
                async with expect_status(StatusCode.UNAUTHENTICATED):
                    await get_chunks(h, get_request(bad), md)
                async with expect_status(StatusCode.UNAUTHENTICATED):
                    await h.blobs.DeleteBlob(blob_pb2.DeleteBlobRequest(key=bad), metadata=md)
            async with expect_status(StatusCode.UNAUTHENTICATED):
                await list_keys(h, limit=-1, metadata=md)
