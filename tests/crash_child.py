"""Crash-test child process, and the on-disk audit the storage tests share.

As a script (``python tests/crash_child.py DATA_DIR POINT``) it opens storage on ``DATA_DIR``,
makes some complete puts, prints ``STATE <json>`` (what was acknowledged), then drives one
more write to the kill point ``POINT`` (see :data:`POINTS`), prints ``READY`` and blocks
forever, so that the parent can ``SIGKILL`` it at exactly that point: the blocking happens in
a :class:`FaultInjector` hook (a worker thread about to do the step) or in the chunk source,
never after a sleep, so there is no timing race.

As a module, :func:`audit` checks the invariants of a quiescent data dir (reference counts,
quota usage, files against rows, no temp files); the crash, fault, concurrency and stateful
tests all use it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import sqlite3
import sys
import threading
from collections import Counter
from pathlib import Path

import trio

from anvil_trio.storage import FaultInjector, StorageConfig, run_storage

MiB = 1 << 20
#: Size of the put killed mid-stream: several write batches (4 MiB each by default).
MID_STREAM_SIZE = 12 * MiB

#: Kill points: where the interrupted write is when the child says READY.
POINTS = {
    "mid-stream": "a put has streamed half of MID_STREAM_SIZE, at least one batch of it into "
                  "its temp file",
    "after-fsync": "a put's temp file is complete, read-only and fsynced, not yet renamed",
    "after-rename": "a put's file was renamed into blobs/, its directory not yet fsynced",
    "before-commit": "a put's file is published; its commit waits in the metadata mailbox",
    "after-commit": "a put replacing a key committed; the old bytes are being deleted",
    "upload-before-write": "an upload append is about to write (2 MiB acked)",
    "upload-before-fsync": "an upload append wrote its bytes but has not fsynced (2 MiB acked)",
}


def content(seed: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def signal(line: str) -> None:
    """Tell the parent something (one line on stdout)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Blocker(FaultInjector):
    """Blocks the worker thread at one disk step forever (after saying READY, if asked)."""

    def __init__(self) -> None:
        super().__init__()
        self.at: str | None = None  # "write", "fsync", "rename", "dir_fsync_after_rename", "unlink"
        self.announce = True
        self.reached = threading.Event()
        self._renamed = False

    def _block(self) -> None:
        self.reached.set()
        if self.announce:
            signal("READY")
        threading.Event().wait()

    def before_write(self, offset: int, length: int) -> None:
        if self.at == "write":
            self._block()

    def before_step(self, step: str) -> None:
        if step == "rename" and self.at is not None:
            self._renamed = True  # only renames of the write under test count
        if self.at == step or (
            self.at == "dir_fsync_after_rename" and step == "dir_fsync" and self._renamed
        ):
            self._block()


async def _stream(data: bytes, *, stop_after: int | None = None, temp_dir: Path | None = None):
    for offset in range(0, len(data), 256 << 10):
        if stop_after is not None and offset >= stop_after:
            # The writer hashes and writes one batch while the next arrives, so wait (bounded)
            # until at least 1 MiB of this put is in its temp file before the parent kills us.
            for _ in range(3000):
                if sum(p.stat().st_size for p in temp_dir.glob("*.part")) >= 1 << 20:
                    break
                await trio.sleep(0.01)
            signal("READY")
            await trio.sleep_forever()
        yield data[offset:offset + (256 << 10)]


