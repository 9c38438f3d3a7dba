"""Tests of the content-addressed blob store (anvil_trio/storage/_blobs.py) on real files."""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import tempfile
import threading
import time

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from anvil_trio.storage._blobs import BlobStore
from anvil_trio.storage._errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    InvalidArgumentError,
    NotFoundError,
    ObjectTooLargeError,
    OutOfRangeError,
    StorageFullError,
    StorageIOError,
)
from anvil_trio.storage._faults import FaultInjector

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-ish bytes of the given size."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


async def pieces(data: bytes, piece: int):
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


def files_under(path: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def assert_nothing_left(root: pathlib.Path) -> None:
    assert files_under(root / "blobs") == []
    assert files_under(root / "tmp") == []


async def read_all(store: BlobStore, digest: str, start: int = 0, end: int | None = None) -> bytes:
    reader = await store.open_range(digest, start, end)
    async with reader:
        return b"".join([chunk async for chunk in reader])


@pytest.fixture
def store(tmp_path: pathlib.Path) -> BlobStore:
    return BlobStore(tmp_path)


# -- round trips and dedup -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 5 * MiB + 123])
async def test_round_trip(store: BlobStore, tmp_path: pathlib.Path, size: int) -> None:
    """Bytes written come back identical, under their SHA-256 name, read-only, temp cleaned."""
    data = pattern(size, seed=size)
    written = await store.write(pieces(data, 64 * 1024 + 7))
    with written:
        assert (written.digest, written.size, written.created) == (sha(data), size, True)
    path = tmp_path / "blobs" / written.digest[:2] / written.digest[2:4] / written.digest
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o444
    assert await store.size(written.digest) == size
    assert await store.exists(written.digest)
    assert await read_all(store, written.digest) == data
    assert files_under(tmp_path / "tmp") == []


async def test_write_from_bounded_channel(store: BlobStore) -> None:
    """A bounded memory channel's receive side feeds a write while a sender task fills it."""
    data = pattern(3 * MiB + 5)
    send, receive = trio.open_memory_channel[bytes](2)

    async def sender() -> None:
        async with send:
            for i in range(0, len(data), 100_000):
                await send.send(data[i : i + 100_000])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        async with receive:
            written = await store.write(receive, expected_size=len(data))
    written.release()
    assert written.digest == sha(data)
    assert await read_all(store, written.digest) == data


async def test_dedup_keeps_one_file(store: BlobStore, tmp_path: pathlib.Path) -> None:
    """The same content written twice is stored once and the second write says created=False."""
    data = pattern(300_000)
    first = await store.write(pieces(data, 1000))
    second = await store.write(pieces(data, 77_777))
    first.release()
    second.release()
    assert first.created and not second.created
    assert first.digest == second.digest
    assert len(files_under(tmp_path / "blobs")) == 1
    assert files_under(tmp_path / "tmp") == []
    assert list(store.iter_digests()) == [first.digest]


async def test_iter_digests_skips_foreign_files(store: BlobStore, tmp_path: pathlib.Path) -> None:
    """iter_digests lists stored digests and ignores files that do not belong in blobs/."""
    digests = []
    for seed in range(3):
        with await store.write(pieces(pattern(10, seed), 3)) as written:
            digests.append(written.digest)
    (tmp_path / "blobs" / "stray").write_bytes(b"x")
    (tmp_path / "blobs" / digests[0][:2] / digests[0][2:4] / "junk").write_bytes(b"x")
    assert sorted(store.iter_digests()) == sorted(digests)


# -- ranges --------------------------------------------------------------------------------

DATA10 = b"0123456789"


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, DATA10),
        (3, 7, b"3456"),
        (3, 3, b""),
        (9, None, b"9"),
        (0, 100, DATA10),
        (5, 10, b"56789"),
        (5, 11, b"56789"),
    ],
)
async def test_range_reads(store: BlobStore, start: int, end: int | None, expected: bytes) -> None:
    """Ranges are end-exclusive, None reads to the end and an end past the size is clamped."""
    with await store.write(pieces(DATA10, 4)) as written:
        reader = await store.open_range(written.digest, start, end)
        async with reader:
            assert (reader.size, reader.start) == (10, start)
            assert b"".join([c async for c in reader]) == expected
            assert reader.position == min(10, end if end is not None else 10)


