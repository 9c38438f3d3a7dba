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


def _audit_rows(conn) -> dict:
    """The metadata an audit compares (plain SQL both backends run)."""
    rows = {d: (size, count, loc) for d, size, count, loc in
            conn.execute("SELECT digest, size, refcount, location FROM blobs").fetchall()}
    refs: dict[str, int] = {}
    for (digest,) in conn.execute(
        "SELECT digest FROM object_versions WHERE digest IS NOT NULL "
        "UNION ALL SELECT digest FROM tenant_blobs"
    ).fetchall():
        refs[digest] = refs.get(digest, 0) + 1
    usage = dict(conn.execute("SELECT name, used_bytes FROM tenants").fetchall())
    expected: dict[str, int] = {}
    for name, size in conn.execute(
        "SELECT t.name, v.size FROM object_versions v JOIN buckets b ON b.id = v.bucket_id "
        "JOIN tenants t ON t.id = b.tenant_id UNION ALL "
        "SELECT t.name, tb.size FROM tenant_blobs tb JOIN tenants t ON t.id = tb.tenant_id"
    ).fetchall():
        expected[name] = expected.get(name, 0) + size
    uploads = {u for (u,) in conn.execute("SELECT upload_id FROM uploads").fetchall()}
    return {"rows": rows, "refs": refs, "usage": usage, "expected": expected,
            "uploads": uploads}


async def audit(storage: Storage) -> list[str]:
    """Check a quiescent storage on either backend; returns the problems found (empty: all
    invariants hold): each digest's refcount equals the versions and tenant blobs naming it;
    tenant usage equals their data; the byte store holds exactly the rows' locations, each
    with the digest's content; no unfinished write is left; upload data exists exactly for
    the upload rows."""
    meta = await storage._read(_audit_rows)
    problems = []
    rows, refs = meta["rows"], meta["refs"]
    for digest in rows.keys() | refs.keys():
        count = rows.get(digest, (0, 0, ""))[1]
        if count != refs.get(digest, 0):
            problems.append(f"refcount of {digest[:12]} is {count}, {refs.get(digest, 0)} references")
    for name, used in meta["usage"].items():
        if used != meta["expected"].get(name, 0):
            problems.append(f"tenant {name} uses {used}, its data is {meta['expected'].get(name, 0)}")
    store = storage.blobs
    stored = set(await trio.to_thread.run_sync(lambda: list(store.iter_locations(0.0))))
    by_location = {loc: digest for digest, (_, _, loc) in rows.items()}
    for location in stored - by_location.keys():
        problems.append(f"stored bytes {location[:12]} have no reference")
    for location in by_location.keys() - stored:
        problems.append(f"{by_location[location][:12]} is referenced but its bytes are missing")
    for location in stored & by_location.keys():
        hasher = hashlib.sha256()
        size = 0
        async with await store.open_range(location) as reader:
            async for chunk in reader:
                hasher.update(chunk)
                size += len(chunk)
        digest = by_location[location]
        if hasher.hexdigest() != digest or size != rows[digest][0]:
            problems.append(f"the bytes of {digest[:12]} do not match it")
    if await writes_in_flight(storage):
        problems.append("unfinished writes are left")
    upload_ids = set(await trio.to_thread.run_sync(lambda: list(store.iter_upload_ids())))
    if upload_ids != meta["uploads"]:
        problems.append(f"upload data {sorted(upload_ids)} != upload rows {sorted(meta['uploads'])}")
    return problems
