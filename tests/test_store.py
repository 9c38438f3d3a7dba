"""Tests for the Storage façade: every API.md object/bucket/blob/upload rule, with the metadata
actor under its supervisor, on both backends: a real SQLite file and the real BlobStore under
tmp_path; a real PostgreSQL database and a real S3 (SeaweedFS) prefix (see conftest.py)."""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from anvil_trio.storage import (
    AlreadyExistsError,
    ChecksumMismatchError,
    FailedPreconditionError,
    FaultInjector,
    InvalidArgumentError,
    NotFoundError,
    ObjectTooLargeError,
    OutOfRangeError,
    QuotaExceededError,
    Storage,
    StorageConfig,
    StorageError,
    StorageUnavailableError,
    run_storage,
)
from anvil_trio.actors import SupervisorEscalationError
from _held import held_digests, writes_in_flight

pytestmark = pytest.mark.usefixtures("backend")

MiB = 1 << 20


@attrs.define
class FakeClock:
    """Wall-clock stand-in for timestamps and upload expiry."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_config(tmp_path: Path, backend: dict | None = None, **kw) -> StorageConfig:
    return StorageConfig(data_dir=tmp_path / "data", fsync=False, **(backend or {}), **kw)


@pytest.fixture
async def storage(
    tmp_path: Path, nursery: trio.Nursery, clock: FakeClock, backend: dict
) -> AsyncIterator[Storage]:
    s = await nursery.start(lambda task_status: run_storage(
        make_config(tmp_path, backend, max_object_size=8 * MiB, upload_ttl=3600.0),
        clock=clock, task_status=task_status))
    await s.create_tenant("acme")
    await s.create_bucket("acme", "vers", versioning=True)
    await s.create_bucket("acme", "flat", versioning=False)
    yield s
    await s.stop()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await trio.lowlevel.checkpoint()
        yield part


async def body(reader) -> bytes:
    async with reader:
        return b"".join([chunk async for chunk in reader])


async def put(s: Storage, bucket: str, key: str, data: bytes, **kw):
    return await s.put_object("acme", bucket, key, chunks(data), **kw)


async def held(s: Storage, digest: str) -> bool:
    """Whether the byte store still holds content with this digest."""
    return digest in await held_digests(s)


# ------------------------------------------------------------------------------- buckets


async def test_bucket_lifecycle(storage: Storage) -> None:
    """Buckets are created once, listed by name, validated, and deleted only when empty."""
    assert [b.name for b in await storage.list_buckets("acme")] == ["flat", "vers"]
    with pytest.raises(AlreadyExistsError):
        await storage.create_bucket("acme", "flat")
    with pytest.raises(InvalidArgumentError):
        await storage.create_bucket("acme", "Bad_Name")
    await put(storage, "flat", "k", b"x")
    with pytest.raises(FailedPreconditionError):
        await storage.delete_bucket("acme", "flat")
    await storage.delete_object("acme", "flat", "k")
    await storage.delete_bucket("acme", "flat")
    with pytest.raises(NotFoundError):
        await storage.delete_bucket("acme", "flat")
    assert [b.name for b in await storage.list_buckets("acme")] == ["vers"]


async def test_delete_marker_keeps_bucket_non_empty(storage: Storage) -> None:
    """A remaining delete marker counts as holding objects until it is removed by id."""
    v = await put(storage, "vers", "k", b"x")
    marker = await storage.delete_object("acme", "vers", "k")
    await storage.delete_object("acme", "vers", "k", version_id=v.version_id)
    with pytest.raises(FailedPreconditionError):
        await storage.delete_bucket("acme", "vers")
    await storage.delete_object("acme", "vers", "k", version_id=marker.version_id)
    await storage.delete_bucket("acme", "vers")


async def test_tenants_are_isolated(storage: Storage) -> None:
    """Another tenant may use the same bucket name and sees none of this tenant's data."""
    await storage.create_tenant("other")
    await storage.create_bucket("other", "vers")
    await put(storage, "vers", "k", b"secret")
    with pytest.raises(NotFoundError):
        await storage.head_object("other", "vers", "k")
    with pytest.raises(NotFoundError):
        await storage.get_object("other", "flat", "k")
    assert [b.name for b in await storage.list_buckets("other")] == ["vers"]


