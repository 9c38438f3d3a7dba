"""The edge's stream plumbing (rpc/_wire.py): a stream's inbox (events in order, a receiver
that waits only when it must, cancellation that is never missed, the non-blocking read the
connection uses to release what nobody will read), and response messages serialized straight
into their frame."""

from __future__ import annotations

import anyio
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from anvil_trio._proto.anvil.v1 import blob_pb2, object_pb2
from anvil_trio.rpc._messages import bytes_field_message, varint_field
from anvil_trio.rpc._stream import _Inbox


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


# -- messages serialized straight into their frame ----------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from([127, 128, 16_383, 16_384, 1 << 20]).map(lambda n: bytes(n)),
    ),
    st.integers(min_value=0, max_value=(1 << 63) - 1),
)
def test_pre_framed_messages_are_what_protobuf_would_send(data, offset):
    """A chunk message built by bytes_field_message is byte for byte what protobuf serializes,
    behind a correct uncompressed gRPC prefix, for any length and offset."""
    framed = bytes_field_message(2, data)
    expected = object_pb2.GetObjectResponse(chunk=data).SerializeToString()
    assert framed.wire == b"\0" + len(expected).to_bytes(4, "big") + expected
    assert len(framed) == len(expected)
    blob = bytes_field_message(1, memoryview(data), varint_field(2, offset))
    expected = blob_pb2.BlobChunk(data=data, offset=offset).SerializeToString()
    if data:  # proto3 leaves an empty bytes field out; a chunk is never empty
        assert blob.wire[5:] == expected
    parsed = blob_pb2.BlobChunk.FromString(blob.wire[5:])
    assert (parsed.data, parsed.offset) == (data, offset)


def test_field_numbers_need_a_one_byte_tag():
    """Only fields 1-15 (one-byte tags) can be built this way."""
    for bad in (0, 16):
        with pytest.raises(ValueError):
            bytes_field_message(bad, b"x")
