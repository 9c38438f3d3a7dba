"""S3ByteStore against a real SeaweedFS (``weed server -s3``): the same semantics as the files
BlobStore (the range rules are checked against a BlobStore as the oracle), bounded memory,
nothing left behind by a failed or cancelled write, resumable uploads across store instances
(as across nodes), the reaper's listings, and an unreachable endpoint."""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import re
import secrets
import threading
import time
import tracemalloc

import _services
import botocore.exceptions
import pytest
import trio
import urllib3.exceptions

from anvil_trio.storage import (
    AlreadyExistsError,
    BlobStore,
    ChecksumMismatchError,
    InvalidArgumentError,
    NotFoundError,
    ObjectTooLargeError,
    OutOfRangeError,
    StorageError,
    StorageIOError,
    StorageUnavailableError,
)
from anvil_trio.storage._s3 import S3ByteStore, parse_blob_url, s3_error

BUCKET = _services.TEST_BUCKET
PART = 5 << 20  # S3's smallest part size but the last
CHUNK = 1 << 20
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# -- the session's SeaweedFS (tests/_services.py, tests/conftest.py) ------------------------


@pytest.fixture
def weed(seaweed_server):
    if not seaweed_server.running:  # a test before stopped it and failed to restart it
        seaweed_server.start()
    return seaweed_server


@pytest.fixture(scope="module")
def raw(seaweed_server):
    """A plain boto3 client on the server, for looking behind the store's back (and for
    stores to share, wrapped in a :class:`_Spy` where a test injects faults)."""
    client = _services.s3_client(seaweed_server.endpoint, max_pool_connections=64,
                                 read_timeout=60)
    yield client
    client.close()


def _make_store(weed, url: str, client=None, **kwargs) -> S3ByteStore:
    bucket, prefix = parse_blob_url(url)
    kwargs.setdefault("part_size", PART)
    return S3ByteStore(bucket, prefix, endpoint_url=weed.endpoint, region="us-east-1",
                       client=client, **kwargs)


@pytest.fixture
def store(weed, raw, s3_url):
    return _make_store(weed, s3_url, client=raw)


# -- helpers --------------------------------------------------------------------------------


async def _chunks(data: bytes, size: int = CHUNK):
    for i in range(0, len(data), size):
        yield data[i:i + size]
        await trio.lowlevel.checkpoint()


async def _read_all(reader) -> bytes:
    async with reader:
        return b"".join([chunk async for chunk in reader])


def _data_prefix(store: S3ByteStore) -> str:
    return store.data_key("0" * 32)[:-32]


def _leftovers(raw, store: S3ByteStore) -> tuple[list[str], list[str]]:
    """Keys under ``data/`` and unfinished multipart uploads there."""
    prefix = _data_prefix(store)
    keys = [o["Key"] for o in raw.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
    uploads = [u["Key"] for u in
               raw.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])]
    return keys, uploads


class _Spy:
    """A client whose named methods go through ``hook(real_method, **kwargs)``."""

    def __init__(self, client, **hooks) -> None:
        self._client = client
        self._hooks = hooks

    def __getattr__(self, name):
        real = getattr(self._client, name)
        hook = self._hooks.get(name)
        return real if hook is None else functools.partial(hook, real)


def _server_error(operation: str, status: int = 500, code: str = "InternalError"):
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "injected"},
         "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


# -- writing and reading --------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, PART, PART + 1, PART * 7 // 2],
                         ids=["0B", "1B", "part", "part+1", "3.5parts"])
