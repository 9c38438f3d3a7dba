"""Per-connection abuse limits: the budgets' bookkeeping (pure), then each flood and frame limit
against a real edge over a real socket (GOAWAY(ENHANCE_YOUR_CALM), FRAME_SIZE_ERROR, the call
share, the health budget, the stall timeout), while another connection is served."""

from __future__ import annotations

import struct

import pytest
import trio
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame
from purerpc.grpclib.config import GRPCConfiguration

import purerpc
from purerpc import StatusCode

from _h2client import HEALTH_WATCH, PREFACE, RawClient, health_check_ok, request_headers
from anvil_trio._proto.grpc.health.v1 import health_grpc, health_pb2
from anvil_trio.rpc._floods import FloodGuard, FloodLimits, TokenBucket
from anvil_trio.rpc._h2 import EdgeProtocolError
from anvil_trio.rpc._wire import EdgeConnection
from test_edge import echo, make_servicer, purerpc_call, running, wait_until  # noqa: F401
from test_h2_conformance import connection_error, served, serving


# --- bookkeeping ---


def test_token_bucket_refills_at_its_rate_up_to_its_burst():
    """A bucket allows ``burst`` at once, then ``rate`` per second, never more than ``burst``."""
    bucket = TokenBucket(rate=10, burst=5, updated=0.0)
    assert all(bucket.take(0.0) for _ in range(5))
    assert not bucket.take(0.0)
    assert bucket.take(0.1) and not bucket.take(0.1)
    assert sum(bucket.take(100.0) for _ in range(10)) == 5


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("charge", ["early_reset", "control_frame", "priority_frame",
                                    "empty_data_frame"])
def test_each_bucket_allows_its_burst_then_its_rate(charge):
    """Past burst + rate x time frames of one kind, the guard names the flood, and stays so."""
    clock = _Clock()
    guard = FloodGuard(FloodLimits(reset_rate=10, control_rate=10, burst_factor=2), clock=clock)
    spend = getattr(guard, charge)
    assert all(spend() is None for _ in range(20))
    clock.now = 1.0
    assert all(spend() is None for _ in range(10))
    reason = spend()
    assert reason is not None and "too many" in reason
    clock.now = 100.0
    assert spend() == reason  # once over, always over: the connection is closing


def test_kinds_have_separate_budgets():
    """Legitimate cancels do not use up the PING budget and the other way round."""
    guard = FloodGuard(FloodLimits(reset_rate=1, control_rate=1, burst_factor=3),
                       clock=_Clock())
    assert [guard.early_reset() for _ in range(3)] == [None] * 3
    assert [guard.control_frame() for _ in range(3)] == [None] * 3
    assert guard.priority_frame() is None


def test_window_updates_are_earned_by_data_sent_and_streams_opened():
    """WINDOW_UPDATEs are allowed in proportion to the server's DATA frames and streams."""
    guard = FloodGuard(FloodLimits(window_updates_base=5, window_updates_per_data_frame=2,
                                   window_updates_per_stream=1), clock=_Clock())
    assert all(guard.window_update() is None for _ in range(5))
    guard.data_frames_sent(3)
    guard.stream_opened()
    assert all(guard.window_update() is None for _ in range(7))
    assert "WINDOW_UPDATE" in guard.window_update()


# --- over a socket ---


async def calm(client: RawClient) -> None:
    await connection_error(client, ErrorCodes.ENHANCE_YOUR_CALM)


async def test_the_server_advertises_16_kib_frames_and_a_header_list_limit():
    """SETTINGS: MAX_FRAME_SIZE 16384 and MAX_HEADER_LIST_SIZE as configured."""
    async with serving(max_header_list_bytes=8192) as port:
        client = await RawClient.connect(port)
        assert await client.read_until(lambda c: any(isinstance(f, SettingsFrame)
                                                     for f in c.frames))
        settings = next(f for f in client.frames if isinstance(f, SettingsFrame)).settings
        assert settings[SettingsFrame.MAX_FRAME_SIZE] == 16384
        assert settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 8192


async def test_rapid_reset_gets_enhance_your_calm():
    """HEADERS + RST_STREAM pairs past the reset budget: GOAWAY(ENHANCE_YOUR_CALM), close;
    another connection is served throughout."""
    async with serving(stream_reset_rate=20) as port:
        client = await RawClient.connect(port)
        frames = []
        for index in range(300):  # burst is 10 x 20 = 200
            sid = 2 * index + 1
            frames += [client.headers_frame(sid, request_headers(HEALTH_WATCH)),
                       client.data_frame(sid, end_stream=True), client.rst(sid)]
        await client.send(*frames)
        await calm(client)
        await health_check_ok(port)


@pytest.mark.parametrize("flood", ["ping", "settings", "priority", "empty_data",
                                   "window_update"])
async def test_control_frame_floods_get_enhance_your_calm(flood):
    """PING, SETTINGS, PRIORITY, empty DATA or WINDOW_UPDATE without end: GOAWAY
    (ENHANCE_YOUR_CALM) and close, while other connections are served."""
    async with serving(control_frame_rate=10) as port:
        client = await RawClient.connect(port)
        if flood == "empty_data":
            await client.send(client.headers_frame(1, request_headers(HEALTH_WATCH)))
        settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        one = {"ping": lambda i: client.ping(struct.pack(">Q", i)),
               "settings": lambda i: settings,
               "priority": lambda i: client.priority(2 * i + 1),
               "empty_data": lambda i: client.data_frame(1, b""),
               "window_update": lambda i: client.window_update(0, 1)}[flood]
        count = 3000 if flood == "window_update" else 300
        await client.send(*(one(i) for i in range(count)))
        await calm(client)
        await health_check_ok(port)