@pytest.mark.parametrize(
    ("start", "end", "error"),
    [
        (5, 4, InvalidArgumentError),
        (-1, None, InvalidArgumentError),
        (0, -1, InvalidArgumentError),
        (10, None, OutOfRangeError),
        (10, 20, OutOfRangeError),
        (11, None, OutOfRangeError),
    ],
)
async def test_range_errors(store: BlobStore, start: int, end: int | None, error: type) -> None:
    """end < start and negative starts are invalid; a start at or past the end is out of range."""
    with await store.write(pieces(DATA10, 4)) as written:
        with pytest.raises(error):
            await store.open_range(written.digest, start, end)


async def test_empty_blob_ranges(store: BlobStore) -> None:
    """An empty blob read from 0 yields nothing (any end); a start past 0 is out of range."""
    with await store.write(pieces(b"", 1)) as written:
        assert written.digest == sha(b"")
        assert await read_all(store, written.digest) == b""
        assert await read_all(store, written.digest, 0, 5) == b""
        with pytest.raises(OutOfRangeError):
            await store.open_range(written.digest, 1)


async def test_missing_and_malformed_digests(store: BlobStore) -> None:
    """Unknown digests are NotFound; malformed ones are InvalidArgument before any lookup."""
    missing = sha(b"never written")
    with pytest.raises(NotFoundError):
        await store.open_range(missing)
    with pytest.raises(NotFoundError):
        await store.size(missing)
    assert not await store.exists(missing)
    with pytest.raises(InvalidArgumentError):
        await store.open_range(missing, 5, 4)
    for bad in ["../" + missing[3:], missing.upper(), missing[:-1], "", missing + "0"]:
        with pytest.raises(InvalidArgumentError):
            await store.open_range(bad)
        with pytest.raises(InvalidArgumentError):
            await store.delete_if_unpinned(bad)


async def test_read_chunks_never_exceed_chunk_size(tmp_path: pathlib.Path) -> None:
    """Every chunk a read yields is at most chunk_size bytes, and chunks are contiguous."""
    store = BlobStore(tmp_path, chunk_size=1000)
    data = pattern(10_500)
    with await store.write(pieces(data, 4096)) as written:
        for start, end in [(0, None), (1, 10_499), (999, 3001), (10_000, None), (0, 1000)]:
            reader = await store.open_range(written.digest, start, end)
            got, position = [], start
            async for chunk in reader:
                assert 0 < len(chunk) <= 1000
                assert reader.position == position + len(chunk)
                position = reader.position
                got.append(chunk)
            assert b"".join(got) == data[start:end]


async def test_open_reader_survives_delete(tmp_path: pathlib.Path) -> None:
    """A reader opened before a delete still streams the whole range; aclose stops it early."""
    store = BlobStore(tmp_path, chunk_size=100)
    data = pattern(1000)
    with await store.write(pieces(data, 333)) as written:
        pass
    reader = await store.open_range(written.digest)
    first = await reader.__anext__()
    assert await store.delete_if_unpinned(written.digest)
    assert first + b"".join([c async for c in reader]) == data
    with await store.write(pieces(data, 333)):
        pass
    early = await store.open_range(written.digest, 100)
    await early.aclose()
    assert [c async for c in early] == []


# -- validation failures leave nothing --------------------------------------------------------


async def test_checksum_mismatch_leaves_nothing(store: BlobStore, tmp_path: pathlib.Path) -> None:
    """A wrong expected_sha256 raises ChecksumMismatchError and leaves no file anywhere."""
    with pytest.raises(ChecksumMismatchError):
        await store.write(pieces(pattern(5000), 999), expected_sha256=sha(b"other"))
    assert_nothing_left(tmp_path)
    with await store.write(pieces(b"abc", 1), expected_sha256=sha(b"abc").upper()) as ok:
        assert ok.digest == sha(b"abc")


@pytest.mark.parametrize("declared", [4999, 5001, 0])
async def test_size_mismatch_leaves_nothing(
    store: BlobStore, tmp_path: pathlib.Path, declared: int
) -> None:
    """Content shorter or longer than expected_size is InvalidArgument and leaves nothing."""
    with pytest.raises(InvalidArgumentError):
        await store.write(pieces(pattern(5000), 999), expected_size=declared)
    assert_nothing_left(tmp_path)


