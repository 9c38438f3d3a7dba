"""Tests for the reaper: its start-up pass, on-demand and scheduled passes, what it spares
(referenced, pinned and in-flight bytes), and its supervision (restart after a crash)."""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from anvil_trio._schedule import DONE, Continue, Schedule
from anvil_trio.actors import ActorCrashedError
from anvil_trio.storage import (
    BlobStore,
    ReapReport,
    Storage,
    StorageConfig,
    StorageUnavailableError,
    run_storage,
)


@attrs.define
class FakeClock:
    """Wall-clock stand-in for upload expiry."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_config(tmp_path: Path, **kw) -> StorageConfig:
    kw.setdefault("ask_timeout", float("inf"))  # autojump_clock: no deadline on disk steps
    return StorageConfig(data_dir=tmp_path / "data", fsync=False, upload_ttl=3600.0, **kw)


async def start(nursery: trio.Nursery, config: StorageConfig, **kw) -> Storage:
    return await nursery.start(functools.partial(run_storage, config, **kw))


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await trio.lowlevel.checkpoint()
        yield part


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


def plant_part(data_dir: Path, name: str = "f" * 32, *, age: float = 0.0) -> Path:
    """A temp file as a write in flight would leave it, last modified ``age`` seconds ago."""
    path = data_dir / "tmp" / f"{name}.part"
    path.write_bytes(b"half a write")
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


async def setup_tenant(s: Storage) -> None:
    await s.create_tenant("acme")
    await s.create_bucket("acme", "bkt")


async def test_startup_pass_cleans_crash_leftovers_before_ready(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Everything a dead process left is gone by the time run_storage reports ready, and
    referenced bytes and live uploads are untouched."""
    clock = FakeClock()
    config = make_config(tmp_path)
    s1 = await start(nursery, config, clock=clock)
    await setup_tenant(s1)
    kept = await s1.put_object("acme", "bkt", "k", chunks(b"kept bytes"))
    live = await s1.start_upload("acme", 10)
    await s1.append_upload("acme", live.upload_id, 0, b"12345")
    expired = await s1.start_upload("acme", 4)
    await s1.append_upload("acme", expired.upload_id, 0, b"ab")
    await s1.stop()

    # What a SIGKILLed process leaves: a fresh part file, a published but uncommitted blob,
    # an upload file whose session row was never written.
    part = plant_part(config.data_dir)
    stray = await BlobStore(config.data_dir, fsync=False).write(chunks(b"uncommitted"))
    stray.release()
    orphan = config.data_dir / "uploads" / ("0" * 32)
    orphan.write_bytes(b"orphan")
    clock.now += 2000  # the live upload was touched at its append; refresh it below

    s2 = await start(nursery, config, clock=clock)
    assert not part.exists() and not orphan.exists()
    assert not s2.blobs.blob_path(stray.digest).exists()
    assert s2.blobs.blob_path(kept.etag).exists()
    assert (await s2.start_upload("acme", 10, upload_id=live.upload_id)).received == 5
    await s2.stop()

    clock.now += 3601 + 1  # the live upload expires too now (its resume pushed expiry out)
    s3 = await start(nursery, config, clock=clock)
    assert files(config.data_dir / "uploads") == []
    assert files(config.data_dir / "tmp") == []
    _, reader = await s3.get_object("acme", "bkt", "k")
    async with reader:
        assert b"".join([c async for c in reader]) == b"kept bytes"
    await s3.stop()


