"""One call's stream at the edge: its inbox of incoming events, and the sending and receiving
a handler does through it.

purerpc's ``GRPCStream`` keeps incoming events in an anyio memory stream and sends response
headers as soon as asked; :class:`EdgeStream` keeps them in an :class:`_Inbox` (trio's own
parking lot), sends the response headers lazily (an error before the first message is then a
trailers-only response), attaches the call's metadata, releases flow control per consumed
message, compresses responses by the rule of ``_compression``, and sends with bounded
buffering.

Invariants:

* A message goes out in DATA frames cut from it by ``memoryview`` slicing, each only while the
  connection's send buffer has room and the stream's window allows; ``sending_partial`` is
  true from its first queued byte until its last (a cancel then resets instead of sending
  trailers that would corrupt the message).
* Every wait for the peer (window, room in the send buffer, request data) is bounded by the
  stream's stall timeouts; past one, :class:`StreamStalledError` ends the call.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import anyio
import trio
from purerpc.grpc_proto import GRPCProtoStream
from purerpc.grpc_socket import GRPCStreamState
from purerpc.grpclib.events import MessageReceived, RequestEnded, ResponseEnded
from purerpc.grpclib.exceptions import MessageTooLargeError

from ._compression import InflatedMessage, compress_message, response_encoding
from ._headers import check_response_metadata
from ._messages import MESSAGE_HEADER, PreFramed

__all__ = ["EdgeStream", "StreamStalledError"]


class StreamStalledError(Exception):
    """A call waited for its peer past ``stream_stall_timeout`` without progress: no window to
    send into, no room in the connection's send buffer, or no request data."""