async def test_max_size_fails_as_soon_as_exceeded(store: BlobStore, tmp_path: pathlib.Path) -> None:
    """Exceeding max_size raises ObjectTooLargeError without reading further; nothing is left."""
    pulled = 0

    async def endless():
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * 1000

    with pytest.raises(ObjectTooLargeError):
        await store.write(endless(), max_size=10_500)
    assert pulled == 11
    assert_nothing_left(tmp_path)
    with pytest.raises(ObjectTooLargeError):
        await store.write(pieces(b"", 1), max_size=10, expected_size=11)
    with await store.write(pieces(b"x" * 10, 3), max_size=10) as exact:
        assert exact.size == 10


# -- fault injection ---------------------------------------------------------------------------

FAULT_CASES = [
    pytest.param({"fail_after_bytes": 2 * MiB + 10}, id="mid-stream"),
    pytest.param({"fail_at": "write"}, id="first-write"),
    pytest.param({"fail_at": "fsync"}, id="fsync"),
    pytest.param({"fail_at": "rename"}, id="rename"),
    pytest.param({"fail_at": "dir_fsync"}, id="dir-fsync-mkdir"),
    pytest.param({"fail_at": "dir_fsync", "skip": 2}, id="dir-fsync-after-rename"),
]


@pytest.mark.parametrize(
    ("code", "error"), [(errno.ENOSPC, StorageFullError), (errno.EIO, StorageIOError)]
)
@pytest.mark.parametrize("fault", FAULT_CASES)
@pytest.mark.parametrize(
    "size", [pytest.param(4 * MiB + 1, id="streamed"), pytest.param(3 * MiB, id="one-call")]
)
async def test_injected_faults(
    tmp_path: pathlib.Path, fault: dict, code: int, error: type, size: int
) -> None:
    """Disk faults anywhere in a write raise the mapped error, chained, and leave nothing,
    whether the content streams through the write lanes or fits in one batch (one call)."""
    injector = FaultInjector(errno=code, **fault)
    store = BlobStore(tmp_path, fault_injector=injector)
    data = pattern(size)
    with pytest.raises(error) as info:
        await store.write(pieces(data, 256 * 1024))
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == code
    assert injector.fired == 1
    assert_nothing_left(tmp_path)
    assert store.pin_count(sha(data)) == 0
    with await store.write(pieces(data, 256 * 1024)) as written:
        assert written.created
    assert await read_all(store, sha(data)) == data


