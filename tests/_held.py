"""What a byte store holds, asked the same way of both backends (files; S3), for tests that
check that nothing is left behind or that replaced bytes were reclaimed."""

from __future__ import annotations

import hashlib

import trio

from anvil_trio.storage import Storage


async def held_digests(storage: Storage) -> set[str]:
    """The SHA-256 of every content the byte store holds (S3: each object read and hashed;
    for the small objects of tests)."""
    store = storage.blobs
    locations = await trio.to_thread.run_sync(lambda: list(store.iter_locations(0.0)))
    if not store.shared:
        return set(locations)
    digests = set()
    for location in locations:
        hasher = hashlib.sha256()
        async with await store.open_range(location) as reader:
            async for chunk in reader:
                hasher.update(chunk)
        digests.add(hasher.hexdigest())
    return digests


async def writes_in_flight(storage: Storage) -> int:
    """Unfinished writes the byte store shows: part files, or S3 multipart uploads."""
    store = storage.blobs
    if not store.shared:
        tmp = storage.config.data_dir / "tmp"
        return len(list(tmp.glob("*.part"))) if tmp.exists() else 0

    def count() -> int:
        reply = store._client.list_multipart_uploads(Bucket=store.bucket,
                                                     Prefix=store._data_prefix)
        return len(reply.get("Uploads", []))

    return await trio.to_thread.run_sync(count)
