"""The edge answers every frame as RFC 9113 says, over a real socket: late frames on closed
streams are ignored, stream errors stay stream errors, excess streams are refused, and a
connection is closed only for a real connection error, with GOAWAY first."""

from __future__ import annotations

import contextlib
import logging
import urllib.parse

import pytest
import trio
from h2.errors import ErrorCodes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyperframe.frame import GoAwayFrame, WindowUpdateFrame

from _h2client import HEALTH_CHECK, HEALTH_WATCH, RawClient, health_check_ok, request_headers
from anvil_trio._proto.grpc.health.v1 import health_grpc
from anvil_trio.rpc import EdgeConfig, EdgeServer, HealthState


@contextlib.asynccontextmanager
async def serving(services=(), **config):
    """An edge serving only the health service (SERVING) on a free port."""
    health = HealthState()
    health.set_serving()
    edge = EdgeServer(list(services), config=EdgeConfig(host="127.0.0.1", port=0, **config),
                      health=health)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(edge.serve)
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


async def served(client: RawClient, sid: int) -> None:
    """A unary Check on ``sid`` of an existing connection is answered OK."""
    await client.request(sid)
    assert await client.read_until(lambda c: c.ended(sid))
    assert client.grpc_status(sid) == "0", client.frames
    assert client.goaway() is None


async def connection_error(client: RawClient, code: ErrorCodes) -> None:
    """The server sends GOAWAY(code) and then closes the connection."""
    await client.read_until(lambda c: c.closed)
    goaway = client.goaway()
    assert goaway is not None, client.frames
    assert goaway.error_code == code
    assert not any(isinstance(f, GoAwayFrame) for f in client.frames[client.frames.index(goaway)
                                                                      + 1:])


async def test_late_window_update_and_rst_for_ended_streams_are_ignored(caplog):
    """The grpcio/grpc-js pattern: frames for a finished stream arrive after newer streams."""
    async with serving() as port:
        client = await RawClient.connect(port)
        await served(client, 1)
        await served(client, 3)
        await client.send(client.window_update(1, 1000), client.rst(1, 8),
                          client.window_update(3, 5), client.priority(1), client.rst(3, 0))
        await served(client, 5)
        await served(client, 7)
        assert client.resets(1) == [] and client.resets(3) == []
        await client.aclose()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_data_on_a_closed_stream_is_a_stream_error_and_credits_the_connection():
    """DATA for an ended stream: RST_STREAM(STREAM_CLOSED) once, its bytes given back."""
    async with serving() as port:
        client = await RawClient.connect(port)
        await served(client, 1)
        chunk = b"\x00" * 16384
        # 9 MiB: more than a quarter of the 32 MiB connection window, so a credit must come.
        await client.send(*(client.data_frame(1, chunk) for _ in range(9 * 64)))
        assert await client.read_until(lambda c: any(
            isinstance(f, WindowUpdateFrame) and f.stream_id == 0 for f in c.frames[6:]))
        assert client.resets(1) == [ErrorCodes.STREAM_CLOSED]
        await served(client, 3)
        await client.aclose()


@pytest.mark.parametrize("frame", ["data", "window_update", "rst_stream"])
async def test_frames_on_never_opened_streams_are_connection_errors(frame, caplog):
    """DATA/WINDOW_UPDATE/RST_STREAM on an idle stream: GOAWAY(PROTOCOL_ERROR), logged, closed."""
    async with serving() as port:
        client = await RawClient.connect(port)
        other = await RawClient.connect(port)
        await served(client, 1)
        bad = {"data": client.data_frame(9), "window_update": client.window_update(9, 1),
               "rst_stream": client.rst(9)}[frame]
        with caplog.at_level(logging.WARNING, logger="anvil_trio.rpc"):
            await client.send(bad)
            await connection_error(client, ErrorCodes.PROTOCOL_ERROR)
        assert client.goaway().last_stream_id == 1
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("idle stream 9" in w and "127.0.0.1" in w for w in warnings), warnings
        await served(other, 1)  # another connection never noticed
        await health_check_ok(port)


async def test_even_and_reused_stream_ids_are_connection_errors():
    """HEADERS on an even stream or on an id used before: GOAWAY(PROTOCOL_ERROR)."""
    async with serving() as port:
        client = await RawClient.connect(port)
        await client.send(client.headers_frame(2))
        await connection_error(client, ErrorCodes.PROTOCOL_ERROR)
        client = await RawClient.connect(port)
        await served(client, 3)
        await client.send(client.headers_frame(3, end_stream=True))
        await connection_error(client, ErrorCodes.PROTOCOL_ERROR)
        await health_check_ok(port)