async def test_cancellation_mid_write_leaves_nothing(
    store: BlobStore, tmp_path: pathlib.Path
) -> None:
    """Cancelling a write while its source is still streaming (past its first batch, so bytes
    are on disk) removes the partial temp file."""
    stalled = trio.Event()
    seen_part: list[pathlib.Path] = []

    async def stalling():
        for _ in range(store.batch_size // MiB + 1):
            yield b"y" * MiB
        seen_part.extend(files_under(tmp_path / "tmp"))
        stalled.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def writer() -> None:
            await store.write(stalling())
            raise AssertionError("write must not complete")

        nursery.start_soon(writer)
        await stalled.wait()
        nursery.cancel_scope.cancel()
    assert len(seen_part) == 1  # a part file existed while the write was in flight
    assert_nothing_left(tmp_path)


@attrs.define
class HoldWrite(FaultInjector):
    """An injector that parks the write at or past offset ``at`` (by default the second
    1 MiB batch's) in its worker thread until released."""

    entered: threading.Event = attrs.field(factory=threading.Event)
    proceed: threading.Event = attrs.field(factory=threading.Event)
    at: int = MiB

    def before_write(self, offset: int, length: int) -> None:
        if offset >= self.at:
            self.entered.set()
            self.proceed.wait(30)
        super().before_write(offset, length)


async def cancel_while_parked(store: BlobStore, hook: HoldWrite, source, while_parked) -> None:
    """Write ``source``, cancel the write once ``hook`` parked one of its disk writes, run
    ``while_parked(finished)`` (shielded) while it is still parked, then release it and wait
    until the write has ended."""
    finished = trio.Event()

    async def writer() -> None:
        try:
            await store.write(source)
        finally:
            finished.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.to_thread.run_sync(hook.entered.wait)
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await while_parked(finished)
            hook.proceed.set()
            await finished.wait()


async def test_cancel_waits_for_parked_batch_write(tmp_path: pathlib.Path) -> None:
    """Cancelling a write whose batch is mid-write in a worker thread waits for that thread
    (and the batch's hashing thread), then removes the part file."""
    hook = HoldWrite()
    store = BlobStore(tmp_path, batch_size=MiB, fault_injector=hook)

    async def two_then_stall():
        yield b"z" * MiB
        yield b"w" * MiB  # its batch is handed to the threads, then the source stalls
        await trio.sleep_forever()

    async def while_parked(finished: trio.Event) -> None:
        with trio.move_on_after(0.2):  # the writer must still be waiting for its thread
            await finished.wait()
        assert not finished.is_set()
        assert len(files_under(tmp_path / "tmp")) == 1

    await cancel_while_parked(store, hook, two_then_stall(), while_parked)
    assert_nothing_left(tmp_path)


async def test_cancel_waits_for_a_one_call_write(tmp_path: pathlib.Path) -> None:
    """Content smaller than a batch is written in one worker-thread call; cancelling the write
    while that call is parked waits for it, then removes the part file."""
    hook = HoldWrite(at=0)
    store = BlobStore(tmp_path, fault_injector=hook)

    async def while_parked(finished: trio.Event) -> None:
        assert len(files_under(tmp_path / "tmp")) == 1  # created by the parked call

    await cancel_while_parked(store, hook, pieces(b"small" * 1000, 777), while_parked)
    assert_nothing_left(tmp_path)


# -- pins and deletion -------------------------------------------------------------------------


async def test_pin_blocks_delete(store: BlobStore, tmp_path: pathlib.Path) -> None:
    """A written blob stays pinned (undeletable) until released; pinned() pins likewise."""
    written = await store.write(pieces(b"pinned content", 5))
    assert not await store.delete_if_unpinned(written.digest)
    assert await store.exists(written.digest)
    written.release()
    written.release()
    assert store.pin_count(written.digest) == 0
    async with store.pinned(written.digest):
        assert store.pin_count(written.digest) == 1
        assert not await store.delete_if_unpinned(written.digest)
    assert await store.delete_if_unpinned(written.digest)
    assert not await store.exists(written.digest)
    assert not await store.delete_if_unpinned(written.digest)
    assert files_under(tmp_path / "blobs") == []


async def test_deferred_delete_moves_the_file_aside_at_once(
    store: BlobStore, tmp_path: pathlib.Path
) -> None:
    """With defer_unlink the blob leaves blobs/ at once (a new write of the same content
    creates it afresh) and the caller gets the moved file to purge; pinned files never move."""
    data = b"deleted later"
    with await store.write(pieces(data, 4)) as written:
        handed = []
        assert not await store.delete_if_unpinned(written.digest, defer_unlink=handed.append)
        assert handed == [] and await store.exists(written.digest)
    assert await store.delete_if_unpinned(written.digest, defer_unlink=handed.append)
    [dead] = handed
    assert not await store.exists(written.digest)
    assert files_under(tmp_path / "tmp") == [dead] and dead.name.endswith(".dead")
    assert dead.read_bytes() == data
    again = await store.write(pieces(data, 3))
    assert again.created and await read_all(store, again.digest) == data
    again.release()
    store.purge(dead)
    store.purge(dead)  # already gone: nothing to do
    assert files_under(tmp_path / "tmp") == []
    assert not await store.delete_if_unpinned("0" * 64, defer_unlink=handed.append)
    assert len(handed) == 1


async def test_dedup_write_pins_existing_file(store: BlobStore) -> None:
    """A write deduplicated onto an existing file pins it, so a reaper cannot delete it."""
    with await store.write(pieces(b"shared", 2)):
        pass
    again = await store.write(pieces(b"shared", 3))
    assert not again.created
    assert not await store.delete_if_unpinned(again.digest)
    again.release()
    assert await store.delete_if_unpinned(again.digest)


async def test_concurrent_writes_and_deletes(store: BlobStore) -> None:
    """Racing writes and deletes of one digest: every write returns with its file present."""
    data = pattern(200_000, seed=7)
    digest = sha(data)
    present_after_write = []

    async def writer() -> None:
        for _ in range(15):
            with await store.write(pieces(data, 50_000)) as written:
                present_after_write.append(await store.exists(written.digest))

    async def deleter() -> None:
        for _ in range(60):
            await store.delete_if_unpinned(digest)
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        nursery.start_soon(writer)
        nursery.start_soon(deleter)
    assert present_after_write == [True] * 30
    assert store.pin_count(digest) == 0


@attrs.define
class HoldDelete(FaultInjector):
    """An injector that parks the unlink of a blob until the test lets it go."""

    entered: threading.Event = attrs.field(factory=threading.Event)
    proceed: threading.Event = attrs.field(factory=threading.Event)

    def before_step(self, step: str) -> None:
        if step == "unlink":
            self.entered.set()
            self.proceed.wait(30)
        super().before_step(step)


async def test_write_waits_for_in_flight_delete(tmp_path: pathlib.Path) -> None:
    """A write of a digest whose delete is mid-unlink waits, then recreates the file."""
    hook = HoldDelete()
    store = BlobStore(tmp_path, fault_injector=hook)
    data = pattern(100_000, seed=11)
    with await store.write(pieces(data, 30_000)):
        pass
    outcome: list = []
    write_done = trio.Event()

    async def write_again() -> None:
        outcome.append(await store.write(pieces(data, 30_000)))
        write_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.delete_if_unpinned, sha(data))
        await trio.to_thread.run_sync(hook.entered.wait)
        nursery.start_soon(write_again)
        with trio.move_on_after(0.5):  # long enough for an unserialised write to finish
            await write_done.wait()
        hook.proceed.set()
    (written,) = outcome
    assert written.created
    assert await store.exists(written.digest)
    written.release()


