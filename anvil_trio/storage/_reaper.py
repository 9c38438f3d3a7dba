"""The reaper: reclaims what failed, crashed or abandoned writes left on disk.

A pass removes, in this order: stale temp files (``tmp/*.part``), expired upload sessions
(their rows, then their files), upload files that have no session row, and blob files that no
metadata references; then it measures free space, which recreates the ballast once there is
room again (or releases it on a nearly full disk; see ``_space``). The reaper is a supervised actor (:class:`ReaperActor`, child
``"reaper"`` of the storage supervisor, restarted on a crash like the metadata actor); passes
are its messages, so two passes never overlap. A small driver task
(:func:`supervise_with_reaper`) asks for a pass whenever the reaper's ``Schedule`` says so,
sleeping with ``trio.sleep_until``.

Invariants:

* The reaper never deletes a blob file itself. It only asks the metadata actor
  (``Storage.reclaim_blob``), which deletes a file only when its reference count is zero and
  no in-flight write pins it. A file that gains a reference meanwhile is kept.
* An upload file without a session row is garbage: rows are created before their file and
  removed before (or with) it. Expired sessions lose their row first, then their file; a
  crash in between leaves a file without a row, which the next pass removes.
* Deciding that a temp file is stale:

  - At start-up (the first incarnation in this process, inside ``on_start``, so before
    ``run_storage`` reports ready) every ``tmp/*.part`` is stale: no caller holds the
    :class:`Storage` yet, so no write of this process can be running, and any part file was
    left by an earlier process that died mid-write. The start-up pass uses ``older_than=0``.
  - Later passes remove a part file only if its mtime is more than ``temp_max_age`` seconds
    old (wall clock) *and* it does not belong to a write still running in this process.
  - This assumes one storage process per data dir (the admin CLI writes metadata rows, never
    bytes). A second process writing blobs into the same data dir would need its own lock.

* Likewise at start-up every unreferenced blob file is garbage (no write can hold a pin yet);
  later passes rely on pins to spare the files of writes in flight.
* A shared byte store (S3, several nodes): at start-up, too, only what is older than
  ``temp_max_age`` is stale (unfinished multipart uploads, unreferenced objects), because
  another node may be writing; and a pass runs only while this node holds the metadata
  store's reaper lease (one reaper at a time across nodes; a node without it skips the pass).
* The start-up pass runs once per process: a restarted reaper goes straight to periodic work.
  A start-up pass that fails crashes the reaper, which is retried by the supervisor (and
  escalates, failing ``run_storage``, past the restart intensity).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._schedule import Continue, Schedule
from ..actors import Actor, ActorRef, ActorStoppedError, ActorUnavailableError, Supervisor
from ._errors import StorageError

if TYPE_CHECKING:  # _store imports this module; the annotations only need the name
    from ._store import Storage

__all__ = [
    "REAPER_CHILD",
    "ReapNow",
    "ReapReport",
    "ReaperActor",
    "ReaperState",
    "drive_reaper",
    "reap_once",
    "supervise_with_reaper",
]

logger = logging.getLogger("anvil_trio.storage.reaper")

#: The reaper's child name under the storage supervisor.
REAPER_CHILD = "reaper"


@attrs.frozen
class ReapReport:
    """What one reaper pass removed (counts).

    Attributes:
        temp_files: stale ``tmp/*.part`` files deleted.
        expired_uploads: expired upload sessions removed (row and file).
        orphan_uploads: upload files deleted because they had no session row.
        blobs_reclaimed: unreferenced blob files deleted (through the metadata actor).
        blobs_kept: unreferenced-looking blob files kept (pinned by a write in flight, or
            referenced again by the time the metadata actor looked).
        startup: whether this was the start-up pass (every temp file counted as stale).
        skipped: another node held the reaper lease, so this pass did nothing.
    """

    temp_files: int = 0
    expired_uploads: int = 0
    orphan_uploads: int = 0
    blobs_reclaimed: int = 0
    blobs_kept: int = 0
    startup: bool = False
    skipped: bool = False

    @property
    def removed(self) -> int:
        """Everything this pass deleted."""
        return self.temp_files + self.expired_uploads + self.orphan_uploads + self.blobs_reclaimed


@attrs.frozen
class ReapNow:
    """Ask the reaper for one periodic pass (reply: :class:`ReapReport`)."""


@attrs.define
class ReaperState:
    """What survives a reaper restart: whether the start-up pass is still to run.

    Args:
        temp_max_age: seconds after which a part file of a periodic pass is stale.
    """

    temp_max_age: float
    startup_pending: bool = True


async def reap_once(
    storage: Storage, *, temp_older_than: float, startup: bool = False
) -> ReapReport:
    """Run one pass (see the module docstring for the order and the safety rules).

    Args:
        storage: the storage whose data dir is cleaned.
        temp_older_than: part files last modified longer ago than this (seconds) are stale.
        startup: only recorded in the report.

    Returns:
        The counts of what was removed.

    Raises:
        StorageError: a scan or delete failed, or the metadata actor is unavailable; what
            was removed before the failure stays removed, the rest waits for the next pass.
    """
    async with storage.reaper_turn() as mine:
        if not mine:
            return ReapReport(startup=startup, skipped=True)
        temp_files = await storage.blobs.remove_stale_temp(temp_older_than)
        expired = len(await storage.expire_uploads())
        orphans = 0
        for upload_id in await storage.orphan_upload_ids():
            if await storage.blobs.upload_discard(upload_id):
                orphans += 1
        reclaimed = kept = 0
        # Files are spared by pins; a shared store's other writers only by their age.
        unreferenced_age = temp_older_than if storage.blobs.shared else 0.0
        for location in await storage.unreferenced_digests(unreferenced_age):
            if await storage.reclaim_blob(location):
                reclaimed += 1
            else:
                kept += 1
        await storage.check_space()
    return ReapReport(temp_files, expired, orphans, reclaimed, kept, startup)


class ReaperActor(Actor):
    """The supervised reaper. ``on_start`` runs the start-up pass once per process; each
    :class:`ReapNow` message runs a periodic pass and replies with its :class:`ReapReport`.

    Args:
        storage: the storage to clean (its metadata actor must start before this child).
        state: shared with later incarnations (see :class:`ReaperState`).

    A :class:`StorageError` during a periodic pass is replied to the asker; anything else
    crashes the reaper and the supervisor restarts it.
    """

    reply_errors = (StorageError,)

    def __init__(self, storage: Storage, state: ReaperState) -> None:
        self._storage = storage
        self._state = state

    async def on_start(self) -> None:
        state = self._state
        if not state.startup_pending:
            return
        shared = self._storage.blobs.shared
        report = await reap_once(self._storage, startup=True,
                                 temp_older_than=state.temp_max_age if shared else 0.0)
        state.startup_pending = False
        if report.removed:
            logger.info("start-up reaper pass: %s", report)

    async def receive(self, message: Any) -> Any:
        if not isinstance(message, ReapNow):
            return await super().receive(message)
        report = await reap_once(self._storage, temp_older_than=self._state.temp_max_age)
        if report.removed:
            logger.info("reaper pass: %s", report)
        return report


async def drive_reaper(ref: ActorRef, schedule: Schedule) -> None:
    """Ask ``ref`` for a pass each time ``schedule`` continues, until it says ``DONE`` or the
    reaper is stopped for good.

    The schedule is stepped at ``trio.current_time()`` with the last pass's report (or the
    error it raised) as input, and the driver sleeps with ``trio.sleep_until(at)``; so
    ``Schedule.spaced(d)`` runs a pass ``d`` seconds after the previous one ended. A pass that
    fails, or a reaper that is down, is logged and skipped: the next one comes on schedule.
    """
    driver = schedule.driver()
    last: Any = None
    while True:
        decision = driver.next(last, now=trio.current_time())
        if not isinstance(decision, Continue):
            return
        await trio.sleep_until(decision.at)
        try:
            last = await ref.ask(ReapNow(), timeout=None)
        except ActorStoppedError:
            return
        except (ActorUnavailableError, StorageError) as exc:
            logger.warning("reaper pass skipped: %r", exc)
            last = exc


@attrs.frozen
class _OnStarted:
    """A ``task_status`` stand-in that calls ``callback`` when the supervisor is ready."""

    callback: Callable[[], None]

    def started(self, _value: object = None) -> None:
        self.callback()


async def supervise_with_reaper(
    supervisor: Supervisor, schedule: Schedule, *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``supervisor`` (which must have a ``"reaper"`` child) and, once it reports ready,
    :func:`drive_reaper` beside it, until the supervisor ends.

    Args:
        supervisor: the storage supervisor.
        schedule: when periodic passes run.
        task_status: told ``started()`` when the supervisor is (so after the start-up pass).

    Raises:
        Whatever ``supervisor.run`` raises, unwrapped from the nursery's exception group
        (e.g. :class:`~anvil_trio.actors.SupervisorEscalationError`).
    """
    try:
        async with trio.open_nursery() as nursery:

            def ready() -> None:
                nursery.start_soon(drive_reaper, supervisor.ref(REAPER_CHILD), schedule,
                                   name=f"{supervisor.name}/reaper-schedule")
                task_status.started()

            await supervisor.run(task_status=_OnStarted(ready))
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise
