"""Ordered worker lanes (storage/_pipeline.py): order, one thread, failures, bounded close."""

from __future__ import annotations

import errno
import threading

import pytest
import trio

from anvil_trio.storage import InvalidArgumentError, StorageFullError, StorageIOError
from anvil_trio.storage._pipeline import Lane


def raiser(exc: BaseException):
    def step() -> None:
        raise exc

    return step


async def test_steps_run_in_order_in_one_thread() -> None:
    """Submitted steps run one after another, in submission order, all in the same thread
    (never the event loop's), and wait(n) returns once n of them are done."""
    seen: list[tuple[int, int]] = []
    lane = Lane("testing")
    try:
        for index in range(20):
            lane.submit(lambda i=index: seen.append((i, threading.get_ident())))
        await lane.wait(20)
        assert [i for i, _ in seen] == list(range(20))
        assert len({ident for _, ident in seen}) == 1
        assert seen[0][1] != threading.get_ident()
        assert (lane.submitted, lane.completed) == (20, 20)
    finally:
        await lane.close()


async def test_a_failed_step_stops_the_lane_and_every_wait_raises_it() -> None:
    """An OSError becomes the storage error for its errno; the steps after it never run."""
    ran: list[int] = []

    lane = Lane("writing a blob")
    try:
        lane.submit(ran.append, 1)
        lane.submit(raiser(OSError(errno.ENOSPC, "no space")))
        lane.submit(ran.append, 3)
        await lane.wait(1)
        for _ in range(2):
            with pytest.raises(StorageFullError) as caught:
                await lane.wait(3)
            assert isinstance(caught.value.__cause__, OSError)
            assert "writing a blob" in str(caught.value)
    finally:
        await lane.close()
    assert ran == [1]

    other = Lane("testing")
    try:
        other.submit(raiser(OSError(errno.EIO, "bad sector")))
        with pytest.raises(StorageIOError):
            await other.wait(1)
        again = Lane("testing")
        again.submit(raiser(InvalidArgumentError("as is")))
        with pytest.raises(InvalidArgumentError, match="as is"):
            await again.wait(1)
        await again.close()
    finally:
        await other.close()


async def test_close_waits_for_the_running_step_even_when_cancelled_and_skips_the_rest() -> None:
    """close() returns only after the step in progress has finished (a cancellation does not
    cut that short) and never runs the steps still queued."""
    started, release = threading.Event(), threading.Event()
    events: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(30)
        events.append("slow finished")

    lane = Lane("testing")
    lane.submit(slow)
    lane.submit(events.append, "queued step ran")
    await trio.to_thread.run_sync(started.wait, 30)
    with trio.CancelScope() as scope:
        scope.cancel()
        trio.lowlevel.current_trio_token().run_sync_soon(release.set)
        await lane.close()
    assert events == ["slow finished"]
    with pytest.raises(RuntimeError):
        lane.submit(events.append, "late")
    await lane.close()  # closing twice is harmless
