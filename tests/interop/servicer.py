"""``grpc.testing.TestService`` on anvil_trio's edge: the server half of the gRPC interop suite.

Behaviour (the "server features" of grpc's ``doc/interop-test-descriptions.md``):

* EmptyCall returns the empty message; UnaryCall a payload of ``response_size`` zero bytes.
* StreamingOutputCall / FullDuplexCall answer one message per ``ResponseParameters``, each after
  sleeping its ``interval_us``; FullDuplexCall answers each request as it arrives,
  HalfDuplexCall only after the client half-closed. StreamingInputCall sums payload sizes.
* Echo Status: a request with ``response_status`` ends the call with that code and message
  (raised as purerpc's ``RpcFailedError``, which the edge passes through unchanged); later
  requests of the stream are not processed.
* Echo Metadata: ``x-grpc-test-echo-initial`` comes back in the response headers,
  ``x-grpc-test-echo-trailing-bin`` (bytes) in the trailers.
* Compression, through the edge's per-message API on ``CallContext`` (``rpc/_compression.py``):
  ``expect_compressed`` is checked against ``request_compressed`` (did the message just taken
  arrive with the compressed flag), and ``response_compressed`` /
  ``ResponseParameters.compressed`` set ``compress_responses`` to ``True`` or ``False`` before
  each response (an absent BoolValue means ``False``: the case asserts uncompressed then, so the
  edge's automatic rule, which would compress 314159 zero bytes, is never left in charge).
* ``UnimplementedCall`` is not registered, so the edge itself answers UNIMPLEMENTED for it, and
  ``UnimplementedService`` is not served at all.
"""

from __future__ import annotations

import trio
from purerpc import Status, StatusCode
from purerpc.grpclib.exceptions import RpcFailedError

from anvil_trio.rpc import CallContext, EdgeConfig, EdgeServer

from ._protos import empty_pb2, messages_pb2, test_grpc

__all__ = ["InteropServicer", "make_edge"]

ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"


def _check_compression(context: CallContext, expect) -> None:
    """INVALID_ARGUMENT unless the request message just taken arrived compressed exactly when
    ``expect`` (a BoolValue) says so."""
    was = context.request_compressed
    if bool(expect.value) != was:
        wanted, got = ("a compressed", "an uncompressed") if expect.value else (
            "an uncompressed", "a compressed")
        raise RpcFailedError(Status(StatusCode.INVALID_ARGUMENT,
                                    f"expected {wanted} request message, got {got} one"))


def _echo_metadata(context: CallContext) -> None:
    initial = context.metadata(ECHO_INITIAL)
    if initial is not None:
        context.initial_metadata.append((ECHO_INITIAL, initial))
    trailing = context.metadata(ECHO_TRAILING)
    if trailing is not None:
        context.trailing_metadata.append((ECHO_TRAILING, trailing))


def _raise_echo_status(echo) -> None:
    if echo.code != 0:
        raise RpcFailedError(Status(StatusCode(echo.code), echo.message))


def _payload(size: int):
    if size < 0:
        raise RpcFailedError(Status(StatusCode.INVALID_ARGUMENT, f"negative size {size}"))
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(size))


async def _responses_for(context: CallContext, request):
    """The responses one StreamingOutputCallRequest asks for, paced by ``interval_us``."""
    _raise_echo_status(request.response_status)
    for parameters in request.response_parameters:
        if parameters.interval_us > 0:
            await trio.sleep(parameters.interval_us / 1e6)
        context.compress_responses = parameters.compressed.value
        yield messages_pb2.StreamingOutputCallResponse(payload=_payload(parameters.size))


class InteropServicer(test_grpc.TestServiceServicer):
    """The TestService handlers (``UnimplementedCall`` deliberately left unregistered)."""

    __test__ = False  # a "Test..." base class name; not a pytest class

    async def EmptyCall(self, message, request: CallContext):
        _echo_metadata(request)
        return empty_pb2.Empty()

    async def UnaryCall(self, message, request: CallContext):
        _echo_metadata(request)
        if message.HasField("expect_compressed"):
            _check_compression(request, message.expect_compressed)
        _raise_echo_status(message.response_status)
        request.compress_responses = message.response_compressed.value
        return messages_pb2.SimpleResponse(payload=_payload(message.response_size))

    async def StreamingOutputCall(self, message, request: CallContext):
        _echo_metadata(request)
        async for response in _responses_for(request, message):
            yield response

    async def StreamingInputCall(self, messages, request: CallContext):
        _echo_metadata(request)
        total = 0
        async for message in messages:
            if message.HasField("expect_compressed"):
                _check_compression(request, message.expect_compressed)
            total += len(message.payload.body)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    async def FullDuplexCall(self, messages, request: CallContext):
        _echo_metadata(request)
        async for message in messages:
            async for response in _responses_for(request, message):
                yield response

    async def HalfDuplexCall(self, messages, request: CallContext):
        _echo_metadata(request)
        buffered = [message async for message in messages]
        for message in buffered:
            async for response in _responses_for(request, message):
                yield response

    @property
    def service(self):
        service = super().service
        del service.methods["UnimplementedCall"]  # the edge answers UNIMPLEMENTED itself
        return service


def make_edge(**config) -> EdgeServer:
    """An edge serving only TestService (plus the edge's own health service) on 127.0.0.1,
    a free port unless ``config`` says otherwise."""
    config = {"host": "127.0.0.1", "port": 0, "drain_grace": 2.0, **config}
    return EdgeServer([InteropServicer()], config=EdgeConfig(**config))
