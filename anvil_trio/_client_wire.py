"""One client connection: purerpc's HTTP/2 gRPC machinery, run in its own task, made safe to
lose.

purerpc 0.8.0's client channel ignores RST_STREAM and GOAWAY and never notices that the server
closed the connection, so a call waiting for a reply would wait forever; a broken socket raises
out of the task that opened the channel. This module runs each connection in a background task
of the client's nursery and turns every such event into a status for the calls concerned.

Invariants:
- A :class:`Connection` is ``open`` until it breaks (peer closed, socket error, protocol error)
  or is closed; then it is ``broken`` for good and every call still waiting on it is woken with
  :class:`UnavailableError` (safe to retry on a new connection). Its failures never propagate
  out of its background task.
- After a GOAWAY the connection takes no new calls (``accepting`` is false); calls above the
  peer's last stream id end with UNAVAILABLE.
- A stream reset by the server ends its call with the status gRPC assigns to the HTTP/2 error
  code (REFUSED_STREAM: UNAVAILABLE, CANCEL: CANCELLED, ENHANCE_YOUR_CALM:
  RESOURCE_EXHAUSTED, others: INTERNAL), unless the call had already ended.
- Every :class:`Call` ends through :meth:`Call.finish` (``async with call``): a call that did
  not end cleanly on both sides is reset (RST_STREAM CANCEL), so the server stops its handler;
  its stream is dropped from the registry at the next read, and whatever it received but never
  consumed is acknowledged then, so the connection's flow-control window never shrinks.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import h2.errors
import h2.exceptions
import trio
from purerpc import Status, StatusCode
from purerpc.grpc_proto import GRPCProtoSocket
from purerpc.grpc_socket import GRPCStreamState, SocketWrapper
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import ResponseEnded
from purerpc.grpclib.exceptions import GRPCError

from ._client_types import AnvilError, InternalError, UnavailableError, error_for_status
from .rpc._transport import TrioStreamAdapter

__all__ = ["Call", "Connection"]

log = logging.getLogger("anvil_trio.client")

#: Seconds a closing connection may spend flushing what it has queued.
CLOSE_GRACE = 2.0
#: Seconds to open the TCP connection (TLS has its own 30 s bound).
CONNECT_TIMEOUT = 10.0

_RESET_STATUS = {
    h2.errors.ErrorCodes.REFUSED_STREAM: StatusCode.UNAVAILABLE,
    h2.errors.ErrorCodes.CANCEL: StatusCode.CANCELLED,
    h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED,
    h2.errors.ErrorCodes.INADEQUATE_SECURITY: StatusCode.PERMISSION_DENIED,
}

_SEND_FAILURES = (GRPCError, h2.exceptions.H2Error, KeyError)


class _ClientConnection(GRPCConnection):
    """purerpc's sans-IO connection, reporting resets and GOAWAY as per-stream endings."""

    def __init__(self, config: GRPCConfiguration) -> None:
        super().__init__(config)
        self.registry: dict[int, Any] = {}
        self.goaway = False
        self._ended: set[int] = set()
        self._unacked: dict[int, int] = {}
        self._retired: set[int] = set()

    def receive_data(self, data: bytes) -> list:
        self._drop_retired()
        return super().receive_data(data)

    def _response_received(self, event):
        events = super()._response_received(event)
        if any(isinstance(e, ResponseEnded) for e in events):
            self._ended.add(event.stream_id)
        return events

    def _trailers_received(self, event):
        self._ended.add(event.stream_id)
        return super()._trailers_received(event)

    def _data_received(self, event):
        sid = event.stream_id
        self._unacked[sid] = self._unacked.get(sid, 0) + event.flow_controlled_length
        return super()._data_received(event)

    def acknowledge_received_data(self, stream_id: int, flow_controlled_length: int) -> None:
        left = self._unacked.get(stream_id, 0) - flow_controlled_length
        if left > 0:
            self._unacked[stream_id] = left
        else:
            self._unacked.pop(stream_id, None)
        super().acknowledge_received_data(stream_id, flow_controlled_length)

    def _end(self, sid: int, code: StatusCode, message: str) -> list:
        if sid in self._ended or sid not in self.registry or sid in self._retired:
            return []
        self._ended.add(sid)
        return [ResponseEnded(sid, Status(code, message))]

    def _stream_reset(self, event):
        code = _RESET_STATUS.get(event.error_code, StatusCode.INTERNAL)
        return self._end(
            event.stream_id, code, f"stream reset by the server (HTTP/2 {event.error_code!r})"
        )

    def _connection_terminated(self, event):
        self.goaway = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        events = []
        for sid in sorted(self.registry):
            if sid > last:
                events += self._end(sid, StatusCode.UNAVAILABLE, "server is going away (GOAWAY)")
        return events

    def reset_quietly(self, sid: int) -> None:
        """Send RST_STREAM (CANCEL) unless h2 already considers the stream closed."""
        try:
            self.h2_connection.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.H2Error, KeyError):
            pass

    def retire(self, sid: int) -> None:
        """The call on ``sid`` is over; forget the stream at the start of the next read."""
        self._retired.add(sid)

    def _drop_retired(self) -> None:
        while self._retired:
            sid = self._retired.pop()
            self.registry.pop(sid, None)
            self._ended.discard(sid)
            self.message_read_buffers.pop(sid, None)
            unacked = self._unacked.pop(sid, 0)
            if unacked > 0:
                with contextlib.suppress(h2.exceptions.H2Error, ValueError):
                    self.h2_connection.acknowledge_received_data(unacked, sid)


