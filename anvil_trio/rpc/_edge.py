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
from ._health import HealthServicer, HealthState
from ._reflection import default_reflection_servicers
from ._status import DEFAULT_STATUS_TABLE, StatusMapper
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
            before handlers sending on it wait (backpressure towards a slow reader).
        drain_grace: seconds running calls get to finish when draining.
        handshake_timeout: seconds a TLS handshake may take.
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
    drain_grace: float = 10.0
    handshake_timeout: float = 10.0
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
        if ssl_context is None and self.config.tls is not None:
            ssl_context = self.config.tls.server_context()
        self._ssl_context = ssl_context
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
            nursery_for_connections.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, tcp_stream: trio.SocketStream) -> None:
        connection = _Connection(self, tcp_stream)
        self._connections.add(connection)
        if self._connections_idle.is_set():
            self._connections_idle = trio.Event()
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            if not self._connections:
                self._connections_idle.set()


#: Seconds a closing connection may take to write what is queued for it (its GOAWAY).
_GOAWAY_FLUSH_TIMEOUT = 1.0


class _Connection:
    """One accepted TCP connection: TLS handshake, then calls until EOF or drain."""

    #: The GOAWAY error code this connection was closed with for a connection error.
    goaway_code = None

    def __init__(self, server: EdgeServer, tcp_stream: trio.SocketStream) -> None:
        self._server = server
        self._tcp = tcp_stream
        self._grpc_socket: EdgeSocket | None = None
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
            adapter = TrioStreamAdapter(stream, self._tcp.socket)
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
        )
        self._grpc_socket = grpc_socket
        async with grpc_socket:
            async with trio.open_nursery() as calls:
                calls.start_soon(self._goaway_on_stop, grpc_socket, calls.cancel_scope)
                try:
                    async for call_stream in grpc_socket.listen():
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

    async def _run_call(self, grpc_socket: EdgeSocket, call_stream, certificate) -> None:
        await self._server._dispatcher.run(
            grpc_socket, call_stream, peer=self._peer, peer_certificate=certificate
        )

    async def _goaway_on_stop(self, grpc_socket: EdgeSocket, calls_scope: trio.CancelScope) -> None:
        await self._server._stop_connections.wait()
        grpc_socket.goaway()
        await grpc_socket.flush()
        calls_scope.cancel()

    def _log_failure(self, exc: BaseException) -> None:
        leaves = list(_leaves(exc))
        if all(isinstance(leaf, _CONNECTION_ERRORS) for leaf in leaves):
            log.debug("connection from %s ended: %s", self._peer, exc)
        else:
            log.warning("connection from %s failed", self._peer, exc_info=exc)


def _leaves(exc: BaseException):
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
