"""Frame and message cutting (rpc/_frames.py), checked against h2's and purerpc's own buffers:
the same frames, messages, errors and flow-control totals from any split of the same bytes."""

from __future__ import annotations

import struct

import pytest
from h2.exceptions import FrameTooLargeError, ProtocolError
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from purerpc import StatusCode
from purerpc.grpclib.buffers import MessageReadBuffer
from purerpc.grpclib.exceptions import MessageTooLargeError, UnsupportedMessageEncodingError

from anvil_trio.rpc._compression import CompressedFlagError
from anvil_trio.rpc._frames import DataRun, FrameReader, MessageAssembler

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 1 << 16


def data_frame(sid: int, payload: bytes, pad: int, end: bool) -> bytes:
    frame = DataFrame(sid, data=payload)
    if pad:
        frame.flags.add("PADDED")
        frame.pad_length = pad - 1
    if end:
        frame.flags.add("END_STREAM")
    return frame.serialize()


@st.composite
def frame_streams(draw) -> bytes:
    """A connection's bytes: the preface, then a mix of frame kinds, header blocks split over
    CONTINUATIONs included."""
    out = [PREFACE]
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["data", "headers", "ping", "window", "rst", "settings",
                                     "unknown"]))
        sid = draw(st.integers(1, 9)) * 2 - 1
        if kind == "data":
            out.append(data_frame(sid, draw(st.binary(max_size=3000)), draw(st.integers(0, 40)),
                                  draw(st.booleans())))
        elif kind == "headers":
            block = draw(st.binary(min_size=1, max_size=300))
            cuts = sorted(set(draw(st.lists(st.integers(1, len(block)), max_size=3))))
            parts = [block[a:b] for a, b in zip([0, *cuts], [*cuts, len(block)]) if b > a]
            first = HeadersFrame(sid, data=parts[0])
            if len(parts) == 1:
                first.flags.add("END_HEADERS")
            out.append(first.serialize())
            for index, part in enumerate(parts[1:], start=2):
                cont = ContinuationFrame(sid, data=part)
                if index == len(parts):
                    cont.flags.add("END_HEADERS")
                out.append(cont.serialize())
        elif kind == "ping":
            out.append(PingFrame(0, opaque_data=draw(st.binary(min_size=8, max_size=8))).serialize())
        elif kind == "window":
            out.append(WindowUpdateFrame(sid, window_increment=draw(st.integers(1, 2**31 - 1)))
                       .serialize())
        elif kind == "rst":
            out.append(RstStreamFrame(sid, error_code=draw(st.integers(0, 13))).serialize())
        elif kind == "settings":
            out.append(SettingsFrame(0, settings={4: draw(st.integers(0, 2**31 - 1))}).serialize())
        else:
            body = draw(st.binary(max_size=50))
            out.append(_unknown_frame(sid, body))
    return b"".join(out)


def _unknown_frame(sid: int, body: bytes) -> bytes:
    length = len(body)
    return struct.pack(">BHBBL", length >> 16, length & 0xFFFF, 0x42, 0, sid) + body


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def describe(frame) -> tuple:
    body = frame.serialize_body() if not isinstance(frame, ExtensionFrame) else frame.body
    return (type(frame).__name__, frame.stream_id, sorted(frame.flags), bytes(body))


def run_reader(reader: FrameBuffer, pieces: list[bytes]) -> list[tuple]:
    reader.max_frame_size = MAX_FRAME
    frames = []
    for piece in pieces:
        reader.add_data(piece)
        for frame in reader:
            if isinstance(frame, DataRun):  # the frames it stands for, one by one
                assert frame.flow_controlled_length == sum(map(len, frame.data))
                frames += [("DataFrame", frame.stream_id, [], bytes(part)) for part in frame.data]
            else:
                frames.append(describe(frame))
    return frames


@settings(max_examples=150, deadline=None)
@given(stream=frame_streams(), cuts=st.lists(st.integers(0, 10**6), max_size=20))
def test_frame_reader_yields_what_h2_yields(stream: bytes, cuts: list[int]) -> None:
    """However the connection's bytes are split into reads, FrameReader yields the same frames
    (kind, stream, flags, body) as h2's own FrameBuffer."""
    pieces = split(stream, cuts)
    assert run_reader(FrameReader(server=True), pieces) == run_reader(FrameBuffer(server=True),
                                                                      pieces)


