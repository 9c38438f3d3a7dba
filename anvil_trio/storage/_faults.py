"""The blob store's disk steps, and the fault injector that can fail any of them.

:class:`DiskSteps` holds every blocking file operation of :class:`~anvil_trio.storage.BlobStore`
(callers run them in worker threads, through :func:`run_io`). Each consults an optional
:class:`FaultInjector` first: before every file write, every file ``fsync``, the rename into
``blobs/``, every directory ``fsync`` and the unlink of a blob. A matching fault raises
``OSError(errno, ...)`` exactly like the kernel would, so the store's real error handling runs;
nothing is monkeypatched. :func:`run_io` turns ``OSError`` into storage errors: ``ENOSPC`` is
``StorageFullError``, anything else ``StorageIOError``, chained to the ``OSError``.

Invariants:
- An injector with no fault configured never raises; with ``fsync=False`` the fsync steps are
  still announced to the injector but not performed.
- ``fail_after_bytes=N`` fails the first write that would carry a file past ``N`` bytes; the
  bytes before ``N`` in that write are *not* written (the whole write fails), so a failed file
  never holds more than ``N`` bytes.
- ``fail_at=step`` fails the named step. The first ``skip`` matching occasions pass (so
  ``fail_at="dir_fsync", skip=2`` fails the third directory fsync). Faults fire at most ``times``
  times in total (``None``: every time); ``fired`` counts how many were raised.
- Subclasses may override the hooks (e.g. to block a step on a ``threading.Event``); they run
  in the worker thread doing the step.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_module
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import attrs
import trio

from ._errors import StorageError, StorageFullError, StorageIOError

_T = TypeVar("_T")

FaultStep = Literal["write", "fsync", "rename", "dir_fsync", "unlink", "purge"]
"""The steps at which a fault can be injected."""

#: ``SYNC_FILE_RANGE_WRITE`` of Linux ``<fcntl.h>``: start writeback of dirty pages, no wait.
_SYNC_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` on Linux (the ``os`` module has no wrapper), else None.

    Called through ctypes, which releases the GIL; its return value is ignored (it is only a
    hint to start writeback early, durability comes from the fsync)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range()

_STEPS: frozenset[str] = frozenset({"write", "fsync", "rename", "dir_fsync", "unlink", "purge"})


def _check_step(_instance: object, _attribute: object, value: str | None) -> None:
    if value is not None and value not in _STEPS:
        raise ValueError(f"fail_at must be one of {sorted(_STEPS)}, not {value!r}")


def _check_times(_instance: object, attribute: Any, value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0")


@attrs.define
class FaultInjector:
    """Raise ``OSError`` at a chosen byte offset or step of the blob store's file I/O.

    Args:
        fail_after_bytes: fail a write that would take the file being written past this many
            bytes (counted per file, from its start). ``None``: no byte-offset fault.
        fail_at: fail this step (``"write"``, ``"fsync"``, ``"rename"``, ``"dir_fsync"``,
            ``"unlink"``, ``"purge"``). ``None``: no step fault.
        skip: let this many matching occasions pass before the first fault.
        errno: the ``errno`` of the raised ``OSError`` (default ``EIO``; ``ENOSPC`` simulates
            a full disk).
        times: how many faults to raise in total before going quiet (``None``: unlimited).

    Raises:
        ValueError: on an unknown step or a negative ``times`` or ``skip``.
    """

    fail_after_bytes: int | None = attrs.field(default=None, kw_only=True)
    fail_at: str | None = attrs.field(default=None, kw_only=True, validator=_check_step)
    errno: int = attrs.field(default=errno_module.EIO, kw_only=True)
    times: int | None = attrs.field(default=1, kw_only=True, validator=_check_times)
    skip: int = attrs.field(default=0, kw_only=True, validator=_check_times)
    fired: int = attrs.field(default=0, init=False)
    skipped: int = attrs.field(default=0, init=False)

    def _armed(self) -> bool:
        return self.times is None or self.fired < self.times

    def _raise(self, what: str) -> None:
        if self.skipped < self.skip:
            self.skipped += 1
            return
        self.fired += 1
        raise OSError(self.errno, f"{os.strerror(self.errno)} (injected at {what})")

    def before_write(self, offset: int, length: int) -> None:
        """Called before writing ``length`` bytes at file position ``offset``.

        Raises:
            OSError: when the write would end past ``fail_after_bytes``, or ``fail_at`` is
                ``"write"``.
        """
        if not self._armed():
            return
        if self.fail_at == "write":
            self._raise(f"write at offset {offset}")
        elif self.fail_after_bytes is not None and offset + length > self.fail_after_bytes:
            self._raise(f"byte {self.fail_after_bytes}")

    def before_step(self, step: FaultStep) -> None:
        """Called before ``"fsync"``, ``"rename"``, ``"dir_fsync"``, ``"unlink"`` (deleting a
        blob: the unlink, or the move aside of a deferred one) or ``"purge"`` (a deferred
        unlink).

        Raises:
            OSError: when ``fail_at`` names this step.
        """
        if self._armed() and self.fail_at == step:
            self._raise(step)


def storage_error(err: OSError, what: str) -> StorageError:
    """The storage error for ``err``: ``StorageFullError`` on ENOSPC, else ``StorageIOError``."""
    if err.errno == errno_module.ENOSPC:
        return StorageFullError(f"storage is full ({what})")
    return StorageIOError(f"I/O error while {what}: {err.strerror or err}")


async def run_io(what: str, fn: Callable[..., _T], *args: Any) -> _T:
    """Run blocking ``fn(*args)`` in a worker thread (never abandoned on cancellation).

    Raises:
        StorageError: whatever ``fn`` raised of it, unchanged.
        StorageFullError, StorageIOError: for an ``OSError``, chained to it; ``what`` (e.g.
            ``"writing a blob"``) goes into the message.
    """
    try:
        return await trio.to_thread.run_sync(fn, *args)
    except StorageError:
        raise
    except OSError as err:
        raise storage_error(err, what) from err


def unlink_existing(path: pathlib.Path) -> bool:
    """Unlink ``path``; return False if it did not exist."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def unlink_quietly(path: pathlib.Path) -> None:
    """Unlink ``path`` if it exists, ignoring every ``OSError`` (for cleanup paths)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def hash_batch(hasher: Any, batch: list[bytes]) -> None:
    """Feed the chunks of ``batch`` to ``hasher`` in order (``hashlib`` releases the GIL on
    large inputs, so this overlaps with a write in another thread)."""
    for chunk in batch:
        hasher.update(chunk)


@attrs.frozen
class DiskSteps:
    """Blocking file operations, each announced to ``faults`` first (call from worker threads).

    Args:
        fsync: really fsync files and directories.
        faults: the injector to consult, or None.
    """

    fsync: bool = True
    faults: FaultInjector | None = None

    def step(self, step: FaultStep) -> None:
        """Announce ``step`` to the injector (which may raise ``OSError``)."""
        if self.faults is not None:
            self.faults.before_step(step)

    def write_at(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (``pwrite`` until done)."""
        if self.faults is not None:
            self.faults.before_write(offset, len(data))
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written

    def write_batch(self, fd: int, batch: list[bytes], offset: int) -> None:
        """Write the chunks of ``batch`` one after another from ``offset``; then (when fsyncing,
        on Linux) start the kernel's writeback of those bytes, so the final fsync finds little
        left to do. Durability still comes only from that fsync. Hashing is separate
        (:func:`hash_batch`), so the two can run at once in different threads."""
        start = offset
        for chunk in batch:
            self.write_at(fd, chunk, offset)
            offset += len(chunk)
        if self.fsync and _SYNC_FILE_RANGE is not None and offset > start:
            _SYNC_FILE_RANGE(fd, start, offset - start, _SYNC_WRITE)

    def fsync_fd(self, fd: int) -> None:
        """fsync an open file."""
        self.step("fsync")
        if self.fsync:
            os.fsync(fd)

    def fsync_dir(self, directory: pathlib.Path) -> None:
        """fsync a directory, making the entries in it durable."""
        self.step("dir_fsync")
        if self.fsync:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def seal(self, fd: int) -> None:
        """Make an open file read-only (0o444) and fsync it."""
        os.fchmod(fd, 0o444)
        self.fsync_fd(fd)

    def make_dirs(self, directory: pathlib.Path) -> None:
        """Create ``directory`` and missing parents, fsyncing the parent of each one created."""
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            self.fsync_dir(path.parent)

    def rename_unless_exists(self, src: pathlib.Path, final: pathlib.Path) -> bool:
        """Rename ``src`` to ``final``, or unlink ``src`` if ``final`` exists; True if renamed.

        Not atomic against other renames of ``final``: callers serialise per target.
        """
        if final.exists():
            src.unlink()
            return False
        self.step("rename")
        os.rename(src, final)
        return True

    def delete(self, path: pathlib.Path, dead: pathlib.Path | None = None) -> bool:
        """Unlink a final blob file, or with ``dead``, rename it there (to unlink later); False
        if it did not exist."""
        self.step("unlink")
        if dead is None:
            return unlink_existing(path)
        try:
            os.rename(path, dead)
        except FileNotFoundError:
            return False
        return True
