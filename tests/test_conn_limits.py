"""Connection limits of the edge: the preface, idle and keepalive deadlines (the sans-IO
``_conn_limits`` core, then over real sockets against an in-process edge) and
``max_connections``."""

from __future__ import annotations

import contextlib
import logging
import math

import pytest
import trio
from _h2client import HEALTH_WATCH, PREFACE, RawClient, health_check_ok
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame, PingFrame, SettingsFrame

from anvil_trio import Config
from anvil_trio._server import edge_config
from anvil_trio.rpc import EdgeConfig, EdgeServer, HealthState
from anvil_trio.rpc._conn_limits import (
    ConnectionLimits,
    ConnectionTimers,
    Due,
    PrefaceReader,
    RefusalReport,
)

SETTINGS = SettingsFrame(0).serialize()
#: A SETTINGS frame with two settings (12 bytes of payload).
SETTINGS_12 = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20,
                                         SettingsFrame.ENABLE_PUSH: 0}).serialize()


# -- the sans-IO core ------------------------------------------------------------------------------


def test_preface_is_complete_only_with_the_whole_first_settings_frame():
    """The preface alone, or a SETTINGS frame cut short, is not complete; byte by byte works."""
    reader = PrefaceReader()
    assert not reader.feed(PREFACE)
    assert not reader.feed(SETTINGS_12[:-1])
    assert reader.feed(SETTINGS_12[-1:])
    reader = PrefaceReader()
    for byte in PREFACE + SETTINGS:
        assert not reader.complete
        reader.feed(bytes([byte]))
    assert reader.complete
    assert PrefaceReader().feed(PREFACE + SETTINGS_12 + b"more frames")


def timers(**limits) -> ConnectionTimers:
    return ConnectionTimers(ConnectionLimits(**limits), started=100.0)


def test_preface_deadline_is_the_only_rule_before_the_preface():
    """Before the preface: nothing but CLOSE_PREFACE at started + preface_timeout."""
    t = timers(preface_timeout=10, idle_timeout=1, keepalive_interval=1)
    assert t.poll(105.0) == (Due.NOTHING, 110.0)
    t.received(108.0, PREFACE)  # bytes, but not the whole preface yet
    assert t.poll(109.9) == (Due.NOTHING, 110.0)
    assert t.poll(110.0)[0] is Due.CLOSE_PREFACE
    t.received(109.0, SETTINGS)
    assert t.poll(109.5) == (Due.NOTHING, 110.0)  # now idle (1 s from 109) and ping (1 s)


def test_keepalive_ping_then_dead_peer():
    """No bytes for keepalive_interval: PING; nothing for keepalive_timeout after it: dead."""
    t = timers(idle_timeout=math.inf, keepalive_interval=60, keepalive_timeout=20)
    t.received(100.0, PREFACE + SETTINGS)
    assert t.poll(120.0) == (Due.NOTHING, 160.0)
    t.received(130.0, b"x")  # any bytes push the PING later
    assert t.poll(160.0) == (Due.NOTHING, 190.0)
    assert t.poll(190.0)[0] is Due.PING
    t.ping_sent(190.0)
    assert t.poll(195.0) == (Due.NOTHING, 210.0)  # one PING outstanding, never two
    assert t.poll(210.0)[0] is Due.CLOSE_DEAD


def test_any_received_bytes_answer_the_ping():
    """Bytes after the PING clear it; the next PING is keepalive_interval after them."""
    t = timers(idle_timeout=math.inf, keepalive_interval=60, keepalive_timeout=20)
    t.received(100.0, PREFACE + SETTINGS)
    t.ping_sent(160.0)
    t.received(170.0, b"ack")
    assert t.poll(200.0) == (Due.NOTHING, 230.0)
    assert t.poll(230.0)[0] is Due.PING


