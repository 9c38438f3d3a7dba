"""Free space on the data dir's file system: the write floor and the ballast file.

A full disk must never lock the user out: deleting is how space comes back, and a delete
needs a little room itself (SQLite appends the transaction to its WAL before anything is
freed). Two mechanisms keep that room.

* **The floor** (``min_free_bytes``). A write that adds bytes (an object's or blob's content,
  an upload's chunks, a new upload or bucket) is admitted only while the *effective free
  space*, minus the bytes it is about to add, stays at or above the floor; otherwise it gets
  :class:`StorageFullError` (RESOURCE_EXHAUSTED), before the metadata store runs out of
  room. Reads, lists and deletes are never refused for space.
* **The ballast** (``ballast_bytes``): ``data_dir/ballast``, a file of real allocated blocks
  (``posix_fallocate``, or zeros written where that is unsupported; fsynced), never counted as
  user data and never read. When something else fills the disk anyway (another process, or
  concurrent writes racing past the floor) and space runs out, the ballast is unlinked, so
  the deletes that free space have room for their metadata transaction.

Invariants (``F`` = ``min_free_bytes``, ``B`` = ``ballast_bytes``, ``free`` = what ``statvfs``
reports available):

* effective free = ``free`` − bytes admitted since that measurement − (``B`` while the ballast
  is missing). The ballast's room stays reserved whether or not its file exists, so
  releasing it never reopens writes: only deletes may use it.
* The ballast is released when a measurement finds ``free < F // 2`` or when any storage
  operation hits ENOSPC (:meth:`SpaceGuard.on_full`); it is recreated once a measurement finds
  ``free >= F + B`` (then the floor still holds after it is back). Between the two it stays as
  it is (hysteresis), and writes are refused until it is back.
* Measurements are cached for ``check_interval`` seconds (a ``statvfs`` in a worker thread,
  at most once per interval on the hot path); bytes admitted meanwhile are subtracted from
  the cached value, so a fast large write cannot run past the floor between two measurements.
  A write the estimate would refuse re-measures first if the measurement is older than
  ``min(check_interval, 0.1)`` s. :meth:`SpaceGuard.invalidate` (after deletes) forces the
  next check to measure.
* A measurement does not see bytes a write admitted but has not written yet. A write admits
  through a :class:`Reservation` that knows its writer's memory bound (``batches ×
  (batch_size + largest chunk)``): after each measurement every open reservation still counts
  as unmeasured its admitted bytes not received yet (a declared size is admitted whole at the
  start) plus ``min(received, bound)``. So the estimate never undercounts (while the writer
  keeps its bound), and overcounts by at most one bound per write in flight, until the next
  measurement after it ends. Writes of declared size are admitted first come, first served;
  streamed ones chunk by chunk (several of those racing at the floor may all be refused).
* The decision is a pure function of one measurement (:func:`decide`), tested without a disk.
* ``B = 0`` disables the ballast, ``F = 0`` the floor (ENOSPC is then the only signal).
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import logging
import os
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Literal

import attrs
import trio

from ._errors import StorageError, StorageFullError
from ._faults import run_io, unlink_quietly

__all__ = [
    "BALLAST_NAME",
    "Reservation",
    "SpaceDecision",
    "SpaceGuard",
    "SpacePolicy",
    "SpaceStats",
    "decide",
    "hit_enospc",
]

logger = logging.getLogger("anvil_trio.storage.space")

#: The ballast file's name in the data dir (``<name>.tmp`` while it is being created).
BALLAST_NAME = "ballast"

MiB = 1 << 20
#: Defaults when a size is not configured: a fraction of the file system, capped.
#: 16 MiB: a delete needs a few WAL pages; SQLite checkpoints its WAL at 1000 pages (4 MiB),
#: so this covers the WAL growing to its checkpoint size several times over, plus the -shm.
DEFAULT_BALLAST_CAP = 16 * MiB
DEFAULT_FLOOR_CAP = 128 * MiB
_FILL_CHUNK = 1 * MiB


@attrs.frozen(kw_only=True)
class SpacePolicy:
    """Sizes of the ballast and the floor (bytes), and the thresholds derived from them.

    Args:
        ballast_bytes: the ballast file's size ``B`` (0: no ballast).
        min_free_bytes: the write floor ``F`` (0: no floor).
    """

    ballast_bytes: int = attrs.field(validator=attrs.validators.ge(0))
    min_free_bytes: int = attrs.field(validator=attrs.validators.ge(0))

    @classmethod
    def for_disk(
        cls, total_bytes: int, *, ballast_bytes: int | None = None,
        min_free_bytes: int | None = None,
    ) -> SpacePolicy:
        """The policy for a file system of ``total_bytes``: ``None`` sizes default to
        ``B = min(16 MiB, total // 100)`` and ``F = min(128 MiB, total // 50)``."""
        if ballast_bytes is None:
            ballast_bytes = min(DEFAULT_BALLAST_CAP, total_bytes // 100)
        if min_free_bytes is None:
            min_free_bytes = min(DEFAULT_FLOOR_CAP, total_bytes // 50)
        return cls(ballast_bytes=ballast_bytes, min_free_bytes=min_free_bytes)

    @property
    def release_below(self) -> int:
        """A measured ``free`` below this releases the ballast: ``F // 2``."""
        return self.min_free_bytes // 2

    @property
    def recreate_at(self) -> int:
        """A measured ``free`` at or above this recreates the ballast: ``F + B``."""
        return self.min_free_bytes + self.ballast_bytes


@attrs.frozen
class SpaceDecision:
    """What one measurement means: the effective free space and what to do with the ballast."""

    effective_free: int
    action: Literal["release", "create"] | None = None


def decide(
    policy: SpacePolicy, free: int, *, ballast_present: bool, admitted: int = 0
) -> SpaceDecision:
    """Decide from one measurement (pure; see the module docstring for the rules).

    Args:
        free: bytes ``statvfs`` reports available.
        ballast_present: whether the ballast file exists, fully allocated.
        admitted: bytes admitted to writes since ``free`` was measured.

    Returns:
        The effective free space after the decided action, and the action.
    """
    action: Literal["release", "create"] | None = None
    if policy.ballast_bytes:
        if ballast_present and free < policy.release_below:
            action = "release"
            ballast_present = False
            free += policy.ballast_bytes
        elif not ballast_present and free >= policy.recreate_at:
            action = "create"
            ballast_present = True
            free -= policy.ballast_bytes
    reserved = 0 if ballast_present or not policy.ballast_bytes else policy.ballast_bytes
    return SpaceDecision(free - admitted - reserved, action)


def admits(policy: SpacePolicy, effective_free: int, nbytes: int) -> bool:
    """Whether a write of ``nbytes`` more keeps the effective free space at the floor (pure)."""
    return effective_free - nbytes >= policy.min_free_bytes


def hit_enospc(exc: BaseException) -> bool:
    """Whether a :class:`StorageFullError` came from the disk (an ENOSPC ``OSError`` or SQLite's
    "database or disk is full"), not from the floor refusing a write."""
    cause = exc.__cause__
    if isinstance(cause, OSError):
        return cause.errno == errno_module.ENOSPC
    return isinstance(cause, sqlite3.Error)


@attrs.define(eq=False)
class Reservation:
    """One in-flight write: the bytes admitted for it, the bytes received so far, and how
    many of those its writer may still hold in memory (so not on disk, not in a measurement):
    at most ``batches`` batches of ``batch_size`` bytes plus one chunk each. Use
    ``SpaceGuard.reserve`` to get one."""

    batches: int
    batch_size: int
    admitted: int = 0
    received: int = 0
    largest_chunk: int = 0

    def passed(self, nbytes: int) -> int:
        """Record a received piece; returns how many received bytes are not admitted yet."""
        self.received += nbytes
        self.largest_chunk = max(self.largest_chunk, nbytes)
        return max(self.received - self.admitted, 0)

    def unmeasured(self) -> int:
        """Bytes of this write a measurement may have missed."""
        held = self.batches * (self.batch_size + self.largest_chunk)
        return max(self.admitted - self.received, 0) + min(self.received, held)


@attrs.frozen
class SpaceStats:
    """A snapshot of the guard (bytes; ``measured_free`` as of the last ``statvfs``)."""

    policy: SpacePolicy
    total_bytes: int
    measured_free: int
    effective_free: int
    ballast_present: bool
    ballast_releases: int
    ballast_creations: int
    refusals: int


# ---------------------------------------------------------------- blocking file operations


def _measure(path: pathlib.Path) -> tuple[int, int]:
    """``(available, total)`` bytes of the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _ballast_present(path: pathlib.Path, size: int) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    # Fully allocated: a sparse or truncated file reserves nothing.
    return st.st_size == size and st.st_blocks * 512 >= size


def _allocate(fd: int, size: int) -> None:
    """Give ``fd`` ``size`` bytes of real blocks: ``posix_fallocate``, else written zeros."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno_module.EOPNOTSUPP, errno_module.EINVAL, errno_module.ENOSYS):
            raise
    zeros = bytes(min(_FILL_CHUNK, size))
    offset = 0
    while offset < size:
        offset += os.pwrite(fd, zeros[:size - offset], offset)


def _create_ballast(path: pathlib.Path, size: int, fsync: bool) -> bool:
    """Create the ballast via ``<path>.tmp`` + rename; False (nothing left) if there is no
    room. Other ``OSError`` propagates (after the temp file is removed)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                     0o600)
        try:
            _allocate(fd, size)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if fsync:
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        unlink_quietly(tmp)
        if exc.errno == errno_module.ENOSPC:
            return False
        raise
    return True


def _prepare_ballast(path: pathlib.Path, size: int) -> bool:
    """At start-up: drop a leftover ``.tmp`` and a ballast of the wrong size; whether a good
    one is present."""
    unlink_quietly(path.with_name(path.name + ".tmp"))
    if _ballast_present(path, size) and size:
        return True
    unlink_quietly(path)
    return False


# ------------------------------------------------------------------------------ the driver


class SpaceGuard:
    """Admits writes against the floor and keeps the ballast (see the module docstring).

    Build it with :meth:`open` (measures the disk, creates the ballast if there is room).

    Args:
        data_dir: the storage's data dir (the ballast lives at ``data_dir/ballast``).
        policy: the sizes.
        total_bytes: the file system's size (for statistics).
        check_interval: seconds a measurement is trusted (0: measure on every check).
        fsync: fsync the ballast when creating it.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self, data_dir: pathlib.Path, policy: SpacePolicy, *, total_bytes: int,
        check_interval: float = 1.0, fsync: bool = True,
        clock: Callable[[], float] = time.monotonic, metered: bool = True,
    ) -> None:
        self.policy = policy
        self.metered = metered
        self.ballast_path = pathlib.Path(data_dir) / BALLAST_NAME
        self._dir = pathlib.Path(data_dir)
        self._total = total_bytes
        self._interval = check_interval
        self._fsync = fsync
        self._clock = clock
        self._lock = trio.Lock()
        self._measured_at = -float("inf")
        self._measured_free = 0
        self._admitted = 0
        self._open: set[Reservation] = set()
        self._ballast = False
        self._releases = 0
        self._creations = 0
        self._refusals = 0

    @classmethod
    async def open(
        cls, data_dir: pathlib.Path, *, ballast_bytes: int | None = None,
        min_free_bytes: int | None = None, check_interval: float = 1.0, fsync: bool = True,
    ) -> SpaceGuard:
        """Measure the data dir's file system, size the policy (``None``: the defaults of
        :meth:`SpacePolicy.for_disk`), tidy a leftover ballast and create it if there is room.

        Raises:
            StorageIOError: the data dir cannot be measured or the ballast not be created
                (other than for lack of room, which only leaves it missing).
        """
        _, total = await run_io("measuring free space", _measure, data_dir)
        policy = SpacePolicy.for_disk(
            total, ballast_bytes=ballast_bytes, min_free_bytes=min_free_bytes
        )
        guard = cls(data_dir, policy, total_bytes=total, check_interval=check_interval,
                    fsync=fsync)
        guard._ballast = await run_io(
            "checking the ballast", _prepare_ballast, guard.ballast_path, policy.ballast_bytes
        )
        await guard.refresh(force=True)
        if policy.ballast_bytes and not guard._ballast:
            logger.warning("no room for the %d-byte ballast in %s; writes stay refused until "
                           "space is freed", policy.ballast_bytes, data_dir)
        return guard

    @classmethod
    def unmetered(cls) -> SpaceGuard:
        """A guard for a byte store that is not a local disk (S3): no floor, no ballast, no
        measurement; it admits every write and its statistics stay zero."""
        return cls(pathlib.Path("."), SpacePolicy(ballast_bytes=0, min_free_bytes=0),
                   total_bytes=0, metered=False)

    # -- measuring

    def invalidate(self) -> None:
        """Make the next check measure (call after space may have been freed)."""
        self._measured_at = -float("inf")

    def _fresh(self, max_age: float) -> bool:
        return self._clock() - self._measured_at < max_age

    def _effective(self) -> int:
        reserved = self.policy.ballast_bytes if not self._ballast else 0
        return self._measured_free - self._admitted - reserved

    async def refresh(self, *, force: bool = False, max_age: float | None = None) -> int:
        """Measure (unless a measurement younger than ``max_age``, default ``check_interval``,
        exists and ``force`` is off), release or recreate the ballast as :func:`decide` says,
        and return the effective free space.

        Raises:
            StorageIOError: ``statvfs`` or the ballast's creation failed.
        """
        if not self.metered:
            return 0
        age = self._interval if max_age is None else max_age
        if not force and self._fresh(age):
            return self._effective()
        async with self._lock:
            if not force and self._fresh(age):
                return self._effective()
            started = self._clock()
            free, _ = await run_io("measuring free space", _measure, self._dir)
            decision = decide(self.policy, free, ballast_present=self._ballast)
            if decision.action == "release":
                await self._release()
                free, _ = await run_io("measuring free space", _measure, self._dir)
            elif decision.action == "create":
                size = self.policy.ballast_bytes
                if await run_io("creating the ballast", _create_ballast, self.ballast_path,
                                size, self._fsync):
                    self._ballast = True
                    self._creations += 1
                    logger.info("ballast of %d bytes made in %s (room for deletes on a full disk)",
                                size, self._dir)
                free, _ = await run_io("measuring free space", _measure, self._dir)
            self._measured(free, started)
            return self._effective()

    def _measured(self, free: int, at: float) -> None:
        self._measured_free = free
        self._measured_at = at
        self._admitted = sum(r.unmeasured() for r in self._open)

    async def _release(self) -> None:
        await run_io("releasing the ballast", unlink_quietly, self.ballast_path)
        if self._ballast:
            self._releases += 1
            logger.warning("disk nearly full: ballast released in %s; writes are refused "
                           "until space is freed", self._dir)
        self._ballast = False

    # -- the hooks the façade calls

    @contextlib.contextmanager
    def reserve(self, *, batches: int = 1, batch_size: int = 0) -> Iterator[Reservation]:
        """``with guard.reserve(...) as r:`` for one write; pass ``r`` to :meth:`admit` for
        each piece of it. ``batches`` and ``batch_size`` bound what the writer holds in
        memory (the defaults: everything admitted, as for one upload chunk)."""
        reservation = Reservation(batches, batch_size)
        self._open.add(reservation)
        try:
            yield reservation
        finally:
            self._open.discard(reservation)

    async def admit(self, nbytes: int = 0, *, reservation: Reservation | None = None) -> None:
        """Admit a write of ``nbytes`` more (0: a write that adds only a little metadata);
        they count as used until the next measurement.

        Args:
            reservation: the write's :class:`Reservation` (then its bytes also count after
                a measurement, as long as its writer may hold them in memory).

        Raises:
            StorageFullError: it would take the effective free space below the floor.
        """
        if not self.policy.min_free_bytes and not self.policy.ballast_bytes:
            return
        effective = await self.refresh()
        if not admits(self.policy, effective, nbytes):
            effective = await self.refresh(max_age=min(self._interval, 0.1))
        if not admits(self.policy, effective, nbytes):
            self._refusals += 1
            raise StorageFullError(
                f"storage is nearly full: {max(effective, 0)} bytes free, "
                f"{self.policy.min_free_bytes} kept free; delete something or retry later"
            )
        self._admitted += nbytes
        if reservation is not None:
            reservation.admitted += nbytes

    async def on_full(self, exc: BaseException | None = None) -> None:
        """A storage operation failed with ``exc`` (a :class:`StorageFullError`): if it came
        from the disk (:func:`hit_enospc`; ``None`` counts as such), release the ballast at
        once and measure again; a refusal by the floor changes nothing. Never raises."""
        if not self.metered or (exc is not None and not hit_enospc(exc)):
            return
        self.invalidate()
        with trio.CancelScope(shield=True):
            try:
                async with self._lock:
                    await self._release()
                    free, _ = await run_io("measuring free space", _measure, self._dir)
                    self._measured(free, self._clock())
            except StorageError:
                pass  # the next check measures again

    def statistics(self) -> SpaceStats:
        """The current state (no I/O)."""
        return SpaceStats(
            policy=self.policy, total_bytes=self._total, measured_free=self._measured_free,
            effective_free=self._effective(), ballast_present=self._ballast,
            ballast_releases=self._releases, ballast_creations=self._creations,
            refusals=self._refusals,
        )


@contextlib.asynccontextmanager
async def watching(guard: SpaceGuard):  # type: ignore[no-untyped-def]
    """``async with watching(guard):`` reports a :class:`StorageFullError` raised inside to
    :meth:`SpaceGuard.on_full` before it propagates."""
    try:
        yield
    except StorageFullError as exc:
        await guard.on_full(exc)
        raise
