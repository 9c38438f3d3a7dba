"""Fault injection through the Storage façade: disk errors mid-put and mid-upload, a metadata
actor crash in the middle of requests, and escalation past the restart intensity."""

from __future__ import annotations

import errno
import functools
import hashlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from anvil_trio.actors import SupervisorEscalationError
from anvil_trio.storage import (
    FaultInjector,
    NotFoundError,
    Storage,
    StorageConfig,
    StorageFullError,
    StorageIOError,
    StorageUnavailableError,
    run_storage,
)
from crash_child import audit

MiB = 1 << 20


async def chunks(data: bytes, size: int = 256 << 10) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        await trio.lowlevel.checkpoint()
        yield data[offset:offset + size]


async def read(s: Storage, bucket: str, key: str) -> bytes:
    _, reader = await s.get_object("acme", bucket, key)
    async with reader:
        return b"".join([c async for c in reader])


async def start(nursery: trio.Nursery, tmp_path: Path, injector: FaultInjector | None = None,
                **kw) -> Storage:
    config = StorageConfig(data_dir=tmp_path / "data", fsync=False, **kw)
    s = await nursery.start(functools.partial(run_storage, config, fault_injector=injector))
    await s.create_tenant("acme")
    await s.create_bucket("acme", "flat")
    await s.create_bucket("acme", "vers", versioning=True)
    return s


async def until_available(fn, *args):
    """Call ``fn`` until it stops raising StorageUnavailableError (the restart is done)."""
    for _ in range(500):
        try:
            return await fn(*args)
        except StorageUnavailableError:
            await trio.sleep(0.02)
    raise AssertionError("storage never became available again")


