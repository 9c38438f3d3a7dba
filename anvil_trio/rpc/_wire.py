"""One gRPC connection at the edge: purerpc's HTTP/2 machinery, subclassed so one call's bad
input cannot kill the connection's other calls.

purerpc 0.8.0 (``purerpc.grpclib.connection.GRPCConnection``) raises out of ``receive_data`` --
which tears the whole connection down -- for a message over its limit, a compressed message it
cannot decode, malformed request headers, and data for a stream it forgot. This module turns
each of those into a per-call outcome instead. Below it, :class:`~._h2.EdgeH2Connection` (h2 with
the edge's :class:`~._gate.StreamGate` in front) decides every frame the way RFC 9113 does:
late frames for closed streams are ignored, stream errors stay stream errors, excess streams are
refused, and only a real connection error ends the connection -- with GOAWAY first (a defect
inside the connection is GOAWAY(INTERNAL_ERROR), never a silent close). Request headers h2
accepted as HTTP/2 but that are no gRPC request (method, path, content type, te, a malformed
``grpc-timeout``) are answered INVALID_ARGUMENT on their stream (:func:`grpc_request_problem`).

Invariants:

* Every stream whose headers parsed has a :class:`CallControl` in ``EdgeConnection.calls`` from
  the moment its HEADERS frame is parsed until the call task calls
  :meth:`EdgeConnection.forget`.
* Flow control follows consumption (backpressure). Every flow-controlled byte received is
  released exactly once: when the handler takes the message that holds it, or when the message
  is refused, discarded, or left unread when the call ends; so a rejected 40 MiB message does
  not shrink any window. A stream's window reopens only by released bytes, so a stream holds at
  most its window (``2 x max_message_length``) of received, unconsumed bytes. The connection
  window (``connection_window`` bytes, not purerpc's 1 GiB) reopens by released bytes too, and
  also by the bytes of a message still incomplete, so a message half-arrived on one stream, or a
  handler that stopped reading, can never starve the other streams of the connection. The
  memory bound is therefore per stream: a connection holds at most ``max_concurrent_streams x
  stream window`` of request bytes (the liveness-first trade-off HTTP/2 servers such as
  grpc-go make); ``connection_window`` only paces the sender. WINDOW_UPDATEs go out once a
  quarter of a window is pending, or at once when the window is empty.
* Outgoing bytes are bounded too: a stream adds a DATA frame to the connection's send buffer
  only while fewer than ``max_outbound_buffer`` bytes wait there (or are being written), and
  frames are cut from the message by ``memoryview`` slicing, never by copying the rest.
* A rejected call (too large, badly compressed, an unknown ``grpc-encoding``) is answered by
  its own call task with the status recorded in its ``CallControl``; the connection only
  records it and cancels the call.
* Compression (rules in ``_compression``): request messages are inflated by the stream's
  ``MessageAssembler`` within ``max_message_length`` (flow control counts their compressed wire
  bytes); every response header block carries ``grpc-accept-encoding``; response messages are
  compressed only with the encoding named in the response's ``grpc-encoding``, which is set
  only when the client's ``grpc-accept-encoding`` allows it.
* A stream reset by the peer cancels its call; nothing is sent on it afterwards.
* A stream object is dropped from the socket's registry only at the start of the next
  ``receive_data``, i.e. after every event of the previous batch has been delivered; streams
  reset by either side get no further events from h2.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import anyio
import attrs
import h2.errors
import h2.exceptions
import trio
from purerpc import Status, StatusCode
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import MessageReceived
from purerpc.grpclib.headers import sanitize_headers
from purerpc.grpclib.exceptions import MessageTooLargeError, UnsupportedMessageEncodingError

from ._compression import (
    ACCEPT_ENCODING,
    MessageDecodeError,
    is_supported,
    unsupported_encoding_message,
)
from ._frames import FrameReader, MessageAssembler
from ._floods import FloodLimits
from ._h2 import EdgeH2Connection, EdgeProtocolError
from ._headers import (
    ResponseHeaderEncoder,
    encode_grpc_message,
    grpc_request_problem,
)
from ._stream import EdgeStream
from ._transport import EdgeSocketWriter

__all__ = ["CallControl", "EdgeConnection", "EdgeSocket"]

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
        partial_credited: how many of ``unacked`` were already credited to the connection.
    """

    stream_id: int
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    abort_status: Status | None = None
    peer_reset: bool = False
    unacked: int = 0
    partial_credited: int = 0

    def abort(self, status: Status | None) -> None:
        """Cancel the call; ``status`` is what to answer, ``None`` means the peer reset it."""
        if status is None:
            self.peer_reset = True
        elif self.abort_status is None:
            self.abort_status = status
        self.cancel_scope.cancel()