# ------------------------------------------------------------------------------- objects


async def test_put_and_get_round_trip(storage: Storage) -> None:
    """A put returns the SHA-256 etag, size and a fresh version id; get returns the bytes."""
    data = b"hello " * 1000
    r1 = await storage.put_object("acme", "vers", "dir/é.txt", chunks(data[:7], data[7:]),
                                  content_type="text/plain", user_metadata={"a": "1"})
    r2 = await put(storage, "flat", "dir/é.txt", data)
    assert r1.etag == hashlib.sha256(data).hexdigest() == r2.etag
    assert r1.size == len(data)
    assert r1.version_id and r2.version_id and r1.version_id != r2.version_id
    info, reader = await storage.get_object("acme", "vers", "dir/é.txt")
    assert await body(reader) == data
    assert (info.content_type, info.user_metadata, info.version_id) == (
        "text/plain", {"a": "1"}, r1.version_id)
    assert (await storage.head_object("acme", "flat", "dir/é.txt")).content_type == (
        "application/octet-stream")


async def test_large_object_streams_in_bounded_chunks(storage: Storage) -> None:
    """A 2.5 MiB object comes back in chunks of at most 1 MiB."""
    data = bytes(range(256)) * (10 * 1024)  # 2.5 MiB
    await storage.put_object("acme", "flat", "big", chunks(*[data[i:i + 300_000]
                                                             for i in range(0, len(data), 300_000)]))
    _, reader = await storage.get_object("acme", "flat", "big")
    got = [chunk async for chunk in reader]
    assert b"".join(got) == data and max(map(len, got)) <= MiB and len(got) == 3


async def test_ranges(storage: Storage) -> None:
    """Ranges are end-exclusive and clamped; bad or past-the-end starts fail; size is whole."""
    await put(storage, "flat", "k", b"0123456789")
    info, reader = await storage.get_object("acme", "flat", "k", start=2, end=5)
    assert await body(reader) == b"234" and info.size == 10
    _, reader = await storage.get_object("acme", "flat", "k", start=7, end=100)
    assert await body(reader) == b"789"
    _, reader = await storage.get_object("acme", "flat", "k", start=4, end=4)
    assert await body(reader) == b""
    with pytest.raises(InvalidArgumentError):
        await storage.get_object("acme", "flat", "k", start=5, end=4)
    with pytest.raises(InvalidArgumentError):  # INVALID_ARGUMENT wins over NOT_FOUND
        await storage.get_object("acme", "flat", "missing", start=5, end=4)
    with pytest.raises(OutOfRangeError):
        await storage.get_object("acme", "flat", "k", start=10)
    await put(storage, "flat", "empty", b"")
    info, reader = await storage.get_object("acme", "flat", "empty")
    assert await body(reader) == b"" and info.size == 0
    assert info.etag == hashlib.sha256(b"").hexdigest()


async def test_failed_puts_leave_nothing(storage: Storage) -> None:
    """Checksum or length mismatches and broken streams leave no object and no blob file."""
    data = b"payload"
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(ChecksumMismatchError):
        await put(storage, "flat", "k", data, expected_sha256="0" * 64)
    with pytest.raises(InvalidArgumentError):
        await put(storage, "flat", "k", data, content_length=3)
    with pytest.raises(InvalidArgumentError):
        await put(storage, "flat", "k", data, expected_sha256="xyz")

    async def broken() -> AsyncIterator[bytes]:
        yield data
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        await storage.put_object("acme", "flat", "k", broken())
    with pytest.raises(NotFoundError):
        await storage.head_object("acme", "flat", "k")
    assert not await held(storage, digest)
    assert await writes_in_flight(storage) == 0
    r = await put(storage, "flat", "k", data, expected_sha256=digest.upper(),
                  content_length=len(data))
    assert r.etag == digest


async def test_if_none_match(storage: Storage) -> None:
    """if_none_match refuses an existing key but allows one hidden by a delete marker."""
    await put(storage, "vers", "k", b"1", if_none_match=True)
    with pytest.raises(AlreadyExistsError):
        await put(storage, "vers", "k", b"2", if_none_match=True)
    await storage.delete_object("acme", "vers", "k")
    await put(storage, "vers", "k", b"3", if_none_match=True)


