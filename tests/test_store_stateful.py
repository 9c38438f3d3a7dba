"""Stateful property test: random sequences of object, version, listing, upload and blob
operations through the Storage façade agree with a plain in-memory model of API.md, and the
data dir's invariants (refcounts, quota usage, files against rows) hold after every step.

Storage runs in one Trio loop on a background thread for the whole of an example; each rule
calls into it with ``trio.from_thread.run``.
"""

from __future__ import annotations

import hashlib
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from anvil_trio.storage import (
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    StorageConfig,
    run_storage,
)
from crash_child import audit

TENANT = "acme"
VERSIONED = {"vers": True, "flat": False}
POOL = [b"", b"x", b"hello", bytes(range(256)) * 8, b"z" * 5000]
BOGUS_VERSION = "0" * 32
BOGUS_DIGEST = "f" * 64

contents = st.one_of(st.sampled_from(POOL), st.binary(max_size=3000))
keys = st.text(alphabet="ab/é", min_size=1, max_size=4)
prefixes = st.text(alphabet="ab/é", max_size=2)
buckets = st.sampled_from(sorted(VERSIONED))


def utf8(text: str) -> bytes:
    return text.encode("utf-8")


class StorageThread:
    """One Trio loop with a running Storage, on a daemon thread."""

    def __init__(self, data_dir: Path) -> None:
        self._handoff: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=trio.run, args=(self._main, data_dir), daemon=True)
        self._thread.start()
        got = self._handoff.get(timeout=60)
        if isinstance(got, BaseException):
            raise got
        self.storage, self._token, self._stop = got

    async def _main(self, data_dir: Path) -> None:
        config = StorageConfig(data_dir=data_dir, fsync=False, reaper_interval=1e6)
        try:
            async with trio.open_nursery() as nursery:
                storage = await nursery.start(run_storage, config)
                stop = trio.Event()
                self._handoff.put((storage, trio.lowlevel.current_trio_token(), stop))
                await stop.wait()
                await storage.stop()
        except BaseException as exc:  # hand start-up failures to the waiting test thread
            self._handoff.put(exc)
            raise

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``await fn(*args)`` in the storage loop and return (or raise) its outcome."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=60)


async def _chunks(data: bytes, cuts: list[int]):
    start = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        await trio.lowlevel.checkpoint()
        yield data[start:cut]
        start = cut


async def _drain(pair: tuple[Any, Any]) -> tuple[Any, bytes]:
    info, reader = pair
    async with reader:
        return info, b"".join([c async for c in reader])


@attrs.define
class Version:
    """A model version: ``data`` None is a delete marker."""

    version_id: str
    data: bytes | None


@attrs.define
class Blob:
    data: bytes
    attributes: dict[str, str]