def test_frame_reader_errors_match_h2() -> None:
    """A bad preface, an overlong frame and a broken header block fail as they do in h2, and a
    big DATA frame comes out whole."""
    for reader_type in (FrameReader, FrameBuffer):
        with pytest.raises(ProtocolError):
            reader_type(server=True).add_data(b"GET / HTTP/1.1\r\n\r\n")
        reader = reader_type(server=True)
        reader.max_frame_size = MAX_FRAME
        reader.add_data(PREFACE + data_frame(1, b"x" * (MAX_FRAME + 1), 0, False))
        with pytest.raises(FrameTooLargeError):
            list(reader)
        reader = reader_type(server=True)
        reader.max_frame_size = MAX_FRAME
        reader.add_data(PREFACE + HeadersFrame(1, data=b"abc").serialize()
                        + PingFrame(0, opaque_data=b"12345678").serialize())
        with pytest.raises(ProtocolError):
            list(reader)
    reader = FrameReader(server=True)
    reader.max_frame_size = 1 << 24
    payload = bytes(range(256)) * 8192
    frame = data_frame(3, payload, 0, True)
    for index in range(0, len(frame), 65536):
        reader.add_data((PREFACE if index == 0 else b"") + frame[index:index + 65536])
        got = list(reader)
    assert [(type(f), f.data) for f in got] == [(DataFrame, payload)]


def encode(messages: list[bytes]) -> bytes:
    return b"".join(struct.pack(">?I", False, len(m)) + m for m in messages)


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(st.binary(max_size=2000), max_size=8),
       cuts=st.lists(st.integers(0, 10**6), max_size=20),
       pads=st.lists(st.integers(0, 255), max_size=30))
def test_message_assembler_matches_purerpc(messages: list[bytes], cuts: list[int],
                                           pads: list[int]) -> None:
    """However the DATA payloads are split (and padded), the same messages come out as from
    purerpc's MessageReadBuffer, and the flow-controlled lengths reported add up to everything
    received once every message is complete."""
    pieces = split(encode(messages), cuts)
    ours, theirs = MessageAssembler(1 << 20), MessageReadBuffer(None, 1 << 20)
    got, expected, reported, received = [], [], 0, 0
    for index, piece in enumerate(pieces):
        flow = len(piece) + (pads[index] if index < len(pads) else 0)
        received += flow
        for message, size in ours.data_received(piece, flow):
            got.append(bytes(message))
            reported += size
            assert size >= 5 + len(message)
        theirs.data_received(piece, flow)
        expected += theirs.read_all_complete_messages()
    assert got == expected == messages
    assert reported == received


def test_messages_are_copied_once_and_no_payload_is_kept_and_limits_hold() -> None:
    """A message inside one payload comes out as its own bytes, one spanning payloads as the
    bytearray it was assembled in; no view of a payload is kept (payloads are views of the
    receive buffer); an oversized prefix fails like purerpc's buffer does, and the compressed
    flag without a compressing grpc-encoding fails as the gRPC spec says (INTERNAL)."""
    payload = bytearray(encode([b"a" * 1000, b"b" * 10, b"c" * 30]))
    assembler = MessageAssembler(1 << 20)
    view = memoryview(payload)
    (first, _), (second, _) = assembler.data_received(view[:1020], 1020)
    assert type(first) is bytes and (first, second) == (b"a" * 1000, b"b" * 10)
    assert assembler.data_received(view[1020:1030], 10) == []
    ((third, _),) = assembler.data_received(view[1030:], len(payload) - 1030)
    assert type(third) is bytearray and third == b"c" * 30
    view.release()
    payload += b"x"  # would raise BufferError if the assembler still held a view of it
    with pytest.raises(MessageTooLargeError):
        MessageAssembler(100).data_received(struct.pack(">?I", False, 101), 5)
    for encoding in (None, "identity"):
        with pytest.raises(CompressedFlagError, match="compressed flag set without grpc-encoding"):
            MessageAssembler(1 << 20, encoding).data_received(
                struct.pack(">?I", True, 3) + b"abc", 8)
    assert issubclass(CompressedFlagError, UnsupportedMessageEncodingError)
    assert CompressedFlagError.status_code == StatusCode.INTERNAL
    assert MessageAssembler(10).data_received(encode([b""]), 5) == [(b"", 5)]