class _ClientSocket(GRPCProtoSocket):
    """purerpc's client socket over a :class:`_ClientConnection`, telling its owner when the
    reader stops (the peer closed the connection or broke the protocol)."""

    def __init__(self, config: GRPCConfiguration, stream, *, on_closed) -> None:
        super().__init__(config, stream)
        self._grpc_connection = _ClientConnection(config)
        self._socket = SocketWrapper(self._grpc_connection, stream)
        self._grpc_connection.registry = self._streams
        self._on_closed = on_closed

    @property
    def connection(self) -> _ClientConnection:
        return self._grpc_connection

    async def flush(self) -> None:
        await self._socket.flush()

    async def _reader_thread(self):
        reason = "the server closed the connection"
        try:
            await super()._reader_thread()
        except Exception as exc:
            reason = f"connection failed: {exc!r}"
            raise
        finally:
            self._on_closed(reason)


class Connection:
    """One HTTP/2 connection to the server, run by :meth:`run` in a background task.

    Args:
        host, port: the server address.
        ssl_context: TLS client context (ALPN ``h2`` is added to it), or ``None``.
        max_message_bytes: the largest response message accepted.
    """

    def __init__(
        self, host: str, port: int, *, ssl_context: ssl.SSLContext | None, max_message_bytes: int
    ) -> None:
        self.host = host
        self.port = port
        self._ssl_context = ssl_context
        self._config = GRPCConfiguration(
            client_side=True, max_message_length=max_message_bytes, user_agent="anvil-trio-client"
        )
        self._socket: _ClientSocket | None = None
        self._scopes: set[trio.CancelScope] = set()
        self._closed = trio.Event()
        self._run_scope = trio.CancelScope()
        self.broken: str | None = None
        self.active_calls = 0

    @property
    def accepting(self) -> bool:
        """Whether new calls may start here."""
        return (
            self.broken is None
            and self._socket is not None
            and not self._socket.connection.goaway
        )

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Connect, report readiness, and keep the connection until it breaks or is closed.

        Raises (only before ``task_status.started()``):
            UnavailableError: the server cannot be reached or the TLS handshake failed.
        """
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                tcp = await trio.open_tcp_stream(self.host, self.port)
        except (OSError, trio.TooSlowError) as exc:
            raise UnavailableError(
                f"cannot connect to {self.host}:{self.port}: {exc or 'timed out'}"
            ) from exc
        stream: trio.abc.Stream = tcp
        if self._ssl_context is not None:
            self._ssl_context.set_alpn_protocols(["h2"])
            stream = trio.SSLStream(tcp, self._ssl_context, server_hostname=self.host)
            try:
                with trio.fail_after(30):
                    await stream.do_handshake()
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError) as exc:
                await trio.aclose_forcefully(tcp)
                raise UnavailableError(f"TLS handshake with {self.host}:{self.port} failed: "
                                       f"{exc.__cause__ or exc}") from exc
        socket = _ClientSocket(self._config, TrioStreamAdapter(stream, tcp.socket),
                               on_closed=self._mark_broken)
        started = False
        try:
            with self._run_scope:
                async with socket:
                    self._socket = socket
                    started = True
                    task_status.started()
                    await self._closed.wait()
        except Exception as exc:
            self._mark_broken(f"connection failed: {exc!r}")
            if not started:
                raise UnavailableError(str(self.broken)) from exc
            log.debug("connection to %s:%s ended: %r", self.host, self.port, exc)
        finally:
            self._mark_broken("connection closed")
            await trio.aclose_forcefully(stream)

    def close(self) -> None:
        """Stop the connection: calls still on it end with UNAVAILABLE."""
        self._mark_broken("the client closed the connection")
        self._run_scope.deadline = min(self._run_scope.deadline, trio.current_time() + CLOSE_GRACE)

    def close_if_idle(self) -> None:
        """Close once no call uses the connection (for a connection that no longer accepts)."""
        if self.active_calls == 0:
            self.close()

    def _mark_broken(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        self._closed.set()
        for scope in list(self._scopes):
            scope.cancel()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run a wait that must end if the connection breaks.

        Raises:
            UnavailableError: the connection is or became broken.
        """
        if self.broken is not None:
            raise UnavailableError(self.broken)
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            self._scopes.discard(scope)
        if scope.cancelled_caught:
            raise UnavailableError(self.broken or "connection lost")

    async def start_call(
        self, service: str, method: str, request_type, response_type, metadata
    ) -> "Call":
        """Open a stream for ``/service/method`` and send its headers.

        Raises:
            UnavailableError: the connection is broken or no longer takes calls.
        """
        if not self.accepting or self._socket is None:
            raise UnavailableError(self.broken or "connection is going away")
        socket = self._socket
        with self.guard():
            try:
                stream = await socket.start_request(
                    "https" if self._ssl_context is not None else "http",
                    service,
                    method,
                    request_type.DESCRIPTOR.full_name,
                    f"{self.host}:{self.port}",
                    custom_metadata=tuple(metadata),
                )
            except _SEND_FAILURES as exc:
                socket.connection.goaway = True
                raise UnavailableError(f"cannot start a call on this connection: {exc!r}") from exc
        stream.expect_message_type(response_type)
        self.active_calls += 1
        return Call(self, socket, stream, f"/{service}/{method}")