async def test_versioning_on(storage: Storage) -> None:
    """Versions accumulate; a delete adds a marker; versions stay readable by id."""
    v1 = await put(storage, "vers", "k", b"one")
    v2 = await put(storage, "vers", "k", b"two")
    _, reader = await storage.get_object("acme", "vers", "k")
    assert await body(reader) == b"two"
    _, reader = await storage.get_object("acme", "vers", "k", version_id=v1.version_id)
    assert await body(reader) == b"one"
    marker = await storage.delete_object("acme", "vers", "k")
    assert marker.delete_marker and marker.version_id not in (v1.version_id, v2.version_id)
    with pytest.raises(NotFoundError):
        await storage.head_object("acme", "vers", "k")
    with pytest.raises(NotFoundError):
        await storage.get_object("acme", "vers", "k", version_id=marker.version_id)
    with pytest.raises(NotFoundError):
        await storage.head_object("acme", "vers", "k", version_id="nope")
    with pytest.raises(NotFoundError):
        await storage.delete_object("acme", "vers", "k", version_id="nope")
    listing = await storage.list_object_versions("acme", "vers")
    assert [(v.version_id, v.is_latest, v.delete_marker) for v in listing.versions] == [
        (marker.version_id, True, True), (v2.version_id, False, False),
        (v1.version_id, False, False)]
    removed = await storage.delete_object("acme", "vers", "k", version_id=v2.version_id)
    assert removed == (v2.version_id, False)
    assert (await storage.list_objects("acme", "vers")).objects == []


async def test_delete_missing_key_is_idempotent(storage: Storage) -> None:
    """Deleting a key that never existed succeeds in both modes and adds nothing."""
    assert await storage.delete_object("acme", "vers", "ghost") == ("", False)
    assert await storage.delete_object("acme", "flat", "ghost") == ("", False)
    assert (await storage.list_object_versions("acme", "vers")).versions == []
    with pytest.raises(NotFoundError):
        await storage.delete_object("acme", "nobucket", "ghost")


async def test_versioning_off_replaces_and_reclaims(storage: Storage) -> None:
    """Without versioning a put replaces the object and its now-unreferenced file is deleted."""
    old = await put(storage, "flat", "k", b"old bytes")
    await put(storage, "flat", "shared", b"shared bytes")
    assert await held(storage, old.etag)
    new = await put(storage, "flat", "k", b"new bytes")
    await storage.sync()
    assert not await held(storage, old.etag)
    versions = (await storage.list_object_versions("acme", "flat")).versions
    assert [(v.key, v.etag) for v in versions] == [("k", new.etag), ("shared", versions[1].etag)]
    await put(storage, "flat", "k", b"shared bytes")
    await storage.sync()
    assert await held(storage, versions[1].etag)
    assert not await held(storage, new.etag)
    gone = await storage.delete_object("acme", "flat", "shared")
    await storage.sync()
    assert not gone.delete_marker
    assert await held(storage, versions[1].etag)  # still used by "k"
    assert (await storage.get_tenant("acme")).used_bytes == len(b"shared bytes")


@attrs.define
class HoldStep(FaultInjector):
    """Parks the blob store's worker thread at step ``hold`` until ``release`` is set."""

    hold: str = attrs.field(default="unlink", kw_only=True)
    release: threading.Event = attrs.field(factory=threading.Event, kw_only=True)

    def before_step(self, step: str) -> None:
        if step == self.hold:
            self.release.wait(30)
        super().before_step(step)


async def storage_holding(
    hold: str, tmp_path: Path, nursery: trio.Nursery, clock: FakeClock
) -> tuple[Storage, threading.Event]:
    """A storage whose blob store stops at ``hold`` until the returned event is set, with
    tenant "acme" and unversioned bucket "flat"."""
    injector = HoldStep(hold=hold)
    s = await nursery.start(functools.partial(
        run_storage, make_config(tmp_path), clock=clock, fault_injector=injector))
    await s.create_tenant("acme")
    await s.create_bucket("acme", "flat")
    return s, injector.release


@pytest.mark.embedded_only  # holds the files' unlink step
async def test_replacing_put_answers_before_the_old_bytes_are_deleted(
    tmp_path: Path, nursery: trio.Nursery, clock: FakeClock
) -> None:
    """The unlink of a replaced object's file is not on the put's path: the put answers while
    that unlink is held up, and sync() returns only once the file is gone."""
    s, release = await storage_holding("unlink", tmp_path, nursery, clock)
    old = await put(s, "flat", "k", b"old bytes")
    new = await put(s, "flat", "k", b"new bytes")
    assert new.etag != old.etag
    assert await held(s, old.etag)  # the put answered; its unlink is still held
    release.set()
    await s.sync()
    assert not await held(s, old.etag)
    assert await body((await s.get_object("acme", "flat", "k"))[1]) == b"new bytes"
    await s.stop()


@pytest.mark.embedded_only  # holds the files' unlink step
async def test_a_held_unlink_does_not_hold_up_later_commits(
    tmp_path: Path, nursery: trio.Nursery, clock: FakeClock
) -> None:
    """A replaced object's file leaves blobs/ right after the put that replaced it, but is
    unlinked by the metadata actor's worker: while that unlink is stuck, further puts and
    deletes commit; sync() returns once it is done, and nothing is left in tmp/."""
    s, release = await storage_holding("purge", tmp_path, nursery, clock)
    first = await put(s, "flat", "k", b"first")
    await put(s, "flat", "k", b"second")
    for index in range(3):
        await put(s, "flat", f"other-{index}", b"more")
    tmp = tmp_path / "data" / "tmp"
    try:
        await s.delete_object("acme", "flat", "other-0")
        assert not await held(s, first.etag)  # moved aside before the next commit
        dead = [p for p in tmp.iterdir() if p.suffix == ".dead"]
        assert len(dead) == 1  # the first unlink is stuck; nothing else was unreferenced
    finally:
        release.set()
    await s.sync()
    assert [p for p in tmp.iterdir() if p.is_file()] == []
    assert await body((await s.get_object("acme", "flat", "k"))[1]) == b"second"
    await s.stop()


async def test_concurrent_writes_are_committed_together(storage: Storage) -> None:
    """Writes that wait for the metadata actor at the same moment are committed as one batch
    (group commit), and each still gets its own answer."""
    before = storage.statistics().child("metadata")
    names = [f"group-{index}" for index in range(12)]
    created: dict[str, str] = {}

    async def create(name: str) -> None:
        try:
            created[name] = (await storage.create_bucket("acme", name)).name
        except AlreadyExistsError:
            created[name] = "exists"

    async with trio.open_nursery() as nursery:
        for name in names + ["flat"]:  # "flat" exists: that one fails on its own
            nursery.start_soon(create, name)
    after = storage.statistics().child("metadata")
    assert created == {**{name: name for name in names}, "flat": "exists"}
    assert after.messages_processed - before.messages_processed == 13
    assert after.batches_processed - before.batches_processed < 13
    assert {b.name for b in await storage.list_buckets("acme")} >= set(names)


async def test_list_objects_pages_and_delimiters(storage: Storage) -> None:
    """Keys list in UTF-8 byte order; common prefixes count toward max_keys across pages."""
    keys = ["b", "a/1", "a/2", "a/b/c", "Z", "é", "a", "c/x", "ab"]
    for key in keys:
        await put(storage, "flat", key, b"v")
    await storage.delete_object("acme", "flat", "ab")
    everything = await storage.list_objects("acme", "flat")
    assert [o.key for o in everything.objects] == sorted(set(keys) - {"ab"},
                                                         key=lambda k: k.encode())
    assert everything.next_page_token == ""
    seen, token = [], ""
    while True:
        page = await storage.list_objects("acme", "flat", delimiter="/", max_keys=2,
                                          page_token=token)
        assert 0 < len(page.objects) + len(page.common_prefixes) <= 2
        seen += sorted([o.key for o in page.objects] + page.common_prefixes,
                       key=lambda k: k.encode())
        token = page.next_page_token
        if not token:
            break
    assert seen == ["Z", "a", "a/", "b", "c/", "é"]
    sub = await storage.list_objects("acme", "flat", prefix="a/", delimiter="/")
    assert ([o.key for o in sub.objects], sub.common_prefixes) == (["a/1", "a/2"], ["a/b/"])


