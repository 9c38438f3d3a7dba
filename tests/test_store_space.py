"""A full disk (``_space``): the free-space floor refuses writes, deletes always work, the
ballast is released when space runs out and recreated once it is back; on a really full
64 MiB tmpfs, through the storage façade and through gRPC (grpcio)."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import trio

from anvil_trio.storage import (
    FaultInjector,
    NotFoundError,
    Storage,
    StorageConfig,
    StorageFullError,
    run_storage,
)
from anvil_trio.storage._space import SpaceDecision, SpacePolicy, admits, decide
from anvil_trio.testing import open_test_server

MiB = 1 << 20
BALLAST = 4 * MiB
FLOOR = 8 * MiB


# ---------------------------------------------------------------- the pure core


def test_policy_defaults_scale_with_the_disk_and_are_capped():
    """None sizes default to 1% (ballast) and 2% (floor) of the disk, capped at 16/128 MiB."""
    small = SpacePolicy.for_disk(64 * MiB)
    assert (small.ballast_bytes, small.min_free_bytes) == (64 * MiB // 100, 64 * MiB // 50)
    big = SpacePolicy.for_disk(1 << 40)
    assert (big.ballast_bytes, big.min_free_bytes) == (16 * MiB, 128 * MiB)
    explicit = SpacePolicy.for_disk(1 << 40, ballast_bytes=0, min_free_bytes=5)
    assert (explicit.ballast_bytes, explicit.min_free_bytes) == (0, 5)


def test_decide_releases_below_half_the_floor_and_recreates_above_floor_plus_ballast():
    """Release at free < F/2, recreate at free >= F+B, nothing in between (hysteresis); a
    missing ballast's room stays reserved, so releasing it never reopens writes."""
    p = SpacePolicy(ballast_bytes=BALLAST, min_free_bytes=FLOOR)
    assert decide(p, FLOOR // 2 - 1, ballast_present=True) == SpaceDecision(
        FLOOR // 2 - 1, "release")
    assert decide(p, FLOOR // 2, ballast_present=True).action is None
    assert decide(p, FLOOR + BALLAST - 1, ballast_present=False).action is None
    made = decide(p, FLOOR + BALLAST, ballast_present=False)
    assert (made.action, made.effective_free) == ("create", FLOOR)
    # Missing ballast: its room is reserved; effective free is what writes may use.
    assert decide(p, FLOOR + 1, ballast_present=False).effective_free == FLOOR + 1 - BALLAST
    assert decide(p, 10 * MiB, ballast_present=True, admitted=3 * MiB).effective_free == 7 * MiB
    assert admits(p, FLOOR + 10, 10) and not admits(p, FLOOR + 10, 11)
    off = SpacePolicy(ballast_bytes=0, min_free_bytes=0)
    assert decide(off, 0, ballast_present=False).action is None and admits(off, 0, 0)


# ---------------------------------------------------------------- plumbing


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def chunks(data: bytes, size: int = 256 << 10) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        await trio.lowlevel.checkpoint()
        yield data[offset:offset + size]


async def never() -> AsyncIterator[bytes]:
    raise AssertionError("the content must not be read")
    yield b""  # pragma: no cover


def fill(path: Path) -> int:
    """Write a filler file (another process eating the disk) until ENOSPC; its size."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        block = b"\xff" * 4096
        with contextlib.suppress(OSError):
            while True:
                written += f.write(block)
    return written


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 64 MiB tmpfs (root only), unmounted after the test whatever happened."""
    if os.geteuid() != 0:  # sessions and CI run as root; a user's own checkout may not
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                          check=False, capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs as root: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


async def start(nursery: trio.Nursery, data_dir: Path, **kw) -> Storage:
    values = {"ballast_bytes": BALLAST, "min_free_bytes": FLOOR, "space_check_interval": 0.0,
              "direct_io": True, "fsync": True}
    values.update(kw)
    s = await nursery.start(run_storage, StorageConfig(data_dir=data_dir, **values))
    await s.create_tenant("acme")
    await s.create_bucket("acme", "flat")
    return s


async def fill_through_api(
    s: Storage, prefix: str, size: int = MiB
) -> tuple[int, StorageFullError]:
    """Put ``size``-byte objects until one is refused; (how many were stored, the error)."""
    for i in range(1000):
        try:
            await s.put_object("acme", "flat", f"{prefix}{i}", chunks(os.urandom(size)))
        except StorageFullError as exc:
            return i, exc
    raise AssertionError("the disk never filled")


def parts(data_dir: Path) -> list[str]:
    return [p.name for p in (data_dir / "tmp").iterdir()]


# ---------------------------------------------------------------- the floor (any disk)


async def test_below_the_floor_writes_are_refused_and_reads_lists_deletes_are_not(tmp_path):
    """With a floor above the free space, PutObject, CreateBucket, StartUpload and Upload
    chunks get StorageFullError (nothing left behind); get, list and every delete still work."""
    async with trio.open_nursery() as nursery:
        s = await start(nursery, tmp_path / "data", min_free_bytes=0)
        await s.put_object("acme", "flat", "kept", one(b"payload"))
        await s.create_bucket("acme", "spare")
        upload = await s.start_upload("acme", 10)
        await s.stop()
    async with trio.open_nursery() as nursery:
        huge = free_bytes(tmp_path) * 4
        s = await nursery.start(run_storage, StorageConfig(
            data_dir=tmp_path / "data", fsync=False, min_free_bytes=huge, ballast_bytes=0))
        with pytest.raises(StorageFullError, match="nearly full"):
            await s.put_object("acme", "flat", "new", one(b"x" * 100))
        with pytest.raises(StorageFullError):
            await s.put_object("acme", "flat", "declared", never(), content_length=10)
        with pytest.raises(StorageFullError):
            await s.create_bucket("acme", "another")
        with pytest.raises(StorageFullError):
            await s.start_upload("acme", 10)
        with pytest.raises(StorageFullError):
            await s.append_upload("acme", upload.upload_id, 0, b"0123456789")
        with pytest.raises(NotFoundError):
            await s.head_object("acme", "flat", "new")
        assert parts(tmp_path / "data") == []
        assert s.space_statistics().refusals >= 5
        assert (await s.head_object("acme", "flat", "kept")).size == 7
        assert [o.key for o in (await s.list_objects("acme", "flat")).objects] == ["kept"]
        await s.abort_upload("acme", upload.upload_id)
        await s.delete_object("acme", "flat", "kept")
        await s.delete_bucket("acme", "spare")
        assert [b.name for b in await s.list_buckets("acme")] == ["flat"]
        await s.stop()


async def test_a_declared_size_past_the_floor_is_refused_before_any_byte(tmp_path):
    """``content_length`` that would take free space below the floor is refused up front;
    the same put that fits is stored."""
    async with trio.open_nursery() as nursery:
        s = await start(nursery, tmp_path / "data", min_free_bytes=0, ballast_bytes=0)
        await s.stop()
    async with trio.open_nursery() as nursery:
        floor = free_bytes(tmp_path) - 64 * MiB
        s = await nursery.start(run_storage, StorageConfig(
            data_dir=tmp_path / "data", fsync=False, min_free_bytes=floor, ballast_bytes=0,
            space_check_interval=0.0))
        with pytest.raises(StorageFullError):
            await s.put_object("acme", "flat", "big", never(), content_length=128 * MiB)
        put = await s.put_object("acme", "flat", "small", one(b"y" * 1000), content_length=1000)
        assert put.size == 1000
        await s.stop()


async def test_the_ballast_is_made_at_start_with_real_blocks_and_is_not_user_data(tmp_path):
    """Start-up creates ``data_dir/ballast`` fully allocated, keeps a good one across
    restarts, replaces one of the wrong size and drops a leftover ``ballast.tmp``; it counts
    for no tenant."""
    data = tmp_path / "data"
    async with trio.open_nursery() as nursery:
        s = await start(nursery, data)
        st = (data / "ballast").stat()
        assert st.st_size == BALLAST and st.st_blocks * 512 >= BALLAST
        assert s.space_statistics().ballast_present
        assert (await s.get_tenant("acme")).used_bytes == 0
        inode = st.st_ino
        await s.stop()
    async with trio.open_nursery() as nursery:
        s = await nursery.start(run_storage, StorageConfig(
            data_dir=data, ballast_bytes=BALLAST, min_free_bytes=FLOOR))
        assert (data / "ballast").stat().st_ino == inode  # kept, not rewritten
        await s.stop()
    (data / "ballast.tmp").write_bytes(b"left by a crash")
    async with trio.open_nursery() as nursery:
        s = await nursery.start(run_storage, StorageConfig(
            data_dir=data, ballast_bytes=2 * MiB, min_free_bytes=FLOOR))
        assert (data / "ballast").stat().st_size == 2 * MiB
        assert not (data / "ballast.tmp").exists()
        await s.stop()
    async with trio.open_nursery() as nursery:
        s = await nursery.start(run_storage, StorageConfig(
            data_dir=data, ballast_bytes=0, min_free_bytes=FLOOR))
        assert not (data / "ballast").exists()
        await s.stop()


async def test_an_enospc_releases_the_ballast_and_a_floor_refusal_does_not(tmp_path):
    """A blob write failing with ENOSPC (injected) releases the ballast at once; the next
    measurement with room recreates it. A refusal by the floor leaves it in place."""
    injector = FaultInjector(fail_at="write", errno=errno.ENOSPC)
    async with trio.open_nursery() as nursery:
        config = StorageConfig(data_dir=tmp_path / "data", fsync=False, ballast_bytes=BALLAST,
                               min_free_bytes=FLOOR, space_check_interval=60.0)
        s = await nursery.start(functools.partial(run_storage, config, fault_injector=injector))
        await s.create_tenant("acme")
        await s.create_bucket("acme", "flat")
        with pytest.raises(StorageFullError, match="writing a blob"):
            await s.put_object("acme", "flat", "k", one(b"z" * 1000))
        stats = s.space_statistics()
        assert not stats.ballast_present and stats.ballast_releases == 1
        assert not (tmp_path / "data" / "ballast").exists()
        assert parts(tmp_path / "data") == []
        await s.reap_now()  # measures: plenty of room, so the ballast is back
        assert s.space_statistics().ballast_present
        assert (tmp_path / "data" / "ballast").stat().st_size == BALLAST
        await s.put_object("acme", "flat", "k", one(b"z" * 1000))
        await s.stop()
    async with trio.open_nursery() as nursery:
        s = await nursery.start(run_storage, StorageConfig(
            data_dir=tmp_path / "data", fsync=False, ballast_bytes=BALLAST,
            min_free_bytes=free_bytes(tmp_path) * 3 // 2))  # above free, below 2 x free
        with pytest.raises(StorageFullError, match="nearly full"):
            await s.put_object("acme", "flat", "k2", one(b"z"))
        assert s.space_statistics().ballast_present
        assert (tmp_path / "data" / "ballast").exists()
        await s.stop()


# ---------------------------------------------------------------- a really full disk (tmpfs)


async def test_on_a_full_disk_deletes_work_and_writes_come_back(tmpfs):
    """On a 64 MiB tmpfs filled through the API and then to the last byte by another file:
    the refused write leaves nothing; DeleteObject, DeleteBlob and DeleteBucket succeed (the
    ballast is released); writes stay refused until space is back, then the ballast is
    recreated and writes succeed."""
    data = tmpfs / "data"
    async with trio.open_nursery() as nursery:
        s = await start(nursery, data)
        assert s.space_statistics().ballast_present
        await s.create_bucket("acme", "spare")
        blob_bytes = os.urandom(2 * MiB)
        upload = await s.start_upload("acme", len(blob_bytes))
        await s.append_upload("acme", upload.upload_id, 0, blob_bytes)
        blob = await s.complete_upload("acme", upload.upload_id)

        stored, refused = await fill_through_api(s, "k")
        assert stored > 30
        assert "nearly full" in refused.message  # the floor, not ENOSPC
        with pytest.raises(NotFoundError):
            await s.head_object("acme", "flat", f"k{stored}")
        assert parts(data) == []
        assert free_bytes(tmpfs) >= FLOOR - 2 * MiB  # the floor held (a batch of slack)

        # Now something else eats every last block.
        fill(tmpfs / "filler")
        assert free_bytes(tmpfs) < 64 << 10
        with pytest.raises(StorageFullError):
            await s.put_object("acme", "flat", "more", one(b"m" * 10))

        await s.delete_object("acme", "flat", "k0")  # the ballast goes; the delete runs
        stats = s.space_statistics()
        assert not stats.ballast_present and stats.ballast_releases == 1
        assert not (data / "ballast").exists()
        await s.delete_blob("acme", blob.key)
        await s.delete_bucket("acme", "spare")
        for i in range(1, 4):
            await s.delete_object("acme", "flat", f"k{i}")
        await s.sync()
        assert [p for p in parts(data) if p.endswith(".dead")] == []
        with pytest.raises(NotFoundError):
            await s.stat_blob("acme", blob.key)
        assert [b.name for b in await s.list_buckets("acme")] == ["flat"]
        assert free_bytes(tmpfs) >= BALLAST + 5 * MiB
        # The released ballast's room stays reserved: writes are still refused.
        with pytest.raises(StorageFullError):
            await s.put_object("acme", "flat", "more", one(b"m" * 10))

        # Free enough (F + B) and the ballast is recreated; writes work again.
        for i in range(4, 12):
            await s.delete_object("acme", "flat", f"k{i}")
        await s.sync()
        await s.reap_now()
        stats = s.space_statistics()
        assert stats.ballast_present and stats.ballast_creations == 2
        st = (data / "ballast").stat()
        assert st.st_size == BALLAST and st.st_blocks * 512 >= BALLAST
        put = await s.put_object("acme", "flat", "more", one(b"m" * 10))
        assert put.size == 10
        _, reader = await s.get_object("acme", "flat", f"k{stored - 1}")
        async with reader:
            assert len(b"".join([c async for c in reader])) == MiB
        await s.stop()


async def test_storage_restarted_on_a_full_disk_starts_and_deletes(tmpfs):
    """Storage stopped, then the disk filled to the last byte (SQLite could not even create
    its -wal and -shm files): it starts again (releasing the ballast first) and serves reads
    and deletes; writes stay refused."""
    data = tmpfs / "data"
    async with trio.open_nursery() as nursery:
        s = await start(nursery, data)
        for i in range(8):
            await s.put_object("acme", "flat", f"k{i}", chunks(os.urandom(MiB)))
        await s.stop()
    fill(tmpfs / "filler")
    assert free_bytes(tmpfs) < 64 << 10
    async with trio.open_nursery() as nursery:
        s = await nursery.start(run_storage, StorageConfig(
            data_dir=data, ballast_bytes=BALLAST, min_free_bytes=FLOOR))
        assert not s.space_statistics().ballast_present
        assert (await s.head_object("acme", "flat", "k7")).size == MiB
        with pytest.raises(StorageFullError):
            await s.put_object("acme", "flat", "new", one(b"n"))
        for i in range(8):
            await s.delete_object("acme", "flat", f"k{i}")
        await s.sync()
        assert (await s.list_objects("acme", "flat")).objects == []
        await s.stop()


async def test_concurrent_writes_cannot_run_past_the_floor(tmpfs):
    """Eight 8 MiB puts racing on a 64 MiB disk: declared sizes are admitted first come,
    first served and bytes admitted between measurements are counted, so as many as fit
    above the floor are stored, the rest refused, and none runs into ENOSPC."""
    data = tmpfs / "data"
    async with trio.open_nursery() as nursery:
        s = await start(nursery, data, space_check_interval=30.0, ballast_bytes=0,
                        min_free_bytes=16 * MiB)
        await s.check_space()
        outcomes: list[str] = []

        async def put(i: int) -> None:
            try:
                await s.put_object("acme", "flat", f"c{i}", chunks(os.urandom(8 * MiB)),
                                   content_length=8 * MiB)
                outcomes.append("ok")
            except StorageFullError as exc:
                outcomes.append(exc.message)

        room = free_bytes(tmpfs) - 16 * MiB
        async with trio.open_nursery() as puts:
            for i in range(8):
                puts.start_soon(put, i)
        refusals = [o for o in outcomes if o != "ok"]
        assert all("nearly full" in r for r in refusals), refusals  # the floor, never ENOSPC
        assert outcomes.count("ok") == room // (8 * MiB)
        assert free_bytes(tmpfs) >= 16 * MiB
        assert parts(data) == []
        await s.stop()


async def test_grpc_put_is_resource_exhausted_when_full_and_delete_frees_it(tmpfs):
    """Through gRPC (grpcio): PutObject gets RESOURCE_EXHAUSTED when the disk is full,
    DeleteObject works on a disk filled to the last byte, then PutObject works again."""
    from anvil_trio._proto.anvil.v1 import bucket_pb2, object_pb2, object_pb2_grpc

    overrides = {"ballast_bytes": BALLAST, "min_free_bytes": FLOOR, "direct_io": True}
    async with open_test_server(tmpfs, config_overrides=overrides) as ts:
        await ts.buckets.CreateBucket(
            bucket_pb2.CreateBucketRequest(bucket_name="bkt"), metadata=ts.metadata
        )
        target = f"127.0.0.1:{ts.port}"
        md = tuple(ts.metadata)

        def put(stub, key: str, data: bytes) -> grpc.StatusCode:
            def requests():
                yield object_pb2.PutObjectRequest(
                    metadata=object_pb2.ObjectMetadata(bucket_name="bkt", object_key=key))
                for offset in range(0, len(data), 256 << 10):
                    yield object_pb2.PutObjectRequest(chunk=data[offset:offset + (256 << 10)])
            try:
                stub.PutObject(requests(), metadata=md, timeout=30)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        def delete(stub, key: str) -> grpc.StatusCode:
            try:
                stub.DeleteObject(object_pb2.DeleteObjectRequest(bucket_name="bkt",
                                                                  object_key=key),
                                  metadata=md, timeout=30)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        def fill_up() -> tuple[int, grpc.StatusCode]:
            with grpc.insecure_channel(target) as channel:
                stub = object_pb2_grpc.ObjectServiceStub(channel)
                for i in range(200):
                    code = put(stub, f"o{i}", os.urandom(MiB))
                    if code != grpc.StatusCode.OK:
                        return i, code
            raise AssertionError("the disk never filled")

        stored, code = await trio.to_thread.run_sync(fill_up)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and stored > 30
        fill(tmpfs / "filler")

        def free_some() -> list[grpc.StatusCode]:
            with grpc.insecure_channel(target) as channel:
                stub = object_pb2_grpc.ObjectServiceStub(channel)
                codes = [put(stub, "late", b"x" * 1000)]
                codes += [delete(stub, f"o{i}") for i in range(12)]
                return codes

        codes = await trio.to_thread.run_sync(free_some)
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] + [grpc.StatusCode.OK] * 12
        await ts.storage.sync()  # the deleted objects' bytes are unlinked
        await ts.storage.check_space()  # as the reaper's next pass would

        def put_again() -> grpc.StatusCode:
            with grpc.insecure_channel(target) as channel:
                return put(object_pb2_grpc.ObjectServiceStub(channel), "late", b"x" * 1000)

        assert await trio.to_thread.run_sync(put_again) == grpc.StatusCode.OK
        _, got, _ = await ts.get("bkt", "late")
        assert got == b"x" * 1000
        assert ts.storage.space_statistics().ballast_present
