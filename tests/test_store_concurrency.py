"""Concurrency through the Storage façade: 100 puts of mixed sizes and overlapping content
(plus uploads of the same content and reaper passes) at once, then exact bytes, reference
counts and quota usage."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from anvil_trio.storage import Storage, StorageConfig, run_storage
from _held import audit as audit_storage
from crash_child import audit

MiB = 1 << 20
SIZES = [0, 1, 100, 4096, 65_536, 300_000, MiB, MiB + 1, 2 * MiB + 12_345]
POOL = [random.Random(n).randbytes(size) for n, size in enumerate(SIZES)] + [b"a", b"a" * 5000]
CHUNK_SIZES = [65_536, MiB, 333_333, 7]


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        await trio.lowlevel.checkpoint()
        yield data[offset:offset + size]


async def read_version(s: Storage, bucket: str, key: str, version_id: str) -> bytes:
    _, reader = await s.get_object("acme", bucket, key, version_id=version_id)
    async with reader:
        return b"".join([c async for c in reader])


async def test_hundred_concurrent_puts(tmp_path: Path, nursery: trio.Nursery, backend) -> None:
    """100 concurrent puts (two buckets, colliding keys, shared content, chunkings from 7 B
    to 1 MiB), 12 uploads and 5 reaper passes leave every version readable with its bytes,
    refcounts equal to the referencing rows, exact quota usage and no stray files, on both
    backends."""
    config = StorageConfig(data_dir=tmp_path / "data", fsync=False, temp_max_age=0.0, **backend)
    s = await nursery.start(run_storage, config)
    await s.create_tenant("acme")
    await s.create_bucket("acme", "flat")
    await s.create_bucket("acme", "vers", versioning=True)
    puts: list[tuple[str, str, bytes, object]] = []
    completed = []

    async def put(i: int) -> None:
        bucket = "vers" if i % 2 else "flat"
        key = f"k{i % 17}"
        data = POOL[(i * 7) % len(POOL)]
        size = 7 if len(data) < 10_000 and i % 5 == 0 else CHUNK_SIZES[i % 3]
        result = await s.put_object("acme", bucket, key, chunks(data, size))
        puts.append((bucket, key, data, result))

    async def upload(i: int) -> None:
        data = POOL[i % len(POOL)]
        state = await s.start_upload("acme", len(data), {"n": str(i)})
        for offset in range(0, len(data), 700_000):
            await s.append_upload("acme", state.upload_id, offset, data[offset:offset + 700_000])
        completed.append((data, await s.complete_upload("acme", state.upload_id)))

    async def reaper() -> None:
        for _ in range(5):
            await s.reap_now()
            await trio.sleep(0)

    async with trio.open_nursery() as workers:
        for i in range(100):
            workers.start_soon(put, i)
        for i in range(12):
            workers.start_soon(upload, i)
        workers.start_soon(reaper)

    assert len(puts) == 100
    for bucket, key, data, result in puts:
        assert result.etag == hashlib.sha256(data).hexdigest() and result.size == len(data)
    versions = {v.version_id: v for v in (await s.list_object_versions("acme", "vers")).versions}
    flat = (await s.list_object_versions("acme", "flat")).versions
    vers_puts = [p for p in puts if p[0] == "vers"]
    assert len(versions) == len(vers_puts) == 50
    for bucket, key, data, result in vers_puts:
        assert versions[result.version_id].key == key
        assert await read_version(s, bucket, key, result.version_id) == data
    by_version = {p[3].version_id: p for p in puts if p[0] == "flat"}
    assert sorted(v.key for v in flat) == sorted({p[1] for p in puts if p[0] == "flat"})
    for v in flat:  # one version per key survives: one of the puts to it, with its bytes
        _, key, data, _ = by_version[v.version_id]
        assert v.key == key and await read_version(s, "flat", key, v.version_id) == data

    first = {}
    for data, done in completed:
        assert done.key == "sha256:" + hashlib.sha256(data).hexdigest()
        first.setdefault(done.key, []).append(done.deduplicated)
    assert all(sorted(flags) == [False] + [True] * (len(flags) - 1) for flags in first.values())
    blobs = await s.list_blobs("acme")
    assert sorted(b.key for b in blobs) == sorted(first)

    expected = sum(v.size for v in flat) + sum(v.size for v in versions.values())
    expected += sum(b.size for b in blobs)
    assert (await s.get_tenant("acme")).used_bytes == expected
    await s.reap_now()
    await s.sync()
    assert await audit_storage(s) == []
    if not backend:
        assert audit(config.data_dir) == []
    await s.stop()