async def test_page_tokens_are_checked(storage: Storage) -> None:
    """Forged tokens and tokens from another listing are INVALID_ARGUMENT."""
    for key in ["a", "b", "c"]:
        await put(storage, "vers", key, b"v")
        await put(storage, "flat", key, b"v")
    token = (await storage.list_objects("acme", "vers", max_keys=1)).next_page_token
    assert token
    for bad in ["nonsense", token + "x", token.replace("v1.", "v0.")]:
        with pytest.raises(InvalidArgumentError):
            await storage.list_objects("acme", "vers", page_token=bad)
    with pytest.raises(InvalidArgumentError):
        await storage.list_objects("acme", "flat", page_token=token)
    with pytest.raises(InvalidArgumentError):
        await storage.list_objects("acme", "vers", prefix="a", page_token=token)
    with pytest.raises(InvalidArgumentError):
        await storage.list_object_versions("acme", "vers", page_token=token)
    with pytest.raises(InvalidArgumentError):
        await storage.list_objects("acme", "vers", max_keys=-1)
    rest = await storage.list_objects("acme", "vers", page_token=token)
    assert [o.key for o in rest.objects] == ["b", "c"]


async def test_list_versions_pages(storage: Storage) -> None:
    """Version listing pages through keys ascending and newest first within a key."""
    expected = []
    for key in ["b", "a"]:
        for n in range(3):
            expected.append((key, (await put(storage, "vers", key, bytes([n]))).version_id))
    want = [("a", v) for k, v in reversed(expected) if k == "a"] + [
        ("b", v) for k, v in reversed(expected) if k == "b"]
    seen, token = [], ""
    while True:
        page = await storage.list_object_versions("acme", "vers", max_keys=4, page_token=token)
        seen += [(v.key, v.version_id) for v in page.versions]
        token = page.next_page_token
        if not token:
            break
    assert seen == want


async def test_quota(storage: Storage) -> None:
    """Puts beyond the tenant quota fail before anything is visible; replacements are net."""
    await storage.set_tenant_quota("acme", 10)
    await put(storage, "flat", "a", b"12345678")
    with pytest.raises(QuotaExceededError):
        await put(storage, "vers", "b", b"123")
    with pytest.raises(QuotaExceededError):
        await put(storage, "vers", "b", b"123", content_length=3)
    await put(storage, "flat", "a", b"1234567890")  # replacing frees the old 8 bytes
    assert (await storage.get_tenant("acme")).used_bytes == 10
    with pytest.raises(NotFoundError):
        await storage.head_object("acme", "vers", "b")
    with pytest.raises(QuotaExceededError):
        await storage.start_upload("acme", 1)


async def test_object_size_limit(storage: Storage) -> None:
    """Objects and uploads over max_object_size fail with ObjectTooLargeError."""
    too_big = b"x" * (8 * MiB + 1)
    with pytest.raises(ObjectTooLargeError):
        await put(storage, "flat", "big", too_big)
    with pytest.raises(ObjectTooLargeError):
        await put(storage, "flat", "big", b"", content_length=8 * MiB + 1)
    with pytest.raises(ObjectTooLargeError):
        await storage.start_upload("acme", 8 * MiB + 1)
    with pytest.raises(NotFoundError):
        await storage.head_object("acme", "flat", "big")


# ------------------------------------------------------------------------ blobs/uploads


async def upload(s: Storage, data: bytes, tenant: str = "acme", **attributes: str):
    state = await s.start_upload(tenant, len(data), attributes)
    if data:
        await s.append_upload(tenant, state.upload_id, 0, data)
    return await s.complete_upload(tenant, state.upload_id, hashlib.sha256(data).digest())


