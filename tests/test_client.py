"""AnvilClient against a real in-process server (and a small fake edge server for retries)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket

import purerpc
import pytest
import trio
from purerpc import StatusCode

from anvil_trio import Schedule, effects_testing, retry_hook
from anvil_trio._proto.anvil.v1 import auth_grpc, auth_pb2, bucket_grpc, bucket_pb2
from anvil_trio.client import (
    AlreadyExistsError,
    AnvilClient,
    AnvilError,
    ClientClosedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    SourceConsumedError,
    UnauthenticatedError,
    UnavailableError,
    default_retry_schedule,
    error_for_status,
)
from anvil_trio._client_sources import open_source
from anvil_trio.rpc import EdgeConfig, EdgeServer
from anvil_trio.testing import open_test_server

# The contract holds on both backends (SQLite + files; PostgreSQL + S3): see conftest.py.
pytestmark = pytest.mark.usefixtures("backend")

MiB = 1 << 20


@contextlib.asynccontextmanager
async def served(tmp_path, scopes=("*:*",), **config_overrides):
    async with open_test_server(tmp_path, scopes, config_overrides=config_overrides) as ts:
        yield ts


def connect(ts, **kwargs):
    kwargs.setdefault("client_id", ts.client_id)
    kwargs.setdefault("client_secret", ts.client_secret)
    return AnvilClient.connect("127.0.0.1", ts.port, **kwargs)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def chunks_of(data: bytes, size: int):
    for start in range(0, len(data), size):
        await trio.lowlevel.checkpoint()
        yield data[start:start + size]


# ---------------------------------------------------------------- errors and schedule


def test_error_classes_follow_the_status_code():
    """error_for_status picks the subclass per code; only the three transient codes retry."""
    assert isinstance(error_for_status(StatusCode.NOT_FOUND, "x"), NotFoundError)
    assert isinstance(error_for_status(5, "x"), LookupError)
    assert error_for_status(StatusCode.UNAVAILABLE).retryable
    assert error_for_status(StatusCode.RESOURCE_EXHAUSTED).retryable
    assert error_for_status(StatusCode.DEADLINE_EXCEEDED).retryable
    for code in (StatusCode.NOT_FOUND, StatusCode.PERMISSION_DENIED, StatusCode.INTERNAL,
                 StatusCode.UNAUTHENTICATED, StatusCode.INVALID_ARGUMENT):
        assert not error_for_status(code).retryable
    odd = error_for_status(99, "m")
    assert type(odd) is AnvilError and odd.code == StatusCode.UNKNOWN


def test_default_schedule_is_capped_jittered_and_limited():
    """The default retry schedule gives 6 delays, growing, each at most 1.2 x 3 s."""
    driver = default_retry_schedule().driver()
    delays = []
    now = 0.0
    while True:
        decision = driver.next(None, now=now)
        if not hasattr(decision, "at"):
            break
        delays.append(decision.at - now)
        now = decision.at
    assert len(delays) == 6
    assert 0.08 <= delays[0] <= 0.12 and all(d <= 3.6 for d in delays)
    assert delays[-1] >= 2.4


# ---------------------------------------------------------------- buckets and objects


async def test_buckets_create_list_delete(tmp_path):
    """Buckets round-trip; duplicates, bad names and non-empty deletes get typed errors."""
    async with served(tmp_path) as ts, connect(ts) as client:
        assert await client.health_check() == "SERVING"
        bucket = await client.create_bucket("photos", versioning=True)
        assert bucket.name == "photos" and bucket.versioning and bucket.created_at is not None
        await client.create_bucket("notes")
        assert sorted(b.name for b in await client.list_buckets()) == ["notes", "photos"]
        with pytest.raises(AlreadyExistsError) as info:
            await client.create_bucket("photos")
        assert info.value.code == StatusCode.ALREADY_EXISTS
        with pytest.raises(InvalidArgumentError):
            await client.create_bucket("x")
        await client.put_object("photos", "k", b"data")
        with pytest.raises(FailedPreconditionError):
            await client.delete_bucket("photos")
        await client.delete_bucket("notes")
        assert [b.name for b in await client.list_buckets()] == ["photos"]


async def test_objects_put_get_head_delete_from_every_source(tmp_path):
    """Bytes, paths and async iterables upload in chunks; get, ranges, head and delete work."""
    data = os.urandom(3 * MiB + 123)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    async with served(tmp_path) as ts, connect(ts, chunk_size=256 * 1024) as client:
        await client.create_bucket("data")
        put = await client.put_object(
            "data", "a/bytes", data, content_type="application/x-test",
            user_metadata={"owner": "me"}, expected_sha256=sha(data),
        )
        assert (put.etag, put.size) == (sha(data), len(data)) and put.version_id
        assert (await client.put_object("data", "a/path", path)).etag == sha(data)
        fed = await client.put_object("data", "a/iter", chunks_of(data, 3 * MiB), size=len(data))
        assert fed.etag == sha(data)
        head = await client.head_object("data", "a/bytes")
        assert (head.size, head.content_type, head.user_metadata) == (
            len(data), "application/x-test", {"owner": "me"})
        for key in ("a/bytes", "a/path", "a/iter"):
            assert await client.read_object("data", key) == data
        info, chunks = await client.get_object("data", "a/bytes", start=MiB - 5, end=2 * MiB + 7)
        async with chunks:
            parts = [part async for part in chunks]
        assert info.size == len(data) and all(len(p) <= MiB for p in parts)
        assert b"".join(parts) == data[MiB - 5:2 * MiB + 7]
        with pytest.raises(OutOfRangeError):
            await client.get_object("data", "a/bytes", start=len(data) + 1)
        deleted = await client.delete_object("data", "a/bytes")
        assert not deleted.delete_marker
        with pytest.raises(NotFoundError):
            await client.head_object("data", "a/bytes")


async def test_put_conditions_and_checksums_are_enforced(tmp_path):
    """if_none_match gives ALREADY_EXISTS; a wrong expected_sha256 gives INVALID_ARGUMENT."""
    async with served(tmp_path) as ts, connect(ts) as client:
        await client.create_bucket("data")
        await client.put_object("data", "k", b"one")
        with pytest.raises(AlreadyExistsError):
            await client.put_object("data", "k", b"two", if_none_match=True)
        with pytest.raises(InvalidArgumentError):
            await client.put_object("data", "k", b"two", expected_sha256="0" * 64)
        assert await client.read_object("data", "k") == b"one"


async def test_download_object_writes_and_verifies_the_file(tmp_path):
    """download_object writes the bytes to the path and returns the info; no temp file stays."""
    data = os.urandom(2 * MiB + 1)
    async with served(tmp_path) as ts, connect(ts) as client:
        await client.create_bucket("data")
        await client.put_object("data", "f", data)
        target = tmp_path / "out" / "f.bin"
        target.parent.mkdir()
        info = await client.download_object("data", "f", target)
        assert target.read_bytes() == data and info.etag == sha(data)
        assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]
        with pytest.raises(NotFoundError):
            await client.download_object("data", "missing", tmp_path / "out" / "g.bin")
        assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


async def test_listing_follows_page_tokens(tmp_path):
    """list_objects pages and iter_objects follows tokens; versions list newest first."""
    async with served(tmp_path) as ts, connect(ts) as client:
        await client.create_bucket("list", versioning=True)
        keys = [f"k{i:02d}" for i in range(7)] + ["dir/a", "dir/b"]
        for key in keys:
            await client.put_object("list", key, key.encode())
        await client.put_object("list", "k00", b"again")
        page = await client.list_objects("list", delimiter="/", max_keys=3)
        assert len(page.objects) + len(page.common_prefixes) == 3 and page.next_page_token
        assert [o.key async for o in client.iter_objects("list", page_size=2)] == sorted(keys)
        top = await client.list_objects("list", delimiter="/")
        assert top.common_prefixes == ("dir/",)
        versions = [v async for v in client.iter_object_versions("list", prefix="k00", page_size=1)]
        assert [v.is_latest for v in versions] == [True, False]
        assert versions[0].info.size == len(b"again")
        marker = await client.delete_object("list", "k01")
        assert marker.delete_marker
        page = await client.list_object_versions("list", prefix="k01")
        assert [v.delete_marker for v in page.versions] == [True, False]


# ---------------------------------------------------------------- blobs


async def test_blob_upload_dedup_stat_get_list_delete(tmp_path):
    """Blobs upload over the bidi stream, deduplicate, read back (ranges too), list and delete."""
    data = os.urandom(5 * MiB + 17)
    progress = []
    async with served(tmp_path) as ts, connect(ts) as client:
        first = await client.upload_blob(
            data, attributes={"content-type": "image/png", "x": "1"}, on_progress=progress.append
        )
        assert first.key == f"sha256:{sha(data)}" and first.size == len(data)
        assert not first.deduplicated and first.attempts == 1
        assert progress[0].received_bytes == 0 and progress[-1].received_bytes == len(data)
        again = await client.upload_blob(chunks_of(data, MiB), size=len(data))
        assert again.deduplicated and again.key == first.key
        stat = await client.stat_blob(first.key)
        assert (stat.size, stat.content_type, stat.attributes["x"]) == (len(data), "image/png", "1")
        assert await client.read_blob(first.key) == data
        part = await client.get_blob(first.key, start=10, end=MiB + 10)
        async with part:
            assert b"".join([c async for c in part]) == data[10:MiB + 10]
        small = await client.upload_blob(b"small")
        listed = await client.list_blobs()
        assert sorted(b.key for b in listed) == sorted([first.key, small.key])
        assert [b.key async for b in client.iter_blobs(page_size=1)] == sorted(b.key for b in listed)
        await client.delete_blob(small.key)
        with pytest.raises(NotFoundError):
            await client.stat_blob(small.key)
        with pytest.raises(NotFoundError):
            await client.get_blob(small.key)
        with pytest.raises(OutOfRangeError):
            await client.get_blob(first.key, start=len(data))


async def test_interrupted_upload_resumes_with_its_upload_id(tmp_path):
    """An upload cancelled midway resumes under its id: only the missing bytes are sent."""
    data = os.urandom(8 * MiB)
    release = trio.Event()

    async def stalling():
        yield data[: 5 * MiB]  # the contract promises an ack at least once per 4 MiB
        await release.wait()
        yield data[5 * MiB:]

    seen = []
    async with served(tmp_path) as ts, connect(ts) as client:
        with trio.move_on_after(10) as scope:

            def watch(progress):
                seen.append(progress)
                if progress.received_bytes > 0:
                    scope.cancel()

            await client.upload_blob(stalling(), size=len(data), on_progress=watch)
        assert scope.cancelled_caught and not release.is_set()
        upload_id = seen[-1].upload_id
        resumed = []
        result = await client.upload_blob(data, upload_id=upload_id, on_progress=resumed.append)
        assert resumed[0].upload_id == upload_id and resumed[0].received_bytes >= MiB
        assert result.key == f"sha256:{sha(data)}" and result.upload_id == upload_id
        assert await client.read_blob(result.key) == data
        with pytest.raises(NotFoundError):
            await client.upload_blob(data, upload_id="0" * 32)


async def test_broken_upload_stream_resumes_automatically(tmp_path):
    """When the connection drops mid-upload, upload_blob reconnects and resumes its upload_id
    from the bytes the server acknowledged."""
    data = os.urandom(24 * MiB)
    async with served(tmp_path) as ts, connect(ts) as client:
        before, after = [], []

        def watch(progress):
            if after or (before and before[-1].received_bytes > 0):
                after.append(progress)
                return
            before.append(progress)
            if progress.received_bytes > 0:
                client._connection.close()  # the stream breaks after bytes were acknowledged

        with effects_testing(no_waits=True):
            result = await client.upload_blob(data, on_progress=watch)
        assert result.attempts == 2 and result.key == f"sha256:{sha(data)}"
        assert after[0].upload_id == result.upload_id == before[0].upload_id
        assert 0 < after[0].received_bytes < len(data)
        assert await client.read_blob(result.key) == data


async def test_async_iterable_source_is_not_replayed(tmp_path):
    """A broken upload of an async iterable is not retried once reading began."""
    data = os.urandom(4 * MiB)
    async with served(tmp_path) as ts, connect(ts) as client:
        await client.create_bucket("data")

        async def breaking():
            yield data[:MiB]
            client._connection.close()
            await trio.sleep(0)
            yield data[MiB:]

        with effects_testing(no_waits=True), pytest.raises(UnavailableError):
            await client.upload_blob(breaking(), size=len(data))
        with effects_testing(no_waits=True), pytest.raises(UnavailableError):
            await client.put_object("data", "k", breaking(), size=len(data))
        # The client is still usable on a new connection.
        assert (await client.put_object("data", "k", b"x")).size == 1


async def test_download_resumes_after_the_connection_breaks(tmp_path):
    """A GetObject stream that loses its connection resumes from the next byte."""
    data = os.urandom(4 * MiB + 3)
    async with served(tmp_path) as ts, connect(ts) as client:
        await client.create_bucket("data")
        await client.put_object("data", "big", data)
        info, chunks = await client.get_object("data", "big")
        async with chunks:
            received = [await chunks.__anext__()]
            client._connection.close()
            received += [c async for c in chunks]
        assert chunks.resumes == 1 and b"".join(received) == data and info.etag == sha(data)


async def test_abandoned_download_is_cancelled_and_client_stays_usable(tmp_path):
    """Closing a stream early resets the call; the connection keeps serving new calls."""
    data = os.urandom(8 * MiB)
    async with served(tmp_path) as ts, connect(ts) as client:
        await client.create_bucket("data")
        await client.put_object("data", "big", data)
        for _ in range(3):
            _info, chunks = await client.get_object("data", "big")
            async with chunks:
                await chunks.__anext__()
        assert await client.read_object("data", "big") == data
        with trio.fail_after(10):
            while ts.server.edge.statistics().active_calls:
                await trio.sleep(0.01)


# ---------------------------------------------------------------- tokens and auth


async def test_token_is_refreshed_when_the_clock_passes_80_percent(tmp_path):
    """With an injected clock, the token is refetched once 80% of its lifetime has passed."""
    now = [1000.0]
    async with served(tmp_path, token_lifetime=100.0) as ts, connect(ts, clock=lambda: now[0]) as client:
        first = client.token
        await client.list_buckets()
        now[0] += 79.0
        await client.list_buckets()
        assert client.token == first and client.tokens_fetched == 1
        now[0] += 2.0
        await client.list_buckets()
        assert client.token != first and client.tokens_fetched == 2


async def test_unauthenticated_refreshes_the_token_once(tmp_path):
    """A rejected token is replaced and the call tried once more; credentials errors surface."""
    async with served(tmp_path) as ts:
        async with connect(ts) as client:
            client._token.value = client.token[:-4] + "AAAA"
            assert await client.list_buckets() == []
            assert client.tokens_fetched == 2
        with pytest.raises(UnauthenticatedError):
            async with connect(ts, client_secret="wrong"):
                pass


async def test_permission_and_not_found_are_not_retried(tmp_path):
    """PERMISSION_DENIED and NOT_FOUND fail at once: the retry hook never fires."""
    retries = []
    async with served(tmp_path, scopes=("read:bucket:*",)) as ts, connect(ts) as client:
        with retry_hook(retries.append):
            with pytest.raises(PermissionDeniedError) as info:
                await client.create_bucket("nope")
            assert info.value.code == StatusCode.PERMISSION_DENIED
            with pytest.raises(NotFoundError):
                await client.head_object("missing", "k")
    assert retries == []


async def test_errors_in_the_body_come_out_alone_and_closed_client_refuses(tmp_path):
    """The client's nursery never wraps the caller's error in a group; use after exit fails."""
    async with served(tmp_path) as ts:
        with pytest.raises(NotFoundError):
            async with connect(ts) as client:
                await client.head_object("nobucket", "k")
        with pytest.raises(ClientClosedError):
            await client.list_buckets()


async def test_async_iterable_sources_are_read_once():
    """An async-iterable source refuses a second pass; bytes and paths replay."""
    source = open_source(chunks_of(b"abcde", 2), size=5, chunk_size=2)
    assert not source.replayable and not source.started
    assert [c async for c in source.chunks()] == [b"ab", b"cd", b"e"]
    with pytest.raises(SourceConsumedError):
        source.chunks()
    again = open_source(b"abcde", chunk_size=4)
    assert [c async for c in again.chunks()] == [c async for c in again.chunks()] == [b"abcd", b"e"]


# ---------------------------------------------------------------- retries against a fake server


class FlakyAuth(auth_grpc.AuthServiceServicer):
    async def GetAccessToken(self, message, request):  # noqa: N802
        return auth_pb2.GetAccessTokenResponse(
            access_token="fake", token_type="Bearer", expires_in=900, scopes=["*:*"]
        )


class FlakyBuckets(bucket_grpc.BucketServiceServicer):
    """Fails ``plan`` in order (a purerpc status error per entry), then succeeds."""

    def __init__(self, plan):
        self.plan = list(plan)
        self.calls = 0

    async def ListBuckets(self, message, request):  # noqa: N802
        self.calls += 1
        if self.plan:
            raise self.plan.pop(0)
        return bucket_pb2.ListBucketsResponse(buckets=[bucket_pb2.Bucket(name="ok")])


@contextlib.asynccontextmanager
async def fake_server(buckets):
    server = EdgeServer([FlakyAuth(), buckets], config=EdgeConfig(port=0))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            await server.drain(grace=0.5)


@pytest.mark.parametrize(
    "error",
    [purerpc.UnavailableError("restarting"), purerpc.ResourceExhaustedError("busy")],
)
async def test_transient_statuses_are_retried(error):
    """UNAVAILABLE and RESOURCE_EXHAUSTED are retried per the schedule until success."""
    buckets = FlakyBuckets([error, error])
    retries = []
    async with fake_server(buckets) as server:
        async with AnvilClient.connect("127.0.0.1", server.port, client_id="c", client_secret="s") as client:
            with effects_testing(no_waits=True), retry_hook(retries.append):
                assert [b.name for b in await client.list_buckets()] == ["ok"]
    assert buckets.calls == 3 and len(retries) == 2
    assert all(r.error.code == error.status.status_code for r in retries)


@pytest.mark.parametrize(
    "error", [purerpc.NotFoundError("gone"), purerpc.PermissionDeniedError("no")]
)
async def test_permanent_statuses_are_not_retried(error):
    """NOT_FOUND and PERMISSION_DENIED from the server end the call after one attempt."""
    buckets = FlakyBuckets([error])
    async with fake_server(buckets) as server:
        async with AnvilClient.connect("127.0.0.1", server.port, client_id="c", client_secret="s") as client:
            with pytest.raises(AnvilError) as info:
                await client.list_buckets()
    assert info.value.code == error.status.status_code and buckets.calls == 1


async def test_retries_stop_when_the_schedule_is_done():
    """A server that keeps failing UNAVAILABLE: 1 + n attempts, then the last error."""
    buckets = FlakyBuckets([purerpc.UnavailableError("down")] * 10)
    async with fake_server(buckets) as server:
        async with AnvilClient.connect(
            "127.0.0.1", server.port, client_id="c", client_secret="s",
            retry_schedule=Schedule.spaced(0.01) & Schedule.recurs(2),
        ) as client:
            with pytest.raises(UnavailableError):
                await client.list_buckets()
    assert buckets.calls == 3


async def test_no_server_is_unavailable_after_the_default_retries():
    """Connecting to a closed port fails with one UnavailableError after 6 retries."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    retries = []
    with effects_testing(no_waits=True), retry_hook(retries.append):
        with pytest.raises(UnavailableError):
            async with AnvilClient.connect("127.0.0.1", port, client_id="c", client_secret="s"):
                pass
    assert len(retries) == 6


async def test_a_server_that_goes_away_gives_unavailable_not_a_hang():
    """Draining the server mid-call ends the call with UNAVAILABLE; later calls cannot connect."""

    class Blocking(FlakyBuckets):
        async def ListBuckets(self, message, request):  # noqa: N802
            self.calls += 1
            await trio.sleep_forever()

    buckets = Blocking([])
    async with trio.open_nursery() as nursery:
        server = EdgeServer([FlakyAuth(), buckets], config=EdgeConfig(port=0))
        await nursery.start(server.serve)
        async with AnvilClient.connect(
            "127.0.0.1", server.port, client_id="c", client_secret="s",
            retry_schedule=Schedule.recurs(2),
        ) as client:

            async def stop_soon():
                while buckets.calls == 0:
                    await trio.sleep(0.01)
                await server.drain(grace=0.1)

            nursery.start_soon(stop_soon)
            with trio.fail_after(20), pytest.raises(UnavailableError):
                await client.list_buckets()
        assert buckets.calls == 1