async def test_round_trip(store, raw, size):
    data = os.urandom(size)
    chunk = 300_001 if size > PART else CHUNK  # chunks straddle part boundaries
    written = await store.write(_chunks(data, chunk))
    assert written.digest == hashlib.sha256(data).hexdigest()
    assert (written.size, written.created) == (size, True)
    assert re.fullmatch(r"[0-9a-f]{32}", written.location)
    assert store.pin_count(written.location) == 1
    written.release()
    assert store.pin_count(written.location) == 0
    reader = await store.open_range(written.location)
    assert (reader.size, reader.start, reader.end, reader.position) == (size, 0, size, 0)
    assert await _read_all(reader) == data
    assert reader.position == size
    keys, uploads = _leftovers(raw, store)
    assert keys == [store.data_key(written.location)] and uploads == []
    head = raw.head_object(Bucket=BUCKET, Key=store.data_key(written.location))
    assert head["ContentLength"] == size
    multipart = head["ETag"].strip('"').endswith(f"-{-(-size // PART)}")
    assert multipart == (size > PART)  # exactly one part's worth is a single PutObject


async def test_every_write_gets_a_new_location(store):
    first = await store.write(_chunks(b"same"))
    second = await store.write(_chunks(b"same"))
    assert first.digest == second.digest
    assert first.location != second.location and second.created
    for written in (first, second):
        written.release()
        assert await _read_all(await store.open_range(written.location)) == b"same"


async def test_concurrent_writes(store):
    blobs = [os.urandom(PART + i * 777_777) for i in range(4)]
    results = {}

    async def one(i):
        results[i] = await store.write(_chunks(blobs[i], 512 * 1024))

    async with trio.open_nursery() as nursery:
        for i in range(len(blobs)):
            nursery.start_soon(one, i)
    for i, data in enumerate(blobs):
        with results[i] as written:
            assert written.digest == hashlib.sha256(data).hexdigest()
            assert await _read_all(await store.open_range(written.location)) == data


async def test_chunks_may_be_reused_and_any_buffer(store):
    buffer = bytearray(CHUNK)
    data = bytearray()

    async def chunks():
        for i in range(7):
            buffer[:] = bytes([i]) * CHUNK  # the same buffer, overwritten after each yield
            data.extend(buffer)
            yield memoryview(buffer)
        yield b""

    with await store.write(chunks()) as written:
        assert written.digest == hashlib.sha256(data).hexdigest()
        assert await _read_all(await store.open_range(written.location)) == bytes(data)


# BlobStore is the oracle for the range rules: (start, end) -> same bytes or same error.
RANGES = [(0, None), (3, 7), (3, None), (3, 100), (0, 10), (9, 10), (5, 5), (0, 0), (10, 10),
          (10, None), (11, 20), (0, 1)]


@pytest.mark.parametrize("content", [b"", b"0123456789"], ids=["empty", "10B"])
async def test_ranges_match_blob_store(store, tmp_path, content):
    files = BlobStore(tmp_path / "files", fsync=False, direct_io=False)
    with await files.write(_chunks(content)) as on_disk, \
            await store.write(_chunks(content)) as in_s3:
        for start, end in RANGES:
            try:
                expected = await files.open_range(on_disk.location, start, end)
            except OutOfRangeError:
                with pytest.raises(OutOfRangeError):
                    await store.open_range(in_s3.location, start, end)
                continue
            got = await store.open_range(in_s3.location, start, end)
            shape = (expected.size, expected.start, expected.end, expected.position)
            assert (got.size, got.start, got.end, got.position) == shape, (start, end)
            assert await _read_all(got) == await _read_all(expected), (start, end)


async def test_ranges_of_a_multipart_object(store):
    data = os.urandom(PART * 2 + 12345)
    with await store.write(_chunks(data)) as written:
        for start, end in [(PART - 10, PART + 10), (PART, None), (1, 2 * PART + 1),
                           (2 * PART, 10 * PART), (len(data) - 1, None)]:
            reader = await store.open_range(written.location, start, end)
            stop = len(data) if end is None else min(end, len(data))
            assert (reader.start, reader.end) == (start, stop)
            assert await _read_all(reader) == data[start:stop]
        with pytest.raises(OutOfRangeError):
            await store.open_range(written.location, len(data))