_MALFORMED = {
    "uppercase name": [("X-Upper", "v")],
    "trailing space": [("x-space", "v ")],
    "non-UTF-8 value": [(b"x-latin1", b"caf\xe9")],
    "connection header": [("connection", "keep-alive")],
    "te not trailers": "te",
    "NUL in a value": [("x-nul", "a\x00b")],
    "CR LF in a value": [("x-crlf", "a\r\nb")],
    "missing :path": ":path",
    "unknown pseudo-header": [(":protocol", "websocket")],
}


@pytest.mark.parametrize("case", sorted(_MALFORMED))
async def test_a_malformed_request_header_fails_only_its_stream(case):
    """Malformed request headers (8.1.1) are RST_STREAM(PROTOCOL_ERROR) on that stream; the
    connection, and HPACK's state, go on (the next request reuses the indexed headers)."""
    async with serving() as port:
        client = await RawClient.connect(port)
        await served(client, 1)
        change = _MALFORMED[case]
        headers = request_headers()
        if change == "te":
            headers = [(n, "gzip" if n == "te" else v) for n, v in headers]
        elif change == ":path":
            headers = [(n, v) for n, v in headers if n != ":path"]
        else:
            headers = headers + change
        await client.send(client.headers_frame(3, raw_headers=headers),
                          client.data_frame(3, end_stream=True))
        assert await client.read_until(lambda c: c.resets(3))
        assert client.resets(3) == [ErrorCodes.PROTOCOL_ERROR]
        assert client.grpc_status(3) is None
        await served(client, 5)
        await served(client, 7)
        await client.aclose()


async def test_streams_past_the_advertised_limit_are_refused():
    """More open streams than SETTINGS_MAX_CONCURRENT_STREAMS: the extra one gets
    RST_STREAM(REFUSED_STREAM); the open ones keep going; once one ends, a new one is served."""
    async with serving(max_concurrent_streams=2) as port:
        client = await RawClient.connect(port)
        for sid in (1, 3):  # Watch streams stay open until cancelled
            await client.send(client.headers_frame(sid, request_headers(HEALTH_WATCH)),
                              client.data_frame(sid, end_stream=True))
        assert await client.read_until(lambda c: len(c.headers.get(3, [])) >= 1)
        await client.send(client.headers_frame(5, request_headers(HEALTH_CHECK)),
                          client.data_frame(5, end_stream=True))
        assert await client.read_until(lambda c: c.resets(5))
        assert client.resets(5) == [ErrorCodes.REFUSED_STREAM]
        assert client.goaway() is None
        await client.send(client.rst(1))
        await served(client, 7)
        assert not client.ended(3)
        await client.aclose()


async def test_zero_window_increment_and_self_dependency_are_stream_errors():
    """WINDOW_UPDATE of 0 or a self-dependent PRIORITY on a live stream resets only it."""
    async with serving() as port:
        client = await RawClient.connect(port)
        for sid in (1, 3):
            await client.send(client.headers_frame(sid, request_headers(HEALTH_WATCH)),
                              client.data_frame(sid, end_stream=True))
        await client.send(client.window_update(1, 0), client.priority(3, depends_on=3))
        assert await client.read_until(lambda c: c.resets(1) and c.resets(3))
        assert client.resets(1) == [ErrorCodes.PROTOCOL_ERROR]
        assert client.resets(3) == [ErrorCodes.PROTOCOL_ERROR]
        await served(client, 5)
        await client.send(client.window_update(0, 0))
        await connection_error(client, ErrorCodes.PROTOCOL_ERROR)


async def test_data_after_the_client_ended_its_stream_resets_that_stream():
    """Half-closed (remote): more DATA is RST_STREAM(STREAM_CLOSED) and ends that call."""
    async with serving() as port:
        client = await RawClient.connect(port)
        await client.send(client.headers_frame(1, request_headers(HEALTH_WATCH)),
                          client.data_frame(1, end_stream=True))
        assert await client.read_until(lambda c: c.headers.get(1))
        await client.send(client.data_frame(1))
        assert await client.read_until(lambda c: c.resets(1))
        assert client.resets(1) == [ErrorCodes.STREAM_CLOSED]
        await served(client, 3)


async def test_priority_frames_anywhere_are_ignored():
    """PRIORITY on idle, even, live and closed streams changes nothing."""
    async with serving() as port:
        client = await RawClient.connect(port)
        await served(client, 1)
        await client.send(client.priority(1), client.priority(2), client.priority(101, 1),
                          client.priority(3, 1))
        await served(client, 3)
        assert client.resets(101) == [] and client.resets(2) == []