async def test_reap_now_reports_and_spares_live_bytes(tmp_path: Path, nursery: trio.Nursery) -> None:
    """One pass removes stale temp files, expired and orphan uploads and unreferenced blobs,
    and keeps fresh temp files, referenced blobs, pinned blobs and live uploads."""
    clock = FakeClock()
    config = make_config(tmp_path, temp_max_age=600.0)
    s = await start(nursery, config, clock=clock)
    await setup_tenant(s)
    referenced = await s.put_object("acme", "bkt", "k", chunks(b"referenced"))
    stale = plant_part(config.data_dir, "a" * 32, age=700.0)
    fresh = plant_part(config.data_dir, "b" * 32, age=10.0)
    loose = await s.blobs.write(chunks(b"loose"))
    loose.release()
    pinned = await s.blobs.write(chunks(b"pinned"))
    orphan = config.data_dir / "uploads" / ("1" * 32)
    orphan.write_bytes(b"x")
    old = await s.start_upload("acme", 3)
    clock.now += 3000
    young = await s.start_upload("acme", 3)
    clock.now += 601 + 100

    report = await s.reap_now()
    assert report == ReapReport(temp_files=1, expired_uploads=1, orphan_uploads=1,
                                blobs_reclaimed=1, blobs_kept=1, startup=False)
    assert report.removed == 4
    assert not stale.exists() and fresh.exists() and not orphan.exists()
    assert not s.blobs.blob_path(loose.digest).exists()
    assert s.blobs.blob_path(pinned.digest).exists()
    assert s.blobs.blob_path(referenced.etag).exists()
    assert files(config.data_dir / "uploads") == [young.upload_id]
    assert old.upload_id != young.upload_id
    pinned.release()
    assert (await s.reap_now()).blobs_reclaimed == 1
    assert await s.reap_now() == ReapReport()
    await s.stop()