async def test_delete_fault_keeps_file(tmp_path: pathlib.Path) -> None:
    """An I/O error while deleting raises StorageIOError and the blob is still readable."""
    store = BlobStore(tmp_path, fault_injector=FaultInjector(fail_at="unlink"))
    with await store.write(pieces(b"keep me", 3)) as written:
        pass
    with pytest.raises(StorageIOError):
        await store.delete_if_unpinned(written.digest)
    assert await read_all(store, written.digest) == b"keep me"
    assert await store.delete_if_unpinned(written.digest)


# -- temp reaping ----------------------------------------------------------------------------


async def test_remove_stale_temp(store: BlobStore, tmp_path: pathlib.Path) -> None:
    """*.part files older than the cutoff and *.dead files of any age are removed, and the
    count is returned."""
    tmp = tmp_path / "tmp"
    old_part, new_part, old_other = tmp / ("a" * 32 + ".part"), tmp / "b.part", tmp / "c.txt"
    new_dead = tmp / ("d" * 32 + ".dead")
    for path in (old_part, new_part, old_other, new_dead):
        path.write_bytes(b"junk")
    an_hour_ago = time.time() - 3600
    os.utime(old_part, (an_hour_ago, an_hour_ago))
    os.utime(old_other, (an_hour_ago, an_hour_ago))
    assert await store.remove_stale_temp(60) == 2
    assert sorted(p.name for p in tmp.iterdir()) == ["b.part", "c.txt"]
    with pytest.raises(InvalidArgumentError):
        await store.remove_stale_temp(-1)


async def test_remove_stale_temp_spares_running_writes(
    store: BlobStore, tmp_path: pathlib.Path
) -> None:
    """The part file of a write still in progress (past its first batch, so its file exists)
    survives even a zero-age sweep."""
    release = trio.Event()
    stalled = trio.Event()

    async def slow():
        yield b"z" * store.batch_size
        stalled.set()
        await release.wait()
        yield b"z" * 100

    async with trio.open_nursery() as nursery:
        results = []

        async def writer() -> None:
            results.append(await store.write(slow()))

        nursery.start_soon(writer)
        await stalled.wait()
        a_day_ago = time.time() - 86400
        (part,) = files_under(tmp_path / "tmp")
        os.utime(part, (a_day_ago, a_day_ago))
        assert await store.remove_stale_temp(0) == 0
        release.set()
    with results[0] as written:
        assert await read_all(store, written.digest) == b"z" * (store.batch_size + 100)


# -- resumable uploads -----------------------------------------------------------------------