async def test_upload_and_blob_round_trip(storage: Storage) -> None:
    """An upload becomes a blob readable by key and range, with attributes and content type."""
    data = b"blob contents"
    state = await storage.start_upload("acme", len(data), {"content-type": "text/x", "k": "v"})
    assert state.received == 0 and len(state.upload_id) == 32
    assert await storage.append_upload("acme", state.upload_id, 0, data[:4]) == 4
    assert await storage.append_upload("acme", state.upload_id, 4, data[4:]) == len(data)
    done = await storage.complete_upload("acme", state.upload_id)
    assert done == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data), False)
    info = await storage.stat_blob("acme", done.key.encode())
    assert (info.content_type, info.attributes, info.size) == (
        "text/x", {"content-type": "text/x", "k": "v"}, len(data))
    info, reader = await storage.get_blob("acme", done.key, start=5, end=8)
    assert reader.start == 5 and await body(reader) == data[5:8]
    with pytest.raises(OutOfRangeError):
        await storage.get_blob("acme", done.key, start=len(data))
    with pytest.raises(InvalidArgumentError):
        await storage.stat_blob("acme", b"sha256:XYZ")


async def test_upload_deduplication_and_delete(storage: Storage) -> None:
    """The same content twice is one blob (deduplicated); other tenants count separately."""
    await storage.create_tenant("other")
    first = await upload(storage, b"same")
    again = await upload(storage, b"same")
    theirs = await upload(storage, b"same", tenant="other")
    assert (first.deduplicated, again.deduplicated, theirs.deduplicated) == (False, True, False)
    assert (await storage.get_tenant("acme")).used_bytes == 4
    obj = await put(storage, "flat", "k", b"same")  # objects share the same bytes
    digest = first.key.removeprefix("sha256:")
    assert obj.etag == digest
    await storage.delete_blob("acme", first.key)
    with pytest.raises(NotFoundError):
        await storage.stat_blob("acme", first.key)
    with pytest.raises(NotFoundError):
        await storage.delete_blob("acme", first.key)
    await storage.delete_blob("other", first.key)
    assert await held(storage, digest)  # the object still references it
    await storage.delete_object("acme", "flat", "k")
    await storage.sync()
    assert not await held(storage, digest)


async def test_list_blobs(storage: Storage) -> None:
    """Blobs list by key with limit and start_after; content type defaults to octet-stream."""
    keys = sorted([(await upload(storage, bytes([n]) * 3)).key for n in range(5)])
    listed = await storage.list_blobs("acme", limit=2)
    assert [b.key for b in listed] == keys[:2]
    assert listed[0].content_type == "application/octet-stream"
    rest = await storage.list_blobs("acme", start_after=listed[-1].key.encode())
    assert [b.key for b in rest] == keys[2:]
    with pytest.raises(InvalidArgumentError):
        await storage.list_blobs("acme", start_after=b"garbage")


async def test_upload_rules(storage: Storage) -> None:
    """Resume needs the same total_size; offsets must match; completion needs every byte."""
    state = await storage.start_upload("acme", 6, {})
    await storage.append_upload("acme", state.upload_id, 0, b"abc")
    assert await storage.start_upload("acme", 6, {}, state.upload_id) == (state.upload_id, 3)
    with pytest.raises(InvalidArgumentError):
        await storage.start_upload("acme", 7, {}, state.upload_id)
    with pytest.raises(InvalidArgumentError):
        await storage.append_upload("acme", state.upload_id, 1, b"x")
    with pytest.raises(InvalidArgumentError):
        await storage.append_upload("acme", state.upload_id, 3, b"defg")
    with pytest.raises(InvalidArgumentError):
        await storage.complete_upload("acme", state.upload_id)
    with pytest.raises(NotFoundError):
        await storage.start_upload("acme", 6, {}, "f" * 32)
    with pytest.raises(InvalidArgumentError):
        await storage.start_upload("acme", 6, {}, "../etc")
    await storage.create_tenant("other")
    with pytest.raises(NotFoundError):
        await storage.append_upload("other", state.upload_id, 3, b"def")
    await storage.append_upload("acme", state.upload_id, 3, b"def")
    done = await storage.complete_upload("acme", state.upload_id)
    assert done.size == 6
    with pytest.raises(NotFoundError):
        await storage.complete_upload("acme", state.upload_id)


