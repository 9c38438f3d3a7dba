"""Ordered worker lanes: the blocking steps of one blob write, run in a worker thread each,
several steps ahead of the task that feeds them.

A blob write hashes and writes every batch of bytes. Doing each batch as a separate thread
call and waiting for it before taking the next batch makes the write wait for a thread
hand-off (wake a worker, then wake the event loop) on every batch; on a busy machine that
hand-off costs as much as the step itself. A :class:`Lane` keeps one worker thread for the whole
write and a queue in front of it, so the feeding task only waits when it is ``depth`` steps
ahead.

Invariants:

* A lane runs its steps in submission order, one at a time, in its one worker thread.
* After a step fails the lane runs no further step, and every :meth:`Lane.wait` for more steps
  than completed before it raises that failure (an ``OSError`` as :class:`StorageFullError` /
  :class:`StorageIOError`).
* The worker thread is never abandoned: :meth:`Lane.close` returns (even when cancelled) only
  once the thread has finished the step it is running and exited; steps still queued are
  skipped. So once ``close`` returns, nothing touches the lane's file any more.
* Memory: a lane holds the arguments of its queued steps and nothing else; callers bound it by
  waiting (``wait(submitted - depth)``) before submitting more.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import trio

from ._errors import StorageError
from ._faults import storage_error

__all__ = ["Lane"]

_STOP = None


class Lane:
    """One worker thread running submitted blocking steps in order.

    Create it inside a trio run (it starts its thread at once) and always :meth:`close` it.

    Args:
        what: what the steps do, for error messages (``"writing a blob"``).
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._token = trio.lowlevel.current_trio_token()
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._skip = False  # set by close(): the thread skips the steps still queued
        self._closed = False
        self.submitted = 0
        self.completed = 0
        self._error: BaseException | None = None
        self._progress = trio.Event()
        self._exited = trio.Event()
        trio.lowlevel.start_thread_soon(self._work, self._thread_exited)

    # -- the worker thread

    def _work(self) -> None:
        failed = False
        while True:
            step = self._queue.get()
            if step is _STOP:
                return
            if failed or self._skip:
                continue
            fn, args = step
            try:
                fn(*args)
            except BaseException as exc:  # reported to the loop; the lane stops running steps
                failed = True
                self._token.run_sync_soon(self._step_done, exc)
            else:
                self._token.run_sync_soon(self._step_done, None)
            # An idle lane must not keep its last step's buffers alive (the memory bound
            # counts only the batches in flight).
            del step, fn, args

    def _thread_exited(self, _outcome: object) -> None:
        self._token.run_sync_soon(self._exited.set)

    # -- the event loop's side

    def _step_done(self, error: BaseException | None) -> None:
        if error is None:
            self.completed += 1
        elif self._error is None:
            self._error = error
        self._progress.set()
        self._progress = trio.Event()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` to run after every step submitted before it.

        Raises:
            RuntimeError: the lane is closed.
        """
        if self._closed:
            raise RuntimeError("submit() on a closed lane")
        self.submitted += 1
        self._queue.put((fn, args))

    async def wait(self, count: int) -> None:
        """Wait until at least ``count`` steps have completed.

        Raises:
            StorageFullError, StorageIOError: a step raised ``OSError`` (chained to it), and
                fewer than ``count`` steps completed before it.
            StorageError: a step raised one, unchanged (same condition).
            Whatever else a step raised, unchanged (same condition).
        """
        while self.completed < count:
            error = self._error
            if error is not None:
                if isinstance(error, OSError) and not isinstance(error, StorageError):
                    raise storage_error(error, self._what) from error
                raise error
            await self._progress.wait()

    async def close(self) -> None:
        """Skip the steps not yet started, and wait (shielded) until the thread has exited."""
        if not self._closed:
            self._closed = True
            self._skip = self.completed < self.submitted
            self._queue.put(_STOP)
        with trio.CancelScope(shield=True):
            await self._exited.wait()