async def child(data_dir: Path, point: str) -> None:
    blocker = Blocker()
    config = StorageConfig(data_dir=data_dir, fsync=True)
    async with trio.open_nursery() as nursery:
        s = await nursery.start(functools.partial(run_storage, config, fault_injector=blocker))
        await s.create_tenant("acme")
        await s.create_bucket("acme", "flat")
        committed = {}
        for i in range(3):
            r = await s.put_object("acme", "flat", f"done/{i}", _stream(content(i, 300_000 + i)))
            committed[f"done/{i}"] = r.etag
        victim = content(100, 3 * MiB)
        state: dict = {"committed": committed, "victim": hashlib.sha256(victim).hexdigest()}
        if point == "after-commit":
            r = await s.put_object("acme", "flat", "victim", _stream(content(101, 1000)))
            state["victim_old"] = r.etag
        if point == "before-commit":
            r = await s.put_object("acme", "flat", "extra", _stream(content(102, 1000)))
            state["extra_old"] = r.etag
        if point.startswith("upload-"):
            up = await s.start_upload("acme", 3 * MiB, {"content-type": "x/y"})
            for offset in (0, MiB):
                await s.append_upload("acme", up.upload_id, offset, victim[offset:offset + MiB])
            state["upload"] = {"id": up.upload_id, "acked": 2 * MiB}
        signal("STATE " + json.dumps(state))

        if point == "mid-stream":
            big = content(104, MID_STREAM_SIZE)
            await s.put_object("acme", "flat", "victim", _stream(
                big, stop_after=MID_STREAM_SIZE // 2, temp_dir=data_dir / "tmp"))
        elif point in ("after-fsync", "after-rename", "after-commit"):
            blocker.at = {"after-fsync": "rename", "after-rename": "dir_fsync_after_rename",
                          "after-commit": "unlink"}[point]
            await s.put_object("acme", "flat", "victim", _stream(victim))
        elif point == "before-commit":
            # Keep the metadata actor busy in its turn (deleting the bytes "extra" no longer
            # uses), so the victim's commit waits, uncommitted, in its mailbox.
            blocker.at, blocker.announce = "unlink", False
            nursery.start_soon(s.put_object, "acme", "flat", "extra", _stream(content(103, 10)))
            while not blocker.reached.is_set():
                await trio.sleep(0.01)
            nursery.start_soon(s.put_object, "acme", "flat", "victim", _stream(victim))
            while s.statistics().child("metadata").mailbox_depth < 1:
                await trio.sleep(0.01)
            signal("READY")
        elif point in ("upload-before-write", "upload-before-fsync"):
            blocker.at = "write" if point == "upload-before-write" else "fsync"
            await s.append_upload("acme", state["upload"]["id"], 2 * MiB, victim[2 * MiB:])
        else:
            raise SystemExit(f"unknown kill point {point!r}")
        await trio.sleep_forever()


# ----------------------------------------------------------------------------------- audit


def audit(data_dir: Path, *, hash_files: bool = True) -> list[str]:
    """Check a quiescent data dir; returns the problems found (empty: all invariants hold).

    Checked: each ``blobs`` row's refcount equals the object versions plus tenant blobs that
    name it, and no reference lacks a row; the files in ``blobs/`` are exactly the rows, with
    the recorded size (and, with ``hash_files``, the SHA-256 of their name); every tenant's
    ``used_bytes`` equals its object versions plus tenant blobs; ``tmp/`` is empty; the files
    in ``uploads/`` are exactly the upload rows.
    """
    problems: list[str] = []
    conn = sqlite3.connect(f"file:{data_dir / 'meta.sqlite3'}?mode=ro", uri=True)
    try:
        rows = {d: (size, count) for d, size, count in
                conn.execute("SELECT digest, size, refcount FROM blobs")}
        refs = Counter(d for (d,) in conn.execute(
            "SELECT digest FROM object_versions WHERE digest IS NOT NULL "
            "UNION ALL SELECT digest FROM tenant_blobs"))
        usage = dict(conn.execute("SELECT name, used_bytes FROM tenants"))
        expected_usage = Counter()
        for name, size in conn.execute(
            "SELECT t.name, v.size FROM object_versions v JOIN buckets b ON b.id = v.bucket_id "
            "JOIN tenants t ON t.id = b.tenant_id UNION ALL "
            "SELECT t.name, tb.size FROM tenant_blobs tb JOIN tenants t ON t.id = tb.tenant_id"
        ):
            expected_usage[name] += size
        uploads = {u for (u,) in conn.execute("SELECT upload_id FROM uploads")}
    finally:
        conn.close()
    for digest in rows.keys() | refs.keys():
        count = rows.get(digest, (0, 0))[1]
        if count != refs[digest]:
            problems.append(f"refcount of {digest[:12]} is {count}, {refs[digest]} references")
    for name, used in usage.items():
        if used != expected_usage[name]:
            problems.append(f"tenant {name} uses {used}, its data is {expected_usage[name]}")
    on_disk = {p.name: p for p in (data_dir / "blobs").rglob("*") if p.is_file()}
    for digest in on_disk.keys() - rows.keys():
        problems.append(f"blob file {digest[:12]} has no reference")
    for digest in rows.keys() - on_disk.keys():
        problems.append(f"blob {digest[:12]} is referenced but has no file")
    for digest in rows.keys() & on_disk.keys():
        data = on_disk[digest].read_bytes() if hash_files else None
        size = on_disk[digest].stat().st_size
        if size != rows[digest][0]:
            problems.append(f"blob file {digest[:12]} has {size} bytes, not {rows[digest][0]}")
        if data is not None and hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"blob file {digest[:12]} does not hash to its name")
    temp = sorted(os.listdir(data_dir / "tmp"))
    if temp:
        problems.append(f"temp files remain: {temp}")
    upload_files = set(os.listdir(data_dir / "uploads"))
    if upload_files != uploads:
        problems.append(f"upload files {sorted(upload_files)} != sessions {sorted(uploads)}")
    return problems


if __name__ == "__main__":
    trio.run(child, Path(sys.argv[1]), sys.argv[2])
