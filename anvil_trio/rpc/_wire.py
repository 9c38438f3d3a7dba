"""One gRPC connection at the edge: purerpc's HTTP/2 machinery, subclassed so one call's bad
input cannot kill the connection's other calls.

purerpc 0.8.0 (``purerpc.grpclib.connection.GRPCConnection``) raises out of ``receive_data`` --
which tears the whole connection down -- for a message over its limit, a compressed message it
cannot decode, malformed request headers, and data for a stream it forgot. This module turns
each of those into a per-call outcome instead.

Invariants:

* Every stream whose headers parsed has a :class:`CallControl` in ``EdgeConnection.calls`` from
  the moment its HEADERS frame is parsed until the call task calls
  :meth:`EdgeConnection.forget`.
* Flow control: every flow-controlled byte received is acknowledged exactly once -- by purerpc
  when the handler consumes a message, or here when a message is refused, discarded, or left
  unread when the call ends. So a rejected 40 MiB message does not shrink the connection window.
* A rejected call (too large, compressed) is answered by its own call task with the status
  recorded in its ``CallControl``; the connection only records it and cancels the call.
* A stream reset by the peer cancels its call; nothing is sent on it afterwards.
* A stream object is dropped from the socket's registry only at the start of the next
  ``receive_data``, i.e. after every event of the previous batch has been delivered; streams
  reset by either side get no further events from h2.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc
import attrs
import h2.errors
import h2.exceptions
import trio
from purerpc import Status, StatusCode
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpc_socket import GRPCStreamState, SocketWrapper
from purerpc.grpclib.buffers import MessageReadBuffer
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import MessageReceived
from purerpc.grpclib.exceptions import MessageTooLargeError, UnsupportedMessageEncodingError

__all__ = [
    "CallControl",
    "EdgeConnection",
    "EdgeSocket",
    "EdgeStream",
    "TrioStreamAdapter",
]

log = logging.getLogger("anvil_trio.rpc")


@attrs.define(eq=False)
class CallControl:
    """The connection's handle on one call: how to stop it and what to answer.

    Attributes:
        stream_id: the HTTP/2 stream.
        cancel_scope: entered by the call task around the handler; cancelled on abort. It may be
            cancelled before it is entered (a rejection in the same read as the headers).
        abort_status: the status to answer with after an abort, or ``None``.
        peer_reset: the client reset the stream; nothing may be sent on it.
        unacked: flow-controlled bytes received but not yet handed out as whole messages.
    """

    stream_id: int
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    abort_status: Status | None = None
    peer_reset: bool = False
    unacked: int = 0

    def abort(self, status: Status | None) -> None:
        """Cancel the call; ``status`` is what to answer, ``None`` means the peer reset it."""
        if status is None:
            self.peer_reset = True
        elif self.abort_status is None:
            self.abort_status = status
        self.cancel_scope.cancel()


class _StrictReadBuffer(MessageReadBuffer):
    """purerpc's read buffer, refusing compressed messages instead of inflating them.

    purerpc would ``zlib.decompress`` a gzip body (which fails and kills the connection) and
    inflate deflate bodies without a size bound (a decompression bomb).
    """

    def decompress(self, data: bytes) -> bytes:
        raise UnsupportedMessageEncodingError(
            f"compressed request messages are not supported (grpc-encoding "
            f"{self._message_encoding!r}); send them uncompressed (identity)"
        )


class EdgeConnection(GRPCConnection):
    """purerpc's sans-IO gRPC connection, with per-call failure handling (see module doc).

    Args:
        config: purerpc configuration; its ``max_message_length`` is the request size limit.
        max_concurrent_streams: advertised SETTINGS_MAX_CONCURRENT_STREAMS.
    """

    def __init__(self, config: GRPCConfiguration, *, max_concurrent_streams: int) -> None:
        self.MAX_CONCURRENT_STREAMS = max_concurrent_streams
        super().__init__(config)
        self.calls: dict[int, CallControl] = {}
        self.stream_registry: dict[int, Any] = {}
        self._retired: set[int] = set()
        #: Flow-controlled bytes of DATA h2 handed us, and how many of them were acknowledged.
        self.received_bytes = 0
        self.acknowledged_bytes = 0

    @property
    def unacknowledged_bytes(self) -> int:
        """Bytes received and not yet acknowledged: queued messages plus partial ones."""
        return self.received_bytes - self.acknowledged_bytes

    def acknowledge_received_data(self, stream_id: int, flow_controlled_length: int) -> None:
        self.acknowledged_bytes += flow_controlled_length
        super().acknowledge_received_data(stream_id, flow_controlled_length)

    # --- h2 event translation (synchronous, inside receive_data) ---

    def receive_data(self, data: bytes) -> list:
        self._drop_retired()
        return super().receive_data(data)

    def _request_received(self, event):
        sid = event.stream_id
        try:
            events = super()._request_received(event)
        except Exception as exc:  # malformed headers: answer this stream only
            self._refuse(sid, Status(StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}"),
                         remote_ended=bool(event.stream_ended))
            return []
        request = events[0]
        self.message_read_buffers[sid] = _StrictReadBuffer(
            request.message_encoding, self.config.max_message_length
        )
        self.calls[sid] = CallControl(sid)
        return events

    def _data_received(self, event):
        sid = event.stream_id
        self.received_bytes += event.flow_controlled_length
        control = self.calls.get(sid)
        buffer = self.message_read_buffers.get(sid)
        if control is None or buffer is None:
            self._ack(sid, event.flow_controlled_length)
            return []
        control.unacked += event.flow_controlled_length
        status = None
        try:
            buffer.data_received(event.data, event.flow_controlled_length)
        except MessageTooLargeError as exc:
            status = Status(
                StatusCode.RESOURCE_EXHAUSTED,
                f"request message exceeds the limit of {self.config.max_message_length} "
                f"bytes ({exc})",
            )
        except UnsupportedMessageEncodingError as exc:
            status = Status(StatusCode.UNIMPLEMENTED, str(exc))
        events = []
        for message, length in buffer.read_all_complete_messages_flowcontrol():
            control.unacked -= length
            events.append(MessageReceived(sid, message, length))
        if status is not None:
            self._discard_input(control)
            control.abort(status)
        return events

    def _stream_reset(self, event):
        control = self.calls.get(event.stream_id)
        if control is not None:
            self._discard_input(control)
            control.abort(None)
        return []

    # --- helpers used by the call task ---

    def forget(self, sid: int, *, retire: bool) -> None:
        """The call on ``sid`` is over: drop its state, acknowledge what it left unread.

        Args:
            sid: the stream.
            retire: the stream is not cleanly closed in purerpc's view (reset by either side);
                drop it from the socket registry at the next read.
        """
        control = self.calls.pop(sid, None)
        if control is not None:
            self._discard_input(control)
        self.message_read_buffers.pop(sid, None)
        if retire:
            self._retired.add(sid)

    def reset_quietly(self, sid: int, code: h2.errors.ErrorCodes) -> None:
        """Send RST_STREAM unless h2 already considers the stream closed."""
        try:
            self.h2_connection.reset_stream(sid, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass

    def ack_unread(self, stream: GRPCProtoStream) -> None:
        """Acknowledge the messages queued for ``stream`` that nobody will read now."""
        receiver = stream._incoming_events[1]
        while True:
            try:
                item = receiver.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            if isinstance(item, MessageReceived):
                self._ack(stream.stream_id, item.flow_controlled_length)

    def _discard_input(self, control: CallControl) -> None:
        self.message_read_buffers.pop(control.stream_id, None)
        if control.unacked:
            self._ack(control.stream_id, control.unacked)
            control.unacked = 0

    def _ack(self, sid: int, length: int) -> None:
        if length > 0:
            self.acknowledge_received_data(sid, length)

    def _refuse(self, sid: int, status: Status, *, remote_ended: bool) -> None:
        try:
            self.respond_status(sid, status)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        if not remote_ended:
            self.reset_quietly(sid, h2.errors.ErrorCodes.NO_ERROR)

    def _drop_retired(self) -> None:
        while self._retired:
            sid = self._retired.pop()
            stream = self.stream_registry.pop(sid, None)
            if stream is not None:
                self.ack_unread(stream)


class EdgeStream(GRPCProtoStream):
    """A server-side call stream that sends response headers lazily (so an error before the
    first message is a trailers-only response) and attaches the call's metadata.
    """

    #: The handler's ``request`` object (a ``CallContext``); set by the call task.
    context: Any = None
    #: True while a message is part-way out; a cancel then must reset, not send trailers.
    sending_partial: bool = False

    async def send_message(self, message) -> None:
        if not self._response_started:
            initial = tuple(self.context.initial_metadata) if self.context is not None else ()
            await self.start_response(custom_metadata=initial)
        self.sending_partial = True
        await super().send_message(message)
        self.sending_partial = False

    async def close(self, status=None, content_type_suffix="", custom_metadata=()):
        if not custom_metadata and self.context is not None:
            custom_metadata = tuple(self.context.trailing_metadata)
        if not self._response_started and not content_type_suffix:
            content_type_suffix = "+proto"
        return await super().close(status, content_type_suffix, custom_metadata)

    @property
    def locally_closed(self) -> bool:
        """Whether our side of the stream has ended (status sent)."""
        return self.state in (GRPCStreamState.HALF_CLOSED_LOCAL, GRPCStreamState.CLOSED)


class EdgeSocket(GRPCProtoSocket):
    """purerpc's server socket driving an :class:`EdgeConnection` and :class:`EdgeStream`\\ s.

    Args:
        config: purerpc configuration (server side).
        stream: the byte stream (see :class:`TrioStreamAdapter`).
        max_concurrent_streams: advertised SETTINGS_MAX_CONCURRENT_STREAMS.
    """

    StreamClass = EdgeStream

    def __init__(self, config: GRPCConfiguration, stream, *, max_concurrent_streams: int) -> None:
        super().__init__(config, stream)
        # purerpc builds a plain GRPCConnection in __init__; swap in ours before anything runs.
        self._grpc_connection = EdgeConnection(config, max_concurrent_streams=max_concurrent_streams)
        self._socket = SocketWrapper(self._grpc_connection, stream)
        self._grpc_connection.stream_registry = self._streams

    @property
    def connection(self) -> EdgeConnection:
        """The connection state machine."""
        return self._grpc_connection

    async def flush(self) -> None:
        """Wake the writer so queued frames go out."""
        await self._socket.flush()

    def goaway(self) -> None:
        """Queue a GOAWAY (NO_ERROR); the peer opens no further calls on this connection."""
        try:
            self._grpc_connection.h2_connection.close_connection()
        except h2.exceptions.ProtocolError:
            pass


class TrioStreamAdapter:
    """Presents a trio stream (TCP or TLS) with the subset of the anyio ``SocketStream`` API
    that purerpc uses: ``send``, ``receive``, ``extra(SocketAttribute.raw_socket)``, ``aclose``.

    Args:
        stream: a ``trio.SocketStream`` or a ``trio.SSLStream`` over one.
        raw_socket: the underlying trio socket (for purerpc's keep-alive options).
    """

    def __init__(self, stream: trio.abc.Stream, raw_socket) -> None:
        self._stream = stream
        self._raw_socket = raw_socket

    def extra(self, attribute, default=None):
        if attribute is anyio.abc.SocketAttribute.raw_socket:
            return self._raw_socket
        if default is not None:
            return default
        raise anyio.TypedAttributeLookupError(attribute)

    async def send(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise anyio.BrokenResourceError from exc

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()