@pytest.mark.parametrize("timeout", ["abc", "10", "123456789S", "-5S", "5X", "1.5S"])
async def test_a_malformed_grpc_timeout_is_invalid_argument_without_exception_text(timeout):
    """``grpc-timeout`` must be 1-8 digits and a unit; anything else is INVALID_ARGUMENT with
    a message saying so (no Python exception text)."""
    async with serving() as port:
        client = await RawClient.connect(port)
        await client.request(1, extra=[("grpc-timeout", timeout)])
        assert await client.read_until(lambda c: c.ended(1))
        assert client.grpc_status(1) == "3"
        message = urllib.parse.unquote(dict(client.headers[1][-1]).get("grpc-message", ""))
        assert "grpc-timeout" in message and "Error" not in message and "invalid literal" \
            not in message
        await served(client, 3)


# --- the property: random interleavings over several streams ---

_ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(0, 5)),
        st.tuples(st.just("message"), st.integers(0, 5)),
        st.tuples(st.just("end"), st.integers(0, 5)),
        st.tuples(st.just("rst"), st.integers(0, 5)),
        st.tuples(st.just("window_update"), st.integers(0, 5)),
        st.tuples(st.just("priority"), st.integers(0, 7)),
        st.tuples(st.just("ping"), st.just(0)),
        st.tuples(st.just("settings"), st.just(0)),
        # Illegal ones (each a connection error per RFC 9113).
        st.tuples(st.just("data_on_idle"), st.just(0)),
        st.tuples(st.just("headers_on_used"), st.integers(0, 5)),
    ),
    max_size=25,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=_ACTIONS)
async def test_random_frame_interleavings_get_the_rfc_answer(actions):
    """Whatever legal frames a client interleaves over several streams -- including frames for
    streams that are closed -- every stream it finished is answered, nothing else is reset, and a
    new call is served; the first illegal frame gets GOAWAY(PROTOCOL_ERROR) and a close. Either
    way, another connection never notices."""
    async with serving() as port:
        bystander = await RawClient.connect(port)
        await served(bystander, 1)
        client = await RawClient.connect(port)
        sids = [2 * i + 1 for i in range(6)]
        state = {}  # sid -> "open" | "ended" | "reset"
        finished = []
        messages = {}  # sid -> request messages sent
        illegal = False
        frames = []
        for action, index in actions:
            sid = sids[index] if index < len(sids) else 2 * index + 1
            used = [s for s in sids if s in state]
            if action == "open":
                if sid in state or any(s > sid for s in used):
                    continue  # a stream id must be new and ascending: handled separately
                state[sid] = "open"
                frames.append(client.headers_frame(sid, request_headers(HEALTH_CHECK)))
            elif action == "message" and state.get(sid) == "open":
                messages[sid] = messages.get(sid, 0) + 1
                frames.append(client.data_frame(sid))
            elif action == "end" and state.get(sid) == "open":
                state[sid] = "ended"
                finished.append(sid)
                frames.append(client.data_frame(sid, b"", end_stream=True))
            elif action == "rst" and sid in state:
                if state[sid] == "ended" and sid in finished:
                    finished.remove(sid)
                state[sid] = "reset"
                frames.append(client.rst(sid))
            elif action == "window_update" and sid in state:
                frames.append(client.window_update(sid, 1000))
            elif action == "priority":
                frames.append(client.priority(2 * index + 1, 0))
            elif action == "ping":
                frames.append(client.ping())
            elif action == "settings":
                frames.append(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x04\x00\x01\x00\x00")
            elif action == "data_on_idle":
                frames.append(client.data_frame(101))
                illegal = True
                break
            elif action == "headers_on_used" and state.get(sid) == "reset":
                # (On a stream the client only ended, the server may still be answering it:
                # then it is half-closed (remote), and HEADERS is a stream error instead.)
                frames.append(client.headers_frame(sid, end_stream=True))
                illegal = True
                break
        await client.send(*frames)
        if illegal:
            await connection_error(client, ErrorCodes.PROTOCOL_ERROR)
        else:
            assert await client.read_until(lambda c: all(c.ended(s) for s in finished))
            for sid in finished:
                # A unary call is OK with exactly one request message, INVALID_ARGUMENT else.
                expected = "0" if messages.get(sid) == 1 else "3"
                assert client.grpc_status(sid) == expected, (sid, client.frames)
            for sid, how in state.items():
                if how != "reset":
                    assert client.resets(sid) == [], (sid, client.frames)
            await served(client, 101)
        await client.aclose()
        await served(bystander, 3)
        await bystander.aclose()


async def test_a_method_left_as_generated_is_unimplemented():
    """A generated servicer method that was not overridden answers UNIMPLEMENTED, as other gRPC
    servers do (not INTERNAL)."""
    async with serving([health_grpc.HealthServicer()]) as port:
        client = await RawClient.connect(port)
        await client.request(1)
        assert await client.read_until(lambda c: c.ended(1))
        assert client.grpc_status(1) == "12"