UPLOAD_ID = "0123456789abcdef0123456789abcdef"


async def test_upload_lifecycle_across_reopen(tmp_path: pathlib.Path) -> None:
    """Appends are checked and durable, survive a new BlobStore, and finish into blobs/."""
    data = pattern(3 * MiB + 17, seed=3)
    store = BlobStore(tmp_path)
    await store.upload_create(UPLOAD_ID)
    assert await store.upload_size(UPLOAD_ID) == 0
    assert await store.upload_append(UPLOAD_ID, 0, data[:MiB]) == MiB
    assert await store.upload_append(UPLOAD_ID, MiB, b"") == MiB
    with pytest.raises(InvalidArgumentError):
        await store.upload_append(UPLOAD_ID, 0, data[:10])
    with pytest.raises(InvalidArgumentError):
        await store.upload_append(UPLOAD_ID, MiB + 1, data[MiB + 1 :])
    assert await store.upload_size(UPLOAD_ID) == MiB

    reopened = BlobStore(tmp_path)
    assert list(reopened.iter_upload_ids()) == [UPLOAD_ID]
    assert await reopened.upload_size(UPLOAD_ID) == MiB
    assert await reopened.upload_append(UPLOAD_ID, MiB, data[MiB:]) == len(data)
    with await reopened.upload_finish(UPLOAD_ID, expected_sha256=sha(data)) as written:
        assert (written.digest, written.size, written.created) == (sha(data), len(data), True)
        assert not await reopened.delete_if_unpinned(written.digest)
    assert await read_all(reopened, sha(data)) == data
    assert list(reopened.iter_upload_ids()) == []
    with pytest.raises(NotFoundError):
        await reopened.upload_size(UPLOAD_ID)
    assert files_under(tmp_path / "tmp") == []


async def test_upload_finish_dedups_and_empty(store: BlobStore, tmp_path: pathlib.Path) -> None:
    """An empty upload finishes to the empty blob; a duplicate finish reports created=False."""
    await store.upload_create(UPLOAD_ID)
    with await store.upload_finish(UPLOAD_ID) as empty:
        assert (empty.digest, empty.size, empty.created) == (sha(b""), 0, True)
    await store.upload_create(UPLOAD_ID)
    await store.upload_append(UPLOAD_ID, 0, b"")
    with await store.upload_finish(UPLOAD_ID) as again:
        assert not again.created
    assert files_under(tmp_path / "uploads") == []
    assert len(files_under(tmp_path / "blobs")) == 1


async def test_upload_checksum_mismatch_discards(store: BlobStore, tmp_path: pathlib.Path) -> None:
    """A finish with the wrong SHA-256 raises ChecksumMismatchError and discards the upload."""
    await store.upload_create(UPLOAD_ID)
    await store.upload_append(UPLOAD_ID, 0, b"hello")
    with pytest.raises(ChecksumMismatchError):
        await store.upload_finish(UPLOAD_ID, expected_sha256=sha(b"world"))
    with pytest.raises(NotFoundError):
        await store.upload_size(UPLOAD_ID)
    assert_nothing_left(tmp_path)
    assert files_under(tmp_path / "uploads") == []


async def test_upload_discard_and_errors(store: BlobStore) -> None:
    """Discard is idempotent; duplicates, missing uploads and bad ids get the right errors."""
    await store.upload_create(UPLOAD_ID)
    with pytest.raises(AlreadyExistsError):
        await store.upload_create(UPLOAD_ID)
    assert await store.upload_discard(UPLOAD_ID)
    assert not await store.upload_discard(UPLOAD_ID)
    with pytest.raises(NotFoundError):
        await store.upload_append(UPLOAD_ID, 0, b"x")
    with pytest.raises(NotFoundError):
        await store.upload_finish(UPLOAD_ID)
    for bad in ["../../etc/passwd", UPLOAD_ID.upper(), UPLOAD_ID[:-1], UPLOAD_ID + "0", ""]:
        with pytest.raises(InvalidArgumentError):
            await store.upload_create(bad)
        with pytest.raises(InvalidArgumentError):
            await store.upload_append(bad, 0, b"x")
        with pytest.raises(InvalidArgumentError):
            await store.upload_size(bad)
        with pytest.raises(InvalidArgumentError):
            await store.upload_finish(bad)
        with pytest.raises(InvalidArgumentError):
            await store.upload_discard(bad)