class Call:
    """One gRPC call on a :class:`Connection`: send messages, half-close, receive replies.

    Use it as ``async with call:``; leaving the block ends the call (resetting it if it did not
    end cleanly).
    """

    def __init__(self, connection: Connection, socket: _ClientSocket, stream, path: str) -> None:
        self._connection = connection
        self._socket = socket
        self._stream = stream
        self.path = path
        self.ended = False
        self.send_failed = False
        self._finished = False

    async def __aenter__(self) -> "Call":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.finish()

    async def send(self, message) -> bool:
        """Send one message. Returns ``False`` (and sends nothing more) if the stream can no
        longer carry data -- the server has ended or reset it; read the status with
        :meth:`receive`.

        Raises:
            UnavailableError: the connection broke.
        """
        if self.send_failed or self.ended:
            return False
        with self._connection.guard():
            try:
                await self._stream.send_message(message)
            except _SEND_FAILURES:
                self.send_failed = True
                return False
        return True

    async def done_sending(self) -> None:
        """Half-close the request side (no more messages)."""
        if self.send_failed or self._stream.state in (
            GRPCStreamState.HALF_CLOSED_LOCAL, GRPCStreamState.CLOSED
        ):
            return
        with self._connection.guard():
            try:
                await self._stream.close()
            except (*_SEND_FAILURES, TypeError):
                self.send_failed = True

    async def receive(self):
        """The next response message, or ``None`` once the call ended with status OK.

        Raises:
            AnvilError: the call ended with another status (the subclass for its code).
            UnavailableError: the connection broke.
        """
        if self.ended:
            return None
        with self._connection.guard():
            try:
                message = await self._stream.receive_message()
            except Exception as exc:  # a reply that does not decode, a protocol violation
                self.ended = True
                raise InternalError(f"bad response on {self.path}: {exc!r}") from exc
        if message is not None:
            return message
        self.ended = True
        event = self._stream.end_stream_event
        if not isinstance(event, ResponseEnded):
            raise InternalError(f"{self.path} ended without a status")
        status = event.status
        if status.status_code != StatusCode.OK:
            raise error_for_status(status.status_code, status.status_message)
        return None

    async def receive_one(self):
        """The single reply of a unary or client-streaming call.

        Raises:
            AnvilError: the status was not OK, or OK came without exactly one message.
        """
        reply = await self.receive()
        if reply is None:
            raise InternalError(f"{self.path} ended OK without a reply")
        if await self.receive() is not None:
            raise InternalError(f"{self.path} sent more than one reply")
        return reply

    async def finish(self) -> None:
        """End the call: reset it unless both sides ended cleanly, then release the stream."""
        if self._finished:
            return
        self._finished = True
        connection = self._socket.connection
        sid = self._stream.stream_id
        if not (self.ended and self._stream.state == GRPCStreamState.CLOSED):
            connection.reset_quietly(sid)
        connection.retire(sid)
        self._connection.active_calls -= 1
        if not self._connection.accepting:
            self._connection.close_if_idle()
        with trio.CancelScope(shield=True):
            await self._socket.flush()


def is_transient(exc: BaseException) -> bool:
    """Whether the client retries after ``exc``: an :class:`AnvilError` with a retryable code."""
    return isinstance(exc, AnvilError) and exc.retryable
