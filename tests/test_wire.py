"""A stream's inbox (rpc/_wire.py ``_Inbox``): events in order, a receiver that waits only when
it must, cancellation that is never missed, and the non-blocking read the connection uses to
release what nobody will read."""

from __future__ import annotations

import anyio
import pytest
import trio
import trio.testing

from anvil_trio.rpc._wire import _Inbox


async def test_events_come_out_in_the_order_they_went_in():
    """Everything sent comes out once, in order, including what was queued before the read."""
    inbox = _Inbox()
    for item in range(5):
        await inbox.send(item)
    assert [await inbox.receive() for _ in range(5)] == list(range(5))
    with pytest.raises(anyio.WouldBlock):
        inbox.receive_nowait()


async def test_receive_waits_for_the_next_send(autojump_clock):
    """A reader of an empty inbox sleeps until a send wakes it, and gets that item."""
    inbox = _Inbox()
    got = []

    async def reader():
        got.append(await inbox.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        await inbox.send("headers")
    assert got == ["headers"]


async def test_send_never_waits_or_yields():
    """The connection's reader queues events without giving up the loop (flow control, not the
    inbox, bounds a stream), so a burst of events is queued in one step."""
    inbox = _Inbox()
    with trio.CancelScope() as scope:
        scope.cancel()
        for item in range(1000):
            await inbox.send(item)  # a checkpoint here would raise Cancelled
    assert inbox.receive_nowait() == 0


async def test_a_cancelled_reader_is_cancelled_even_with_events_waiting():
    """Cancellation is never skipped: a cancelled task's receive raises, and the event stays
    queued for whoever reads next."""
    inbox = _Inbox()
    await inbox.send("message")
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await inbox.receive()
    assert inbox.receive_nowait() == "message"


async def test_a_waiting_reader_can_be_cancelled(autojump_clock):
    """A reader parked on an empty inbox is woken by its deadline and takes nothing."""
    inbox = _Inbox()
    with trio.move_on_after(1.0) as scope:
        await inbox.receive()
    assert scope.cancelled_caught
    await inbox.send("later")
    assert await inbox.receive() == "later"