async def test_pass_spares_a_put_in_flight(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A pass while a put is streaming (even with temp_max_age 0) leaves its temp file, and
    the put then completes normally."""
    config = make_config(tmp_path, temp_max_age=0.0)
    s = await start(nursery, config)
    await setup_tenant(s)
    send, receive = trio.open_memory_channel[bytes](0)
    result = []

    async def putter() -> None:
        async with receive:
            result.append(await s.put_object("acme", "bkt", "k", receive))

    async with trio.open_nursery() as inner:
        inner.start_soon(putter)
        await send.send(b"a" * (5 << 20))  # past one batch: the part file holds bytes
        await send.send(b"b")
        assert len(files(config.data_dir / "tmp")) == 1
        assert (await s.reap_now()).temp_files == 0
        assert len(files(config.data_dir / "tmp")) == 1
        await send.aclose()
    data = b"a" * (5 << 20) + b"b"
    assert result[0].etag == hashlib.sha256(data).hexdigest()
    assert files(config.data_dir / "tmp") == []
    assert (await s.reap_now()).blobs_reclaimed == 0
    await s.stop()


async def test_passes_follow_the_schedule(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The driver steps the reaper's Schedule with each pass's report, runs a pass when it
    says Continue(at) (never earlier), and stops after DONE."""
    steps: list[tuple[float, object]] = []
    done = trio.Event()

    def step(now: float, report: object, n: int):
        steps.append((now, report))
        if n == 3:
            done.set()
            return (n + 1, n, DONE)
        return (n + 1, n, Continue(now + 10.0))

    config = make_config(tmp_path, temp_max_age=0.0)
    s = await start(nursery, config, reaper_schedule=Schedule(0, step))
    part = plant_part(config.data_dir)  # no checkpoint since ready: the first pass sees it
    await done.wait()
    assert [report for _, report in steps] == [
        None, ReapReport(temp_files=1), ReapReport(), ReapReport()]
    assert all(b[0] >= a[0] + 10.0 for a, b in zip(steps, steps[1:]))
    assert not part.exists()
    for _ in range(3):  # a driver that went on would step again during these passes
        await trio.sleep(100)
        await s.reap_now()
    assert len(steps) == 4  # DONE: no more passes
    await s.stop()


async def test_default_schedule_uses_reaper_interval(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """With the default Schedule.spaced(reaper_interval), stale temp files and expired uploads
    disappear without anyone calling reap_now."""
    clock = FakeClock()
    config = make_config(tmp_path, reaper_interval=60.0, temp_max_age=0.0)
    s = await start(nursery, config, clock=clock)
    await setup_tenant(s)
    upload = await s.start_upload("acme", 5)
    clock.now += 3601
    part = plant_part(config.data_dir)
    for _ in range(1000):  # let real time pass (the pass runs in threads); mock time jumps
        if not part.exists() and files(config.data_dir / "uploads") == []:
            break
        await trio.to_thread.run_sync(time.sleep, 0.01)
    else:
        raise AssertionError("the scheduled reaper never ran")
    with pytest.raises(Exception, match="does not exist"):
        await s.start_upload("acme", 5, upload_id=upload.upload_id)
    await s.stop()


async def test_crashed_reaper_is_restarted_without_a_second_startup_pass(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A reaper crash is retryable for callers, the supervisor restarts it, and the new
    incarnation does not treat fresh temp files as crash leftovers."""
    config = make_config(tmp_path, temp_max_age=3600.0)
    s = await start(nursery, config)
    fresh = plant_part(config.data_dir)
    with pytest.raises(ActorCrashedError):
        await s._supervisor.ref("reaper").ask(object(), timeout=None)
    with pytest.raises(StorageUnavailableError):
        await s.reap_now()  # down, waiting out the restart backoff
    for _ in range(100):
        try:
            report = await s.reap_now()
            break
        except StorageUnavailableError:
            await trio.sleep(0.05)
    else:
        raise AssertionError("the reaper never came back")
    assert report.temp_files == 0 and fresh.exists()
    assert s.statistics().child("reaper").restarts == 1
    await s.stop()
    with pytest.raises(StorageUnavailableError):
        await s.reap_now()


# ------------------------------------------------------------- a shared store (PostgreSQL + S3)


def shared_config(tmp_path: Path, pg_url: str, s3_url: str, endpoint: str, **kw) -> StorageConfig:
    return make_config(tmp_path, metadata_url=pg_url, blob_url=s3_url, s3_endpoint=endpoint,
                       s3_region="us-east-1", **kw)


def _s3_leftovers(seaweed_server, s3_url: str) -> tuple[str, str]:
    """An abandoned multipart upload and an unreferenced object, as a node killed mid-write
    (or between its upload and its commit) leaves them; returns their data keys."""
    bucket, _, prefix = s3_url.removeprefix("s3://").partition("/")
    client = seaweed_server.client()
    multipart_key = f"{prefix}/data/{'a' * 32}"
    client.create_multipart_upload(Bucket=bucket, Key=multipart_key)
    orphan_key = f"{prefix}/data/{'b' * 32}"
    client.put_object(Bucket=bucket, Key=orphan_key, Body=b"never committed")
    return multipart_key, orphan_key


def _s3_state(seaweed_server, s3_url: str) -> tuple[set[str], set[str]]:
    bucket, _, prefix = s3_url.removeprefix("s3://").partition("/")
    client = seaweed_server.client()
    objects = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/data/").get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/data/")
    return {o["Key"] for o in objects}, {u["Key"] for u in uploads.get("Uploads", [])}


async def test_shared_store_spares_young_leftovers_even_at_start_up(
    tmp_path: Path, nursery: trio.Nursery, pg_url: str, s3_url: str, seaweed_server
) -> None:
    """With a shared S3 store the start-up pass removes only what is older than temp_max_age
    (another node may be writing the rest); an older pass removes the abandoned multipart
    upload and the unreferenced object, and never a referenced one."""
    multipart_key, orphan_key = _s3_leftovers(seaweed_server, s3_url)
    s = await start(nursery, shared_config(tmp_path, pg_url, s3_url, seaweed_server.endpoint,
                                           temp_max_age=3600.0))
    await setup_tenant(s)
    await s.put_object("acme", "bkt", "k", chunks(b"kept bytes"))
    objects, uploads = _s3_state(seaweed_server, s3_url)
    assert orphan_key in objects and multipart_key in uploads  # young: spared at start-up
    from anvil_trio.storage._reaper import reap_once

    report = await reap_once(s, temp_older_than=0.0)
    assert (report.temp_files, report.blobs_reclaimed) == (1, 1)
    objects, uploads = _s3_state(seaweed_server, s3_url)
    assert uploads == set() and orphan_key not in objects and len(objects) == 1
    reader = (await s.get_object("acme", "bkt", "k"))[1]
    async with reader:
        assert b"".join([c async for c in reader]) == b"kept bytes"
    await s.stop()


async def test_one_reaper_at_a_time_across_nodes(
    tmp_path: Path, nursery: trio.Nursery, pg_url: str, s3_url: str, seaweed_server
) -> None:
    """While one node holds the metadata store's reaper lease, another node's pass is skipped;
    once released, it runs."""
    config = shared_config(tmp_path, pg_url, s3_url, seaweed_server.endpoint)
    a = await start(nursery, config)
    b = await start(nursery, attrs.evolve(config, data_dir=tmp_path / "b"))
    lease = a.backend.reaper_lease()
    assert await trio.to_thread.run_sync(lease.acquire)
    try:
        assert (await b.reap_now()).skipped
    finally:
        await trio.to_thread.run_sync(lease.release)
    assert not (await b.reap_now()).skipped
    await a.stop()
    await b.stop()
