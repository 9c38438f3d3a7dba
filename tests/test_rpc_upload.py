"""UploadService over real sockets on 127.0.0.1 with a purerpc client, and its pure session core."""

from __future__ import annotations

import contextlib
import hashlib
import socket

import anyio

import hypothesis
import pytest
import trio
from hypothesis import strategies as st
from purerpc import StatusCode
from purerpc.grpclib.events import ResponseEnded
from purerpc.grpclib.exceptions import raise_status

from anvil_trio import Config
from anvil_trio._proto.anvil.v1 import blob_pb2, upload_grpc, upload_pb2
from anvil_trio.rpc._upload_service import (
    MAX_BATCH_BYTES,
    SessionPhase,
    UploadSession,
    parse_start,
)
from anvil_trio.storage import InvalidArgumentError
from anvil_trio.testing import bearer, open_test_server, rpc_error

# The contract holds on both backends (SQLite + files; PostgreSQL + S3): see conftest.py.
pytestmark = pytest.mark.usefixtures("backend")

MiB = 1 << 20


# ------------------------------------------------------------------------ server


def open_server(
    tmp_path,
    *,
    upload_slots: int = 64,
    max_object_size: int | None = None,
    idle_timeout: float = 300.0,
):
    """The real test server (tenant t1, a *:* token) with the upload knobs these tests use."""
    return open_test_server(
        tmp_path,
        config_overrides={
            "max_upload_sessions": upload_slots,
            "max_object_bytes": max_object_size,
            "upload_idle_timeout": idle_timeout,
        },
    )


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


def start(total_size: int, *, upload_id: str = "", attributes=None) -> upload_pb2.UploadMessage:
    return upload_pb2.UploadMessage(
        start=upload_pb2.StartUpload(
            total_size=total_size, upload_id=upload_id, attributes=attributes or {}
        )
    )


def chunk(offset: int, data: bytes) -> upload_pb2.UploadMessage:
    return upload_pb2.UploadMessage(chunk=upload_pb2.UploadChunk(offset=offset, data=data))


def complete(expected_hash: bytes = b"") -> upload_pb2.UploadMessage:
    return upload_pb2.UploadMessage(complete=upload_pb2.CompleteUpload(expected_hash=expected_hash))


def chunks_of(data: bytes, size: int, base: int = 0) -> list[upload_pb2.UploadMessage]:
    return [chunk(base + at, data[at : at + size]) for at in range(0, len(data), size)]


async def run_upload(stub, messages, metadata) -> list[upload_pb2.UploadAck]:
    """Send all ``messages``, then collect every ack until the server ends the call."""

    async def gen():
        for message in messages:
            yield message

    with trio.fail_after(60):
        return [ack async for ack in stub.Upload(gen(), metadata=metadata)]


async def upload_blob(h, data: bytes, *, metadata=None, attributes=None, size: int = 256 * 1024):
    """Upload ``data`` in one stream; returns the acks."""
    messages = [start(len(data), attributes=attributes), *chunks_of(data, size), complete()]
    return await run_upload(h.uploads, messages, h.metadata if metadata is None else metadata)


def key_of(data: bytes) -> bytes:
    return b"sha256:" + hashlib.sha256(data).hexdigest().encode()


async def receive(stream) -> upload_pb2.UploadAck | None:
    """The next ack, ``None`` once the call ended OK, or the call's error status raised
    (a server that never answers fails the test instead of hanging it)."""
    with trio.fail_after(60):
        message = await stream.receive_message()
    if message is None:
        event = stream.end_stream_event
        if isinstance(event, ResponseEnded):
            raise_status(event.status)
    return message


async def finish_resumed(h, stream, data: bytes, held: int) -> None:
    """Send the rest of ``data`` from ``held`` on a resumed upload stream, complete it, and
    check the blob the server made of it."""
    for message in chunks_of(data[held:], MiB, held):
        await stream.send_message(message)
    await stream.send_message(complete(hashlib.sha256(data).digest()))
    await stream.close()
    acks = []
    while (ack := await receive(stream)) is not None:
        acks.append(ack)
    assert acks[-1].complete.key == key_of(data) and acks[-1].complete.size == len(data)
    assert await read_blob(h, key_of(data)) == data


