"""Running one gRPC call: routing, limits, the client's deadline, and the status it ends with.

Invariants:

* Every call that reaches :meth:`CallDispatcher.run` ends with exactly one status sent to the
  client (or, if the client reset the stream, with nothing sent), whatever the handler does.
* A handler runs inside its call's ``CallControl.cancel_scope`` and, when the client sent
  ``grpc-timeout``, inside a deadline; hitting the deadline cancels the handler and answers
  ``DEADLINE_EXCEEDED``.
* A handler method with a ``request_decoder`` attribute (``bytes -> message``) gets its request
  messages decoded by it instead of ``ParseFromString`` (a fast path for bulk-data messages).
* Handler exceptions become statuses only through :func:`status_for_exception`; no status is
  ever ``CANCELLED`` and no message carries a ``repr()``.
* ``active`` counts handlers running now; a call arriving while ``active`` is at the limit gets
  ``RESOURCE_EXHAUSTED`` and a call arriving while draining gets ``UNAVAILABLE`` (except the
  health service, which answers ``NOT_SERVING`` then), both without running any handler.
* With an ``authenticate`` hook, a call to a method that is not public is authenticated from
  its headers before any request message is decoded and before it takes a slot, so an
  authentication failure (UNAUTHENTICATED) wins over a request that does not decode.
* A call whose client reset the stream, or whose stream or connection is gone, ends quietly
  (logged at DEBUG): a client's cancel is not an error.
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs
import h2.connection
import h2.errors
import h2.exceptions
import purerpc
import trio
from purerpc import Cardinality, Status, StatusCode
from purerpc.grpc_socket import GRPCStreamState
from purerpc.wrappers import (
    call_server_stream_stream,
    call_server_stream_unary,
    call_server_unary_stream,
    call_server_unary_unary,
)

from ._status import StatusMapper, exception_leaves, status_for_exception
from ._stream import EdgeStream
from ._wire import CallControl, EdgeSocket

__all__ = [
    "PUBLIC_METHODS",
    "PUBLIC_SERVICES",
    "SERVED_WHILE_DRAINING",
    "CallContext",
    "CallDispatcher",
]

log = logging.getLogger("anvil_trio.rpc")

_RUNNERS = {
    Cardinality.UNARY_UNARY: call_server_unary_unary,
    Cardinality.UNARY_STREAM: call_server_unary_stream,
    Cardinality.STREAM_UNARY: call_server_stream_unary,
    Cardinality.STREAM_STREAM: call_server_stream_stream,
}

#: Seconds the edge may spend sending a call's final status, even while being cancelled.
FINISH_TIMEOUT = 2.0

#: Methods served without authentication (API.md): the token exchange itself. Every method of
#: every service not named here or in :data:`PUBLIC_SERVICES` requires a bearer token.
PUBLIC_METHODS: frozenset[str] = frozenset({"/anvil.v1.AuthService/GetAccessToken"})

#: Services all of whose methods are served without authentication: the standard health and
#: reflection services.
PUBLIC_SERVICES: frozenset[str] = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
})

#: Services whose calls use their own small budget of slots (never starved by data calls).
HEALTH_SERVICES: frozenset[str] = frozenset({"grpc.health.v1.Health"})

#: Services still answered while the server drains (API.md: health says NOT_SERVING then).
SERVED_WHILE_DRAINING: frozenset[str] = frozenset({"grpc.health.v1.Health"})


@attrs.define(eq=False)
class CallContext:
    """What a handler receives as its ``request`` parameter.

    It keeps the attribute names of purerpc's ``RequestReceived`` that handlers use
    (``custom_metadata``, ``timeout``, ``service_name``, ``method_name``, ``authority``,
    ``user_agent``) and adds the deadline, the peer and response metadata.

    Attributes:
        service_name: e.g. ``anvil.v1.ObjectService``.
        method_name: e.g. ``PutObject``.
        custom_metadata: ``(name, value)`` pairs the client sent (``-bin`` values are bytes).
        timeout: the client's ``grpc-timeout``, or ``None``.
        deadline: the trio-clock time the call is cancelled at (``inf`` without a timeout).
        authority: the ``:authority`` header.
        user_agent: the ``user-agent`` header.
        peer: the client's address as ``getpeername()`` gives it.
        peer_certificate: the verified TLS client certificate (``SSLSocket.getpeercert()``
            form), or ``None``.
        principal: who the call authenticated as, from the dispatcher's ``authenticate``
            hook (before any request message was decoded), or ``None``.
        initial_metadata: pairs to send in the response headers (before the first message).
        trailing_metadata: pairs to send with the final status.
        request_compressed: whether the request message the handler received last arrived
            compressed (its gRPC compressed flag was set); ``False`` before any. Set as each
            message is handed to the handler, so a streaming handler sees it per message.
        compress_responses: the handler's choice for the response messages it sends from now
            on: ``None`` (default) the edge's rule (compress a message of at least 1 KiB that
            is not pre-framed bulk data, if the client accepts gzip or deflate and it gets
            smaller), ``True`` compress each one (if the client accepts an encoding), ``False``
            none. See ``_compression``.
    """

    service_name: str
    method_name: str
    custom_metadata: tuple[tuple[str, Any], ...] = ()
    timeout: datetime.timedelta | None = None
    deadline: float = math.inf
    authority: str | None = None
    user_agent: str | None = None
    peer: Any = None
    peer_certificate: dict | None = None
    principal: Any = None
    initial_metadata: list[tuple[str, Any]] = attrs.field(factory=list)
    trailing_metadata: list[tuple[str, Any]] = attrs.field(factory=list)
    request_compressed: bool = False
    compress_responses: bool | None = None
    _control: CallControl | None = attrs.field(default=None, alias="control", repr=False)

    def abort(self, code: StatusCode, message: str) -> None:
        """End this call from another task: its handler is cancelled and the client gets
        ``code`` with ``message`` (e.g. an upload stream superseded by a resume). A no-op once
        the call has ended."""
        if self._control is not None:
            self._control.abort(Status(code, message))

    @property
    def method(self) -> str:
        """The gRPC path, ``/service/method``."""
        return f"/{self.service_name}/{self.method_name}"

    def metadata(self, name: str, default: Any = None) -> Any:
        """The first value the client sent under ``name`` (case-insensitive), or ``default``."""
        name = name.lower()
        for key, value in self.custom_metadata:
            if key.lower() == name:
                return value
        return default

    def metadata_all(self, name: str) -> list[Any]:
        """Every value the client sent under ``name`` (case-insensitive), in order."""
        name = name.lower()
        return [value for key, value in self.custom_metadata if key.lower() == name]


def _as_service(item: purerpc.Service | purerpc.Servicer) -> purerpc.Service:
    return item.service if isinstance(item, purerpc.Servicer) else item


#: What a handler meets when its stream or connection is gone under it (h2 raises
#: ``StreamClosedError`` for a stream the peer reset or the connection closed).
_GONE_ERRORS = (
    h2.exceptions.ProtocolError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


def _went_away(exc: BaseException, socket: EdgeSocket, stream: EdgeStream) -> bool:
    """Whether ``exc`` only says that the call's stream (or connection) is closed, and h2 agrees
    that it is: then the call ends quietly instead of as an INTERNAL error."""
    leaves = [leaf for leaf in exception_leaves(exc) if not isinstance(leaf, trio.Cancelled)]
    if not leaves or not all(isinstance(leaf, _GONE_ERRORS) for leaf in leaves):
        return False
    h2_connection = socket.connection.h2_connection
    if h2_connection.state_machine.state == h2.connection.ConnectionState.CLOSED:
        return True
    h2_stream = h2_connection.streams.get(stream.stream_id)
    return h2_stream is None or h2_stream.closed



def _expired(context: CallContext) -> Status:
    return Status(
        StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded (grpc-timeout {context.timeout})"
    )


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # counters change per call
class CallDispatcher:
    """Routes each call to its handler and enforces limits, deadline and error mapping.

    Args:
        services: purerpc services (or servicers) by full service name.
        max_concurrent_calls: handlers allowed to run at once; more get RESOURCE_EXHAUSTED.
        mapper: exception -> status for known errors (see ``_status``).
        dev_mode: INTERNAL messages carry the exception and traceback.
        authenticate: ``CallContext -> principal``, raising (e.g. ``UnauthenticatedError``)
            when the call's credentials do not hold. Run from the headers alone, before any
            request message is decoded and before the call takes a slot, for every method that
            :meth:`requires_auth`; the principal is set as ``context.principal``, a failure is
            answered through ``mapper``. ``None``: handlers authenticate themselves.
        public_methods: ``/service/method`` paths served without authentication.
        public_services: service names all of whose methods are served without it.
        serve_while_draining: services still answered while draining (health, which then
            reports ``NOT_SERVING``); every other call gets UNAVAILABLE.
        max_calls_per_connection: data calls one connection may run at once (its fair share
            of ``max_concurrent_calls``); ``None``: no per-connection bound.
        health_call_slots: health calls running at once (half of them at most on one
            connection); they do not count against ``max_concurrent_calls``, so data calls
            never starve health checks.
        health_services: the services ``health_call_slots`` applies to.
    """

    services: Mapping[str, purerpc.Service] = attrs.field(
        converter=lambda items: {s.name: s for s in map(_as_service, items)}
    )
    max_concurrent_calls: int = 1000
    mapper: StatusMapper = attrs.field(kw_only=True)
    dev_mode: bool = attrs.field(default=False, kw_only=True)
    authenticate: Callable[[CallContext], Any] | None = attrs.field(default=None, kw_only=True)
    public_methods: frozenset[str] = attrs.field(
        default=PUBLIC_METHODS, converter=frozenset, kw_only=True
    )
    public_services: frozenset[str] = attrs.field(
        default=PUBLIC_SERVICES, converter=frozenset, kw_only=True
    )
    serve_while_draining: frozenset[str] = attrs.field(
        default=SERVED_WHILE_DRAINING, converter=frozenset, kw_only=True
    )
    max_calls_per_connection: int | None = attrs.field(default=None, kw_only=True)
    health_call_slots: int = attrs.field(default=16, kw_only=True)
    health_services: frozenset[str] = attrs.field(
        default=HEALTH_SERVICES, converter=frozenset, kw_only=True
    )
    draining: bool = attrs.field(default=False, init=False)
    active: int = attrs.field(default=0, init=False)
    health_active: int = attrs.field(default=0, init=False)
    served: int = attrs.field(default=0, init=False)
    refused: int = attrs.field(default=0, init=False)
    _live: set[CallControl] = attrs.field(factory=set, init=False)
    _idle: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no handler is running."""
        while self.active:
            await self._idle.wait()

    def abort_all(self, status: Status) -> int:
        """Cancel every running handler; each answers ``status``. Returns how many."""
        live = list(self._live)
        for control in live:
            control.abort(status)
        return len(live)

    async def run(
        self,
        socket: EdgeSocket,
        stream: EdgeStream,
        *,
        peer: Any = None,
        peer_certificate: dict | None = None,
    ) -> None:
        """Serve the call on ``stream`` from its headers to its final status.

        Never raises (except ``trio.Cancelled`` when the connection is torn down); every
        handler error is turned into a status and sent.
        """
        control = socket.connection.calls.get(stream.stream_id) or CallControl(stream.stream_id)
        status: Status | None = None
        try:
            event = await stream.receive_event()
            context = CallContext(
                service_name=event.service_name,
                method_name=event.method_name,
                custom_metadata=tuple(event.custom_metadata),
                timeout=event.timeout,
                deadline=(
                    trio.current_time() + event.timeout.total_seconds()
                    if event.timeout is not None
                    else math.inf
                ),
                authority=event.authority,
                user_agent=event.user_agent,
                peer=peer,
                peer_certificate=peer_certificate,
                control=control,
            )
            stream.context = context
            # Before any request message is decoded and before the call takes a slot:
            # route (draining, UNIMPLEMENTED), then authenticate, then admit (the limit).
            bound, status = self._route(context)
            if status is None:
                status = self._authenticate(context)
            if status is None:
                status = self._admit(socket, context)
            if status is None:
                status = await self._invoke(bound, socket, stream, control, context)
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + FINISH_TIMEOUT
                await self._finish(socket, stream, control, status)

    def requires_auth(self, service_name: str, method_name: str) -> bool:
        """Whether ``/service_name/method_name`` needs authentication (see ``public_*``)."""
        return (
            service_name not in self.public_services
            and f"/{service_name}/{method_name}" not in self.public_methods
        )

    def _route(self, context: CallContext):
        if self.draining and context.service_name not in self.serve_while_draining:
            self.refused += 1
            return None, Status(StatusCode.UNAVAILABLE, "server is draining; retry elsewhere")
        service = self.services.get(context.service_name)
        if service is None:
            return None, Status(
                StatusCode.UNIMPLEMENTED, f"service {context.service_name} is not implemented"
            )
        bound = service.methods.get(context.method_name)
        if bound is None:
            return None, Status(StatusCode.UNIMPLEMENTED, f"method {context.method} is not implemented")
        return bound, None

    def _authenticate(self, context: CallContext) -> Status | None:
        """Run the ``authenticate`` hook for a call that needs it; its failure is the status."""
        if self.authenticate is None or not self.requires_auth(
            context.service_name, context.method_name
        ):
            return None
        try:
            context.principal = self.authenticate(context)
        except Exception as exc:
            return status_for_exception(
                exc, mapper=self.mapper, dev_mode=self.dev_mode, where=context.method
            )
        return None

    def _admit(self, socket: EdgeSocket, context: CallContext) -> Status | None:
        """A slot for the call, or the RESOURCE_EXHAUSTED status saying which limit is full:
        health calls have their own slots; a data call needs one of the server's and one of
        its connection's share."""
        if context.service_name in self.health_services:
            # A connection's share of the health slots too, so one client cannot take them all.
            share = max(1, (self.health_call_slots + 1) // 2)
            if self.health_active >= self.health_call_slots or socket.health_calls >= share:
                self.refused += 1
                return Status(StatusCode.RESOURCE_EXHAUSTED,
                              f"too many health calls at once (limit {self.health_call_slots}, "
                              f"{share} per connection)")
            return None
        if self.active - self.health_active >= self.max_concurrent_calls:
            self.refused += 1
            return Status(
                StatusCode.RESOURCE_EXHAUSTED,
                f"too many concurrent calls (limit {self.max_concurrent_calls}); retry later",
            )
        share = self.max_calls_per_connection
        if share is not None and socket.active_calls >= share:
            self.refused += 1
            return Status(
                StatusCode.RESOURCE_EXHAUSTED,
                f"this connection already holds {socket.active_calls} calls, its share of the "
                f"server's {self.max_concurrent_calls}; retry later or use another connection",
            )
        return None

    async def _invoke(
        self, bound, socket: EdgeSocket, stream: EdgeStream, control: CallControl,
        context: CallContext,
    ):
        health = context.service_name in self.health_services
        if health:
            self.health_active += 1
            socket.health_calls += 1
        else:
            socket.active_calls += 1
        self.active += 1
        self.served += 1
        if self.active == 1:
            self._idle = trio.Event()
        self._live.add(control)
        try:
            handler = functools.partial(bound.method_fn, request=context)
            stream.expect_message_type(bound.signature.request_type)
            stream.request_decoder = getattr(bound.method_fn, "request_decoder", None)
            stream.stall_timeout = socket.stall_timeout
            stream.receive_stall_timeout = (
                math.inf if getattr(bound.method_fn, "bounds_own_idle_time", False)
                else socket.stall_timeout
            )
            runner = _RUNNERS[bound.signature.cardinality]
            if trio.current_time() >= context.deadline:
                return _expired(context)  # already past it: do not start work nobody waits for
            try:
                with control.cancel_scope as scope:
                    scope.deadline = context.deadline  # one scope: aborts and the deadline
                    await runner(handler, stream)
                    return None
                if control.abort_status is not None or control.peer_reset:
                    return control.abort_status
                return _expired(context)
            except Exception as exc:
                if control.peer_reset or _went_away(exc, socket, stream):
                    # The client cancelled, or its stream or connection is gone: not an error,
                    # and nobody is left to read a status.
                    log.debug("%s on stream %d ended: the client went away (%r)",
                              context.method, stream.stream_id, exc)
                    if control.peer_reset or control.abort_status is not None:
                        return control.abort_status
                    return Status(StatusCode.UNAVAILABLE, "the connection closed during the call")
                return status_for_exception(
                    exc, mapper=self.mapper, dev_mode=self.dev_mode, where=context.method
                )
        finally:
            self._live.discard(control)
            if health:
                self.health_active -= 1
                socket.health_calls -= 1
            else:
                socket.active_calls -= 1
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def _finish(
        self, socket: EdgeSocket, stream: EdgeStream, control: CallControl, status: Status | None
    ) -> None:
        connection = socket.connection
        sid = stream.stream_id
        connection.ack_unread(stream)
        if not control.peer_reset and not stream.locally_closed:
            if stream.sending_partial:
                # Half a message is out; trailers now would corrupt it. Reset instead.
                connection.reset_quietly(sid, h2.errors.ErrorCodes.CANCEL)
            else:
                if status is None:
                    status = Status(StatusCode.INTERNAL, "call ended without a status")
                try:
                    try:
                        await stream.close(status)
                    except ValueError as exc:
                        # The handler's trailing metadata cannot go on the wire (the stream
                        # dropped it): the call is INTERNAL, sent without it.
                        await stream.close(status_for_exception(
                            exc, mapper=self.mapper, dev_mode=self.dev_mode,
                            where=stream.context.method if stream.context else ""))
                except Exception as exc:  # the stream died under us (peer reset, h2 state)
                    log.debug("could not send status on stream %d: %s", sid, exc)
                    connection.reset_quietly(sid, h2.errors.ErrorCodes.CANCEL)
        retire = stream.state != GRPCStreamState.CLOSED
        if retire and not control.peer_reset:
            # We answered before the client finished sending: stop its upload.
            connection.reset_quietly(sid, h2.errors.ErrorCodes.NO_ERROR)
        connection.forget(sid, retire=retire)
        await socket.flush()
