"""The stream gate's decisions (RFC 9113 5.1) and the request header checks (8.1-8.3), no I/O."""

from __future__ import annotations

import pytest
from h2.errors import ErrorCodes
from hypothesis import given, settings
from hypothesis import strategies as st

from anvil_trio.rpc._gate import PASS, Action, StreamGate
from anvil_trio.rpc._h2 import request_header_problem

OK_HEADERS = [
    (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/grpc.health.v1.Health/Check"),
    (b":authority", b"localhost"), (b"te", b"trailers"), (b"content-type", b"application/grpc"),
]


def opened(gate: StreamGate, *sids: int, end_stream: bool = False) -> None:
    for sid in sids:
        assert gate.receive_headers(sid, end_stream, None) is PASS


def test_late_window_update_and_reset_for_an_ended_stream_are_ignored():
    """A stream both sides ended, then a newer one opened: its late frames are dropped, not errors."""
    gate = StreamGate(10)
    opened(gate, 1, end_stream=True)
    gate.local_end(1)
    opened(gate, 3)
    assert gate.receive_window_update(1, 100).action is Action.DROP
    assert gate.receive_reset(1).action is Action.DROP
    assert gate.receive_priority(1, 0).action is Action.DROP
    assert gate.open_streams == 1


def test_data_on_a_closed_stream_is_answered_once_with_stream_closed():
    """DATA for a stream the server ended gets one RST_STREAM(STREAM_CLOSED); later ones are dropped."""
    gate = StreamGate(10)
    opened(gate, 1, end_stream=True)
    gate.local_end(1)
    first = gate.receive_data(1, False)
    assert (first.action, first.code, first.live) == (Action.RESET, ErrorCodes.STREAM_CLOSED, False)
    assert gate.receive_data(1, False).action is Action.DROP


def test_frames_for_a_stream_the_server_reset_are_ignored():
    """After the server's RST_STREAM, every frame the client had in flight is dropped silently."""
    gate = StreamGate(10)
    opened(gate, 1)
    gate.reset_sent(1)
    for decision in (gate.receive_data(1, True), gate.receive_headers(1, True, None),
                     gate.receive_window_update(1, 5), gate.receive_reset(1)):
        assert decision.action is Action.DROP


@pytest.mark.parametrize("frame", ["data", "window_update", "reset"])
def test_frames_on_idle_streams_are_connection_errors(frame):
    """DATA, WINDOW_UPDATE or RST_STREAM on a stream never opened is PROTOCOL_ERROR (5.1 idle)."""
    gate = StreamGate(10)
    opened(gate, 1)
    decision = {"data": lambda: gate.receive_data(5, False),
                "window_update": lambda: gate.receive_window_update(5, 1),
                "reset": lambda: gate.receive_reset(5)}[frame]()
    assert (decision.action, decision.code) == (Action.CONNECTION_ERROR, ErrorCodes.PROTOCOL_ERROR)


def test_even_streams_and_reused_ids_are_connection_errors():
    """HEADERS on an even id, or on an id at or below the highest used, is PROTOCOL_ERROR."""
    gate = StreamGate(10)
    assert gate.receive_headers(2, False, None).action is Action.CONNECTION_ERROR
    opened(gate, 5, end_stream=True)
    gate.local_end(5)
    assert gate.receive_headers(5, False, None).action is Action.CONNECTION_ERROR
    assert gate.receive_headers(3, False, None).action is Action.CONNECTION_ERROR
    assert gate.receive_data(2, False).action is Action.CONNECTION_ERROR


def test_streams_past_the_limit_are_refused_and_remembered():
    """The stream over the limit gets REFUSED_STREAM; its in-flight DATA is then dropped."""
    gate = StreamGate(2)
    opened(gate, 1, 3)
    refused = gate.receive_headers(5, False, None)
    assert (refused.action, refused.code) == (Action.REFUSE, ErrorCodes.REFUSED_STREAM)
    assert gate.receive_data(5, True).action is Action.DROP
    assert gate.open_streams == 2 and gate.refused == 1
    gate.reset_sent(1)
    opened(gate, 7)
    assert gate.open_streams == 2


def test_data_after_the_client_ended_a_live_stream_resets_it():
    """Half-closed (remote): DATA or HEADERS is RST_STREAM(STREAM_CLOSED) and ends the call."""
    gate = StreamGate(10)
    opened(gate, 1, end_stream=True)
    decision = gate.receive_data(1, False)
    assert (decision.action, decision.code, decision.live) == (
        Action.RESET, ErrorCodes.STREAM_CLOSED, True)
    assert not gate.is_live(1)


def test_zero_window_increment_on_a_live_stream_is_a_stream_error():
    """WINDOW_UPDATE of 0 on a live stream resets only that stream (6.9)."""
    gate = StreamGate(10)
    opened(gate, 1)
    decision = gate.receive_window_update(1, 0)
    assert (decision.action, decision.code, decision.live) == (
        Action.RESET, ErrorCodes.PROTOCOL_ERROR, True)


def test_priority_is_ignored_everywhere_but_self_dependency_is_a_stream_error():
    """PRIORITY on idle, even, live or closed streams is dropped; depending on itself resets."""
    gate = StreamGate(10)
    opened(gate, 1)
    for sid in (1, 2, 9, 11):
        assert gate.receive_priority(sid, 0).action is Action.DROP
    assert gate.receive_priority(1, 1).live
    assert gate.receive_priority(13, 13).action is Action.RESET
    assert gate.receive_headers(15, False, 15).action is Action.RESET


def test_trailers_must_end_the_stream():
    """A second HEADERS without END_STREAM is malformed: RST_STREAM(PROTOCOL_ERROR)."""
    gate = StreamGate(10)
    opened(gate, 1)
    decision = gate.receive_headers(1, False, None)
    assert (decision.action, decision.code) == (Action.RESET, ErrorCodes.PROTOCOL_ERROR)
    gate2 = StreamGate(10)
    opened(gate2, 1)
    assert gate2.receive_headers(1, True, None) is PASS
    gate2.local_end(1)
    assert gate2.open_streams == 0


def test_reset_memory_is_bounded():
    """Only the most recent resets are remembered; older streams get one STREAM_CLOSED."""
    gate = StreamGate(10, remember_resets=4)
    for sid in range(1, 20, 2):
        opened(gate, sid)
        gate.reset_sent(sid)
    assert len(gate._reset) == 4
    assert gate.receive_data(1, False).action is Action.RESET
    assert gate.receive_data(19, False).action is Action.DROP


_EVENTS = st.lists(st.tuples(st.sampled_from(["open", "open_end", "data", "data_end", "wu", "rst",
                                              "local_end", "local_reset"]),
                             st.integers(0, 6)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(_EVENTS)
def test_open_streams_never_exceed_the_limit_and_match_the_live_ones(events):
    """Whatever the client and server do, live streams stay within the limit and are counted."""
    gate = StreamGate(3)
    for kind, index in events:
        sid = 2 * index + 1
        if kind in ("open", "open_end"):
            gate.receive_headers(sid, kind == "open_end", None)
        elif kind in ("data", "data_end"):
            gate.receive_data(sid, kind == "data_end")
        elif kind == "wu":
            gate.receive_window_update(sid, 1)
        elif kind == "rst":
            gate.receive_reset(sid)
        elif kind == "local_end":
            gate.local_end(sid)
        else:
            gate.reset_sent(sid)
        assert gate.open_streams <= 3
        assert all(s & 1 and s <= gate.highest for s in gate._live)


# --- request headers ---


def test_well_formed_request_headers_pass():
    """An ordinary gRPC request header block (and trailers without pseudo-headers) passes."""
    assert request_header_problem(OK_HEADERS + [(b"authorization", b"Bearer x.y.z"),
                                                (b"x-data-bin", b"AAEC")], trailers=False) is None
    assert request_header_problem([(b"x-trailer", b"v")], trailers=True) is None


@pytest.mark.parametrize("headers, words", [
    (OK_HEADERS + [(b"X-Upper", b"v")], "invalid header name"),
    (OK_HEADERS + [(b"x-space", b"v ")], "invalid value"),
    (OK_HEADERS + [(b"x-lead", b"\tv")], "invalid value"),
    (OK_HEADERS + [(b"x-nul", b"a\x00b")], "invalid value"),
    (OK_HEADERS + [(b"x-crlf", b"a\r\nb")], "invalid value"),
    (OK_HEADERS + [(b"x-latin1", b"caf\xe9")], "not UTF-8"),
    (OK_HEADERS + [(b"connection", b"keep-alive")], "connection-specific"),
    (OK_HEADERS + [(b"transfer-encoding", b"chunked")], "connection-specific"),
    ([h if h[0] != b"te" else (b"te", b"gzip") for h in OK_HEADERS], "te header"),
    ([h for h in OK_HEADERS if h[0] != b":path"], "missing"),
    (OK_HEADERS + [(b":status", b"200")], "pseudo-header"),
    ([(b"content-type", b"application/grpc")] + OK_HEADERS[:4], "after a regular"),
    (OK_HEADERS[:1] + OK_HEADERS, "duplicate"),
    ([(b":path", b"")] + [h for h in OK_HEADERS if h[0] != b":path"], "empty :path"),
    (OK_HEADERS + [(b"", b"v")], "empty header name"),
    (OK_HEADERS + [(b"x:colon", b"v")], "invalid header name"),
    (OK_HEADERS + [(b"host", b"elsewhere")], "differs"),
])
def test_malformed_request_headers_are_named(headers, words):
    """Each malformation of RFC 9113 8.2/8.3 is found and named."""
    problem = request_header_problem(headers, trailers=False)
    assert problem is not None and words in problem


def test_pseudo_headers_in_trailers_are_malformed():
    """Trailers may not carry pseudo-headers (8.1)."""
    assert "trailers" in request_header_problem([(b":path", b"/x")], trailers=True)