def drop_connection(channel) -> None:
    """Break a purerpc channel's TCP connection as a network failure would (purerpc's channel
    exit leaves the socket open, so the server would never notice)."""
    raw = channel._grpc_socket._socket._stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.shutdown(socket.SHUT_RDWR)


async def read_blob(h, key: bytes) -> bytes:
    parts = [c async for c in h.blobs.GetBlob(blob_pb2.GetBlobRequest(key=key), metadata=h.metadata)]
    return b"".join(p.data for p in parts)


# ------------------------------------------------------------------------ the happy paths


async def test_small_upload_acks_start_then_completion(tmp_path):
    """A small blob: the first ack has an id and 0 bytes, the last carries key, size, dedup."""
    data = b"hello blob"
    async with open_server(tmp_path) as h:
        acks = await upload_blob(h, data, attributes={"content-type": "text/plain"})
        assert acks[0].received_bytes == 0 and len(acks[0].upload_id) == 32
        assert not acks[0].HasField("complete")
        assert all(a.upload_id == acks[0].upload_id for a in acks)
        last = acks[-1]
        assert last.complete.key == key_of(data)
        assert last.complete.size == len(data) and last.received_bytes == len(data)
        assert last.complete.deduplicated is False
        assert [a for a in acks if a.HasField("complete")] == [last]
        assert await read_blob(h, last.complete.key) == data


async def test_empty_upload(tmp_path):
    """total_size 0 with no chunk completes into the empty blob."""
    async with open_server(tmp_path) as h:
        acks = await run_upload(h.uploads, [start(0), complete()], h.metadata)
        assert [a.received_bytes for a in acks] == [0, 0]
        assert acks[-1].complete.key == key_of(b"") and acks[-1].complete.size == 0
        stat = await h.blobs.StatBlob(blob_pb2.StatBlobRequest(key=key_of(b"")), metadata=h.metadata)
        assert stat.size == 0


