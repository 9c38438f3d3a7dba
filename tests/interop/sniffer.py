"""A TCP proxy that watches the HTTP/2 frames between a gRPC client and the edge.

The compression cases must assert the *compressed flag* of individual gRPC messages, which
neither grpcio nor grpc-js show to the application. The client connects to the proxy, the
proxy to the server; bytes pass through unchanged while both directions are parsed with
hyperframe (frames) and hpack (header blocks, one stateful decoder per direction), and each
gRPC message's 5-byte prefix is read out of the DATA frames.

Invariants:

* Bytes are forwarded exactly as received; parsing never alters or delays a byte beyond the
  chunk it arrived in.
* Every stream of every connection gets one :class:`CallRecord`, keyed by
  ``(connection number, stream id)`` and kept in the order its first frame passed; its
  ``path`` comes from the request headers.
* A parse error stops parsing on that connection (recorded in ``errors``), never forwarding.
"""

from __future__ import annotations

import struct

import attrs
import hpack
import trio
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame

__all__ = ["CallRecord", "Sniffer"]

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PREFIX = struct.Struct(">BI")


@attrs.define
class CallRecord:
    """What one stream carried."""

    path: str | None = None
    request_headers: list[tuple[str, str]] = attrs.field(factory=list)
    #: Response header blocks in order (headers, then trailers).
    response_headers: list[list[tuple[str, str]]] = attrs.field(factory=list)
    #: One entry per gRPC message: ``(compressed flag, length)``.
    request_messages: list[tuple[bool, int]] = attrs.field(factory=list)
    response_messages: list[tuple[bool, int]] = attrs.field(factory=list)

    def header(self, name: str, *, response: bool = False) -> str | None:
        """The first value of ``name`` in the request (or the first response) headers."""
        blocks = self.response_headers[:1] if response else [self.request_headers]
        for block in blocks:
            for key, value in block:
                if key == name:
                    return value
        return None


class _MessageCutter:
    """Reads the gRPC message prefixes out of one stream direction's DATA bytes."""

    def __init__(self, out: list[tuple[bool, int]]) -> None:
        self._out = out
        self._prefix = b""
        self._skip = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                take = min(self._skip, len(view))
                self._skip -= take
                view = view[take:]
                continue
            need = _PREFIX.size - len(self._prefix)
            self._prefix += bytes(view[:need])
            view = view[need:]
            if len(self._prefix) == _PREFIX.size:
                flag, length = _PREFIX.unpack(self._prefix)
                self._out.append((bool(flag & 1), length))
                self._prefix, self._skip = b"", length


class _Direction:
    """Frame parser for one direction of one connection."""

    def __init__(self, sniffer: Sniffer, connection: int, *, from_client: bool) -> None:
        self._sniffer = sniffer
        self._connection = connection
        self._from_client = from_client
        self._buffer = bytearray()
        self._need_preface = from_client
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 1 << 20
        self._block: bytearray | None = None
        self._block_stream = 0
        self._cutters: dict[int, _MessageCutter] = {}
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self._buffer += data
        try:
            self._parse()
        except Exception as exc:  # keep forwarding; the test sees the error
            self.broken = True
            self._sniffer.errors.append(f"connection {self._connection}: {exc!r}")

    def _parse(self) -> None:
        if self._need_preface:
            if len(self._buffer) < len(_PREFACE):
                return
            del self._buffer[: len(_PREFACE)]
            self._need_preface = False
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self._buffer[:9])))
            if len(self._buffer) < 9 + length:
                return
            body = bytes(self._buffer[9 : 9 + length])
            del self._buffer[: 9 + length]
            frame.parse_body(memoryview(body))
            self._frame(frame)

    def _frame(self, frame) -> None:
        if isinstance(frame, HeadersFrame):
            self._block, self._block_stream = bytearray(frame.data), frame.stream_id
            if "END_HEADERS" in frame.flags:
                self._header_block()
        elif isinstance(frame, ContinuationFrame) and self._block is not None:
            self._block += frame.data
            if "END_HEADERS" in frame.flags:
                self._header_block()
        elif isinstance(frame, DataFrame) and frame.data:
            record = self._sniffer._record(self._connection, frame.stream_id)
            cutter = self._cutters.get(frame.stream_id)
            if cutter is None:
                out = record.request_messages if self._from_client else record.response_messages
                cutter = self._cutters[frame.stream_id] = _MessageCutter(out)
            cutter.feed(frame.data)

    def _header_block(self) -> None:
        headers = [(_text(k), _text(v)) for k, v in self._decoder.decode(bytes(self._block))]
        record = self._sniffer._record(self._connection, self._block_stream)
        self._block = None
        if self._from_client:
            record.request_headers = headers
            record.path = dict(headers).get(":path")
        else:
            record.response_headers.append(headers)


def _text(value) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class Sniffer:
    """Forward 127.0.0.1:<port> to ``target_port`` and record every call.

    Run it with ``port = await nursery.start(sniffer.serve)``; cancel the nursery to stop.

    Args:
        target_port: the server's port on 127.0.0.1.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.calls: dict[tuple[int, int], CallRecord] = {}
        self.errors: list[str] = []
        self._connections = 0

    def _record(self, connection: int, stream_id: int) -> CallRecord:
        return self.calls.setdefault((connection, stream_id), CallRecord())

    def calls_to(self, path: str) -> list[CallRecord]:
        """The records of every call to ``path`` (``/pkg.Service/Method``), in the order their
        first frame passed the proxy (whatever connection they were on)."""
        return [record for record in self.calls.values() if record.path == path]

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self._connections += 1
        number = self._connections
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, server:
            async with trio.open_nursery() as nursery:
                up = _Direction(self, number, from_client=True)
                down = _Direction(self, number, from_client=False)
                nursery.start_soon(self._pump, client, server, up, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, down, nursery.cancel_scope)

    @staticmethod
    async def _pump(source, sink, parser: _Direction, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await source.receive_some(65536)
                if not data:
                    break
                parser.feed(data)
                await sink.send_all(data)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            scope.cancel()