def test_idle_counts_from_the_last_call_and_not_from_received_bytes():
    """Open calls stop the idle clock; it restarts when the last one ends; pings don't reset it."""
    t = timers(idle_timeout=300, keepalive_interval=math.inf)
    t.received(100.0, PREFACE + SETTINGS)
    t.call_started()
    t.call_started()
    assert t.poll(1000.0) == (Due.NOTHING, math.inf)
    t.call_ended(1000.0)
    assert t.poll(1400.0) == (Due.NOTHING, math.inf)  # one still open
    t.call_ended(1500.0)
    t.received(1700.0, b"ping ack")
    assert t.poll(1799.0) == (Due.NOTHING, 1800.0)
    assert t.poll(1800.0)[0] is Due.CLOSE_IDLE


def test_dead_peer_wins_over_idle_and_inf_disables():
    """Several deadlines past at once: the dead-peer close comes first; inf timers never fire."""
    t = timers(idle_timeout=50, keepalive_interval=10, keepalive_timeout=5)
    t.received(100.0, PREFACE + SETTINGS)
    t.ping_sent(110.0)
    assert t.poll(1000.0)[0] is Due.CLOSE_DEAD
    t = timers(preface_timeout=math.inf, idle_timeout=math.inf, keepalive_interval=math.inf)
    assert t.poll(1e12) == (Due.NOTHING, math.inf)
    t.received(1.0, PREFACE + SETTINGS)
    assert t.poll(1e12) == (Due.NOTHING, math.inf)


