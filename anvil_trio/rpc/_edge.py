"""The gRPC edge: our own trio listener driving purerpc's per-connection machinery.

purerpc 0.8.0's ``Server.serve_async`` binds every interface with ``SO_REUSEPORT`` and cannot
drain. :class:`EdgeServer` replaces only that outer loop: it binds exactly the configured
address, accepts on a trio socket, optionally wraps each connection in TLS (ALPN ``h2``), and
runs each connection through :class:`~._wire.EdgeSocket` (purerpc's HTTP/2 code, subclassed)
and each call through :class:`~._calls.CallDispatcher`.

Lifecycle (a state machine with one direction):

``new`` --serve()--> ``serving`` --drain() or serve() cancelled--> ``draining`` --> ``stopped``

* ``serving``: accepts connections; :attr:`EdgeServer.port` is the bound port.
* ``draining``: the listener is closed (new connections are refused by the OS); health says
  ``NOT_SERVING`` (health calls are still answered); other new calls on open connections get
  ``UNAVAILABLE``; running calls have ``drain_grace`` seconds to finish, then are cancelled
  and answered ``UNAVAILABLE``.
* ``stopped``: every connection got a GOAWAY and is closed; ``serve()`` has returned (or
  re-raised its cancellation).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket as stdlib_socket
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import attrs
import h2.exceptions
import purerpc
import trio
from purerpc import Status, StatusCode
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.exceptions import GRPCError

from ._calls import CallContext, CallDispatcher
from ._compression import SUPPORTED_ENCODINGS
from ._conn_limits import ConnectionLimits, ConnectionTimers, Due, RefusalReport
from ._floods import FloodLimits
from ._health import HealthServicer, HealthState
from ._reflection import default_reflection_servicers
from ._status import DEFAULT_STATUS_TABLE, StatusMapper, exception_leaves
from ._transport import TrioStreamAdapter
from ._wire import EdgeSocket

__all__ = ["EdgeConfig", "EdgeServer", "EdgeStats", "EdgeStateError", "TLSConfig"]

log = logging.getLogger("anvil_trio.rpc")

#: The smallest request-message limit allowed: API.md promises 4 MiB is always accepted.
MIN_REQUEST_MESSAGE_BYTES = 4 * 1024 * 1024

_ACCEPT_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

#: Errors that mean "this one connection went away or spoke nonsense": logged at DEBUG.
_CONNECTION_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    ConnectionError,
    ssl.SSLError,
    h2.exceptions.ProtocolError,
    GRPCError,
)


class EdgeStateError(RuntimeError):
    """``serve()`` was called on a server that is already serving or stopped."""


@attrs.frozen(kw_only=True)
class TLSConfig:
    """Server TLS material.

    Args:
        certfile: PEM certificate chain of the server.
        keyfile: PEM private key of the server.
        client_ca_file: PEM CA bundle to verify client certificates against; ``None`` means
            clients are not asked for certificates.
        require_client_cert: refuse clients without a valid certificate (needs
            ``client_ca_file``); otherwise a certificate is verified if offered.
    """

    certfile: Path = attrs.field(converter=Path)
    keyfile: Path = attrs.field(converter=Path)
    client_ca_file: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(Path)
    )
    require_client_cert: bool = False

    def __attrs_post_init__(self) -> None:
        if self.require_client_cert and self.client_ca_file is None:
            raise ValueError("require_client_cert needs client_ca_file")

    def server_context(self) -> ssl.SSLContext:
        """Build the server ``SSLContext``: TLS >= 1.2, ALPN ``h2``, client verification as set.

        Raises:
            OSError, ssl.SSLError: the files cannot be read or do not match.
        """
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.certfile, self.keyfile)
        context.set_alpn_protocols(["h2"])
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=str(self.client_ca_file))
            context.verify_mode = (
                ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
            )
        return context


def _at_least(minimum: int):
    def check(instance, attribute, value) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be >= {minimum}, got {value}")

    return check


def _positive_seconds(instance, attribute, value) -> None:
    if not value > 0:  # also refuses NaN; math.inf is allowed (the timer is off)
        raise ValueError(f"{attribute.name} must be > 0 seconds, got {value!r}")


@attrs.frozen(kw_only=True)
class EdgeConfig:
    """How the edge listens and what it allows.

    Args:
        host: the one address to bind (``"127.0.0.1"``, ``"::1"``, ``"0.0.0.0"``...).
        port: the port; 0 picks a free one (see :attr:`EdgeServer.port`).
        reuse_port: set ``SO_REUSEPORT`` (several processes sharing a port); off by default.
        backlog: the listen backlog.
        tls: serve TLS with this material; ``None`` for plaintext HTTP/2.
        max_request_message_bytes: largest accepted request message; at least 4 MiB. Also
            the largest response message the server will send.
        max_concurrent_calls: handlers running at once, server-wide; more get
            RESOURCE_EXHAUSTED.
        max_concurrent_streams: HTTP/2 streams a client may open at once per connection
            (SETTINGS_MAX_CONCURRENT_STREAMS; a stream past it gets RST_STREAM(REFUSED_STREAM),
            which clients retry, and the connection goes on).
        connection_window_bytes: the HTTP/2 connection-level receive window: complete request
            messages received on one connection and not yet taken by their handlers never exceed
            it (each stream's own window is ``2 x max_request_message_bytes``).
        max_outbound_buffer_bytes: response bytes one connection may queue for its socket
            before handlers sending on it wait (backpressure towards a slow reader); replies
            to its control frames may add 1 MiB more, past which the connection ends with
            GOAWAY(ENHANCE_YOUR_CALM) (a peer that asks and does not read).
        max_header_list_bytes: SETTINGS_MAX_HEADER_LIST_SIZE, advertised and enforced (a
            header block decoding past it, or whose HEADERS + CONTINUATION frames pass 4 x it,
            ends the connection with ENHANCE_YOUR_CALM). Frames are at most 16 KiB
            (SETTINGS_MAX_FRAME_SIZE; bigger ones are FRAME_SIZE_ERROR).
        stream_reset_rate: live streams a connection may have reset (by its RST_STREAM or by a
            stream error it caused) per second, in bursts of 10 x that; past it, GOAWAY
            (ENHANCE_YOUR_CALM): Rapid Reset (CVE-2023-44487).
        control_frame_rate: PING/SETTINGS, PRIORITY and empty DATA frames a connection may send
            per second, each kind in bursts of 10 x that; past it, GOAWAY(ENHANCE_YOUR_CALM).
            WINDOW_UPDATEs are bounded by the data sent instead (see ``_floods``).
        connection_call_share: the share of ``max_concurrent_calls`` one connection may hold;
            its calls past it get RESOURCE_EXHAUSTED.
        health_call_slots: health calls running at once, apart from (never starved by) the
            data calls' ``max_concurrent_calls``.
        stream_stall_timeout: seconds a call may wait for its peer without progress (no flow
            control window to send into, no request data arriving, no room in the
            connection's send buffer) before it ends: DEADLINE_EXCEEDED, or RST_STREAM
            (CANCEL) in the middle of a message.
        drain_grace: seconds running calls get to finish when draining.
        handshake_timeout: seconds a TLS handshake may take.
        preface_timeout: seconds a connection has (after any TLS handshake) to send the whole
            HTTP/2 client preface and its first SETTINGS frame; past it the connection is
            closed, without GOAWAY (logged at INFO).
        idle_timeout: seconds a connection may stay without open calls; past it the server
            sends GOAWAY(NO_ERROR) and closes it (grpc-go's ``MaxConnectionIdle``; INFO).
        keepalive_interval: seconds without any received byte after which the server sends a
            PING (grpc-go's keepalive ``Time``).
        keepalive_timeout: seconds after that PING for anything (its ACK or any frame) to
            arrive; otherwise the peer is taken for dead: GOAWAY best-effort, then close
            (WARNING). ``math.inf`` disables any of these four timers.
        max_connections: connections open at once; a connection accepted past it is closed at
            once, before anything is read from it (plaintext: after a GOAWAY
            (ENHANCE_YOUR_CALM) written without waiting). Logged at WARNING once per burst
            (at most every 10 s, with the count).
        dev_mode: INTERNAL statuses carry exception text and traceback (never in production).
    """

    host: str = "127.0.0.1"
    port: int = attrs.field(default=50051, validator=[_at_least(0)])
    reuse_port: bool = False
    backlog: int = attrs.field(default=128, validator=[_at_least(1)])
    tls: TLSConfig | None = None
    max_request_message_bytes: int = attrs.field(
        default=MIN_REQUEST_MESSAGE_BYTES, validator=[_at_least(MIN_REQUEST_MESSAGE_BYTES)]
    )
    max_concurrent_calls: int = attrs.field(default=1000, validator=[_at_least(1)])
    max_concurrent_streams: int = attrs.field(default=1000, validator=[_at_least(1)])
    connection_window_bytes: int = attrs.field(default=32 << 20, validator=[_at_least(1 << 16)])
    max_outbound_buffer_bytes: int = attrs.field(default=4 << 20, validator=[_at_least(1 << 16)])
    max_header_list_bytes: int = attrs.field(default=16 << 10, validator=[_at_least(4096)])
    stream_reset_rate: float = attrs.field(default=200.0, validator=[_at_least(1)])
    control_frame_rate: float = attrs.field(default=100.0, validator=[_at_least(1)])
    connection_call_share: float = attrs.field(
        default=0.5, validator=[attrs.validators.gt(0), attrs.validators.le(1)]
    )
    health_call_slots: int = attrs.field(default=16, validator=[_at_least(1)])
    stream_stall_timeout: float = attrs.field(default=60.0, validator=[attrs.validators.gt(0)])
    drain_grace: float = 10.0
    handshake_timeout: float = 10.0
    preface_timeout: float = attrs.field(default=10.0, validator=[_positive_seconds])
    idle_timeout: float = attrs.field(default=300.0, validator=[_positive_seconds])
    keepalive_interval: float = attrs.field(default=60.0, validator=[_positive_seconds])
    keepalive_timeout: float = attrs.field(default=20.0, validator=[_positive_seconds])
    max_connections: int = attrs.field(default=1024, validator=[_at_least(1)])
    dev_mode: bool = False


@attrs.frozen
class EdgeStats:
    """A snapshot of the edge's counters."""

    state: str
    connections: int
    active_calls: int
    calls_served: int
    calls_refused: int
    #: Request bytes received on open connections and not yet acknowledged (flow control).
    unacknowledged_bytes: int
    #: The most request bytes any open connection has held unacknowledged at once.
    peak_unacknowledged_bytes: int = 0
    #: Response bytes queued for (or being written to) the sockets of open connections.
    outbound_bytes: int = 0
    #: Connections closed at accept because ``max_connections`` were open (since start).
    connections_refused: int = 0


class EdgeServer:
    """Serve purerpc services on one address, with the edge behaviour of this package.

    Args:
        services: purerpc ``Servicer`` instances or ``Service`` objects. A
            ``grpc.health.v1.Health`` service backed by :attr:`health` is added unless one is
            given, and so are the ``grpc.reflection.v1`` and ``v1alpha`` services describing
            everything served (each unless given).
        config: listening and limits.
        status_mapper: known exception -> status (default: the table in ``_status``).
        ssl_context: a ready server context, used instead of ``config.tls``.
        health: the health state to serve (default: a new one, ``NOT_SERVING``).
        authenticate: checks a call's credentials from its headers (``CallContext`` ->
            principal, set as ``context.principal``; raises the auth error otherwise), before
            its request is decoded and before it takes a call slot; ``None``: no check at the
            edge. Methods the dispatcher declares public (token issuing, health, reflection)
            are not checked.
    """

    def __init__(
        self,
        services: Iterable[purerpc.Service | purerpc.Servicer],
        *,
        config: EdgeConfig | None = None,
        status_mapper: StatusMapper = DEFAULT_STATUS_TABLE,
        ssl_context: ssl.SSLContext | None = None,
        health: HealthState | None = None,
        authenticate: Callable[[CallContext], Any] | None = None,
    ) -> None:
        self.config = config if config is not None else EdgeConfig()
        self.health = health if health is not None else HealthState()
        items = list(services)
        names = {(s.service if isinstance(s, purerpc.Servicer) else s).name for s in items}
        if "grpc.health.v1.Health" not in names:
            items.append(HealthServicer(self.health))
        items.extend(default_reflection_servicers(items))
        self._dispatcher = CallDispatcher(
            items,
            self.config.max_concurrent_calls,
            mapper=status_mapper,
            dev_mode=self.config.dev_mode,
        )
        self._dispatcher.authenticate = authenticate
        self._dispatcher.max_calls_per_connection = max(
            1, math.ceil(self.config.connection_call_share * self.config.max_concurrent_calls)
        )
        self._dispatcher.health_call_slots = self.config.health_call_slots
        if ssl_context is None and self.config.tls is not None:
            ssl_context = self.config.tls.server_context()
        self._ssl_context = ssl_context
        self._flood_limits = FloodLimits(reset_rate=self.config.stream_reset_rate,
                                         control_rate=self.config.control_frame_rate)
        self._purerpc_config = GRPCConfiguration(
            client_side=False,
            message_accept_encoding=list(SUPPORTED_ENCODINGS),
            max_message_length=self.config.max_request_message_bytes,
        )
        self._state = "new"
        self._listener: trio.SocketListener | None = None
        self._accept_scope = trio.CancelScope()
        self._connections: set[_Connection] = set()
        self._connections_idle = trio.Event()
        self._connections_idle.set()
        self._stop_connections = trio.Event()
        self._stopped = trio.Event()
        self._conn_nursery: trio.Nursery | None = None
        #: Connections accepted and not yet finished (counted at accept, for max_connections).
        self._open_connections = 0
        self._refusals = RefusalReport()
        self._connection_limits = ConnectionLimits(
            preface_timeout=self.config.preface_timeout,
            idle_timeout=self.config.idle_timeout,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_timeout=self.config.keepalive_timeout,
        )
        self.port: int | None = None
        self.address: tuple | None = None

    # --- public API ---

    def statistics(self) -> EdgeStats:
        """Counters now: state, open connections, running calls, calls served and refused."""
        return EdgeStats(
            state=self._state,
            connections=len(self._connections),
            active_calls=self._dispatcher.active,
            calls_served=self._dispatcher.served,
            calls_refused=self._dispatcher.refused,
            unacknowledged_bytes=sum(c.unacknowledged_bytes for c in self._connections),
            peak_unacknowledged_bytes=max(
                (c.peak_unacknowledged_bytes for c in self._connections), default=0
            ),
            outbound_bytes=sum(c.outbound_bytes for c in self._connections),
            connections_refused=self._refusals.total,
        )

    @property
    def listen_socket(self) -> trio.socket.SocketType | None:
        """The bound listening socket while serving (for inspection), else ``None``."""
        return self._listener.socket if self._listener is not None else None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the port with ``task_status.started(port)``, and serve until drained.

        Cancelling the task that runs this drains first (``drain_grace``), then re-raises.

        Raises:
            EdgeStateError: called twice.
            OSError: the address cannot be bound (e.g. in use).
        """
        if self._state != "new":
            raise EdgeStateError(f"serve() on a server that is {self._state}")
        self._state = "serving"
        self._listener = await self._bind()
        async with trio.open_nursery() as nursery:
            await nursery.start(self._host_connections)
            try:
                task_status.started(self.port)
                with self._accept_scope:
                    await self._accept_loop(nursery_for_connections=self._conn_nursery)
                await self._stopped.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await self.drain()

    async def drain(self, grace: float | None = None) -> None:
        """Stop accepting, let running calls finish, then close everything.

        Safe to call from any task, any number of times; every caller returns once the server
        is stopped.

        Args:
            grace: seconds running calls may take (default ``config.drain_grace``); past it they
                are cancelled and answered ``UNAVAILABLE``.
        """
        if self._state in ("draining", "stopped") or self._state == "new":
            if self._state == "new":
                self._state = "stopped"
                self._stopped.set()
            await self._stopped.wait()
            return
        self._state = "draining"
        grace = self.config.drain_grace if grace is None else grace
        self.health.mark_draining()
        self._dispatcher.draining = True
        self._accept_scope.cancel()
        if self._listener is not None:
            await self._listener.aclose()
        with trio.move_on_after(grace) as waited:
            await self._dispatcher.wait_idle()
        if waited.cancelled_caught:
            aborted = self._dispatcher.abort_all(
                Status(StatusCode.UNAVAILABLE, "server shut down before the call finished")
            )
            log.warning("drain grace of %.1fs over; cancelled %d call(s)", grace, aborted)
            with trio.move_on_after(1.0):
                await self._dispatcher.wait_idle()
        self._stop_connections.set()
        with trio.move_on_after(2.0):
            await self._connections_idle.wait()
        if self._conn_nursery is not None:
            self._conn_nursery.cancel_scope.cancel()
        self._state = "stopped"
        self._stopped.set()

    # --- internals ---

    async def _bind(self) -> trio.SocketListener:
        infos = await trio.socket.getaddrinfo(
            self.config.host, self.config.port, type=stdlib_socket.SOCK_STREAM,
            flags=stdlib_socket.AI_PASSIVE,
        )
        family, type_, proto, _, sockaddr = infos[0]
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
            if self.config.reuse_port:
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
            if family == stdlib_socket.AF_INET6:
                sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
            await sock.bind(sockaddr)
            sock.listen(self.config.backlog)
        except BaseException:
            sock.close()
            raise
        self.address = sock.getsockname()
        self.port = self.address[1]
        return trio.SocketListener(sock)

    async def _host_connections(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # Shielded: cancelling serve() must not cut running calls short; drain() decides.
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                self._conn_nursery = nursery
                task_status.started()
                await self._stopped.wait()

    async def _accept_loop(self, *, nursery_for_connections: trio.Nursery) -> None:
        assert self._listener is not None
        while True:
            try:
                stream = await self._listener.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRNOS:
                    log.error("accept failed (%s); pausing 100 ms", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            except trio.ClosedResourceError:
                return
            if self._open_connections >= self.config.max_connections:
                self._refuse_connection(stream)
                continue
            self._open_connections += 1
            nursery_for_connections.start_soon(self._serve_connection, stream)

    def _refuse_connection(self, tcp_stream: trio.SocketStream) -> None:
        """Close a connection past ``max_connections`` at once, without reading from it; on
        plaintext write the server preface and GOAWAY(ENHANCE_YOUR_CALM) first if the socket
        takes them without waiting."""
        sock = tcp_stream.socket
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        if self._ssl_context is None:
            try:
                os.write(sock.fileno(), _REFUSAL_FRAMES)
            except OSError:
                pass
        sock.close()
        count = self._refusals.refused(trio.current_time())
        if count is not None:
            log.warning(
                "max_connections (%d) open: refused %d connection(s), the latest from %s "
                "(reported at most every %.0f s)",
                self.config.max_connections, count, peer, self._refusals.interval,
            )

    async def _serve_connection(self, tcp_stream: trio.SocketStream) -> None:
        connection = _Connection(self, tcp_stream)
        self._connections.add(connection)
        if self._connections_idle.is_set():
            self._connections_idle = trio.Event()
        try:
            await connection.run()
        finally:
            self._open_connections -= 1
            self._connections.discard(connection)
            if not self._connections:
                self._connections_idle.set()


#: Seconds a closing connection may take to write what is queued for it (its GOAWAY).
_GOAWAY_FLUSH_TIMEOUT = 1.0
#: After a connection error's GOAWAY: how long, and how many bytes, to read and drop.
_LINGER_TIMEOUT = 1.0
_LINGER_MAX_BYTES = 4 << 20

#: What a connection refused past ``max_connections`` gets: an empty server SETTINGS frame and
#: GOAWAY(last stream 0, ENHANCE_YOUR_CALM, "too many connections").
_REFUSAL_DEBUG = b"too many connections"
_REFUSAL_FRAMES = (
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    + (8 + len(_REFUSAL_DEBUG)).to_bytes(3, "big") + b"\x07\x00\x00\x00\x00\x00"
    + (0).to_bytes(4, "big") + (0xB).to_bytes(4, "big") + _REFUSAL_DEBUG
)

#: The opaque data of the server's keepalive PINGs.
_KEEPALIVE_PING = b"anvil-ka"


class _Connection:
    """One accepted TCP connection: TLS handshake, then calls until EOF or drain."""

    #: The GOAWAY error code this connection was closed with for a connection error.
    goaway_code = None
    #: The connection limit (a ``Due`` close) that closed this connection, if one did.
    closed_for = None

    def __init__(self, server: EdgeServer, tcp_stream: trio.SocketStream) -> None:
        self._server = server
        self._tcp = tcp_stream
        self._grpc_socket: EdgeSocket | None = None
        self._timers: ConnectionTimers | None = None
        self._timers_changed = trio.Event()
        # Bounds the HTTP/2 phase once a limit closes the connection: a writer stuck on a peer
        # that does not read must not keep it open.
        self._close_scope = trio.CancelScope()
        try:
            self._peer = tcp_stream.socket.getpeername()
        except OSError:
            self._peer = None

    @property
    def unacknowledged_bytes(self) -> int:
        """Flow-controlled request bytes received on this connection and not yet acknowledged."""
        if self._grpc_socket is None:
            return 0
        return self._grpc_socket.connection.unacknowledged_bytes

    @property
    def peak_unacknowledged_bytes(self) -> int:
        """The most request bytes this connection has held unacknowledged at once."""
        if self._grpc_socket is None:
            return 0
        return self._grpc_socket.connection.peak_unacknowledged_bytes

    @property
    def outbound_bytes(self) -> int:
        """Response bytes queued for (or being written to) this connection's socket."""
        if self._grpc_socket is None:
            return 0
        return self._grpc_socket.outbound_bytes()

    async def run(self) -> None:
        server = self._server
        stream: trio.abc.Stream = self._tcp
        certificate = None
        try:
            if server._ssl_context is not None:
                stream = trio.SSLStream(self._tcp, server._ssl_context, server_side=True)
                with trio.fail_after(server.config.handshake_timeout):
                    await stream.do_handshake()
                if stream.selected_alpn_protocol() not in (None, "h2"):
                    log.debug("peer %s negotiated ALPN %r, not h2", self._peer,
                              stream.selected_alpn_protocol())
                    return
                certificate = stream.getpeercert() or None
            timers = self._timers = ConnectionTimers(server._connection_limits,
                                                     trio.current_time())
            adapter = TrioStreamAdapter(
                stream, self._tcp.socket,
                on_receive=lambda data: timers.received(trio.current_time(), data),
            )
            with self._close_scope:
                await self._serve_calls(adapter, certificate)
        except trio.TooSlowError:
            log.debug("TLS handshake with %s timed out", self._peer)
        except Exception as exc:
            self._log_failure(exc)
        finally:
            with trio.move_on_after(1.0) as scope:
                scope.shield = True
                try:
                    await stream.aclose()
                except Exception:
                    pass

    async def _serve_calls(self, adapter: TrioStreamAdapter, certificate) -> None:
        server = self._server
        grpc_socket = EdgeSocket(
            server._purerpc_config,
            adapter,
            max_concurrent_streams=server.config.max_concurrent_streams,
            connection_window=server.config.connection_window_bytes,
            max_outbound_buffer=server.config.max_outbound_buffer_bytes,
            max_header_list_bytes=server.config.max_header_list_bytes,
            flood_limits=server._flood_limits,
        )
        grpc_socket.stall_timeout = server.config.stream_stall_timeout
        self._grpc_socket = grpc_socket
        async with grpc_socket:
            async with trio.open_nursery() as calls:
                calls.start_soon(self._goaway_on_stop, grpc_socket, calls.cancel_scope)
                calls.start_soon(self._enforce_limits, grpc_socket, calls.cancel_scope)
                try:
                    async for call_stream in grpc_socket.listen():
                        self._timers.call_started()
                        calls.start_soon(self._run_call, grpc_socket, call_stream, certificate)
                except h2.exceptions.ProtocolError as exc:
                    # A connection error: h2 has queued GOAWAY with its code. Say why, end
                    # the calls, and let the writer send the GOAWAY before the socket closes.
                    code = getattr(exc, "error_code", None)
                    log.warning("closing connection from %s: %s (GOAWAY %s)", self._peer,
                                exc, getattr(code, "name", code))
                    self.goaway_code = code
                # The peer closed the connection, or broke the protocol: nobody is left to
                # answer.
                calls.cancel_scope.cancel()
            with trio.move_on_after(_GOAWAY_FLUSH_TIMEOUT):
                await grpc_socket.drain_outbound()
        if self.goaway_code is not None:
            await self._linger(adapter)

    async def _linger(self, adapter: TrioStreamAdapter) -> None:
        """After a GOAWAY for a connection error: close our side and read (and drop) what the
        peer still sends for a moment, so the kernel does not answer those bytes with a reset
        that could destroy the GOAWAY before the peer reads it (RFC 9113 6.8)."""
        if not isinstance(self._tcp, trio.SocketStream) or adapter.is_tls:
            return
        with trio.move_on_after(_LINGER_TIMEOUT):
            try:
                await self._tcp.send_eof()
                dropped = 0
                while dropped < _LINGER_MAX_BYTES:
                    data = await self._tcp.receive_some(1 << 16)
                    if not data:
                        return
                    dropped += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    async def _run_call(self, grpc_socket: EdgeSocket, call_stream, certificate) -> None:
        try:
            await self._server._dispatcher.run(
                grpc_socket, call_stream, peer=self._peer, peer_certificate=certificate
            )
        finally:
            self._timers.call_ended(trio.current_time())
            if not self._timers.open_calls:
                self._timers_changed.set()  # the idle deadline starts now

    async def _enforce_limits(self, grpc_socket: EdgeSocket, calls_scope: trio.CancelScope) -> None:
        """Drive this connection's :class:`ConnectionTimers`: send the keepalive PINGs, and
        close the connection when its preface, idle or keepalive deadline passes."""
        timers = self._timers
        while True:
            changed = self._timers_changed = trio.Event()
            now = trio.current_time()
            due, deadline = timers.poll(now)
            if due is Due.NOTHING:
                # Received bytes only move deadlines later: waking at the old one is enough.
                with trio.move_on_at(deadline):
                    await changed.wait()
            elif due is Due.PING:
                try:
                    grpc_socket.connection.h2_connection.ping(_KEEPALIVE_PING)
                except h2.exceptions.ProtocolError:
                    pass  # a GOAWAY went either way: no PING, but the peer must still speak
                timers.ping_sent(now)
                await grpc_socket.flush()
            else:
                break
        self.closed_for = due
        limits = timers.limits
        if due is Due.CLOSE_PREFACE:
            log.info("closing connection from %s: no complete HTTP/2 preface within %.1f s",
                     self._peer, limits.preface_timeout)
            self._close_scope.cancel()
            return
        if due is Due.CLOSE_IDLE:
            log.info("closing connection from %s: no calls for %.1f s (GOAWAY NO_ERROR)",
                     self._peer, limits.idle_timeout)
        else:
            log.warning("closing connection from %s: nothing received within %.1f s of a "
                        "keepalive PING (GOAWAY NO_ERROR, best-effort)",
                        self._peer, limits.keepalive_timeout)
        grpc_socket.goaway()
        await grpc_socket.flush()
        self._close_scope.deadline = trio.current_time() + 2 * _GOAWAY_FLUSH_TIMEOUT
        calls_scope.cancel()

    async def _goaway_on_stop(self, grpc_socket: EdgeSocket, calls_scope: trio.CancelScope) -> None:
        await self._server._stop_connections.wait()
        grpc_socket.goaway()
        await grpc_socket.flush()
        calls_scope.cancel()

    def _log_failure(self, exc: BaseException) -> None:
        leaves = list(exception_leaves(exc))
        if all(isinstance(leaf, _CONNECTION_ERRORS) for leaf in leaves):
            log.debug("connection from %s ended: %s", self._peer, exc)
        else:
            log.warning("connection from %s failed", self._peer, exc_info=exc)