class _EdgeMessage(MessageReceived):
    """A received message, plus how many of its bytes the connection window still owes."""

    def __init__(self, stream_id: int, data: bytes, flow_controlled_length: int, owed: int) -> None:
        super().__init__(stream_id, data, flow_controlled_length)
        self.connection_owed = owed


class _CallAssembler(MessageAssembler):
    """One call's :class:`MessageAssembler`, which records the exact status of a badly
    compressed message (``MessageDecodeError.status_code``, e.g. INTERNAL) on the call before
    the error goes on to the connection's generic handling (which discards the call's input and
    aborts it; the first status recorded wins)."""

    def __init__(self, max_message_length: int, encoding: str | None,
                 control: CallControl) -> None:
        super().__init__(max_message_length, encoding)
        self._control = control

    def data_received(self, data: bytes, flow_controlled_length: int) -> list[tuple[object, int]]:
        try:
            return super().data_received(data, flow_controlled_length)
        except MessageDecodeError as exc:
            self._control.abort(Status(exc.status_code, str(exc)))
            raise


class EdgeConnection(GRPCConnection):
    """purerpc's sans-IO gRPC connection, with per-call failure handling and flow control that
    follows consumption (see module doc).

    Args:
        config: purerpc configuration; its ``max_message_length`` is the request size limit.
        max_concurrent_streams: advertised SETTINGS_MAX_CONCURRENT_STREAMS.
        connection_window: the connection-level receive window in bytes.
    """

    #: SETTINGS_MAX_FRAME_SIZE advertised and enforced: HTTP/2's minimum, so a connection
    #: never buffers more than 16 KiB of one frame (a bigger one is FRAME_SIZE_ERROR).
    MAX_INBOUND_FRAME_SIZE = 1 << 14

    def __init__(
        self, config: GRPCConfiguration, *, max_concurrent_streams: int,
        connection_window: int = 32 << 20, max_header_list_bytes: int = 16 << 10,
        flood_limits: FloodLimits | None = None, outbound_limit: int = 5 << 20,
    ) -> None:
        self.MAX_CONCURRENT_STREAMS = max_concurrent_streams
        self.MAX_HEADER_LIST_SIZE = max_header_list_bytes
        super().__init__(config)
        # The gate decides which frames h2 sees, and the edge checks request headers (_h2).
        self.h2_connection = EdgeH2Connection(
            self.h2_connection.config, max_concurrent_streams=max_concurrent_streams,
            flood_limits=flood_limits,
        )
        self.h2_connection.clear_outbound_data_buffer()
        self._set_h2_connection_local_settings()
        # Enforced from the first header block (h2 applies it only once the peer ACKs).
        self.h2_connection.decoder.max_header_list_size = max_header_list_bytes
        self.h2_connection.on_discarded_data = self._discarded_data
        #: Bytes queued for the socket past which the peer counts as not reading what it asks
        #: for (control-frame replies: data frames wait for room well below it).
        self.outbound_limit = outbound_limit
        # Frames and messages are cut out of received bytes with fewer copies (see _frames).
        # A header block may take 4 x the header list limit encoded (HPACK seldom grows it).
        self.h2_connection.incoming_buffer = FrameReader(
            server=not config.client_side, max_header_block=4 * max_header_list_bytes
        )
        # Response header blocks are encoded once and reused (see _headers). The edge builds
        # every outgoing header itself and checks handlers' metadata (check_response_metadata),
        # so h2's per-block normalising and checking of outgoing headers is skipped.
        self.h2_connection.encoder = ResponseHeaderEncoder()
        self.h2_connection.config.validate_outbound_headers = False
        self.h2_connection.config.normalize_outbound_headers = False
        self.calls: dict[int, CallControl] = {}
        self.stream_registry: dict[int, Any] = {}
        self._retired: set[int] = set()
        #: Flow-controlled bytes of DATA h2 handed us, and how many of them were released.
        self.received_bytes = 0
        self.acknowledged_bytes = 0
        #: The largest ``unacknowledged_bytes`` seen (a measure of buffering, for tests).
        self.peak_unacknowledged_bytes = 0
        self.stream_window = 2 * config.max_message_length
        self.connection_window = max(connection_window, self.stream_window)
        self._connection_pending = 0
        self._stream_pending: dict[int, int] = {}

    @property
    def unacknowledged_bytes(self) -> int:
        """Bytes received and not yet released: queued messages plus partial ones."""
        return self.received_bytes - self.acknowledged_bytes

    # --- flow control ---

    def initiate_connection(self) -> None:
        self.h2_connection.initiate_connection()
        extra = self.connection_window - self.h2_connection.inbound_flow_control_window
        if extra > 0:
            self.h2_connection.increment_flow_control_window(extra)

    def acknowledge_received_data(self, stream_id: int, flow_controlled_length: int) -> None:
        """Release bytes that never reached the connection's credit (stream and connection)."""
        self.acknowledged_bytes += flow_controlled_length
        self._credit_stream(stream_id, flow_controlled_length)
        self._credit_connection(flow_controlled_length)

    def message_consumed(self, message: MessageReceived) -> None:
        """The handler took ``message`` (or nobody ever will): reopen the windows for it."""
        length = message.flow_controlled_length
        self.acknowledged_bytes += length
        self._credit_stream(message.stream_id, length)
        self._credit_connection(getattr(message, "connection_owed", length))

    def _credit_stream(self, sid: int, length: int) -> None:
        if length <= 0:
            return
        pending = self._stream_pending.get(sid, 0) + length
        try:
            if (pending >= self.stream_window // 4
                    or self.h2_connection.remote_flow_control_window(sid) < self.stream_window // 2):
                self._stream_pending.pop(sid, None)
                self.h2_connection.increment_flow_control_window(pending, stream_id=sid)
            else:
                self._stream_pending[sid] = pending
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            self._stream_pending.pop(sid, None)  # the stream is over: its window is moot

    def _credit_connection(self, length: int) -> None:
        if length <= 0:
            return
        self._connection_pending += length
        if (self._connection_pending >= self.connection_window // 4
                or self.h2_connection.inbound_flow_control_window < self.connection_window // 2):
            pending, self._connection_pending = self._connection_pending, 0
            self.h2_connection.increment_flow_control_window(pending)

    def data_to_send(self, amount: int | None = None):
        """Everything queued for the socket, handed over without a copy."""
        h2_connection = self.h2_connection
        if amount is not None:
            return super().data_to_send(amount)
        data, h2_connection._data_to_send = h2_connection._data_to_send, bytearray()
        return data

    def outbound_buffered(self) -> int:
        """Bytes queued for the socket and not yet taken by the writer."""
        return len(self.h2_connection._data_to_send)

    # --- response headers (purerpc's, plus the compression headers; see _compression) ---

    def start_response(self, stream_id: int, content_type_suffix: str = "", custom_metadata=(),
                       *, message_encoding: str | None = None) -> None:
        """Send the response headers, with ``grpc-accept-encoding`` (what the edge reads) and,
        if ``message_encoding`` is set, ``grpc-encoding`` (messages may be compressed)."""
        headers = [
            (":status", "200"),
            ("content-type", "application/grpc" + content_type_suffix),
        ]
        if message_encoding is not None:
            headers.append(("grpc-encoding", message_encoding))
        headers.append(("grpc-accept-encoding", ACCEPT_ENCODING))
        headers.extend(sanitize_headers(custom_metadata))
        self.h2_connection.send_headers(stream_id, headers, end_stream=False)

    def respond_status(self, stream_id: int, status: Status, content_type_suffix: str = "",
                       custom_metadata=()) -> None:
        """Send a trailers-only response (status without messages), with
        ``grpc-accept-encoding`` (the spec wants it on an UNIMPLEMENTED for an encoding)."""
        trailers = [
            (":status", "200"),
            ("content-type", "application/grpc" + content_type_suffix),
            ("grpc-accept-encoding", ACCEPT_ENCODING),
            ("grpc-status", str(status.int_value)),
        ]
        if status.status_message:
            trailers.append(("grpc-message", encode_grpc_message(status.status_message)))
        trailers.extend(sanitize_headers(custom_metadata))
        self.h2_connection.send_headers(stream_id, trailers, end_stream=True)

    def end_response(self, stream_id: int, status: Status, custom_metadata=()) -> None:
        """Send the trailers that end a response that had headers (and maybe messages)."""
        trailers = [("grpc-status", str(status.int_value))]
        if status.status_message:
            trailers.append(("grpc-message", encode_grpc_message(status.status_message)))
        trailers.extend(sanitize_headers(custom_metadata))
        self.h2_connection.send_headers(stream_id, trailers, end_stream=True)

    # --- h2 event translation (synchronous, inside receive_data) ---

    def receive_data(self, data: bytes) -> list:
        """Feed received bytes; return purerpc events.

        Raises:
            h2.exceptions.ProtocolError: a connection error; GOAWAY with its code is queued.
        """
        self._drop_retired()
        try:
            events = super().receive_data(data)
        except h2.exceptions.ProtocolError:
            raise
        except Exception as exc:
            # A defect, not the peer's fault: still end the connection with GOAWAY first.
            self.queue_goaway(h2.errors.ErrorCodes.INTERNAL_ERROR)
            raise EdgeProtocolError(h2.errors.ErrorCodes.INTERNAL_ERROR,
                                    f"internal error: {exc!r}") from exc
        if self.outbound_buffered() > self.outbound_limit:
            # Replies (PING/SETTINGS ACKs, resets) pile up: the peer asks and does not read.
            code = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            self.queue_goaway(code)
            raise EdgeProtocolError(code, f"{self.outbound_buffered()} bytes of replies unread "
                                          f"by the peer (limit {self.outbound_limit})")
        return events

    def queue_goaway(self, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """Queue GOAWAY(``code``) for the socket, unless one was already sent either way."""
        try:
            self.h2_connection.close_connection(code)
        except h2.exceptions.ProtocolError:
            pass  # the connection is already closed in h2's view: its GOAWAY went out

    def _discarded_data(self, length: int) -> None:
        """A DATA frame the gate dropped: its bytes go straight back to the connection window."""
        self.received_bytes += length
        self.acknowledged_bytes += length
        self._credit_connection(length)

    def _request_received(self, event):
        sid = event.stream_id
        problem = grpc_request_problem(event.headers)
        if problem is None:
            try:
                events = super()._request_received(event)
            except Exception:  # pragma: no cover - grpc_request_problem checks what purerpc does
                problem = "malformed gRPC request headers"
        if problem is not None:  # not a gRPC request: answer this stream only
            self._refuse(sid, Status(StatusCode.INVALID_ARGUMENT, problem),
                         remote_ended=bool(event.stream_ended))
            return []
        request = events[0]
        control = self.calls[sid] = CallControl(sid)
        encoding = request.message_encoding
        if not is_supported(encoding):
            # Refused before any message (as grpc-go does); the call task answers, and the
            # trailers carry grpc-accept-encoding (respond_status). Its input is discarded.
            self.message_read_buffers.pop(sid, None)
            control.abort(Status(StatusCode.UNIMPLEMENTED, unsupported_encoding_message(encoding)))
            return events
        # Compressed messages are inflated by the assembler with a hard bound (_compression),
        # never by purerpc (which zlib.decompresses without a bound and fails on gzip).
        self.message_read_buffers[sid] = _CallAssembler(
            self.config.max_message_length, encoding, control
        )
        return events

    def _data_received(self, event):
        sid = event.stream_id
        length = event.flow_controlled_length
        self.received_bytes += length
        control = self.calls.get(sid)
        buffer = self.message_read_buffers.get(sid)
        if control is None or buffer is None:
            self.acknowledge_received_data(sid, length)
            return []
        control.unacked += length
        status = None
        messages: list = []
        try:
            messages = buffer.data_received(event.data, length)
        except MessageTooLargeError as exc:
            status = Status(
                StatusCode.RESOURCE_EXHAUSTED,
                f"request message exceeds the limit of {self.config.max_message_length} "
                f"bytes ({exc})",
            )
        except UnsupportedMessageEncodingError as exc:
            status = Status(StatusCode.UNIMPLEMENTED, str(exc))
        events = []
        for message, size in messages:
            control.unacked -= size
            already = min(size, control.partial_credited)
            control.partial_credited -= already
            events.append(_EdgeMessage(sid, message, size, size - already))
        if status is not None:
            self._discard_input(control)
            control.abort(status)
        else:
            # Bytes of a message still incomplete go back to the connection at once: they are
            # bounded by the stream's window, and holding them could starve other streams.
            self._credit_connection(control.unacked - control.partial_credited)
            control.partial_credited = control.unacked
        unacked = self.unacknowledged_bytes
        if unacked > self.peak_unacknowledged_bytes:
            self.peak_unacknowledged_bytes = unacked
        return events

    def _stream_reset(self, event):
        control = self.calls.get(event.stream_id)
        if control is not None:
            self._discard_input(control)
            control.abort(None)
        return []

    # --- helpers used by the call task ---

    def forget(self, sid: int, *, retire: bool) -> None:
        """The call on ``sid`` is over: drop its state, release what it left unread.

        Args:
            sid: the stream.
            retire: the stream is not cleanly closed in purerpc's view (reset by either side);
                drop it from the socket registry at the next read.
        """
        control = self.calls.pop(sid, None)
        if control is not None:
            self._discard_input(control)
        self.message_read_buffers.pop(sid, None)
        self._stream_pending.pop(sid, None)
        if retire:
            self._retired.add(sid)

    def reset_quietly(self, sid: int, code: h2.errors.ErrorCodes) -> None:
        """Send RST_STREAM unless h2 already considers the stream closed."""
        try:
            self.h2_connection.reset_stream(sid, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass

    def ack_unread(self, stream: GRPCProtoStream) -> None:
        """Release the messages queued for ``stream`` that nobody will read now."""
        receiver = stream._incoming_events[1]
        while True:
            try:
                item = receiver.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            if isinstance(item, MessageReceived):
                self.message_consumed(item)

    def _discard_input(self, control: CallControl) -> None:
        self.message_read_buffers.pop(control.stream_id, None)
        if control.unacked:
            length, owed = control.unacked, control.unacked - control.partial_credited
            control.unacked = control.partial_credited = 0
            self.acknowledged_bytes += length
            self._credit_stream(control.stream_id, length)
            self._credit_connection(owed)

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


class EdgeSocket(GRPCProtoSocket):
    """purerpc's server socket driving an :class:`EdgeConnection` and :class:`EdgeStream`\\ s.

    Args:
        config: purerpc configuration (server side).
        stream: the byte stream (see :class:`~._transport.TrioStreamAdapter`).
        max_concurrent_streams: advertised SETTINGS_MAX_CONCURRENT_STREAMS.
        connection_window: the connection-level receive window in bytes.
        max_outbound_buffer: bytes of frames that may wait for the socket before senders wait;
            replies to the peer's control frames may add 1 MiB to it before the connection
            ends with ENHANCE_YOUR_CALM (the peer does not read).
        max_header_list_bytes: SETTINGS_MAX_HEADER_LIST_SIZE, advertised and enforced.
        flood_limits: the connection's budgets for work-without-progress frames (``_floods``).
    """

    StreamClass = EdgeStream

    #: Data calls and health calls running on this connection (the dispatcher's shares).
    active_calls: int = 0
    health_calls: int = 0
    #: Seconds a call may wait for the peer without progress (``EdgeConfig``).
    stall_timeout: float = math.inf

    def __init__(
        self, config: GRPCConfiguration, stream, *, max_concurrent_streams: int,
        connection_window: int = 32 << 20, max_outbound_buffer: int = 4 << 20,
        max_header_list_bytes: int = 16 << 10, flood_limits: FloodLimits | None = None,
    ) -> None:
        super().__init__(config, stream)
        # purerpc builds a plain GRPCConnection in __init__; swap in ours before anything runs.
        self._grpc_connection = EdgeConnection(
            config, max_concurrent_streams=max_concurrent_streams,
            connection_window=connection_window, max_header_list_bytes=max_header_list_bytes,
            flood_limits=flood_limits, outbound_limit=max_outbound_buffer + (1 << 20),
        )
        self._socket = EdgeSocketWriter(
            self._grpc_connection, stream, max_outbound=max_outbound_buffer
        )
        self._grpc_connection.stream_registry = self._streams

    @property
    def connection(self) -> EdgeConnection:
        """The connection state machine."""
        return self._grpc_connection

    def outbound_bytes(self) -> int:
        """Bytes of frames waiting for (or being written to) the socket."""
        return self._socket.outbound_bytes()

    async def flush(self) -> None:
        """Wake the writer so queued frames go out."""
        await self._socket.flush()

    async def drain_outbound(self) -> None:
        """Wait until everything queued has been written (or the writer stopped)."""
        await self._socket.flush()
        await self._socket.wait_until_empty()

    def goaway(self) -> None:
        """Queue a GOAWAY (NO_ERROR); the peer opens no further calls on this connection."""
        self._grpc_connection.queue_goaway()