def test_refusals_are_reported_once_per_interval_with_the_count():
    """The first refusal is reported, the rest of the burst is counted into the next report."""
    report = RefusalReport(interval=10.0)
    assert report.refused(0.0) == 1
    assert [report.refused(t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert report.refused(10.0) == 4
    assert report.refused(10.5) is None
    assert report.total == 6


def test_config_keys_reach_the_edge():
    """The five keys are Config fields (so TOML takes them), validated, passed to EdgeConfig."""
    config = Config.from_mapping({"preface_timeout": 3, "idle_timeout": 40,
                                  "keepalive_interval": 5, "keepalive_timeout": 2,
                                  "max_connections": 7})
    edge = edge_config(config)
    assert (edge.preface_timeout, edge.idle_timeout, edge.keepalive_interval,
            edge.keepalive_timeout, edge.max_connections) == (3, 40, 5, 2, 7)
    defaults = EdgeConfig()
    assert (defaults.preface_timeout, defaults.idle_timeout, defaults.keepalive_interval,
            defaults.keepalive_timeout, defaults.max_connections) == (10, 300, 60, 20, 1024)
    assert edge_config(Config()).max_connections == 1024
    with pytest.raises(ValueError):
        EdgeConfig(keepalive_timeout=0)
    with pytest.raises(ValueError):
        EdgeConfig(max_connections=0)
    assert EdgeConfig(idle_timeout=math.inf).idle_timeout == math.inf


# -- over real sockets ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(**config):
    """An edge serving only the health service (SERVING) on a free port: ``(edge, port)``."""
    health = HealthState()
    health.set_serving()
    edge = EdgeServer([], config=EdgeConfig(host="127.0.0.1", port=0, **config), health=health)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(edge.serve)
        try:
            yield edge, port
        finally:
            nursery.cancel_scope.cancel()


class TimedClient(RawClient):
    """A :class:`RawClient` that notes when it saw each frame and when the server closed, and
    answers PINGs if told to."""

    answer_pings = False

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.times: list[float] = []
        self.closed_at: float | None = None

    async def _received(self, frame: Frame) -> None:
        self.times.append(trio.current_time())
        await super()._received(frame)
        if self.answer_pings and isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            ack = PingFrame(0, frame.opaque_data)
            ack.flags.add("ACK")
            await self.send(ack)

    async def read_for(self, seconds: float) -> bool:
        """Read for ``seconds``; return whether the server closed the connection."""
        with trio.move_on_after(seconds):
            while await self.read_some():
                pass
            self.closed_at = trio.current_time()
        return self.closed

    def pings(self) -> list[tuple[float, PingFrame]]:
        return [(t, f) for t, f in zip(self.times, self.frames)
                if isinstance(f, PingFrame) and "ACK" not in f.flags]


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(1 << 16)
        except trio.BrokenResourceError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def parse_frames(data: bytes) -> list[Frame]:
    frames = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        frame, _ = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


async def test_a_connection_without_preface_is_closed_after_preface_timeout(
        autojump_clock, caplog):
    """Silence, or the preface without its SETTINGS, is closed at preface_timeout (INFO, with
    the peer); a normal client meanwhile is served, and keeps being served after it."""
    caplog.set_level(logging.INFO, logger="anvil_trio.rpc")
    async with serving(preface_timeout=10.0) as (_edge, port):
        good = await TimedClient.connect(port)
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        half = await trio.open_tcp_stream("127.0.0.1", port)
        await half.send_all(PREFACE)
        start = trio.current_time()
        await health_check_ok(port)
        with trio.fail_after(30):
            await read_to_eof(silent)
            assert 10.0 <= trio.current_time() - start < 10.5
            await read_to_eof(half)
        assert trio.current_time() - start < 10.5
        await trio.sleep(5)
        await good.request(1)
        assert await good.read_until(lambda c: c.ended(1))
        assert good.grpc_status(1) == "0" and good.goaway() is None
        await good.aclose()
    infos = [r.getMessage() for r in caplog.records
             if r.levelno == logging.INFO and "preface" in r.getMessage()]
    assert len(infos) == 2 and all("127.0.0.1" in m for m in infos), infos


async def test_an_idle_connection_gets_goaway_no_error_then_close(autojump_clock, caplog):
    """idle_timeout after its last call ends: GOAWAY(NO_ERROR, last stream 1), then EOF."""
    caplog.set_level(logging.INFO, logger="anvil_trio.rpc")
    async with serving(idle_timeout=30.0, keepalive_interval=math.inf) as (_edge, port):
        client = await TimedClient.connect(port)
        await client.request(1)
        assert await client.read_until(lambda c: c.ended(1))
        ended = trio.current_time()
        assert await client.read_for(100)
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.NO_ERROR, client.frames
        assert goaway.last_stream_id == 1
        goaway_at = client.times[client.frames.index(goaway)]
        assert 30.0 <= goaway_at - ended < 30.5
        assert client.closed_at - goaway_at < 2.5
    assert any("no calls for 30.0 s" in r.getMessage() and "127.0.0.1" in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)


async def test_a_connection_with_an_open_stream_is_not_idle(autojump_clock):
    """A Watch stream open for 4 x idle_timeout keeps the connection; once it is reset, the
    idle clock starts."""
    async with serving(idle_timeout=30.0, keepalive_interval=math.inf) as (_edge, port):
        client = await TimedClient.connect(port)
        await client.send(client.headers_frame(1, [(":method", "POST"), (":scheme", "http"),
                                                   (":path", HEALTH_WATCH),
                                                   (":authority", "127.0.0.1"),
                                                   ("te", "trailers"),
                                                   ("content-type", "application/grpc")]),
                          client.data_frame(1, end_stream=True))
        assert not await client.read_for(120)
        assert client.goaway() is None and client.headers.get(1), client.frames
        await client.send(client.rst(1, ErrorCodes.CANCEL))
        reset = trio.current_time()
        assert await client.read_for(100)
        assert client.goaway().error_code == ErrorCodes.NO_ERROR
        assert 30.0 <= client.times[client.frames.index(client.goaway())] - reset < 30.5


async def test_a_silent_peer_gets_a_ping_and_is_closed_after_keepalive_timeout(
        autojump_clock, caplog):
    """Preface, then nothing: PING at keepalive_interval, GOAWAY and close keepalive_timeout
    later (WARNING with the peer)."""
    async with serving(keepalive_interval=60.0, keepalive_timeout=20.0,
                       idle_timeout=math.inf) as (_edge, port):
        start = trio.current_time()
        client = await TimedClient.connect(port)  # it acknowledges the server's SETTINGS, once
        with caplog.at_level(logging.WARNING, logger="anvil_trio.rpc"):
            assert await client.read_for(300)
        pings = client.pings()
        assert len(pings) == 1, client.frames
        assert 60.0 <= pings[0][0] - start < 60.5
        assert 80.0 <= client.closed_at - start < 81.0
        assert client.goaway() is not None
        await health_check_ok(port)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keepalive" in warnings[0] and "127.0.0.1" in warnings[0]


async def test_a_peer_that_answers_pings_stays(autojump_clock):
    """A peer that answers every PING (and sends nothing else) is kept for 10 minutes."""
    async with serving(keepalive_interval=60.0, keepalive_timeout=20.0,
                       idle_timeout=math.inf) as (_edge, port):
        client = await TimedClient.connect(port)
        client.answer_pings = True
        assert not await client.read_for(600)
        assert len(client.pings()) >= 8 and client.goaway() is None
        await client.request(1)
        assert await client.read_until(lambda c: c.ended(1))
        assert client.grpc_status(1) == "0"


async def test_past_max_connections_a_new_connection_is_closed_at_once(autojump_clock, caplog):
    """With 3 open, a 4th gets GOAWAY(ENHANCE_YOUR_CALM) and EOF at once, the 3 are still
    served, the refusals of a burst are logged once, and a freed slot is usable again."""
    async with serving(max_connections=3) as (edge, port):
        clients = [await TimedClient.connect(port) for _ in range(3)]
        for client in clients:
            await client.request(1)
            assert await client.read_until(lambda c: c.ended(1))
        with caplog.at_level(logging.WARNING, logger="anvil_trio.rpc"):
            start = trio.current_time()
            for _ in range(5):
                extra = await trio.open_tcp_stream("127.0.0.1", port)
                with trio.fail_after(1):
                    frames = parse_frames(await read_to_eof(extra))
                await extra.aclose()
                goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
                assert [g.error_code for g in goaways] == [ErrorCodes.ENHANCE_YOUR_CALM], frames
            assert trio.current_time() - start < 0.1
        assert edge.statistics().connections_refused == 5
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "max_connections (3)" in warnings[0], warnings
        for client in clients:
            await client.request(3)
            assert await client.read_until(lambda c: c.ended(3))
            assert client.grpc_status(3) == "0" and client.goaway() is None
        await clients[0].aclose()
        for _ in range(100):  # the server notices the close
            if edge.statistics().connections < 3:
                break
            await trio.sleep(0.01)
        await health_check_ok(port)
        assert edge.statistics().connections_refused == 5


async def test_200_silent_connections_are_all_closed_and_others_still_served():
    """Attack-shaped, real clock: 200 connections that never send the preface are all closed
    about preface_timeout after they opened, and a health Check during it is answered fast."""
    timeout = 1.5
    async with serving(preface_timeout=timeout) as (edge, port):
        closed_after: list[float] = []

        async def silent() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            opened = trio.current_time()
            await read_to_eof(stream)
            closed_after.append(trio.current_time() - opened)
            await stream.aclose()

        with trio.fail_after(timeout + 10):
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(silent)
                for _ in range(200):  # bounded: wait until the server holds them all
                    if edge.statistics().connections >= 200:
                        break
                    await trio.sleep(0.01)
                assert edge.statistics().connections >= 200
                asked = trio.current_time()
                await health_check_ok(port)
                assert trio.current_time() - asked < 0.5
                assert not closed_after  # the check was answered during the attack
        assert len(closed_after) == 200
        assert all(timeout - 0.05 <= t < timeout + 3 for t in closed_after), sorted(closed_after)
        for _ in range(100):
            if edge.statistics().connections == 0:
                break
            await trio.sleep(0.01)
        assert edge.statistics().connections == 0