async def test_a_frame_over_16_kib_is_a_frame_size_error_as_soon_as_announced():
    """A frame header announcing more than 16 KiB: GOAWAY(FRAME_SIZE_ERROR) at once, before
    any of its body arrives (the server buffers none of it)."""
    async with serving() as port:
        client = await RawClient.connect(port)
        await served(client, 1)
        await client.send_raw(((16 << 20) - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x03")
        await connection_error(client, ErrorCodes.FRAME_SIZE_ERROR)
        client = await RawClient.connect(port)
        await client.send(client.data_frame(1, b"x" * 16385))
        await connection_error(client, ErrorCodes.FRAME_SIZE_ERROR)


async def test_an_endless_header_block_ends_the_connection():
    """HEADERS + CONTINUATION frames past the header-block bound: GOAWAY(ENHANCE_YOUR_CALM)."""
    async with serving(max_header_list_bytes=4096) as port:
        client = await RawClient.connect(port)
        first = HeadersFrame(1, client.encoder.encode(request_headers(HEALTH_WATCH)))
        frames = [first] + [ContinuationFrame(1, b"\x00" * 1000) for _ in range(40)]
        await client.send(*frames)
        await calm(client)
        await health_check_ok(port)


def test_replies_the_peer_does_not_read_are_bounded():
    """A peer that keeps sending PINGs (within the rate) and never reads: once its unread
    replies pass the connection's bound, the connection ends with ENHANCE_YOUR_CALM (sans-IO:
    the bytes go straight into the connection; nothing is ever taken out for the socket)."""
    config = GRPCConfiguration(client_side=False, max_message_length=4 << 20)
    connection = EdgeConnection(config, max_concurrent_streams=10, outbound_limit=1 << 16,
                                flood_limits=FloodLimits(control_rate=1e6))
    connection.initiate_connection()
    connection.receive_data(PREFACE + SettingsFrame(0).serialize())
    pings = PingFrame(0, b"12345678").serialize() * 100
    with pytest.raises(EdgeProtocolError) as raised:
        for _ in range(1000):
            connection.receive_data(pings)
    assert raised.value.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert connection.outbound_buffered() < (1 << 16) + len(pings) * 2
    queued = bytes(connection.data_to_send())
    assert queued.endswith(GoAwayFrame(0, error_code=ErrorCodes.ENHANCE_YOUR_CALM,
                                       last_stream_id=0).serialize())


async def test_one_connection_holds_at_most_its_share_and_health_has_its_own_slots(echo):
    """With its share of the data slots in use, a connection's next data call is
    RESOURCE_EXHAUSTED; another connection's call is admitted; health checks are answered
    from their own slots even with every data slot taken."""
    pb2 = echo.pb2
    servicer = make_servicer(echo)
    async with running([servicer], max_concurrent_calls=6, connection_call_share=0.5,
                       health_call_slots=2) as server:
        health.set_serving() if (health := server.health) else None
        async with purerpc.insecure_channel("127.0.0.1", server.port) as first, \
                purerpc.insecure_channel("127.0.0.1", server.port) as second:
            a, b = echo.grpc_mod.EchoStub(first), echo.grpc_mod.EchoStub(second)
            async with trio.open_nursery() as nursery:
                for stub in (a, a, a, b, b):
                    nursery.start_soon(lambda s=stub: purerpc_call(s.Unary(pb2.Ping(action="block"))))
                await wait_until(lambda: servicer.running == 5)
                refused = await purerpc_call(a.Unary(pb2.Ping(action="echo")))
                assert refused.status_code == StatusCode.RESOURCE_EXHAUSTED
                assert "share" in refused.status_message
                nursery.start_soon(lambda: purerpc_call(b.Unary(pb2.Ping(action="block"))))
                await wait_until(lambda: servicer.running == 6)  # the other connection's
                # Every data slot is taken, yet health is answered (its own budget).
                check = health_grpc.HealthStub(first).Check
                reply = await check(health_pb2.HealthCheckRequest())
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                servicer.release.set()
            assert (await a.Unary(pb2.Ping(action="echo"))).text == "echo"


async def test_a_stream_that_opens_no_window_is_ended_after_the_stall_timeout(autojump_clock):
    """A client that sets its window to 0 and never opens it: the call that cannot send ends
    after stream_stall_timeout (DEADLINE_EXCEEDED) and frees its slot."""
    async with serving(stream_stall_timeout=5.0) as port:
        client = await RawClient.connect(port)
        zero_window = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x04\x00\x00\x00\x00"
        await client.send_raw(zero_window)
        await client.request(1)
        start = trio.current_time()
        assert await client.read_until(lambda c: c.ended(1), timeout=60)
        assert client.grpc_status(1) == "4", client.frames
        assert trio.current_time() - start >= 5.0
        assert not any(isinstance(f, GoAwayFrame) for f in client.frames)
