"""The data-dir lock: at most one storage process writes bytes under a data dir.

Invariants:
- ``run_storage`` holds an exclusive ``flock`` on ``data_dir/anvil.lock`` from before it migrates
  the database until it has stopped; the kernel drops the lock when the process dies, so a
  crashed server never leaves a stale lock behind.
- A second ``run_storage`` on the same dir (another process, or the same process) fails at once
  with :class:`DataDirInUseError`, before touching anything: its start-up reaper pass would
  otherwise delete the first server's in-flight temp and upload files.
- The admin CLI does not take this lock: it only writes metadata rows through SQLite, whose own
  locking serialises it with the server.
"""

from __future__ import annotations

import fcntl
import os
import pathlib

import attrs

from ._errors import DataDirInUseError

LOCK_NAME = "anvil.lock"


@attrs.define
class DataDirLock:
    """An exclusive, non-blocking lock on a data dir. Use as a (sync) context manager.

    Args:
        data_dir: the directory to lock (created if missing).

    Raises:
        DataDirInUseError: on enter, when another holder has the lock.
    """

    data_dir: pathlib.Path
    _fd: int | None = attrs.field(default=None, init=False)

    def acquire(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUseError(
                f"data dir {self.data_dir} is in use by another anvil-trio server"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> "DataDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