async def test_upload_append_fault_keeps_old_size(tmp_path: pathlib.Path) -> None:
    """A disk fault during an append leaves the upload at its previous durable size."""
    injector = FaultInjector(errno=errno.ENOSPC, fail_after_bytes=1500)
    store = BlobStore(tmp_path, fault_injector=injector)
    await store.upload_create(UPLOAD_ID)
    assert await store.upload_append(UPLOAD_ID, 0, b"a" * 1000) == 1000
    with pytest.raises(StorageFullError):
        await store.upload_append(UPLOAD_ID, 1000, b"b" * 1000)
    assert await store.upload_size(UPLOAD_ID) == 1000
    injector.fail_after_bytes, injector.fail_at, injector.fired = None, "fsync", 0
    with pytest.raises(StorageFullError):
        await store.upload_append(UPLOAD_ID, 1000, b"b" * 1000)
    assert await store.upload_size(UPLOAD_ID) == 1000
    assert await store.upload_append(UPLOAD_ID, 1000, b"b" * 1000) == 2000


async def test_upload_finish_fault_stays_resumable(tmp_path: pathlib.Path) -> None:
    """A rename fault at finish leaves the upload intact and writable; a retry succeeds."""
    injector = FaultInjector(fail_at="rename")
    store = BlobStore(tmp_path, fault_injector=injector)
    await store.upload_create(UPLOAD_ID)
    await store.upload_append(UPLOAD_ID, 0, b"part one ")
    with pytest.raises(StorageIOError):
        await store.upload_finish(UPLOAD_ID)
    assert files_under(tmp_path / "blobs") == []
    upload_file = tmp_path / "uploads" / UPLOAD_ID
    assert upload_file.stat().st_mode & 0o777 == 0o600
    assert await store.upload_append(UPLOAD_ID, 9, b"part two") == 17
    with await store.upload_finish(UPLOAD_ID) as written:
        assert written.digest == sha(b"part one part two")


# -- property: chunking does not matter ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=12),
       chunk_size=st.integers(1, 700), direct=st.booleans())
async def test_any_chunking_same_digest(data: bytes, cuts: list[int], chunk_size: int,
                                        direct: bool) -> None:
    """However the bytes are split into chunks, the digest and readback are the same, with
    direct I/O or without."""
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]

    async def source():
        for chunk in chunks:
            yield chunk

    with tempfile.TemporaryDirectory() as root:
        store = BlobStore(root, chunk_size=chunk_size, batch_size=512, direct_io=direct,
                          fsync=False)
        with await store.write(source()) as written:
            assert (written.digest, written.size) == (sha(data), len(data))
            reader = await store.open_range(written.digest)
            got = [chunk async for chunk in reader]
        assert all(len(c) <= chunk_size for c in got)
        assert b"".join(got) == data


# -- the write pipeline ------------------------------------------------------------------------


class _HeldWrites(FaultInjector):
    """Holds every file write until ``release`` is set."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def before_write(self, offset: int, length: int) -> None:
        self.release.wait(30)


async def test_write_takes_at_most_pipeline_depth_plus_one_batches_ahead_of_the_disk(
    tmp_path: pathlib.Path,
) -> None:
    """While the disk is stuck, a write pulls only pipeline_depth + 1 batches from its source
    (its memory bound); once the disk moves the rest follows and the blob is exact."""
    release = threading.Event()
    store = BlobStore(tmp_path, batch_size=10, pipeline_depth=2, direct_io=False, fsync=False,
                      fault_injector=_HeldWrites(release))
    pulled: list[bytes] = []

    async def source():
        for index in range(20):
            chunk = bytes([index]) * 10
            pulled.append(chunk)
            yield chunk

    async with trio.open_nursery() as nursery:
        written: list = []

        async def write() -> None:
            written.append(await store.write(source()))

        nursery.start_soon(write)
        with trio.fail_after(30):
            while len(pulled) < 3:
                await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()  # the write now waits for the disk
        assert len(pulled) == 3
        release.set()
    with written[0] as blob:
        assert blob.digest == sha(b"".join(pulled)) and len(pulled) == 20
        assert store.blob_path(blob.digest).read_bytes() == b"".join(pulled)
