"""A raw HTTP/2 client for frame-level tests: frames built with hyperframe and hpack (the h2
project's own frame and header libraries), sent over a real trio socket exactly as given, legal
or not, and the server's frames read back and decoded."""

from __future__ import annotations

import struct

import trio
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
#: An empty protobuf message as one gRPC length-prefixed message.
EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"


def request_headers(path: str = HEALTH_CHECK, extra=()) -> list[tuple[str, str]]:
    """A well-formed gRPC request header list."""
    return [(":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "127.0.0.1"), ("te", "trailers"),
            ("content-type", "application/grpc"), *extra]


class RawClient:
    """One client connection that sends whatever frames it is given.

    Attributes:
        frames: every frame received so far, in order.
        closed: the server closed the connection (EOF or reset).
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.frames: list[Frame] = []
        self.headers: dict[int, list[list[tuple[str, str]]]] = {}
        self.closed = False
        self._buffer = bytearray()
        self._header_block: tuple[int, bytearray, set] | None = None

    @classmethod
    async def connect(cls, port: int) -> "RawClient":
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.send_raw(PREFACE + SettingsFrame(0).serialize())
        return client

    async def aclose(self) -> None:
        await self.stream.aclose()

    # --- building frames ---

    def headers_frame(self, sid: int, headers=None, *, end_stream: bool = False,
                      raw_headers=None, flags=()) -> HeadersFrame:
        frame = HeadersFrame(sid)
        if raw_headers is not None:
            frame.data = self.encoder.encode(raw_headers)
        else:
            frame.data = self.encoder.encode(headers if headers is not None else request_headers())
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        for flag in flags:
            frame.flags.add(flag)
        return frame

    @staticmethod
    def data_frame(sid: int, data: bytes = EMPTY_MESSAGE, *, end_stream: bool = False) -> DataFrame:
        frame = DataFrame(sid, data)
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    @staticmethod
    def window_update(sid: int, increment: int) -> bytes:
        # Serialized by hand: hyperframe refuses an increment of 0, which tests need.
        return struct.pack(">I", 4)[1:] + bytes((0x8, 0)) + struct.pack(">I", sid) + struct.pack(
            ">I", increment)

    @staticmethod
    def rst(sid: int, code: int = 8) -> RstStreamFrame:
        return RstStreamFrame(sid, error_code=code)

    @staticmethod
    def priority(sid: int, depends_on: int = 0) -> PriorityFrame:
        return PriorityFrame(sid, depends_on=depends_on, stream_weight=15)

    @staticmethod
    def ping(data: bytes = b"12345678") -> PingFrame:
        return PingFrame(0, data)

    # --- I/O ---

    async def send(self, *frames) -> None:
        await self.send_raw(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    async def send_raw(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError:
            self.closed = True

    async def request(self, sid: int, path: str = HEALTH_CHECK, extra=()) -> None:
        """A complete unary request: HEADERS, one empty message, END_STREAM."""
        await self.send(self.headers_frame(sid, request_headers(path, extra)),
                        self.data_frame(sid, end_stream=True))

    async def read_some(self) -> bool:
        """Read what arrives next; return False once the server closed the connection."""
        if self.closed:
            return False
        try:
            data = await self.stream.receive_some(1 << 16)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.closed = True
            return False
        self._buffer += data
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                break
            frame, _ = Frame.parse_frame_header(memoryview(bytes(self._buffer[:9])))
            frame.parse_body(memoryview(bytes(self._buffer[9:9 + length])))
            del self._buffer[:9 + length]
            await self._received(frame)
        return True

    async def _received(self, frame: Frame) -> None:
        self.frames.append(frame)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            ack = SettingsFrame(0)
            ack.flags.add("ACK")
            await self.send(ack)
        elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
            if isinstance(frame, HeadersFrame):
                self._header_block = (frame.stream_id, bytearray(frame.data), set(frame.flags))
            else:
                self._header_block[1].extend(frame.data)
            if "END_HEADERS" in frame.flags:
                sid, block, _ = self._header_block
                decoded = [(n.decode() if isinstance(n, bytes) else n,
                            v.decode() if isinstance(v, bytes) else v)
                           for n, v in self.decoder.decode(bytes(block))]
                self.headers.setdefault(sid, []).append(decoded)

    async def read_until(self, predicate, timeout: float = 10.0) -> bool:
        """Read until ``predicate(self)`` holds (True) or the connection closes (False)."""
        with trio.move_on_after(timeout):
            while not predicate(self):
                if not await self.read_some():
                    return predicate(self)
            return True
        raise AssertionError(f"timed out; frames so far: {self.frames}")

    # --- what came back ---

    def goaway(self) -> GoAwayFrame | None:
        return next((f for f in self.frames if isinstance(f, GoAwayFrame)), None)

    def resets(self, sid: int) -> list[int]:
        """Error codes of the RST_STREAM frames received for ``sid``."""
        return [f.error_code for f in self.frames
                if isinstance(f, RstStreamFrame) and f.stream_id == sid]

    def grpc_status(self, sid: int) -> str | None:
        """The ``grpc-status`` the server ended ``sid`` with, if it did."""
        for block in self.headers.get(sid, []):
            for name, value in block:
                if name == "grpc-status":
                    return value
        return None

    def ended(self, sid: int) -> bool:
        """The server ended ``sid`` (trailers) or reset it."""
        return self.grpc_status(sid) is not None or bool(self.resets(sid))


async def health_check_ok(port: int) -> None:
    """A fresh connection's health Check is answered with grpc-status 0."""
    client = await RawClient.connect(port)
    try:
        await client.request(1)
        assert await client.read_until(lambda c: c.ended(1))
        assert client.grpc_status(1) == "0", client.frames
    finally:
        await client.aclose()
