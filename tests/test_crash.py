"""Crash safety: a child process is SIGKILLed at exact points of a put or an upload append
(see ``crash_child.POINTS``); after a restart nothing torn is visible, acknowledged data is
intact, and the reaper's start-up pass has left no unreferenced bytes."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from anvil_trio.storage import NotFoundError, Storage, StorageConfig, run_storage
from crash_child import MID_STREAM_SIZE, MiB, POINTS, audit, content

CHILD = Path(__file__).with_name("crash_child.py")


async def run_until_killed(data_dir: Path, point: str, log: Path) -> dict:
    """Start the child, wait for READY, SIGKILL it; return the state it acknowledged."""
    with open(log, "wb") as err:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(CHILD), str(data_dir), point], stdout=subprocess.PIPE,
            stderr=err,
        )
    out = b""
    try:
        with trio.fail_after(120):  # a safety net against a hang, not a timing assertion
            while not out.endswith(b"READY\n"):
                data = await proc.stdout.receive_some()
                if not data:
                    raise AssertionError(f"child exited early:\n{log.read_text()}")
                out += data
    finally:
        proc.kill()
        await proc.wait()
        await proc.stdout.aclose()
    assert proc.returncode == -signal.SIGKILL
    lines = out.decode().splitlines()
    assert lines[-1] == "READY" and lines[-2].startswith("STATE ")
    return json.loads(lines[-2].removeprefix("STATE "))


def committed_digests(data_dir: Path, key: str) -> list[str]:
    conn = sqlite3.connect(f"file:{data_dir / 'meta.sqlite3'}?mode=ro", uri=True)
    try:
        return [d for (d,) in conn.execute(
            "SELECT digest FROM object_versions WHERE key = ?", (key.encode(),))]
    finally:
        conn.close()


def evidence(data_dir: Path, point: str, state: dict) -> None:
    """Check that the kill really left the half-done state the point names (so the clean
    state after the restart is the reaper's work, not an accident)."""
    parts = [p.stat().st_size for p in (data_dir / "tmp").iterdir()]
    blob = lambda d: data_dir / "blobs" / d[:2] / d[2:4] / d  # noqa: E731
    if point == "mid-stream":
        assert len(parts) == 1 and MiB <= parts[0] < MID_STREAM_SIZE
    elif point == "after-fsync":
        assert parts == [3 * MiB]
    elif point in ("after-rename", "before-commit"):
        assert parts == [] and blob(state["victim"]).exists()
    elif point == "after-commit":
        assert blob(state["victim_old"]).exists()
    else:
        upload = data_dir / "uploads" / state["upload"]["id"]
        assert upload.stat().st_size >= state["upload"]["acked"]
    if point == "before-commit":
        assert blob(state["extra_old"]).exists()
    if not point.startswith("upload-"):
        assert audit(data_dir) != []  # garbage (or a torn-looking state) is really there


async def read(s: Storage, key: str) -> bytes:
    _, reader = await s.get_object("acme", "flat", key)
    async with reader:
        return b"".join([chunk async for chunk in reader])


@pytest.mark.parametrize("point", sorted(POINTS))
async def test_kill_at_point_then_restart(point: str, tmp_path: Path, nursery: trio.Nursery) -> None:
    """After a SIGKILL at the point, a restarted storage shows only complete, correct data
    and (after its start-up reaper pass) holds no unreferenced bytes; uploads resume."""
    data_dir = tmp_path / "data"
    state = await run_until_killed(data_dir, point, tmp_path / "child.log")
    victim = content(100, 3 * MiB)
    assert state["victim"] == hashlib.sha256(victim).hexdigest()
    committed = committed_digests(data_dir, "victim")
    assert committed == ([state["victim"]] if point == "after-commit" else [])
    evidence(data_dir, point, state)

    s = await nursery.start(run_storage, StorageConfig(data_dir=data_dir, fsync=False))
    for key, etag in state["committed"].items():
        data = await read(s, key)
        assert hashlib.sha256(data).hexdigest() == etag
        assert (await s.head_object("acme", "flat", key)).etag == etag
    keys = sorted(state["committed"])
    if point == "after-commit":
        assert await read(s, "victim") == victim
        keys.append("victim")
    else:
        with pytest.raises(NotFoundError):
            await s.head_object("acme", "flat", "victim")
    if point == "before-commit":
        assert await read(s, "extra") == content(103, 10)  # its commit preceded the block
        keys.append("extra")
    listed = await s.list_objects("acme", "flat")
    assert [o.key for o in listed.objects] == sorted(keys)
    assert audit(data_dir) == []

    if point.startswith("upload-"):
        upload_id, acked = state["upload"]["id"], state["upload"]["acked"]
        resumed = await s.start_upload("acme", 3 * MiB, upload_id=upload_id)
        if point == "upload-before-write":
            assert resumed.received == acked
        else:  # written but not fsynced: a process kill keeps the page cache
            assert resumed.received in (acked, 3 * MiB)
        if resumed.received < 3 * MiB:
            await s.append_upload("acme", upload_id, resumed.received, victim[resumed.received:])
        done = await s.complete_upload("acme", upload_id, hashlib.sha256(victim).digest())
        assert done.key == "sha256:" + state["victim"] and not done.deduplicated
        _, reader = await s.get_blob("acme", done.key)
        async with reader:
            assert b"".join([c async for c in reader]) == victim
        assert audit(data_dir) == []
    await s.stop()