async def test_upload_hash_mismatch_discards(storage: Storage) -> None:
    """A wrong expected hash is a checksum error and the upload is gone afterwards."""
    state = await storage.start_upload("acme", 3, {})
    await storage.append_upload("acme", state.upload_id, 0, b"abc")
    with pytest.raises(ChecksumMismatchError):
        await storage.complete_upload("acme", state.upload_id, b"\x00" * 32)
    with pytest.raises(NotFoundError):
        await storage.start_upload("acme", 3, {}, state.upload_id)
    assert await storage.orphan_upload_ids() == []
    assert (await storage.list_blobs("acme")) == []


async def test_empty_upload(storage: Storage) -> None:
    """total_size 0 completes at once into the empty blob."""
    done = await upload(storage, b"")
    assert done.size == 0 and done.key == "sha256:" + hashlib.sha256(b"").hexdigest()


async def test_upload_expiry(storage: Storage, clock: FakeClock) -> None:
    """Uploads expire a TTL after their last activity; activity extends them; the reaper
    hook removes expired sessions and files."""
    state = await storage.start_upload("acme", 4, {})
    clock.now += 3000
    await storage.append_upload("acme", state.upload_id, 0, b"ab")  # extends to now + 3600
    clock.now += 3000
    assert (await storage.start_upload("acme", 4, {}, state.upload_id)).received == 2
    clock.now += 3601
    with pytest.raises(NotFoundError):
        await storage.append_upload("acme", state.upload_id, 2, b"cd")
    assert await storage.expire_uploads() == [state.upload_id]
    assert list(await trio.to_thread.run_sync(lambda: list(storage.blobs.iter_upload_ids()))) == []


# ---------------------------------------------------------------- admin, reaper, lifecycle


async def test_admin_methods(storage: Storage) -> None:
    """Apps, secrets and grants round-trip through get_app."""
    await storage.create_app("acme", "app", "cid", "hash1")
    await storage.grant_scopes("cid", ["read:*", "list:bucket:x"])
    await storage.revoke_scopes("cid", ["list:bucket:x"])
    await storage.set_app_secret("cid", "hash2")
    app = await storage.get_app("cid")
    assert (app.tenant, app.secret_hash, app.scopes) == ("acme", "hash2", frozenset({"read:*"}))
    with pytest.raises(NotFoundError):
        await storage.get_app("nope")
    with pytest.raises(AlreadyExistsError):
        await storage.create_tenant("acme")


async def test_reaper_hooks(storage: Storage) -> None:
    """Unreferenced files are listed and reclaimed; referenced and pinned ones are kept."""
    kept = await put(storage, "flat", "k", b"kept")
    stray = await storage.blobs.write(chunks(b"stray"))
    assert await storage.unreferenced_digests() == [stray.location]
    assert not await storage.reclaim_blob(stray.location)  # still pinned by its writer
    stray.release()
    assert await storage.reclaim_blob(stray.location)
    kept_info = await storage.head_object("acme", "flat", "k")
    assert not await storage.reclaim_blob(kept_info.location or kept.etag)
    assert await storage.unreferenced_digests() == []
    assert await held(storage, kept.etag)


async def test_restart_keeps_data_and_tokens(
    tmp_path: Path, nursery: trio.Nursery, backend: dict
) -> None:
    """A second run on the same stores sees the data and honours earlier page tokens."""
    s1 = await nursery.start(run_storage, make_config(tmp_path, backend))
    await s1.create_tenant("acme")
    await s1.create_bucket("acme", "bkt")
    for key in ["a", "b"]:
        await s1.put_object("acme", "bkt", key, chunks(b"v"))
    token = (await s1.list_objects("acme", "bkt", max_keys=1)).next_page_token
    await s1.stop()
    with pytest.raises(StorageUnavailableError):
        await s1.create_bucket("acme", "other")
    s2 = await nursery.start(run_storage, make_config(tmp_path, backend))
    assert [o.key for o in (await s2.list_objects("acme", "bkt", page_token=token)).objects] == ["b"]
    await s2.stop()


