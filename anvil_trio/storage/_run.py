"""Running the storage layer: the data-dir lock, the migration, and the storage supervisor
(metadata actor, then reaper) behind one :class:`~._store.Storage` façade, on the backends the
configuration names (``_backends``).

Invariants:

* ``run_storage`` holds the data-dir lock (``_lock``) for its whole life whenever anything
  lives under the data dir (SQLite or files), migrates the metadata store once before anything
  starts (a fatal schema problem is raised, not retried), and reports ready only after the
  reaper's start-up pass. With PostgreSQL and S3 nothing is local: no lock, no data dir.
* The supervisor's children are the single metadata writer and the reaper; a crash loop of
  either escalates out of ``run_storage``.
* :meth:`Storage.stop` returns only once ``run_storage`` has released the data dir.
* Before a SQLite database is opened, the free space of the data dir is measured: on a full disk
  the ballast is released (so SQLite can create its ``-wal`` and ``-shm`` files and the
  server can start, to serve deletes); otherwise it is created if there is room
  (``_space``); a disk too full for it only leaves it missing.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import attrs
import trio

from .._schedule import Schedule
from ..actors import ChildSpec, Supervisor
from ._backends import open_byte_store, open_metadata_backend, uses_data_dir
from ._faults import FaultInjector
from ._lock import DataDirLock
from ._metadata_actor import MetadataActor
from ._reaper import REAPER_CHILD, ReaperActor, ReaperState, supervise_with_reaper
from ._seams import ByteStore, MetadataBackend
from ._space import SpaceGuard
from ._store import Storage, StorageConfig

__all__ = ["run_storage"]


async def run_storage(
    config: StorageConfig | pathlib.Path | str, *,
    clock: Callable[[], float] = time.time,
    fault_injector: FaultInjector | None = None,
    reaper_schedule: Schedule | None = None,
    task_status: trio.TaskStatus[Storage] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the storage supervisor (metadata actor, then reaper) until stopped or cancelled.

    Storage is reported ready only after the reaper's start-up pass removed what an earlier
    crash left (temp files, unreferenced blob files, expired and orphan uploads).

    Use as ``storage = await nursery.start(run_storage, config)``.

    Args:
        config: a :class:`StorageConfig`, or just the data dir (defaults for the rest).
        clock: wall-clock seconds for timestamps and upload expiry.
        fault_injector: passed to the :class:`BlobStore` (tests).
        reaper_schedule: when periodic reaper passes run (default
            ``Schedule.spaced(config.reaper_interval)``).

    Raises:
        StorageError: the database cannot be used (e.g. written by a newer version); raised
            before ``task_status.started``, after migrating nothing.
        DataDirInUseError: another storage process holds the data dir (see ``_lock``).
        SupervisorEscalationError: the metadata actor or the reaper kept crashing (the last
            crash is the ``__cause__``), also when the start-up pass keeps failing.
    """
    if not isinstance(config, StorageConfig):
        config = StorageConfig(data_dir=config)
    backend = open_metadata_backend(config)
    if not uses_data_dir(config):
        await _run_open(config, backend, SpaceGuard.unmetered(), clock, fault_injector,
                        reaper_schedule, task_status)
        return
    data_dir = config.data_dir
    with DataDirLock(data_dir):
        await trio.to_thread.run_sync(lambda: data_dir.mkdir(parents=True, exist_ok=True))
        # Space first: on a full disk this releases the ballast, without which SQLite could
        # not even create its -wal and -shm files to open the database.
        space = await SpaceGuard.open(
            data_dir, ballast_bytes=config.ballast_bytes, min_free_bytes=config.min_free_bytes,
            check_interval=config.space_check_interval, fsync=config.fsync,
        ) if not config.blob_url else SpaceGuard.unmetered()
        await _run_open(config, backend, space, clock, fault_injector, reaper_schedule,
                        task_status)


async def _run_open(
    config: StorageConfig, backend: MetadataBackend, space: SpaceGuard,
    clock: Callable[[], float], fault_injector: FaultInjector | None,
    reaper_schedule: Schedule | None, task_status: trio.TaskStatus[Storage],
) -> None:
    # Migrate once, here: a fatal schema problem is raised, not retried by the supervisor.
    secret = await trio.to_thread.run_sync(backend.prepare)
    blobs: ByteStore = open_byte_store(config, fault_injector=fault_injector)
    try:
        check = getattr(blobs, "check", None)
        if check is not None:
            await check()  # an unreachable or missing bucket fails the start, clearly
        reaper_state = ReaperState(temp_max_age=config.temp_max_age)
        supervisor = Supervisor(
            [ChildSpec("metadata", lambda: MetadataActor(backend, blobs)),
             ChildSpec(REAPER_CHILD, lambda: ReaperActor(storage, reaper_state),
                       mailbox_size=4)],
            intensity=config.restart_intensity, period=config.restart_period, name="storage",
        )
        reader = backend.open_reader(max_connections=config.read_connections)
        storage = Storage(
            config, metadata=supervisor.ref("metadata"), reader=reader, blobs=blobs,
            token_secret=secret, clock=clock, supervisor=supervisor, space=space,
            backend=backend,
        )
        try:
            schedule = reaper_schedule or Schedule.spaced(config.reaper_interval)
            await supervise_with_reaper(
                supervisor, schedule, task_status=_StartedWith(task_status, storage)
            )
        finally:
            reader.close()
            storage._mark_finished()
    finally:
        with trio.CancelScope(shield=True):
            await blobs.aclose()


@attrs.frozen
class _StartedWith:
    """Relays the supervisor's ``started()`` to our caller, handing over the Storage."""
    task_status: trio.TaskStatus[Storage]
    value: Storage

    def started(self, _value: object = None) -> None:
        self.task_status.started(self.value)