@pytest.mark.parametrize("chunk_size", [64 * 1024, 4 * MiB - 64, 3 * MiB + 7])
async def test_multi_mib_upload_acks_at_least_every_4_mib(tmp_path, chunk_size):
    """A 9 MiB upload is acked monotonically, never more than 4 MiB apart, then completed."""
    data = bytes(range(256)) * (9 * MiB // 256) + b"tail"
    async with open_server(tmp_path) as h:
        acks = await upload_blob(h, data, size=chunk_size)
        counts = [a.received_bytes for a in acks]
        assert counts[0] == 0 and counts[-1] == len(data)
        assert counts == sorted(counts)
        assert all(b - a <= 4 * MiB for a, b in zip(counts, counts[1:]))
        assert acks[-1].complete.key == key_of(data)
        assert await read_blob(h, key_of(data)) == data


async def test_acks_arrive_while_the_stream_is_still_open(tmp_path):
    """Acks of durable bytes come before complete is sent, so a client can track progress."""
    data = b"x" * (5 * MiB)
    async with open_server(tmp_path) as h:
        stream = await h.uploads.Upload(metadata=h.metadata)
        await stream.send_message(start(len(data)))
        first = await receive(stream)
        seen = [first.received_bytes]
        for message in chunks_of(data, MiB):
            await stream.send_message(message)
        while seen[-1] < len(data):
            seen.append((await receive(stream)).received_bytes)
        assert seen == sorted(seen) and seen[-1] == len(data)
        await stream.send_message(complete(hashlib.sha256(data).digest()))
        done = await receive(stream)
        assert done.complete.key == key_of(data)
        await stream.close()
        assert await receive(stream) is None


async def test_dedup_within_a_tenant_but_not_across_tenants(tmp_path):
    """Same content twice in one tenant is deduplicated; in another tenant it is not."""
    data = b"same bytes" * 1000
    async with open_server(tmp_path) as h:
        first = await upload_blob(h, data, attributes={"content-type": "a/b"})
        second = await upload_blob(h, data, attributes={"content-type": "c/d"})
        assert first[-1].complete.deduplicated is False
        assert second[-1].complete.deduplicated is True
        assert second[-1].complete.key == first[-1].complete.key
        stat = await h.blobs.StatBlob(blob_pb2.StatBlobRequest(key=key_of(data)), metadata=h.metadata)
        assert stat.content_type == "a/b"
        other = bearer(await h.token_for(("*:*",), tenant="t2"))
        third = await upload_blob(h, data, metadata=other)
        assert third[-1].complete.deduplicated is False


async def test_end_without_complete_acks_everything_and_stays_resumable(tmp_path):
    """A stream that half-closes without complete gets a final ack of all bytes; resume completes."""
    data = b"abc" * 100_000
    async with open_server(tmp_path) as h:
        acks = await run_upload(h.uploads, [start(len(data)), *chunks_of(data[:200_000], 50_000)],
                                h.metadata)
        assert acks[-1].received_bytes == 200_000
        upload_id = acks[0].upload_id
        rest = await run_upload(
            h.uploads,
            [start(len(data), upload_id=upload_id), *chunks_of(data[200_000:], 50_000, 200_000),
             complete(hashlib.sha256(data).digest())],
            h.metadata,
        )
        assert rest[0].received_bytes == 200_000 and rest[0].upload_id == upload_id
        assert rest[-1].complete.key == key_of(data)


async def test_resume_after_the_stream_is_dropped(tmp_path):
    """After a connection drop mid-upload, a resume holds at least the last acked bytes."""
    data = bytes(range(251)) * (6 * MiB // 251)
    async with open_server(tmp_path) as h:
        async with h.open_channel() as lost:
            stub = upload_grpc.UploadServiceStub(lost)
            stream = await stub.Upload(metadata=h.metadata)
            await stream.send_message(start(len(data)))
            upload_id = (await receive(stream)).upload_id
            for message in chunks_of(data[: 3 * MiB + 100], 512 * 1024):
                await stream.send_message(message)
            acked = 0
            while acked < 2 * MiB:
                acked = (await receive(stream)).received_bytes
            drop_connection(lost)
        # The connection is gone; the upload was never completed.
        resumed = await h.uploads.Upload(metadata=h.metadata)
        await resumed.send_message(start(len(data), upload_id=upload_id))
        first = await receive(resumed)
        held = first.received_bytes
        assert first.upload_id == upload_id
        assert acked <= held <= 3 * MiB + 100
        await finish_resumed(h, resumed, data, held)


async def test_resume_supersedes_a_stream_still_writing_the_upload(tmp_path):
    """A resume while the first stream is still open ends that stream with ABORTED, acks exactly
    the durable bytes, and completes; the two streams never append to one upload together."""
    data = bytes(range(251)) * (3 * MiB // 251)
    async with open_server(tmp_path, upload_slots=2) as h:
        async with h.open_channel() as first_channel:
            first = await upload_grpc.UploadServiceStub(first_channel).Upload(metadata=h.metadata)
            await first.send_message(start(len(data)))
            upload_id = (await receive(first)).upload_id
            for message in chunks_of(data[: 2 * MiB], MiB):
                await first.send_message(message)
            acked = 0
            while acked < 2 * MiB:
                acked = (await receive(first)).received_bytes
            # The first stream stays open and silent; its client "comes back" on a new call.
            resumed = await h.uploads.Upload(metadata=h.metadata)
            await resumed.send_message(start(len(data), upload_id=upload_id))
            assert (await receive(resumed)).received_bytes == 2 * MiB
            async with expect_status(StatusCode.ABORTED):
                while await receive(first) is not None:
                    pass
            await finish_resumed(h, resumed, data, 2 * MiB)
            # Both slots are free again: two more uploads can run at once.
            await upload_blob(h, b"x")
            await upload_blob(h, b"y")


# ------------------------------------------------------------------------ protocol errors


async def test_wrong_offset_is_invalid_argument(tmp_path):
    """A chunk whose offset is not the bytes received so far fails with INVALID_ARGUMENT."""
    async with open_server(tmp_path) as h:
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, [start(10), chunk(0, b"abc"), chunk(4, b"def")], h.metadata)
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, [start(10), chunk(1, b"abc")], h.metadata)


async def test_more_than_total_size_is_invalid_argument(tmp_path):
    """A chunk carrying the upload past total_size fails with INVALID_ARGUMENT."""
    async with open_server(tmp_path) as h:
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, [start(4), chunk(0, b"abcde")], h.metadata)


async def test_resume_checks_total_size_and_id(tmp_path):
    """Resume: a different total_size is INVALID_ARGUMENT, an unknown id NOT_FOUND, a malformed
    id INVALID_ARGUMENT."""
    async with open_server(tmp_path) as h:
        acks = await run_upload(h.uploads, [start(10), chunk(0, b"12345")], h.metadata)
        upload_id = acks[0].upload_id
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, [start(11, upload_id=upload_id)], h.metadata)
        async with expect_status(StatusCode.NOT_FOUND):
            await run_upload(h.uploads, [start(10, upload_id="0" * 32)], h.metadata)
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, [start(10, upload_id="not-an-id")], h.metadata)
        again = await run_upload(h.uploads, [start(10, upload_id=upload_id)], h.metadata)
        assert [a.received_bytes for a in again] == [5, 5]


async def test_another_tenants_upload_cannot_be_resumed(tmp_path):
    """An upload id of tenant t1 is NOT_FOUND for a token of tenant t2."""
    async with open_server(tmp_path) as h:
        acks = await run_upload(h.uploads, [start(10)], h.metadata)
        other = bearer(await h.token_for(("*:*",), tenant="t2"))
        async with expect_status(StatusCode.NOT_FOUND):
            await run_upload(h.uploads, [start(10, upload_id=acks[0].upload_id)], other)


async def test_complete_too_early_is_invalid_argument(tmp_path):
    """complete before total_size bytes fails with INVALID_ARGUMENT; the upload stays."""
    async with open_server(tmp_path) as h:
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, [start(10), chunk(0, b"12345"), complete()], h.metadata)
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, [start(3), complete()], h.metadata)
        acks = await run_upload(h.uploads, [start(10), chunk(0, b"12345")], h.metadata)
        upload_id = acks[0].upload_id
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, [start(10, upload_id=upload_id), complete()], h.metadata)
        done = await run_upload(
            h.uploads, [start(10, upload_id=upload_id), chunk(5, b"67890"), complete()], h.metadata
        )
        assert done[-1].complete.key == key_of(b"1234567890")


async def test_bad_hash_discards_the_upload(tmp_path):
    """A mismatching expected_hash is INVALID_ARGUMENT and the upload is gone afterwards."""
    data = b"payload" * 10
    async with open_server(tmp_path) as h:
        stream = await h.uploads.Upload(metadata=h.metadata)
        await stream.send_message(start(len(data)))
        upload_id = (await receive(stream)).upload_id
        await stream.send_message(chunk(0, data))
        await stream.send_message(complete(hashlib.sha256(b"other").digest()))
        await stream.close()
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            while await receive(stream) is not None:
                pass
        async with expect_status(StatusCode.NOT_FOUND):
            await run_upload(h.uploads, [start(len(data), upload_id=upload_id)], h.metadata)
        async with expect_status(StatusCode.NOT_FOUND):
            await h.blobs.StatBlob(blob_pb2.StatBlobRequest(key=key_of(data)), metadata=h.metadata)


async def test_malformed_hash_is_invalid_argument(tmp_path):
    """An expected_hash that is not 32 bytes is INVALID_ARGUMENT."""
    async with open_server(tmp_path) as h:
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, [start(1), chunk(0, b"a"), complete(b"short")], h.metadata)


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [chunk(0, b"abc")],
        [complete()],
        [upload_pb2.UploadMessage()],
        [start(3), start(3)],
        [start(3), upload_pb2.UploadMessage()],
        [start(-1)],
    ],
    ids=["nothing", "chunk-first", "complete-first", "empty-first", "second-start",
         "empty-later", "negative-size"],
)
async def test_messages_out_of_order_are_invalid_argument(tmp_path, messages):
    """A stream that does not start with StartUpload, or repeats it, is INVALID_ARGUMENT."""
    async with open_server(tmp_path) as h:
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, messages, h.metadata)


async def test_upload_slots_exhausted_is_resource_exhausted(tmp_path):
    """With every upload slot taken, another Upload fails at once with RESOURCE_EXHAUSTED; the
    slot comes back when the holder completes, fails or is dropped."""
    async with open_server(tmp_path, upload_slots=1) as h:
        holder = await h.uploads.Upload(metadata=h.metadata)
        await holder.send_message(start(3))
        await receive(holder)
        async with expect_status(StatusCode.RESOURCE_EXHAUSTED):
            await run_upload(h.uploads, [start(3)], h.metadata)
        await holder.send_message(chunk(0, b"abc"))
        await holder.send_message(complete())
        await holder.close()
        while await receive(holder) is not None:
            pass
        acks = await upload_blob(h, b"xyz")
        assert acks[-1].complete.key == key_of(b"xyz")
        # Failed and dropped uploads give their slot back too.
        async with expect_status(StatusCode.INVALID_ARGUMENT):
            await run_upload(h.uploads, [start(3), chunk(1, b"x")], h.metadata)
        async with h.open_channel() as lost:
            dropped = await upload_grpc.UploadServiceStub(lost).Upload(metadata=h.metadata)
            await dropped.send_message(start(3))
            await receive(dropped)
            drop_connection(lost)
        with trio.fail_after(60):
            while True:
                try:
                    acks = await upload_blob(h, b"again")
                    break
                except BaseException as exc:  # noqa: BLE001 - the dropped call may still run
                    assert rpc_error(exc).status.status_code == StatusCode.RESOURCE_EXHAUSTED
                    await trio.sleep(0.05)
        assert acks[-1].complete.key == key_of(b"again")


async def test_silent_upload_times_out_frees_its_slot_and_stays_resumable(tmp_path):
    """An Upload that sends nothing for upload_idle_timeout (before or after its start) ends with
    DEADLINE_EXCEEDED; the bytes it accepted are kept, its slot is free, and it resumes."""
    data = b"0123456789"
    # Every message a test means to send is sent at once (never after reading an ack), so
    # only the deliberate silences can exceed the idle timeout, however slow the machine.
    async with open_server(tmp_path, upload_slots=1, idle_timeout=1.0) as h:
        # Silent before the start: ended too (no slot was taken yet).
        quiet = await h.uploads.Upload(metadata=h.metadata)
        async with expect_status(StatusCode.DEADLINE_EXCEEDED):
            await receive(quiet)
        # Silent mid-upload, with 4 bytes held only in memory (no ack for them was sent).
        silent = await h.uploads.Upload(metadata=h.metadata)
        await silent.send_message(start(len(data)))
        await silent.send_message(chunk(0, data[:4]))
        upload_id = (await receive(silent)).upload_id
        with pytest.raises(BaseException) as caught:  # noqa: PT011 - sorted out below
            while await receive(silent) is not None:
                pass
        status = rpc_error(caught.value).status
        assert status.status_code == StatusCode.DEADLINE_EXCEEDED, status
        assert upload_id in status.status_message and "4 bytes" in status.status_message
        # The only slot is free again, and the upload resumes from the 4 bytes kept.
        acks = await run_upload(
            h.uploads,
            [start(len(data), upload_id=upload_id), chunk(4, data[4:]),
             complete(hashlib.sha256(data).digest())],
            h.metadata,
        )
        assert acks[0].upload_id == upload_id and acks[0].received_bytes == 4
        assert acks[-1].complete.key == key_of(data)
        assert await read_blob(h, key_of(data)) == data


def test_idle_timeout_must_be_positive():
    """Config rejects a zero or negative upload_idle_timeout; the default is 300 s."""
    assert Config().upload_idle_timeout == 300.0
    for bad in (0, -1.0):
        with pytest.raises(ValueError):
            Config(upload_idle_timeout=bad)


async def test_declared_size_past_the_limit_is_resource_exhausted(tmp_path):
    """A total_size beyond the maximum blob size fails with RESOURCE_EXHAUSTED."""
    async with open_server(tmp_path, max_object_size=1000) as h:
        async with expect_status(StatusCode.RESOURCE_EXHAUSTED):
            await run_upload(h.uploads, [start(1001)], h.metadata)


# ------------------------------------------------------------------------ auth