async def test_quota_checked_again_at_upload_completion(storage: Storage) -> None:
    """An upload that no longer fits at completion fails, is discarded and leaves no file."""
    await storage.set_tenant_quota("acme", 10)
    state = await storage.start_upload("acme", 5, {})
    await storage.append_upload("acme", state.upload_id, 0, b"abcde")
    await put(storage, "flat", "k", b"12345678")
    with pytest.raises(QuotaExceededError):
        await storage.complete_upload("acme", state.upload_id)
    with pytest.raises(NotFoundError):
        await storage.start_upload("acme", 5, {}, state.upload_id)
    assert not await held(storage, hashlib.sha256(b"abcde").hexdigest())
    assert (await storage.get_tenant("acme")).used_bytes == 8


async def test_concurrent_puts_keep_references_consistent(storage: Storage) -> None:
    """Many concurrent puts and deletes sharing content end with exact refcounts and files."""
    contents = [b"alpha", b"beta", b"alpha"]

    async def worker(n: int) -> None:
        for round_ in range(4):
            data = contents[(n + round_) % 3]
            await put(storage, "flat", f"k{n % 3}", data)
            await put(storage, "vers", f"v{n}", data)
            if round_ % 2:
                await storage.delete_object("acme", "flat", f"k{n % 3}")

    async with trio.open_nursery() as workers:
        for n in range(6):
            workers.start_soon(worker, n)
    flat = (await storage.list_object_versions("acme", "flat")).versions
    vers = (await storage.list_object_versions("acme", "vers")).versions
    live = [x.etag for x in flat + vers if not x.delete_marker]
    assert set(live) <= await held_digests(storage)
    assert await storage.unreferenced_digests() == []
    assert (await storage.get_tenant("acme")).used_bytes == sum(x.size for x in flat + vers)


async def test_metadata_actor_crash_is_unavailable_then_recovers(storage: Storage) -> None:
    """A crashing metadata actor surfaces as StorageUnavailableError; after the supervisor's
    restart the same Storage works again."""
    with pytest.raises(StorageUnavailableError):
        await storage._write(object())  # not a message: the actor crashes on it
    for _ in range(200):
        try:
            await storage.create_bucket("acme", "after-crash")
            break
        except StorageUnavailableError:
            await trio.sleep(0.05)
    assert "after-crash" in [b.name for b in await storage.list_buckets("acme")]
    assert storage.statistics().child("metadata").restarts >= 1


@pytest.mark.embedded_only  # SQLite's user_version (PostgreSQL's: test_postgres.py)
async def test_newer_schema_refused_before_start(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A data dir written by a newer schema fails run_storage at once with a StorageError."""
    config = make_config(tmp_path)
    config.data_dir.mkdir(parents=True)
    conn = sqlite3.connect(config.data_dir / "meta.sqlite3")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(StorageError, match="newer"):
        await nursery.start(run_storage, config)


async def test_crash_loop_escalates(tmp_path: Path, backend: dict) -> None:
    """Past the restart intensity the supervisor escalates out of run_storage."""
    with pytest.RaisesGroup(SupervisorEscalationError):
        async with trio.open_nursery() as inner:
            s = await inner.start(run_storage, make_config(tmp_path, backend, restart_intensity=1,
                                                           restart_period=60.0))
            for _ in range(200):
                try:
                    await s._write(object())
                except StorageUnavailableError:
                    await trio.sleep(0.05)
            raise AssertionError("the supervisor never escalated")


@pytest.mark.embedded_only  # the data-dir lock
async def test_second_storage_on_same_data_dir_is_refused(tmp_path) -> None:
    """A second run_storage on a data dir in use fails at once with DataDirInUseError, and the
    first keeps serving; once the first stops, the dir can be opened again."""
    from anvil_trio.storage import DataDirInUseError, run_storage

    async with trio.open_nursery() as nursery:
        first = await nursery.start(run_storage, tmp_path / "d")
        await first.create_tenant("t")
        with pytest.raises(DataDirInUseError):
            await run_storage(tmp_path / "d")
        assert (await first.get_tenant("t")).name == "t"
        await first.stop()
    async with trio.open_nursery() as nursery:
        again = await nursery.start(run_storage, tmp_path / "d")
        assert (await again.get_tenant("t")).name == "t"
        await again.stop()
