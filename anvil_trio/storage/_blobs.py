"""Content-addressed blob files on the local filesystem (the embedded byte store).

Layout under ``root`` (the data dir)::

    blobs/ab/cd/<64 hex>   final files, named by the SHA-256 of their content, mode 0o444
    tmp/<32 hex>.part      bytes of a write in flight
    tmp/<32 hex>.dead      a deleted blob's file, moved out of ``blobs/``, not yet unlinked
    uploads/<32 hex>       bytes of a resumable upload

Invariants:
- A file in ``blobs/`` is complete, hashes to its name, is read-only, and both it and its
  directory entry were fsynced before anyone was told it exists. Nothing else appears there.
- A write streams into a fresh ``tmp/*.part`` while hashing (with direct I/O past the page
  cache where the file system allows it, see ``_direct``), from its first full batch on;
  content smaller than a batch is hashed, written and sealed in one worker-thread call at its
  end. Either way it becomes visible only by one ``rename`` into ``blobs/``. On any failure or
  cancellation before that, the part file is removed before the error propagates; after a
  crash, ``remove_stale_temp`` removes it.
- A delete may move the file to ``tmp/*.dead`` (one ``rename``, under the digest's lock) and
  leave the unlink, which takes tens of milliseconds for a large file, to the caller's worker:
  from the rename on, the blob is gone for every later write and read. ``remove_stale_temp``
  removes ``*.dead`` files of any age (left by a crash before the unlink).
- Identical content is kept once: if the final file exists, the new part file is dropped and the
  write reports ``created=False``.
- Pins: each digest has a pin count. Pinning, the existence check + rename of a write, and
  ``delete_if_unpinned`` all run under the digest's own ``trio.Lock``, so a delete can never
  remove a file between a write's rename and the release of that write's pin, and a write never
  renames onto a file a delete is removing.
- Every path built from caller input is validated first: digests ``^[0-9a-f]{64}$``, upload ids
  ``^[0-9a-f]{32}$``.
- An upload file's size is the number of bytes durably received: an append either extends it by
  all its bytes and fsyncs before returning, or truncates it back to its old size.
- Memory is bounded whatever the size: a write holds at most ``pipeline_depth + 1`` batches
  (``batch_size`` plus one chunk each: up to ``pipeline_depth`` queued for or inside its two
  worker threads, one written by one and hashed by the other, in order; one arriving) plus one
  1 MiB staging buffer (up to 16 idle ones are kept for reuse), a read one chunk of at most
  ``chunk_size`` bytes.
- File I/O runs in worker threads (``trio.to_thread.run_sync`` or a write's two
  :class:`~._pipeline.Lane` threads), which are never abandoned, so a cancelled operation has
  finished its current step before the cleanup runs.
- ``OSError`` with ``ENOSPC`` becomes :class:`StorageFullError`, any other :class:`StorageIOError`,
  with the ``OSError`` as ``__cause__`` (see ``_faults.run_io``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

import trio

from ._direct import StagedWriter, StagingPool, open_new
from ._errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    InvalidArgumentError,
    NotFoundError,
    ObjectTooLargeError,
    OutOfRangeError,
    StorageIOError,
)
from ._faults import (
    DiskSteps,
    FaultInjector,
    hash_batch,
    run_io,
    storage_error,
    unlink_existing,
    unlink_quietly,
)
from ._pins import BlobPin, KeyedLocks, WrittenBlob
from ._pipeline import Lane
from ._reading import BlobReader

__all__ = ["BlobPin", "BlobReader", "BlobStore", "WrittenBlob"]

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
_PART_SUFFIX = ".part"
_DEAD_SUFFIX = ".dead"
_HASH_BATCH = 8 << 20  # bytes hashed per worker-thread call when finishing an upload


def _check_digest(digest: object) -> str:
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        raise InvalidArgumentError("a blob digest is 64 lowercase hex characters")
    return digest


def _check_upload_id(upload_id: object) -> str:
    if not isinstance(upload_id, str) or _UPLOAD_ID_RE.fullmatch(upload_id) is None:
        raise InvalidArgumentError("an upload id is 32 lowercase hex characters")
    return upload_id


def _check_sha256(expected: str | None) -> str | None:
    if expected is None:
        return None
    return _check_digest(expected.lower() if isinstance(expected, str) else expected)


def _check_content(digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise ChecksumMismatchError(f"content has SHA-256 {digest}, not {expected}")


def _check_count(value: int | None, name: str) -> None:
    if value is not None and (not isinstance(value, int) or value < 0):
        raise InvalidArgumentError(f"{name} must be a non-negative integer")


def _sorted_subdirs(directory: pathlib.Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))


class BlobStore:
    """Content-addressed, durable blob files under ``root`` (see the module docstring).

    Args:
        root: the data dir; ``blobs/``, ``tmp/`` and ``uploads/`` are created under it.
        chunk_size: the largest chunk a read yields (default 1 MiB).
        batch_size: a write hands bytes to its worker threads once this many have arrived
            (default 4 MiB), so thread hand-offs (and the GIL and wake-ups they cost) are paid
            per batch, not per chunk.
        pipeline_depth: batches a write may have queued or in progress in its worker threads
            while more arrive (default 2); a write holds at most ``pipeline_depth + 1``
            batches in memory.
        direct_io: write new blob files past the page cache (``O_DIRECT``, see ``_direct``)
            where the file system allows it; buffered otherwise.
        fsync: fsync files and directories (turn off only for throwaway test data).
        fault_injector: consulted before each write, fsync, rename, directory fsync and
            blob unlink (see :class:`FaultInjector`).

    Raises:
        ValueError: when ``chunk_size``, ``batch_size`` or ``pipeline_depth`` is not positive.
        OSError: when the directories cannot be created.
    """

    def __init__(
        self,
        root: pathlib.Path | str,
        *,
        chunk_size: int = 1 << 20,
        batch_size: int = 4 << 20,
        pipeline_depth: int = 2,
        direct_io: bool = True,
        fsync: bool = True,
        fault_injector: FaultInjector | None = None,
    ) -> None:
        if chunk_size <= 0 or batch_size <= 0 or pipeline_depth <= 0:
            raise ValueError("chunk_size, batch_size and pipeline_depth must be positive")
        self.root = pathlib.Path(root)
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.pipeline_depth = pipeline_depth
        self.direct_io = direct_io
        self._staging = StagingPool(1 << 20)
        self._disk = DiskSteps(fsync=fsync, faults=fault_injector)
        self._blobs_dir = self.root / "blobs"
        self._tmp_dir = self.root / "tmp"
        self._uploads_dir = self.root / "uploads"
        for directory in (self._blobs_dir, self._tmp_dir, self._uploads_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._pins: dict[str, int] = {}
        self._digest_locks = KeyedLocks()
        self._upload_locks = KeyedLocks()
        self._active_parts: set[str] = set()

    # -- paths and blocking helpers (run in worker threads) -------------------------------

    def blob_path(self, digest: str) -> pathlib.Path:
        """The final path of ``digest`` (validated; the file need not exist)."""
        digest = _check_digest(digest)
        return self._blobs_dir / digest[:2] / digest[2:4] / digest

    def _upload_path(self, upload_id: str) -> pathlib.Path:
        return self._uploads_dir / _check_upload_id(upload_id)

    # -- pins -----------------------------------------------------------------------------

    def _add_pin(self, digest: str) -> BlobPin:
        self._pins[digest] = self._pins.get(digest, 0) + 1
        return BlobPin(digest, self._drop_pin)

    def _drop_pin(self, digest: str) -> None:
        count = self._pins[digest] - 1
        if count:
            self._pins[digest] = count
        else:
            del self._pins[digest]

    async def pin(self, digest: str) -> BlobPin:
        """Pin ``digest`` (whether or not it exists) until the returned pin is released.

        Raises:
            InvalidArgumentError: on a malformed digest.
        """
        digest = _check_digest(digest)
        async with self._digest_locks.hold(digest):
            return self._add_pin(digest)

    @contextlib.asynccontextmanager
    async def pinned(self, digest: str) -> AsyncIterator[BlobPin]:
        """``async with store.pinned(digest):`` keeps ``digest`` from being deleted inside."""
        with await self.pin(digest) as pin:
            yield pin

    def pin_count(self, digest: str) -> int:
        """How many pins ``digest`` holds right now."""
        return self._pins.get(digest, 0)

    # -- writing --------------------------------------------------------------------------

    async def write(
        self,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int | None = None,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> WrittenBlob:
        """Store the bytes of ``chunks`` and return their digest, pinned.

        ``chunks`` is consumed as fast as the disk allows (a bounded memory channel's receive
        side slows its sender down); chunks must not be mutated after they are yielded. Bytes
        go to ``tmp/<random>.part`` in batches of ``batch_size`` while being hashed, then the file
        is made read-only, fsynced, renamed to ``blobs/ab/cd/<digest>`` and its directory fsynced.

        Args:
            chunks: the content, in pieces of any size (empty pieces are skipped).
            max_size: fail as soon as more bytes than this arrive.
            expected_sha256: hex SHA-256 the content must have (any case).
            expected_size: exact size the content must have.

        Returns:
            ``WrittenBlob(digest, size, created)``; the caller must release its pin.

        Raises:
            ObjectTooLargeError: more than ``max_size`` bytes (or ``expected_size`` above it).
            InvalidArgumentError: a bad argument, or the size differs from ``expected_size``.
            ChecksumMismatchError: the digest differs from ``expected_sha256``.
            StorageFullError, StorageIOError: the disk failed.
            Anything ``chunks`` raises, unchanged.
            In every error case (and on cancellation) nothing becomes visible and the part
            file is removed.
        """
        expected = _check_sha256(expected_sha256)
        _check_count(max_size, "max_size")
        _check_count(expected_size, "expected_size")
        if max_size is not None and expected_size is not None and expected_size > max_size:
            raise ObjectTooLargeError(f"size {expected_size} exceeds the limit of {max_size} bytes")
        part = self._tmp_dir / f"{secrets.token_hex(16)}{_PART_SUFFIX}"
        self._active_parts.add(part.name)
        fd: int | None = None
        lanes: list[Lane] = []
        writer: StagedWriter | None = None
        try:
            hasher = hashlib.sha256()
            size = flushed = 0
            batch: list[bytes] = []
            writing = hashing = None

            async def ship(pending: list[bytes]) -> None:
                nonlocal fd, writer, writing, hashing
                if writing is None:  # the first full batch: the content streams from now on
                    fd, direct = await run_io("creating a temp file", open_new, part,
                                              self.direct_io)
                    writer = StagedWriter(self._disk, fd, self._staging, direct=direct)
                    # Each batch is written by one lane and hashed by the other, both in
                    # order, while the next batches arrive; at most pipeline_depth in flight.
                    writing, hashing = Lane("writing a blob"), Lane("writing a blob")
                    lanes.extend((writing, hashing))
                writing.submit(writer.write_batch, pending)
                hashing.submit(hash_batch, hasher, pending)
                ahead = writing.submitted - self.pipeline_depth
                if ahead > 0:
                    await writing.wait(ahead)
                    await hashing.wait(ahead)

            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if max_size is not None and size > max_size:
                    raise ObjectTooLargeError(f"content exceeds the limit of {max_size} bytes")
                if expected_size is not None and size > expected_size:
                    raise InvalidArgumentError(f"content exceeds its declared size {expected_size}")
                batch.append(chunk)
                if size - flushed >= self.batch_size:
                    await ship(batch)
                    batch, flushed = [], size
            if expected_size is not None and size != expected_size:
                raise InvalidArgumentError(
                    f"content has {size} bytes, not its declared size {expected_size}"
                )
            if writing is None:
                # All of it arrived within one batch: hash, write and seal it in one worker
                # thread call instead of a dozen hand-offs (small objects pay mostly those).
                digest = await run_io(
                    "writing a blob", self._write_whole, part, batch, hasher, expected
                )
            else:
                assert hashing is not None and writer is not None and fd is not None
                if batch:
                    await ship(batch)
                writing.submit(writer.finish)
                await writing.wait(writing.submitted)
                await hashing.wait(hashing.submitted)
                for lane in lanes:
                    await lane.close()
                lanes.clear()
                digest = hasher.hexdigest()
                _check_content(digest, expected)
                await run_io("syncing a blob", self._disk.seal, fd)
                os.close(fd)
                fd = None
            return await self._publish(part, digest, size)
        except BaseException:
            with trio.CancelScope(shield=True):
                for lane in lanes:
                    await lane.close()  # the threads are done with fd before it is closed
                lanes.clear()
                if writer is not None:
                    writer.release()
                if fd is not None:
                    os.close(fd)
                await trio.to_thread.run_sync(unlink_quietly, part)
            raise
        finally:
            self._active_parts.discard(part.name)

    def _write_whole(
        self, part: pathlib.Path, batch: list[bytes], hasher: Any, expected: str | None
    ) -> str:
        """Hash ``batch`` (checked against ``expected`` before anything is written), write it
        to the new file ``part`` and seal it; blocking, for one worker thread. Returns the
        digest. On error the file is closed (the caller removes it)."""
        hash_batch(hasher, batch)
        digest = hasher.hexdigest()
        _check_content(digest, expected)
        fd, direct = open_new(part, self.direct_io)
        writer = StagedWriter(self._disk, fd, self._staging, direct=direct)
        try:
            writer.write_batch(batch)
            writer.finish()
            self._disk.seal(fd)
        finally:
            writer.release()
            os.close(fd)
        return digest

    async def _publish(self, src: pathlib.Path, digest: str, size: int) -> WrittenBlob:
        """Rename the sealed file ``src`` to ``digest``'s path (or drop it if that exists) and
        fsync the directory, in one worker thread call under the digest's lock."""
        final = self.blob_path(digest)
        async with self._digest_locks.hold(digest):
            pin = self._add_pin(digest)
            try:
                created, dir_error = await run_io("publishing a blob", self._place, src, final)
            except BaseException:
                pin.release()
                raise
            if dir_error is not None:  # the rename may not survive a crash: take it back
                pin.release()
                if created and not self._pins.get(digest):
                    with trio.CancelScope(shield=True):
                        await run_io("deleting a blob", self._disk.delete, final)
                raise storage_error(dir_error, "syncing a blob directory") from dir_error
        return WrittenBlob(digest, size, created, pin)

    def _place(
        self, src: pathlib.Path, final: pathlib.Path
    ) -> tuple[bool, OSError | None]:
        """Blocking part of :meth:`_publish`: ``(renamed, error of the directory fsync)``."""
        self._disk.make_dirs(final.parent)
        created = self._disk.rename_unless_exists(src, final)
        try:
            self._disk.fsync_dir(final.parent)
        except OSError as exc:
            return created, exc
        return created, None

    # -- reading and inspecting -----------------------------------------------------------

    @staticmethod
    def _open_ro(path: pathlib.Path, what: str) -> tuple[int, int]:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise NotFoundError(f"{what} not found") from None
        try:
            return fd, os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise

    async def open_range(self, digest: str, start: int = 0, end: int | None = None) -> BlobReader:
        """Open ``[start, end)`` of a blob for streaming (see :class:`BlobReader`).

        Range rules (API.md ``ByteRange``): ``end`` is exclusive; ``None`` means to the end; an
        ``end`` past the size is clamped; ``start == end`` yields nothing; an empty blob read
        from 0 yields nothing.

        Raises:
            InvalidArgumentError: malformed digest, ``start < 0`` or ``end < start``.
            NotFoundError: no such blob.
            OutOfRangeError: ``start`` at or past the end of a non-empty blob, or past 0 of an
                empty one.
            StorageIOError: the file could not be opened.
        """
        path = self.blob_path(digest)
        if not isinstance(start, int) or start < 0:
            raise InvalidArgumentError("range start must be a non-negative integer")
        if end is not None and (not isinstance(end, int) or end < start):
            raise InvalidArgumentError(f"range end {end} is before its start {start}")
        fd, size = await run_io("opening a blob", self._open_ro, path, "blob")
        if start >= size and (size > 0 or start > 0):
            os.close(fd)
            raise OutOfRangeError(f"range start {start} is at or past the blob's size {size}")
        stop = size if end is None else min(end, size)
        return BlobReader(fd, size, start, stop, self.chunk_size)

    @staticmethod
    def _stat_size(path: pathlib.Path, what: str) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"{what} not found") from None

    async def size(self, digest: str) -> int:
        """The size of a stored blob.

        Raises:
            InvalidArgumentError: malformed digest. NotFoundError: no such blob.
        """
        return await run_io("inspecting a blob", self._stat_size, self.blob_path(digest), "blob")

    async def exists(self, digest: str) -> bool:
        """Whether ``digest`` is stored (malformed digest: InvalidArgumentError)."""
        return await run_io("inspecting a blob", self.blob_path(digest).exists)

    #: One process owns the data dir (``_lock``).
    shared = False

    def iter_locations(self, older_than: float = 0.0) -> Iterator[str]:
        """The byte store seam's scan: a file's location is its digest. ``older_than`` is not
        needed here: in-flight writes pin their digest (see ``delete_if_unpinned``)."""
        return self.iter_digests()

    async def aclose(self) -> None:
        """Nothing to release (file descriptors belong to readers and writes)."""

    def iter_digests(self) -> Iterator[str]:
        """Digests of the files in ``blobs/`` (blocking directory scan; for the reaper, which
        should run it in a worker thread). Files that do not belong there are skipped."""
        for first in _sorted_subdirs(self._blobs_dir):
            for second in _sorted_subdirs(self._blobs_dir / first):
                for name in sorted(os.listdir(self._blobs_dir / first / second)):
                    if _DIGEST_RE.fullmatch(name) and name[:2] == first and name[2:4] == second:
                        yield name

    # -- deleting -------------------------------------------------------------------------

    async def delete_if_unpinned(
        self, digest: str, *, defer_unlink: Callable[[pathlib.Path], None] | None = None
    ) -> bool:
        """Delete ``digest``'s file unless it is pinned.

        Args:
            defer_unlink: if given, the file is only moved to ``tmp/<random>.dead`` here (fast)
                and ``defer_unlink(path)`` is called with its new path, to unlink it later
                (e.g. with :meth:`purge` in a worker thread). The blob is gone either way.

        Returns:
            True if a file was deleted; False if it is pinned or does not exist.

        Raises:
            InvalidArgumentError: malformed digest. StorageIOError: the unlink (or the move)
                failed.
        """
        path = self.blob_path(digest)
        async with self._digest_locks.hold(digest):
            if self._pins.get(digest):
                return False
            if defer_unlink is None:
                return await run_io("deleting a blob", self._disk.delete, path)
            dead = self._tmp_dir / f"{secrets.token_hex(16)}{_DEAD_SUFFIX}"
            if not await run_io("deleting a blob", self._disk.delete, path, dead):
                return False
        defer_unlink(dead)
        return True

    def purge(self, dead: pathlib.Path) -> None:
        """Unlink a file :meth:`delete_if_unpinned` moved aside (blocking: run it in a worker
        thread). ``OSError`` is ignored: ``remove_stale_temp`` retries what is left."""
        with contextlib.suppress(OSError):
            self._disk.step("purge")
        unlink_quietly(dead)

    def _list_stale_parts(self, older_than: float) -> list[str]:
        cutoff = time.time() - older_than
        stale = []
        with os.scandir(self._tmp_dir) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.name.endswith(_DEAD_SUFFIX):
                    stale.append(entry.name)  # deleted already: any age
                elif entry.name.endswith(_PART_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            stale.append(entry.name)
        return stale

    def _unlink_parts(self, names: list[str]) -> int:
        return sum(unlink_existing(self._tmp_dir / name) for name in names)

    async def remove_stale_temp(self, older_than: float) -> int:
        """Remove ``tmp/*.part`` files last modified more than ``older_than`` seconds ago (wall
        clock), except those of writes still running in this store, and every ``tmp/*.dead``
        file (deleted blobs whose unlink a crash cut short).

        Returns:
            How many files were removed.

        Raises:
            InvalidArgumentError: negative ``older_than``. StorageIOError: the scan failed.
        """
        if older_than < 0:
            raise InvalidArgumentError("older_than must be >= 0")
        stale = await run_io("scanning temp files", self._list_stale_parts, older_than)
        stale = [name for name in stale if name not in self._active_parts]
        return await run_io("removing temp files", self._unlink_parts, stale)

    # -- resumable uploads ----------------------------------------------------------------

    def _create_upload(self, path: pathlib.Path) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise AlreadyExistsError("upload already exists") from None
        try:
            self._disk.fsync_fd(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self._disk.fsync_dir(path.parent)

    async def upload_create(self, upload_id: str) -> None:
        """Create the empty, durable file of a new upload.

        Raises:
            InvalidArgumentError: malformed upload id. AlreadyExistsError: it exists.
            StorageFullError, StorageIOError: the disk failed (nothing is left behind).
        """
        path = self._upload_path(upload_id)
        async with self._upload_locks.hold(upload_id):
            await run_io("creating an upload", self._create_upload, path)

    def _append(self, path: pathlib.Path, offset: int, data: bytes) -> int:
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            raise NotFoundError("upload not found") from None
        try:
            size = os.fstat(fd).st_size
            if offset != size:
                raise InvalidArgumentError(f"offset {offset} does not match {size} bytes received")
            if not data:
                return size
            try:
                self._disk.write_at(fd, data, size)
                self._disk.fsync_fd(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
            return size + len(data)
        finally:
            os.close(fd)

    async def upload_append(self, upload_id: str, offset: int, data: bytes) -> int:
        """Append ``data`` at ``offset`` and fsync before returning.

        Returns:
            The new durable size.

        Raises:
            InvalidArgumentError: malformed id, or ``offset`` is not the current size.
            NotFoundError: no such upload.
            StorageFullError, StorageIOError: the disk failed; the file keeps its old size.
        """
        path = self._upload_path(upload_id)
        _check_count(offset, "offset")
        async with self._upload_locks.hold(upload_id):
            return await run_io("appending to an upload", self._append, path, offset, data)

    async def upload_size(self, upload_id: str) -> int:
        """Bytes durably received by an upload (NotFoundError if it does not exist)."""
        path = self._upload_path(upload_id)
        return await run_io("inspecting an upload", self._stat_size, path, "upload")

    def _hash_some(self, fd: int, hasher: Any, offset: int, end: int) -> None:
        while offset < end:
            data = os.pread(fd, min(self.chunk_size, end - offset), offset)
            if not data:
                raise StorageIOError("upload file shrank while it was being hashed")
            hasher.update(data)
            offset += len(data)

    async def _hash_upload(self, path: pathlib.Path) -> tuple[str, int]:
        fd, size = await run_io("opening an upload", self._open_ro, path, "upload")
        try:
            hasher = hashlib.sha256()
            for offset in range(0, size, _HASH_BATCH):
                end = min(offset + _HASH_BATCH, size)
                await run_io("hashing an upload", self._hash_some, fd, hasher, offset, end)
            await run_io("syncing an upload", self._disk.seal, fd)
            return hasher.hexdigest(), size
        finally:
            os.close(fd)

    async def upload_finish(
        self, upload_id: str, *, expected_sha256: str | None = None
    ) -> WrittenBlob:
        """Hash the upload's bytes and move them into ``blobs/`` like :meth:`write`.

        Returns:
            The pinned ``WrittenBlob``; the upload no longer exists.

        Raises:
            InvalidArgumentError: malformed id or ``expected_sha256``.
            NotFoundError: no such upload.
            ChecksumMismatchError: the bytes do not hash to ``expected_sha256``; the upload
                is discarded.
            StorageFullError, StorageIOError: the disk failed; the upload stays resumable
                unless the failure came after the rename (then nothing is visible and the
                upload is gone).
        """
        path = self._upload_path(upload_id)
        expected = _check_sha256(expected_sha256)
        async with self._upload_locks.hold(upload_id):
            try:
                digest, size = await self._hash_upload(path)
                if expected is not None and digest != expected:
                    await run_io("discarding an upload", unlink_quietly, path)
                    raise ChecksumMismatchError(f"upload has SHA-256 {digest}, not {expected}")
                return await self._publish(path, digest, size)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._make_writable, path)
                raise

    @staticmethod
    def _make_writable(path: pathlib.Path) -> None:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)

    async def upload_discard(self, upload_id: str) -> bool:
        """Remove an upload's file. Returns whether it existed (InvalidArgumentError on a
        malformed id)."""
        path = self._upload_path(upload_id)
        async with self._upload_locks.hold(upload_id):
            return await run_io("discarding an upload", unlink_existing, path)

    def iter_upload_ids(self) -> Iterator[str]:
        """Ids of the upload files on disk (blocking scan, for the reaper)."""
        for name in sorted(os.listdir(self._uploads_dir)):
            if _UPLOAD_ID_RE.fullmatch(name):
                yield name
