"""Backpressure at the edge: a handler that stops reading stops its client, within the windows."""

from __future__ import annotations

import purerpc
import trio

from anvil_trio._proto.anvil.v1 import object_grpc, object_pb2
from anvil_trio.rpc import EdgeConfig, EdgeServer

MiB = 1 << 20
STREAM_WINDOW = 8 * MiB  # 2 x the default 4 MiB request message limit


class StallingObjects(object_grpc.ObjectServiceServicer):
    """Each PutObject reads one message, waits for ``release``, then counts the rest."""

    def __init__(self) -> None:
        self.stalled = 0
        self.release = trio.Event()

    async def PutObject(self, messages, request):  # noqa: N802 - gRPC method name
        size = 0
        first = True
        async for message in messages:
            size += len(message.chunk)
            if first:
                first = False
                self.stalled += 1
                await self.release.wait()
        return object_pb2.PutObjectResponse(size=size)


async def wait_until(predicate, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def _stalled_upload(*, streams: int, **config) -> tuple[list[int], int, list[int], int]:
    """Run ``streams`` stalled 64 MiB uploads on one connection; release them once the server
    holds as much as flow control lets in. Returns messages produced per upload when stalled,
    the server's peak of unconsumed bytes, the sizes acknowledged, and the bytes unreleased
    after the calls ended."""
    servicer = StallingObjects()
    server = EdgeServer([servicer], config=EdgeConfig(port=0, **config))
    produced = [0] * streams
    sizes: list[int] = []
    chunk = b"x" * (MiB - 16)

    def requests(index: int):
        async def generate():
            for _ in range(64):
                produced[index] += 1
                yield object_pb2.PutObjectRequest(chunk=chunk)

        return generate()

    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = object_grpc.ObjectServiceStub(channel)

            async def upload(index: int) -> None:
                reply = await stub.PutObject(requests(index))
                sizes.append(reply.size)

            async with trio.open_nursery() as uploads:
                for index in range(streams):
                    uploads.start_soon(upload, index)
                await wait_until(lambda: servicer.stalled == streams)
                # Let the client push until flow control stops it (no timing assertion: this
                # only waits for the state flow control allows, then checks the bounds).
                full = min(STREAM_WINDOW * streams, config.get("connection_window_bytes", 1 << 62))
                await wait_until(
                    lambda: server.statistics().unacknowledged_bytes >= full - 3 * MiB
                )
                await trio.sleep(0.3)
                stalled = list(produced)
                peak = server.statistics().peak_unacknowledged_bytes
                servicer.release.set()
        await wait_until(lambda: server.statistics().unacknowledged_bytes == 0)
        left = server.statistics().unacknowledged_bytes
        await server.drain(grace=1.0)
    return stalled, peak, sizes, left


async def test_a_handler_that_stops_reading_stops_its_client_within_the_stream_window():
    """A stalled PutObject handler holds at most one stream window; its client blocks, then
    finishes once the handler reads on, and every byte is released."""
    stalled, peak, sizes, left = await _stalled_upload(streams=1)
    assert peak <= STREAM_WINDOW
    # One message consumed, a window's worth queued, one being sent and one pulled: far from 64.
    assert stalled[0] <= 1 + STREAM_WINDOW // MiB + 2
    assert sizes == [64 * (MiB - 16)]
    assert left == 0


async def test_stalled_streams_each_hold_at_most_their_window_and_never_starve_others():
    """Three stalled uploads on one connection each get their first message (a stalled stream
    never starves the others of connection window) and each holds at most its stream window,
    so a connection holds at most streams x stream window however its handlers stall."""
    stalled, peak, sizes, left = await _stalled_upload(streams=3, connection_window_bytes=10 * MiB)
    assert peak <= 3 * STREAM_WINDOW
    # Per stream: a window's worth, plus one consumed, one being sent, one pulled: far from 64.
    assert all(count <= 1 + STREAM_WINDOW // MiB + 3 for count in stalled)
    assert sorted(sizes) == [64 * (MiB - 16)] * 3
    assert left == 0