async def test_reader_yields_chunks_and_closes(weed, raw, s3_url):
    store = _make_store(weed, s3_url, client=raw, chunk_size=64 * 1024)
    data = os.urandom(300_000)
    with await store.write(_chunks(data)) as written:
        reader = await store.open_range(written.location, 1000)
        sizes = [len(chunk) async for chunk in reader]
        assert max(sizes) == 64 * 1024 and sum(sizes) == len(data) - 1000
        assert reader.position == len(data)
        async for _ in reader:  # exhausted: nothing more
            pytest.fail("an exhausted reader yielded")
        reader = await store.open_range(written.location)
        async with reader:
            assert len(await reader.__anext__()) == 64 * 1024
        assert reader.position == 64 * 1024
        assert [c async for c in reader] == []  # closed: nothing more
        reader = await store.open_range(written.location, 10, 20)
        await reader.aclose()
        assert [c async for c in reader] == []


async def test_bad_arguments(store):
    with pytest.raises(InvalidArgumentError):
        await store.open_range("../../etc/passwd")
    with pytest.raises(InvalidArgumentError):
        await store.open_range("A" * 32)
    with pytest.raises(InvalidArgumentError):
        await store.delete_if_unpinned("0" * 64)  # a digest is not a location
    with pytest.raises(NotFoundError, match="blob not found"):
        await store.open_range(secrets.token_hex(16))
    with pytest.raises(NotFoundError):
        await store.open_range(secrets.token_hex(16), 0, 0)
    with await store.write(_chunks(b"abc")) as written:
        with pytest.raises(InvalidArgumentError):
            await store.open_range(written.location, -1)
        with pytest.raises(InvalidArgumentError):
            await store.open_range(written.location, 2, 1)
        assert await store.size(written.location) == 3
        assert await store.exists(written.location)
    assert not await store.exists(secrets.token_hex(16))
    for kwargs in ({"max_size": -1}, {"expected_size": -1}, {"expected_sha256": "xyz"}):
        with pytest.raises(InvalidArgumentError):
            await store.write(_chunks(b"abc"), **kwargs)

    async def never():
        pytest.fail("the content was read")
        yield b""

    with pytest.raises(ObjectTooLargeError):
        await store.write(never(), max_size=10, expected_size=11)


async def test_expected_sha256(store, raw):
    data = os.urandom(PART * 2 + 1)
    with await store.write(_chunks(data),
                           expected_sha256=hashlib.sha256(data).hexdigest().upper()) as written:
        assert written.digest == hashlib.sha256(data).hexdigest()
    keys, _ = _leftovers(raw, store)
    raw.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})
    for content in (data, b"small"):
        with pytest.raises(ChecksumMismatchError, match="content has SHA-256"):
            await store.write(_chunks(content), expected_sha256="0" * 64)
        assert _leftovers(raw, store) == ([], [])
    assert store._pins == {}


async def test_max_size_exceeded_mid_stream(store, raw):
    consumed = 0

    async def chunks():
        nonlocal consumed
        for _ in range(100):
            consumed += CHUNK
            yield os.urandom(CHUNK)

    with pytest.raises(ObjectTooLargeError, match="limit of"):
        await store.write(chunks(), max_size=3 * PART + 5)
    assert consumed == 3 * PART + CHUNK  # raised as soon as the limit was passed
    assert _leftovers(raw, store) == ([], [])
    with pytest.raises(ObjectTooLargeError):
        await store.write(_chunks(b"x" * 11), max_size=10)
    assert _leftovers(raw, store) == ([], [])


@pytest.mark.parametrize("size", [PART - 1, 3 * PART])
async def test_expected_size_mismatch(store, raw, size):
    data = os.urandom(size)
    with pytest.raises(InvalidArgumentError, match="not its declared size"):
        await store.write(_chunks(data), expected_size=size + 1)
    with pytest.raises(InvalidArgumentError, match="exceeds its declared size"):
        await store.write(_chunks(data), expected_size=size - 1)
    assert _leftovers(raw, store) == ([], [])