async def test_missing_token_is_unauthenticated_first(tmp_path):
    """No token is UNAUTHENTICATED, even when the first message is also wrong."""
    async with open_server(tmp_path) as h:
        async with expect_status(StatusCode.UNAUTHENTICATED):
            await run_upload(h.uploads, [start(1), chunk(0, b"a"), complete()], ())
        async with expect_status(StatusCode.UNAUTHENTICATED):
            await run_upload(h.uploads, [chunk(0, b"a")], ())
        async with expect_status(StatusCode.UNAUTHENTICATED):
            await run_upload(h.uploads, [start(1)], (("authorization", "Bearer nope"),))


async def test_upload_needs_write_blob_star(tmp_path):
    """Without write:blob:* Upload is PERMISSION_DENIED (after validation: bad start wins)."""
    async with open_server(tmp_path) as h:
        for scopes in [("read:blob:*", "list:blob:*"), ("write:blob:sha256:" + "0" * 64,),
                       ("write:bucket:*",)]:
            md = bearer(await h.token_for(scopes))
            async with expect_status(StatusCode.PERMISSION_DENIED):
                await run_upload(h.uploads, [start(1), chunk(0, b"a"), complete()], md)
            async with expect_status(StatusCode.INVALID_ARGUMENT):
                await run_upload(h.uploads, [chunk(0, b"a")], md)
        md = bearer(await h.token_for(("write:blob:*",)))
        acks = await upload_blob(h, b"ok", metadata=md)
        assert acks[-1].complete.key == key_of(b"ok")


# ------------------------------------------------------------------------ the pure core


def test_parse_start_rejects_everything_but_a_valid_start():
    """parse_start accepts only a StartUpload with a sane size and id."""
    assert parse_start(start(5, attributes={"a": "b"})).attributes == {"a": "b"}
    assert parse_start(start(0, upload_id="a" * 32)).upload_id == "a" * 32
    for message in [None, chunk(0, b""), complete(), upload_pb2.UploadMessage(), start(-1),
                    start(1, upload_id="A" * 32), start(1, upload_id="a" * 31)]:
        with pytest.raises(InvalidArgumentError):
            parse_start(message)


def test_session_rejects_bad_knobs_and_late_messages():
    """A session checks its knobs, and rejects chunks or complete after it is done."""
    with pytest.raises(ValueError):
        UploadSession("u", 10, batch_bytes=MAX_BATCH_BYTES + 1)
    with pytest.raises(ValueError):
        UploadSession("u", 10, durable=11)
    session = UploadSession("u", 2, batch_bytes=4)
    assert session.on_chunk(0, b"ab") == [b"ab"]
    session.wrote(2)
    assert session.on_complete(b"") == [] and session.phase is SessionPhase.DONE
    for late in (lambda: session.on_chunk(2, b""), lambda: session.on_complete(b""),
                 session.on_end, lambda: session.on_message("start")):
        with pytest.raises(InvalidArgumentError):
            late()


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), max_size=30),
    batch=st.integers(min_value=1, max_value=16),
    durable=st.integers(min_value=0, max_value=20),
    finish=st.booleans(),
)
def test_session_batches_bound_memory_and_ack_only_durable_bytes(sizes, batch, durable, finish):
    """Batches reassemble the stream in order, each at most batch_bytes; memory stays below
    batch_bytes; acks only grow and report written bytes; reaching total_size writes all."""
    total = durable + sum(sizes)
    session = UploadSession("u", total, durable, batch_bytes=batch)
    stream = bytes(i % 251 for i in range(total))
    written = bytearray(stream[:durable])
    acked = [session.ack().received_bytes]
    offset = durable
    for size in sizes:
        for out in session.on_chunk(offset, stream[offset : offset + size]):
            assert 0 < len(out) <= batch
            written += out
            session.wrote(len(written))
            acked.append(session.ack().received_bytes)
        offset += size
        assert session.received == offset and session.pending <= batch
        assert session.durable == len(written)
        assert offset - session.durable <= batch
    assert acked == sorted(acked)
    assert bytes(written) == stream[: session.durable]
    assert session.durable == total or session.pending == total - session.durable
    with pytest.raises(InvalidArgumentError):
        session.on_chunk(offset + 1, b"x")
    rest = session.on_complete(b"") if finish else session.on_end()
    written += b"".join(rest)
    assert bytes(written) == stream