FAULTS = [
    pytest.param(dict(fail_after_bytes=3 * MiB // 2, errno=errno.ENOSPC), StorageFullError,
                 id="enospc-mid-stream"),
    pytest.param(dict(fail_after_bytes=3 * MiB // 2), StorageIOError, id="eio-mid-stream"),
    pytest.param(dict(fail_at="write", skip=1), StorageIOError, id="eio-second-write"),
    pytest.param(dict(fail_at="fsync", errno=errno.ENOSPC), StorageFullError, id="enospc-fsync"),
    pytest.param(dict(fail_at="rename"), StorageIOError, id="eio-rename"),
    pytest.param(dict(fail_at="dir_fsync"), StorageIOError, id="eio-dir-fsync"),
]


@pytest.mark.parametrize(("fault", "error"), FAULTS)
async def test_disk_fault_during_put_leaves_nothing(
    fault: dict, error: type, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A disk error while a put streams or publishes is a clear storage error; no object,
    listing entry, quota use, temp file or (after reaping) blob file is left behind, and the
    same put succeeds once the disk is healthy."""
    injector = FaultInjector(times=None)
    s = await start(nursery, tmp_path, injector)
    old = b"old contents"
    await s.put_object("acme", "flat", "existing", chunks(old))
    await s.put_object("acme", "vers", "existing", chunks(old))
    before_usage = (await s.get_tenant("acme")).used_bytes
    before_versions = await s.list_object_versions("acme", "vers")
    data = bytes(range(256)) * (3 * MiB // 256)

    for name, value in fault.items():
        setattr(injector, name, value)
    for bucket, key in [("flat", "new"), ("vers", "new"), ("flat", "existing"),
                        ("vers", "existing")]:
        with pytest.raises(error) as caught:
            await s.put_object("acme", bucket, key, chunks(data))
        assert caught.value.__cause__ is not None and "injected" in str(caught.value.__cause__)
    assert injector.fired >= 4

    for bucket in ("flat", "vers"):
        with pytest.raises(NotFoundError):
            await s.head_object("acme", bucket, "new")
        assert await read(s, bucket, "existing") == old
        assert [o.key for o in (await s.list_objects("acme", bucket)).objects] == ["existing"]
    assert await s.list_object_versions("acme", "vers") == before_versions
    assert (await s.get_tenant("acme")).used_bytes == before_usage
    assert list((tmp_path / "data" / "tmp").iterdir()) == []
    injector.fail_after_bytes = injector.fail_at = None
    await s.reap_now()
    await s.sync()
    assert audit(tmp_path / "data") == []

    r = await s.put_object("acme", "vers", "new", chunks(data))
    assert r.etag == hashlib.sha256(data).hexdigest()
    assert await read(s, "vers", "new") == data
    await s.sync()
    assert audit(tmp_path / "data") == []
    await s.stop()


async def test_disk_full_during_upload_append_keeps_the_durable_offset(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """ENOSPC in an upload append keeps none of that chunk; the upload resumes at the bytes
    acknowledged before and completes correctly."""
    injector = FaultInjector()
    s = await start(nursery, tmp_path, injector)
    data = bytes(range(256)) * 1024
    up = await s.start_upload("acme", len(data))
    assert await s.append_upload("acme", up.upload_id, 0, data[:100_000]) == 100_000
    injector.errno, injector.fail_at = errno.ENOSPC, "write"
    with pytest.raises(StorageFullError):
        await s.append_upload("acme", up.upload_id, 100_000, data[100_000:])
    assert (await s.start_upload("acme", len(data), upload_id=up.upload_id)).received == 100_000
    await s.append_upload("acme", up.upload_id, 100_000, data[100_000:])
    done = await s.complete_upload("acme", up.upload_id, hashlib.sha256(data).digest())
    assert done.size == len(data)
    await s.sync()
    assert audit(tmp_path / "data") == []
    await s.stop()


class UnlinkGate(FaultInjector):
    """Holds the metadata actor inside its turn (it deletes unreferenced files) until opened."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.gate = threading.Event()

    def before_step(self, step: str) -> None:
        if step == "unlink":
            self.reached.set()
            self.gate.wait()


async def test_metadata_crash_mid_request_is_retryable(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Requests queued at the metadata actor when it crashes fail with the retryable
    StorageUnavailableError (not a hang); the supervisor restarts it; nothing of the failed put
    is visible, its bytes are reaped, and the retried put works."""
    gate = UnlinkGate()
    s = await start(nursery, tmp_path, gate)
    await s.put_object("acme", "flat", "k", chunks(b"v1"))
    outcomes: dict[str, object] = {}

    async def attempt(name: str, fn, *args) -> None:
        try:
            outcomes[name] = await fn(*args)
        except StorageUnavailableError as exc:
            outcomes[name] = exc

    async def depth() -> int:
        return s.statistics().child("metadata").mailbox_depth

    async with trio.open_nursery() as inner:
        # 1. A replacing put commits, then the actor blocks deleting v1's file.
        inner.start_soon(attempt, "replace", s.put_object, "acme", "flat", "k", chunks(b"v2"))
        while not gate.reached.is_set():
            await trio.sleep(0.01)
        # 2. A message the actor cannot handle (it will crash on it), then a put's commit.
        inner.start_soon(attempt, "poison", s._write, object())
        while await depth() < 1:
            await trio.sleep(0.01)
        inner.start_soon(attempt, "put", s.put_object, "acme", "flat", "new",
                         chunks(b"x" * MiB))
        while await depth() < 2:
            await trio.sleep(0.01)
        gate.gate.set()

    assert outcomes["replace"].etag == hashlib.sha256(b"v2").hexdigest()
    for name in ("poison", "put"):
        assert isinstance(outcomes[name], StorageUnavailableError)
        assert outcomes[name].retryable
    with pytest.raises(NotFoundError):
        await s.head_object("acme", "flat", "new")
    await until_available(s.reap_now)  # a pass writes through the restarted actor
    assert s.statistics().child("metadata").restarts == 1
    await s.sync()
    assert audit(tmp_path / "data") == []
    r = await s.put_object("acme", "flat", "new", chunks(b"x" * MiB))
    assert await read(s, "flat", "new") == b"x" * MiB and r.size == MiB
    assert await read(s, "flat", "k") == b"v2"
    await s.stop()


@pytest.mark.parametrize("child", ["metadata", "reaper"])
async def test_crash_loop_past_intensity_fails_run_storage(child: str, tmp_path: Path) -> None:
    """A storage actor that keeps crashing makes run_storage raise SupervisorEscalationError
    (with the crash as its cause); calls made after that get StorageUnavailableError."""
    crashes = 0
    with pytest.RaisesGroup(SupervisorEscalationError) as caught:
        async with trio.open_nursery() as inner:
            s = await start(inner, tmp_path, restart_intensity=2, restart_period=60.0)
            ref = s._supervisor.ref(child)
            for _ in range(500):
                try:
                    await ref.ask(object(), timeout=None)
                except Exception:
                    crashes += 1
                    await trio.sleep(0.02)
            raise AssertionError("the supervisor never escalated")
    escalation = caught.value.exceptions[0]
    assert isinstance(escalation.__cause__, (TypeError, AttributeError))  # the poison message
    assert escalation.actor == child
    assert crashes >= 3
    with pytest.raises(StorageUnavailableError):
        await s.create_bucket("acme", "after")
    with pytest.raises(StorageUnavailableError):
        await s.reap_now()