class _Boom(Exception):
    pass


@pytest.mark.parametrize("after", [CHUNK, 3 * PART])  # in the first part; parts uploaded
async def test_failing_chunks_propagate_and_leave_nothing(store, raw, after):
    async def chunks():
        for _ in range(after // CHUNK):
            yield os.urandom(CHUNK)
        raise _Boom("client went away")

    with pytest.raises(_Boom, match="client went away"):
        await store.write(chunks())
    assert _leftovers(raw, store) == ([], [])
    assert store._pins == {} and store._active_uploads == set()


async def test_cancelled_write_leaves_nothing(weed, raw, s3_url):
    in_flight = threading.Event()

    def slow_part(real, **kwargs):
        in_flight.set()
        time.sleep(0.3)
        return real(**kwargs)

    store = _make_store(weed, s3_url, client=_Spy(raw, upload_part=slow_part))
    for parts in (0, 3):  # cancelled while filling the first part; with parts in flight
        in_flight.clear()
        fed = trio.Event()

        async def chunks(parts=parts, fed=fed):
            for _ in range(parts * PART // CHUNK + 1):
                yield os.urandom(CHUNK)
            fed.set()
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            async def write():
                await store.write(chunks())
                pytest.fail("the write finished")

            nursery.start_soon(write)
            await fed.wait()
            assert in_flight.is_set() == (parts > 0)
            nursery.cancel_scope.cancel()
        assert _leftovers(raw, store) == ([], [])
        assert store._pins == {} and store._active_uploads == set()


async def test_failed_part_or_complete_leaves_nothing(weed, raw, s3_url):
    def fail_second_part(real, **kwargs):
        if kwargs["PartNumber"] == 2:
            raise _server_error("UploadPart")
        return real(**kwargs)

    def fail_complete(real, **kwargs):
        raise _server_error("CompleteMultipartUpload", 400, "InvalidPart")

    def fail_put(real, **kwargs):
        real(**kwargs)  # it landed, but the answer was lost
        raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://x")

    for hooks, error in (({"upload_part": fail_second_part}, StorageUnavailableError),
                         ({"complete_multipart_upload": fail_complete}, StorageIOError),
                         ({"put_object": fail_put}, StorageUnavailableError)):
        store = _make_store(weed, s3_url, client=_Spy(raw, **hooks))
        size = PART if "put_object" in hooks else 4 * PART
        with pytest.raises(error) as info:
            await store.write(_chunks(os.urandom(size)))
        assert isinstance(info.value.__cause__, botocore.exceptions.BotoCoreError
                          | botocore.exceptions.ClientError)
        assert _leftovers(raw, store) == ([], [])


async def test_pipeline_depth_and_memory_held(weed, raw, s3_url):
    """At most ``pipeline_depth`` parts upload at once, they do overlap, and the store never
    reads more than ``(depth + 1) * part_size`` (plus one chunk) ahead of what S3 has."""
    lock = threading.Lock()
    running = peak = 0
    acknowledged = 0
    consumed = ahead = 0

    def tracked(real, **kwargs):
        nonlocal running, peak, acknowledged
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.1)
            return real(**kwargs)
        finally:
            with lock:
                running -= 1
                acknowledged += len(kwargs["Body"])

    store = _make_store(weed, s3_url, client=_Spy(raw, upload_part=tracked), pipeline_depth=2)

    async def chunks():
        nonlocal consumed, ahead
        for _ in range(12 * PART // CHUNK):
            consumed += CHUNK
            with lock:
                ahead = max(ahead, consumed - acknowledged)
            yield os.urandom(CHUNK)

    with await store.write(chunks()) as written:
        assert written.size == 12 * PART
    assert peak == 2
    assert ahead <= 3 * PART + CHUNK


async def test_memory_peak_of_a_large_write_and_read(store):
    data = os.urandom(64 << 20)
    view = memoryview(data)

    async def chunks():
        for i in range(0, len(data), CHUNK):
            yield bytes(view[i:i + CHUNK])

    tracemalloc.start()
    try:
        written = await store.write(chunks())
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        hasher = hashlib.sha256()
        async with await store.open_range(written.location) as reader:
            async for chunk in reader:
                hasher.update(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    written.release()
    assert hasher.hexdigest() == written.digest == hashlib.sha256(data).hexdigest()
    # (depth + 1) parts of 5 MiB, the chunk arriving and the one the caller made.
    assert write_peak < 3 * PART + 4 * CHUNK, write_peak
    assert read_peak < 4 << 20, read_peak


# -- deleting and the reaper's listings -----------------------------------------------------


async def test_delete_if_unpinned(store, raw):
    written = await store.write(_chunks(b"pinned bytes"))
    location = written.location
    assert not await store.delete_if_unpinned(location)  # the write's pin
    async with store.pinned(location):
        written.release()
        assert store.pin_count(location) == 1
        assert not await store.delete_if_unpinned(location, defer_unlink=lambda p: None)
    assert store.pin_count(location) == 0
    assert await store.delete_if_unpinned(location)
    assert not await store.delete_if_unpinned(location)  # gone already
    with pytest.raises(NotFoundError):
        await store.open_range(location)
    store.purge(pathlib.Path("/nonexistent"))  # nothing to finish
    assert _leftovers(raw, store) == ([], [])


async def test_iter_locations(store, raw):
    old = await store.write(_chunks(b"old"))
    raw.put_object(Bucket=BUCKET, Key=_data_prefix(store) + "not-a-location", Body=b"x")
    await trio.sleep(2.5)  # LastModified has a resolution of one second
    new = await store.write(_chunks(b"new"))

    def listed(older_than):
        return list(store.iter_locations(older_than))

    assert await trio.to_thread.run_sync(listed, 0) == sorted([old.location, new.location])
    assert await trio.to_thread.run_sync(listed, 1.5) == [old.location]
    assert await trio.to_thread.run_sync(listed, 3600) == []
    with pytest.raises(InvalidArgumentError):
        await trio.to_thread.run_sync(listed, -1)
    old.release()
    new.release()


async def test_iter_locations_pages(weed, raw, s3_url):
    store = _make_store(weed, s3_url, client=raw)
    written = []
    limit = trio.Semaphore(16)

    async def one(i):
        async with limit:
            written.append(await store.write(_chunks(b"%d" % i)))

    async with trio.open_nursery() as nursery:
        for i in range(1005):  # more than one page of 1000
            nursery.start_soon(one, i)
    listed = await trio.to_thread.run_sync(lambda: list(store.iter_locations(0)))
    assert listed == sorted(w.location for w in written)


async def test_remove_stale_temp(weed, raw, s3_url):
    gate = threading.Event()

    def gated_part(real, **kwargs):
        gate.wait(30)
        return real(**kwargs)

    store = _make_store(weed, s3_url, client=_Spy(raw, upload_part=gated_part))
    dangling = _data_prefix(store) + secrets.token_hex(16)
    crashed = raw.create_multipart_upload(Bucket=BUCKET, Key=dangling)["UploadId"]
    raw.upload_part(Bucket=BUCKET, Key=dangling, UploadId=crashed, PartNumber=1, Body=b"x" * 100)
    other = f"{s3_url.rsplit('/', 1)[1]}-elsewhere/data/{secrets.token_hex(16)}"
    not_ours = raw.create_multipart_upload(Bucket=BUCKET, Key=other)["UploadId"]
    data = os.urandom(3 * PART)
    result = None

    async def write():
        nonlocal result
        result = await store.write(_chunks(data))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            try:
                while not store._active_uploads:  # the write's multipart upload has started
                    await trio.sleep(0.01)
                assert await store.remove_stale_temp(3600) == 0
                assert await store.remove_stale_temp(0) == 1  # the crashed one, not the live one
                _, uploads = _leftovers(raw, store)
                assert len(uploads) == 1 and uploads[0] != dangling
            finally:
                gate.set()
        with result as written:
            assert written.digest == hashlib.sha256(data).hexdigest()
        assert _leftovers(raw, store)[1] == []
        with pytest.raises(InvalidArgumentError):
            await store.remove_stale_temp(-1)
    finally:
        gate.set()
        raw.abort_multipart_upload(Bucket=BUCKET, Key=other, UploadId=not_ours)


# -- resumable uploads ----------------------------------------------------------------------


async def test_upload_chain_resumes_on_another_store(weed, raw, store):
    upload_id = secrets.token_hex(16)
    pieces = [os.urandom(n) for n in (100, 1, 70_000, 3 * CHUNK + 5)]
    await store.upload_create(upload_id)
    assert await store.upload_size(upload_id) == 0
    offset = 0
    for piece in pieces[:2]:
        offset = await store.upload_append(upload_id, offset, piece)
    assert offset == 101
    assert await store.upload_append(upload_id, offset, b"") == 101  # nothing to store
    with pytest.raises(InvalidArgumentError, match="does not match 101"):
        await store.upload_append(upload_id, 100, b"again")
    with pytest.raises(InvalidArgumentError):
        await store.upload_append(upload_id, 102, b"ahead")

    # Another node: its own client, no cache.
    other = _make_store(weed, f"s3://{store.bucket}/{store.prefix}")
    try:
        assert await other.upload_size(upload_id) == 101
        offset = await other.upload_append(upload_id, 101, pieces[2])
        # The first store's cached size is stale: the offset is refused, nothing is replaced.
        with pytest.raises(InvalidArgumentError, match=f"does not match {offset}"):
            await store.upload_append(upload_id, 101, b"stale writer")
        assert await store.upload_size(upload_id) == offset
        offset = await store.upload_append(upload_id, offset, pieces[3])
        assert await other.upload_size(upload_id) == offset == sum(map(len, pieces))
        assert await trio.to_thread.run_sync(lambda: list(other.iter_upload_ids())) == [upload_id]
        content = b"".join(pieces)
        with await other.upload_finish(
                upload_id, expected_sha256=hashlib.sha256(content).hexdigest()) as written:
            assert (written.digest, written.size) == (hashlib.sha256(content).hexdigest(),
                                                      len(content))
            assert await _read_all(await store.open_range(written.location)) == content
        # Finished: the upload is gone, as with files.
        for s in (store, other):
            with pytest.raises(NotFoundError):
                await s.upload_size(upload_id)
        with pytest.raises(NotFoundError):
            await store.upload_finish(upload_id)
        assert await trio.to_thread.run_sync(lambda: list(other.iter_upload_ids())) == []
        assert not await other.upload_discard(upload_id)
    finally:
        await other.aclose()


async def test_retried_append_is_idempotent(store):
    upload_id = secrets.token_hex(16)
    await store.upload_create(upload_id)
    assert await store.upload_append(upload_id, 0, b"hello") == 5
    # As if the answer to that append was lost and the client sent it again with a stale view.
    store._upload_sizes[upload_id] = 0
    assert await store.upload_append(upload_id, 0, b"hello") == 5
    store._upload_sizes[upload_id] = 0
    with pytest.raises(InvalidArgumentError, match="does not match 5"):
        await store.upload_append(upload_id, 0, b"HELLO")
    assert await store.upload_size(upload_id) == 5
    with await store.upload_finish(upload_id) as written:
        assert written.digest == hashlib.sha256(b"hello").hexdigest()


async def test_upload_errors_and_discard(store, raw):
    upload_id, empty = secrets.token_hex(16), secrets.token_hex(16)
    for bad in ("nope", "A" * 32, "../" + "0" * 29):
        with pytest.raises(InvalidArgumentError):
            await store.upload_create(bad)
        with pytest.raises(InvalidArgumentError):
            await store.upload_size(bad)
    missing = secrets.token_hex(16)
    with pytest.raises(NotFoundError):
        await store.upload_size(missing)
    with pytest.raises(NotFoundError):
        await store.upload_append(missing, 0, b"x")
    with pytest.raises(NotFoundError):
        await store.upload_finish(missing)
    assert not await store.upload_discard(missing)
    await store.upload_create(upload_id)
    with pytest.raises(AlreadyExistsError):
        await store.upload_create(upload_id)
    await store.upload_append(upload_id, 0, b"abc")
    await store.upload_create(empty)
    ids = await trio.to_thread.run_sync(lambda: list(store.iter_upload_ids()))
    assert ids == sorted([upload_id, empty])
    assert await store.upload_discard(upload_id)
    assert not await store.upload_discard(upload_id)
    with pytest.raises(NotFoundError):
        await store.upload_size(upload_id)
    assert await trio.to_thread.run_sync(lambda: list(store.iter_upload_ids())) == [empty]
    # An empty upload finishes into an empty blob.
    with await store.upload_finish(empty, expected_sha256=EMPTY_SHA256.upper()) as written:
        assert (written.digest, written.size) == (EMPTY_SHA256, 0)
        assert await _read_all(await store.open_range(written.location)) == b""
    assert await trio.to_thread.run_sync(lambda: list(store.iter_upload_ids())) == []


async def test_upload_finish_checksum_mismatch_discards(store, raw):
    upload_id = secrets.token_hex(16)
    await store.upload_create(upload_id)
    data = os.urandom(PART + 10)
    await store.upload_append(upload_id, 0, data[:PART])
    await store.upload_append(upload_id, PART, data[PART:])
    with pytest.raises(ChecksumMismatchError, match="upload has SHA-256"):
        await store.upload_finish(upload_id, expected_sha256="f" * 64)
    with pytest.raises(NotFoundError):
        await store.upload_size(upload_id)
    assert _leftovers(raw, store) == ([], [])
    with pytest.raises(InvalidArgumentError):
        await store.upload_finish(upload_id, expected_sha256="bad")


async def test_upload_finish_failure_keeps_the_upload(weed, raw, s3_url):
    def fail_put(real, **kwargs):
        if "/data/" in kwargs["Key"]:
            raise _server_error("PutObject", 503, "SlowDown")
        return real(**kwargs)

    store = _make_store(weed, s3_url, client=_Spy(raw, put_object=fail_put))
    upload_id = secrets.token_hex(16)
    await store.upload_create(upload_id)
    await store.upload_append(upload_id, 0, b"resumable")
    with pytest.raises(StorageUnavailableError):
        await store.upload_finish(upload_id)
    assert await store.upload_size(upload_id) == 9
    assert _leftovers(raw, store) == ([], [])


# -- configuration, health and errors -------------------------------------------------------


def test_parse_blob_url():
    assert parse_blob_url("s3://anvil-tests") == ("anvil-tests", "")
    assert parse_blob_url("s3://anvil-tests/") == ("anvil-tests", "")
    assert parse_blob_url("s3://anvil-tests/a/b_c.d-e/") == ("anvil-tests", "a/b_c.d-e")
    assert S3ByteStore.parse_blob_url("s3://my.bucket/x") == ("my.bucket", "x")
    for bad in ("", "anvil-tests", "http://anvil-tests/x", "s3://", "s3://ab", "s3://Upper",
                "s3://-bucket", "s3://bucket-", "s3://a..b", "s3://bucket/a//b",
                "s3://bucket/../x", "s3://bucket/a?x=1", "s3://user@bucket", "s3://bucket/a b",
                "s3://bucket/a#b", "s3://" + "b" * 64):
        with pytest.raises(ValueError):
            parse_blob_url(bad)


def test_constructor_checks(raw):
    kwargs = {"endpoint_url": "http://127.0.0.1:1", "region": "us-east-1", "client": raw}
    for bad in ({"part_size": PART - 1}, {"chunk_size": 0}, {"pipeline_depth": 0}):
        with pytest.raises(ValueError):
            S3ByteStore(BUCKET, **kwargs, **bad)
    with pytest.raises(ValueError):
        S3ByteStore(BUCKET, "a/../b", **kwargs)
    store = S3ByteStore(BUCKET, "/p/", **kwargs)
    assert (store.prefix, store.shared, store.batch_size) == ("p", True, 8 << 20)
    assert store.data_key("a" * 32) == "p/data/" + "a" * 32
    assert S3ByteStore.from_url(f"s3://{BUCKET}", **kwargs).data_key("a" * 32) == "data/" + "a" * 32


def test_error_mapping():
    def mapped(exc, **kwargs):
        return s3_error(exc, "testing", **kwargs)

    assert isinstance(mapped(_server_error("X", 503, "SlowDown")), StorageUnavailableError)
    assert isinstance(mapped(_server_error("X", 500)), StorageUnavailableError)
    assert isinstance(mapped(_server_error("X", 400, "SlowDown")), StorageUnavailableError)
    assert isinstance(mapped(_server_error("X", 404, "NoSuchKey"), not_found="blob"),
                      NotFoundError)
    assert type(mapped(_server_error("X", 404, "NoSuchKey"))) is StorageIOError
    assert type(mapped(_server_error("X", 404, "NoSuchBucket"), not_found="blob")) is (
        StorageIOError)
    assert type(mapped(_server_error("X", 403, "AccessDenied"))) is StorageIOError
    for exc in (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"),
                botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"),
                botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"),
                botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"),
                urllib3.exceptions.ProtocolError("reset")):
        err = mapped(exc)
        assert isinstance(err, StorageUnavailableError) and err.retryable, exc
        assert "unreachable" in str(err)
    assert type(mapped(ValueError("?"))) is StorageIOError
    original = NotFoundError("kept")
    assert mapped(original) is original


async def test_check(weed, raw, store):
    await store.check()
    missing = S3ByteStore("no-such-bucket-here", endpoint_url=weed.endpoint, region="us-east-1",
                          client=raw)
    with pytest.raises(StorageError, match="does not exist") as info:
        await missing.check()
    assert not isinstance(info.value, StorageUnavailableError)


async def test_closed_port_is_unavailable(s3_url):
    port = _services.free_port()
    bucket, prefix = parse_blob_url(s3_url)
    store = S3ByteStore(bucket, prefix, endpoint_url=f"http://127.0.0.1:{port}",
                        region="us-east-1", part_size=PART)
    try:
        with pytest.raises(StorageUnavailableError, match="unreachable") as info:
            await store.check()
        assert info.value.retryable
        with pytest.raises(StorageUnavailableError):
            await store.write(_chunks(b"x"))
        with pytest.raises(StorageUnavailableError):
            await store.open_range(secrets.token_hex(16))
        with pytest.raises(StorageUnavailableError):
            await trio.to_thread.run_sync(lambda: list(store.iter_locations(0)))
    finally:
        await store.aclose()


async def test_server_down_then_back(weed, s3_url):
    store = _make_store(weed, s3_url)  # its own client and connection pool
    try:
        with await store.write(_chunks(b"before")) as before:
            pass
        weed.stop()
        try:
            with pytest.raises(StorageUnavailableError):
                await store.check()
            with pytest.raises(StorageUnavailableError):
                await store.write(_chunks(os.urandom(2 * PART)))
            with pytest.raises(StorageUnavailableError):
                await store.open_range(before.location)
            with pytest.raises(StorageUnavailableError):
                await store.upload_size(secrets.token_hex(16))
        finally:
            weed.start()  # from the main thread: the server then dies with the test process
        await store.check()
        assert await _read_all(await store.open_range(before.location)) == b"before"
        data = os.urandom(2 * PART)
        with await store.write(_chunks(data)) as after:
            assert await _read_all(await store.open_range(after.location)) == data
    finally:
        await store.aclose()