class _Inbox:
    """One stream's incoming purerpc events (headers, messages, end), in order.

    It stands in for purerpc's unbounded anyio memory stream, which passes through the
    scheduler on every send and every receive (six trips through the run loop for each unary
    call) and warns from ``__del__`` about every stream, since purerpc never closes them. It is
    unbounded like that stream: the connection's flow control bounds what a stream can have
    queued. ``send`` never waits; ``receive`` waits only when the inbox is empty, and raises
    ``Cancelled`` at once in a cancelled task. It serves as both ends of the pair purerpc keeps
    in ``_incoming_events``.
    """

    __slots__ = ("_items", "_lot")

    def __init__(self) -> None:
        self._items: collections.deque = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()

    async def send(self, item: Any) -> None:
        self._items.append(item)
        if self._lot:
            self._lot.unpark()

    async def receive(self, stall_timeout: float = math.inf) -> Any:
        """The next item; waits at most ``stall_timeout`` seconds for one to arrive.

        Raises:
            StreamStalledError: nothing arrived within ``stall_timeout``.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._items:
            with trio.move_on_after(stall_timeout):
                while not self._items:
                    await self._lot.park()
            if not self._items:
                raise StreamStalledError(f"no request data for {stall_timeout:g} s")
        return self._items.popleft()

    def receive_nowait(self) -> Any:
        if not self._items:
            raise anyio.WouldBlock
        return self._items.popleft()


class EdgeStream(GRPCProtoStream):
    """A server-side call stream that sends response headers lazily (so an error before the
    first message is a trailers-only response), attaches the call's metadata, releases flow
    control per consumed message, and sends with bounded buffering. Its incoming events wait
    in an :class:`_Inbox`, and its events are trio's own.
    """

    def __init__(self, grpc_connection, stream_id: int, socket, grpc_socket) -> None:
        # purerpc's GRPCStream.__init__ state, with an _Inbox and a trio.Event in place of the
        # anyio memory stream and anyio.Event it would build (and never close) for each call.
        self._stream_id = stream_id
        self._grpc_connection = grpc_connection
        self._grpc_socket = grpc_socket
        self._socket = socket
        self._flow_control_update_event = trio.Event()
        inbox = _Inbox()
        self._incoming_events = (inbox, inbox)
        self._response_started = False
        self._state = GRPCStreamState.OPEN
        self._start_stream_event = None
        self._end_stream_event = None

    async def _wait_flow_control_update(self) -> None:
        with trio.move_on_after(self.stall_timeout) as scope:
            await self._flow_control_update_event.wait()
        if scope.cancelled_caught:
            raise StreamStalledError(
                f"the client opened no flow-control window for {self.stall_timeout:g} s")
        self._flow_control_update_event = trio.Event()

    async def _wait_for_room(self) -> None:
        if self._socket.has_room():
            return  # the usual case: no timer needed
        with trio.move_on_after(self.stall_timeout) as scope:
            await self._socket.wait_for_room()
        if scope.cancelled_caught:
            raise StreamStalledError(
                f"the client read none of the connection's replies for {self.stall_timeout:g} s")

    #: Seconds the call may wait for its peer without progress (``EdgeConfig``).
    stall_timeout: float = math.inf
    #: The same for waits for request messages (``math.inf`` for handlers that bound their own
    #: idle time, marked ``bounds_own_idle_time``).
    receive_stall_timeout: float = math.inf

    #: The handler's ``request`` object (a ``CallContext``); set by the call task.
    context: Any = None
    #: True while a message is part-way out; a cancel then must reset, not send trailers.
    sending_partial: bool = False
    #: ``bytes -> message`` used instead of ``ParseFromString`` when set (see ``_calls``).
    request_decoder: Any = None
    #: The encoding response messages may be compressed with (``_compression``), chosen from
    #: the client's ``grpc-accept-encoding`` when the response headers go out; ``None``: never.
    response_encoding: str | None = None

    async def start_response(self, content_type_suffix="", custom_metadata=()):
        start = self._start_stream_event
        self.response_encoding = response_encoding(
            getattr(start, "message_accept_encoding", None)
        )
        self._grpc_connection.start_response(
            self._stream_id, content_type_suffix or "+proto", custom_metadata,
            message_encoding=self.response_encoding,
        )
        self._response_started = True
        await self._socket.flush()

    async def send_message(self, message) -> None:
        """Send one response message, compressed or not by the rule in ``_compression``
        (the handler's ``context.compress_responses`` is read for each message)."""
        if not self._response_started:
            initial = (check_response_metadata(self.context.initial_metadata)
                       if self.context is not None and self.context.initial_metadata else ())
            await self.start_response(custom_metadata=initial)
        mode = self.context.compress_responses if self.context is not None else None
        # sending_partial is set by _send/_send_wire once the message's first bytes are queued.
        if isinstance(message, PreFramed):
            if mode and self.response_encoding is not None:
                await self._send(memoryview(message.wire)[MESSAGE_HEADER.size:], True)
            else:
                await self._send_wire(message)
        else:
            payload = message if isinstance(message, (bytes, bytearray, memoryview)) else (
                message.SerializeToString()
            )
            await self._send(payload, mode)
        self.sending_partial = False

    async def _send_wire(self, message: PreFramed) -> None:
        if len(message) > self._grpc_connection.config.max_message_length:
            raise MessageTooLargeError(
                f"response message of {len(message)} bytes exceeds the limit of "
                f"{self._grpc_connection.config.max_message_length}"
            )
        connection = self._grpc_connection  # an _wire.EdgeConnection
        wire = memoryview(message.wire)
        while wire:
            await self._wait_for_room()
            window = connection.flow_control_window(self._stream_id)
            if window <= 0:
                await self._wait_flow_control_update()
                continue
            connection.send_data(self._stream_id, wire[:window])
            self.sending_partial = True
            wire = wire[window:]
            await self._socket.flush()

    async def _send(self, message, compress=False):
        """Frame and send one serialized message.

        Args:
            message: the serialized message (any buffer).
            compress: ``True`` compress it, ``False`` do not, ``None`` the automatic rule;
                only if the call has a :attr:`response_encoding` (see ``_compression``).
        """
        if len(message) > self._grpc_connection.config.max_message_length:
            raise MessageTooLargeError(
                f"response message of {len(message)} bytes exceeds the limit of "
                f"{self._grpc_connection.config.max_message_length}"
            )
        connection = self._grpc_connection  # an _wire.EdgeConnection
        packed = compress_message(message, self.response_encoding, mode=compress)
        if packed is not None:
            message = packed
        header = MESSAGE_HEADER.pack(packed is not None, len(message))
        body = memoryview(message)
        while header or body:
            await self._wait_for_room()
            window = connection.flow_control_window(self._stream_id)
            if window <= 0:
                await self._wait_flow_control_update()
                continue
            if header:
                head, header = header[:window], header[window:]
                take = min(window - len(head), len(body))
                data = head + body[:take] if take else head
                body = body[take:]
            else:
                data, body = body[:window], body[window:]
            connection.send_data(self._stream_id, data)
            self.sending_partial = True
            await self._socket.flush()

    async def _receive(self):
        event = await self._incoming_events[1].receive(self.receive_stall_timeout)
        if isinstance(event, MessageReceived):
            self._grpc_connection.message_consumed(event)
            await self._socket.flush()
        elif isinstance(event, (RequestEnded, ResponseEnded)):
            self._end_stream_event = event
        else:
            self._start_stream_event = event
        return event

    async def receive_event(self):
        """The next incoming event, a message decoded (``request_decoder`` or the expected
        type's ``ParseFromString``); ``context.request_compressed`` tells whether that message
        arrived compressed."""
        event = await self._receive()
        if isinstance(event, MessageReceived):
            data = event.data
            if self.context is not None:
                self.context.request_compressed = isinstance(data, InflatedMessage)
            decoder = self.request_decoder
            if decoder is not None:
                event.data = decoder(data)
            elif hasattr(self, "_incoming_message_type"):
                event.data = self._incoming_message_type()
                event.data.ParseFromString(data)
        return event

    async def close(self, status=None, content_type_suffix="", custom_metadata=()):
        if not custom_metadata and self.context is not None and self.context.trailing_metadata:
            try:
                custom_metadata = check_response_metadata(self.context.trailing_metadata)
            except ValueError:
                # The call fails with INTERNAL for this; that status goes out without them.
                self.context.trailing_metadata.clear()
                raise
        if not self._response_started and not content_type_suffix:
            content_type_suffix = "+proto"
        return await super().close(status, content_type_suffix, custom_metadata)

    @property
    def locally_closed(self) -> bool:
        """Whether our side of the stream has ended (status sent)."""
        return self.state in (GRPCStreamState.HALF_CLOSED_LOCAL, GRPCStreamState.CLOSED)