class StorageMachine(RuleBasedStateMachine):
    """Storage against a dict-of-lists model of buckets, keys, versions and tenant blobs."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="anvil-stateful-"))
        self.runner = StorageThread(self.tmp / "data")
        self.s = self.runner.storage
        self.call(self.s.create_tenant, TENANT)
        for name, versioning in VERSIONED.items():
            self.call(self.s.create_bucket, TENANT, name, versioning=versioning)
        self.objects: dict[tuple[str, str], list[Version]] = {}
        self.blobs: dict[str, Blob] = {}

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        async def run() -> Any:
            return await fn(*args, **kw)

        return self.runner.call(run)

    def teardown(self) -> None:
        self.runner.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- model helpers

    def versions(self, bucket: str, key: str) -> list[Version]:
        return self.objects.get((bucket, key), [])

    def current(self, bucket: str) -> dict[str, bytes]:
        return {k: vs[-1].data for (b, k), vs in self.objects.items()
                if b == bucket and vs and vs[-1].data is not None}

    def pick_version(self, data: st.DataObject, bucket: str, key: str) -> str:
        ids = [v.version_id for v in self.versions(bucket, key)]
        return data.draw(st.sampled_from(ids + [BOGUS_VERSION]), label="version_id")

    def pick_key(self, data: st.DataObject, bucket: str) -> str:
        known = sorted({k for (b, k) in self.objects if b == bucket})
        return data.draw(st.sampled_from(known) if known and data.draw(st.booleans()) else keys,
                         label="key")

    # -- objects

    @rule(bucket=buckets, key=keys, body=contents, cuts=st.lists(st.integers(0, 3000)))
    def put(self, bucket: str, key: str, body: bytes, cuts: list[int]) -> None:
        result = self.call(self.s.put_object, TENANT, bucket, key, _chunks(body, cuts))
        assert result.etag == hashlib.sha256(body).hexdigest() and result.size == len(body)
        assert all(v.version_id != result.version_id for vs in self.objects.values() for v in vs)
        new = Version(result.version_id, body)
        if VERSIONED[bucket]:
            self.objects.setdefault((bucket, key), []).append(new)
        else:
            self.objects[(bucket, key)] = [new]

    @rule(bucket=buckets, data=st.data())
    def get(self, bucket: str, data: st.DataObject) -> None:
        key = self.pick_key(data, bucket)
        version_id = self.pick_version(data, bucket, key) if data.draw(st.booleans()) else None
        versions = self.versions(bucket, key)
        if version_id is None:
            target = versions[-1] if versions else None
        else:
            target = next((v for v in versions if v.version_id == version_id), None)
        start = data.draw(st.integers(0, 3100), label="start")
        end = data.draw(st.none() | st.integers(0, 3100), label="end")
        expected_error = None
        if end is not None and end < start:
            expected_error = InvalidArgumentError
        elif target is None or target.data is None:
            expected_error = NotFoundError
        elif target.data and start >= len(target.data):  # empty objects: any start
            expected_error = OutOfRangeError
        if expected_error is not None:
            with pytest.raises(expected_error):
                self.call(lambda: self.s.get_object(TENANT, bucket, key, version_id=version_id,
                                                    start=start, end=end))
            if expected_error is NotFoundError:
                with pytest.raises(NotFoundError):
                    self.call(self.s.head_object, TENANT, bucket, key, version_id=version_id)
            return
        info, got = self.call(lambda: _drain_get(self.s, bucket, key, version_id, start, end))
        assert got == target.data[start:end]
        assert (info.size, info.etag, info.version_id) == (
            len(target.data), hashlib.sha256(target.data).hexdigest(), target.version_id)
        assert info.is_latest == (target is versions[-1])

    @rule(bucket=buckets, data=st.data())
    def delete(self, bucket: str, data: st.DataObject) -> None:
        key = self.pick_key(data, bucket)
        versions = self.versions(bucket, key)
        if data.draw(st.booleans(), label="by_version"):
            version_id = self.pick_version(data, bucket, key)
            target = next((v for v in versions if v.version_id == version_id), None)
            if target is None:
                with pytest.raises(NotFoundError):
                    self.call(self.s.delete_object, TENANT, bucket, key, version_id=version_id)
                return
            result = self.call(self.s.delete_object, TENANT, bucket, key, version_id=version_id)
            assert tuple(result) == (version_id, target.data is None)
            versions.remove(target)
            return
        result = self.call(self.s.delete_object, TENANT, bucket, key)
        if not versions:
            assert tuple(result) == ("", False)
        elif not VERSIONED[bucket]:
            assert tuple(result) == (versions[-1].version_id, False)
            versions.clear()
        elif versions[-1].data is None:  # already deleted: the existing marker answers
            assert tuple(result) == (versions[-1].version_id, True)
        else:
            assert result.delete_marker and result.version_id
            versions.append(Version(result.version_id, None))

    # -- listings

    @rule(bucket=buckets, prefix=prefixes, delimiter=st.sampled_from(["", "/", "b", "é"]),
          max_keys=st.sampled_from([0, 1, 2, 3]))
    def list_objects(self, bucket: str, prefix: str, delimiter: str, max_keys: int) -> None:
        current = self.current(bucket)
        expected: list[tuple[str, str]] = []
        for key in sorted((k for k in current if k.startswith(prefix)), key=utf8):
            raw = utf8(key)
            cut = raw.find(utf8(delimiter), len(utf8(prefix))) if delimiter else -1
            entry = ("p", raw[:cut + len(utf8(delimiter))].decode()) if cut >= 0 else ("o", key)
            if not expected or expected[-1] != entry:
                expected.append(entry)
        seen: list[tuple[str, str]] = []
        token = ""
        for _ in range(len(expected) + 2):
            page = self.call(self.s.list_objects, TENANT, bucket, prefix=prefix,
                             delimiter=delimiter, max_keys=max_keys, page_token=token)
            entries = [("o", o.key) for o in page.objects] + [("p", p) for p in page.common_prefixes]
            assert len(entries) <= (max_keys or 1000)
            for o in page.objects:
                assert o.etag == hashlib.sha256(current[o.key]).hexdigest()
                assert o.size == len(current[o.key]) and o.is_latest and not o.delete_marker
            seen += sorted(entries, key=lambda e: utf8(e[1]))
            token = page.next_page_token
            if not token:
                break
        assert token == "" and seen == expected

    @rule(bucket=buckets, prefix=prefixes, max_keys=st.sampled_from([0, 1, 2, 5]))
    def list_versions(self, bucket: str, prefix: str, max_keys: int) -> None:
        expected = []
        for (b, key), versions in sorted(self.objects.items(), key=lambda kv: utf8(kv[0][1])):
            if b == bucket and key.startswith(prefix):
                for n, v in enumerate(reversed(versions)):
                    expected.append((key, v.version_id, v.data is None, n == 0))
        seen, token = [], ""
        for _ in range(len(expected) + 2):
            page = self.call(self.s.list_object_versions, TENANT, bucket, prefix=prefix,
                             max_keys=max_keys, page_token=token)
            assert len(page.versions) <= (max_keys or 1000)
            seen += [(v.key, v.version_id, v.delete_marker, v.is_latest) for v in page.versions]
            token = page.next_page_token
            if not token:
                break
        assert token == "" and seen == expected

    # -- uploads and blobs

    @rule(body=contents, cuts=st.lists(st.integers(1, 3000), max_size=3),
          content_type=st.sampled_from([None, "text/plain"]), with_hash=st.booleans())
    def upload(self, body: bytes, cuts: list[int], content_type: str | None,
               with_hash: bool) -> None:
        attributes = {"n": str(len(self.blobs))}
        if content_type:
            attributes["content-type"] = content_type
        state = self.call(self.s.start_upload, TENANT, len(body), attributes)
        offset = 0
        for cut in sorted(set(c for c in cuts if c < len(body))) + [len(body)]:
            if cut > offset:
                assert self.call(self.s.append_upload, TENANT, state.upload_id, offset,
                                 body[offset:cut]) == cut
                offset = cut
        digest = hashlib.sha256(body).hexdigest()
        done = self.call(self.s.complete_upload, TENANT, state.upload_id,
                         bytes.fromhex(digest) if with_hash else None)
        assert tuple(done) == ("sha256:" + digest, len(body), digest in self.blobs)
        self.blobs.setdefault(digest, Blob(body, attributes))

    def pick_digest(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.blobs) + [BOGUS_DIGEST]), label="digest")

    @rule(data=st.data())
    def stat_and_get_blob(self, data: st.DataObject) -> None:
        digest = self.pick_digest(data)
        blob = self.blobs.get(digest)
        if blob is None:
            with pytest.raises(NotFoundError):
                self.call(self.s.stat_blob, TENANT, "sha256:" + digest)
            return
        info = self.call(self.s.stat_blob, TENANT, ("sha256:" + digest).encode())
        assert (info.size, info.attributes) == (len(blob.data), blob.attributes)
        assert info.content_type == blob.attributes.get("content-type", "application/octet-stream")
        start = data.draw(st.integers(0, max(len(blob.data) - 1, 0)), label="start")
        end = data.draw(st.none() | st.integers(start, start + 3100), label="end")
        _, got = self.call(_drain_blob, self.s, digest, start, end)
        assert got == blob.data[start:end]

    @rule(data=st.data())
    def delete_blob(self, data: st.DataObject) -> None:
        digest = self.pick_digest(data)
        if digest not in self.blobs:
            with pytest.raises(NotFoundError):
                self.call(self.s.delete_blob, TENANT, "sha256:" + digest)
            return
        self.call(self.s.delete_blob, TENANT, "sha256:" + digest)
        del self.blobs[digest]

    @precondition(lambda self: self.blobs)
    @rule(limit=st.sampled_from([0, 1, 2]))
    def list_blobs(self, limit: int) -> None:
        seen: list[str] = []
        after = b""
        for _ in range(len(self.blobs) + 2):
            page = self.call(self.s.list_blobs, TENANT, limit=limit, start_after=after)
            assert len(page) <= (limit or 1000)
            if not page:
                break
            seen += [b.key for b in page]
            after = page[-1].key.encode()
        assert seen == ["sha256:" + d for d in sorted(self.blobs)]

    # -- invariants

    @invariant()
    def usage_and_disk_match(self) -> None:
        total = sum(len(v.data) for vs in self.objects.values() for v in vs if v.data is not None)
        total += sum(len(b.data) for b in self.blobs.values())
        assert self.call(self.s.get_tenant, TENANT).used_bytes == total
        self.call(self.s.sync)
        assert audit(self.tmp / "data", hash_files=False) == []


async def _drain_get(s: Any, bucket: str, key: str, version_id: str | None, start: int,
                     end: int | None) -> tuple[Any, bytes]:
    return await _drain(await s.get_object(TENANT, bucket, key, version_id=version_id,
                                           start=start, end=end))


async def _drain_blob(s: Any, digest: str, start: int, end: int | None) -> tuple[Any, bytes]:
    return await _drain(await s.get_blob(TENANT, "sha256:" + digest, start=start, end=end))


StorageMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestStorageModel = StorageMachine.TestCase
TestStorageModel.__doc__ = "Random operation sequences agree with the in-memory model of API.md."
