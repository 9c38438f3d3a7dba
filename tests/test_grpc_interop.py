"""The published gRPC interop cases against the edge, from grpcio (Python) and grpc-js (Node).

The server is ``grpc.testing.TestService`` (``tests/interop/servicer.py``) on an in-process
:class:`~anvil_trio.rpc.EdgeServer` on 127.0.0.1; the blocking grpcio client runs in a worker
thread with a deadline on every call, the grpc-js client (``tests/interop/client.js``) as a
subprocess, one case per test. The compression cases that must see the compressed flag of
response messages run through :class:`~interop.sniffer.Sniffer`, a proxy that parses the HTTP/2
frames. The assertions are those of grpc's ``doc/interop-test-descriptions.md``; where a case
goes further (a call on the same channel after a cancel) its docstring says so.
"""

from __future__ import annotations

import contextlib
import functools
import json
import queue
from pathlib import Path

import grpc
import pytest
import trio

from _node import run_node
from interop._protos import empty_pb2, messages_pb2, test_pb2_grpc
from interop.servicer import make_edge
from interop.sniffer import Sniffer

CALL_TIMEOUT = 15.0
CLIENT_JS = Path(__file__).resolve().parent / "interop" / "client.js"
NODE_TIMEOUT = 120.0

ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"
SPECIAL_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
UNARY_PATH = "/grpc.testing.TestService/UnaryCall"
STREAMING_OUTPUT_PATH = "/grpc.testing.TestService/StreamingOutputCall"
STREAMING_INPUT_PATH = "/grpc.testing.TestService/StreamingInputCall"


# --- plumbing ---


@pytest.fixture
async def port(nursery):
    """A fresh edge serving TestService on 127.0.0.1; drained after the test."""
    edge = make_edge()
    bound = await nursery.start(edge.serve)
    yield bound
    await edge.drain(grace=1.0)


@pytest.fixture
async def sniffed(nursery, port):
    """A frame-sniffing proxy in front of the edge: ``(proxy port, sniffer)``."""
    sniffer = Sniffer(port)
    proxy_port = await nursery.start(sniffer.serve)
    yield proxy_port, sniffer


async def in_thread(fn, *args):
    """Run the blocking client function ``fn(*args)`` in a worker thread."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args))


@contextlib.contextmanager
def channel(port: int, **kwargs):
    with grpc.insecure_channel(f"127.0.0.1:{port}", **kwargs) as chan:
        grpc.channel_ready_future(chan).result(timeout=CALL_TIMEOUT)
        yield chan


def stub(chan):
    return test_pb2_grpc.TestServiceStub(chan)


def zeros(n: int) -> messages_pb2.Payload:
    return messages_pb2.Payload(body=bytes(n))


def large_request(**fields) -> messages_pb2.SimpleRequest:
    return messages_pb2.SimpleRequest(response_size=314159, payload=zeros(271828), **fields)


def assert_payload(payload, size: int) -> None:
    assert len(payload.body) == size
    assert payload.body == bytes(size)


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    """Call ``fn`` (or exhaust the stream it returns) and return the RpcError it must raise."""
    with pytest.raises(grpc.RpcError) as caught:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)
    return caught.value


class Pipe:
    """A request iterator fed from the test: ``put`` a message, ``close`` to half-close."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()

    def put(self, message) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(self._END)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get(timeout=CALL_TIMEOUT)
        if item is self._END:
            raise StopIteration
        return item


def assert_channel_still_works(chan) -> None:
    """Beyond the interop description: the connection survives the case (no GOAWAY)."""
    assert isinstance(stub(chan).EmptyCall(empty_pb2.Empty(), timeout=CALL_TIMEOUT),
                      empty_pb2.Empty)


# --- grpcio cases ---


def _empty_unary(port):
    with channel(port) as chan:
        response = stub(chan).EmptyCall(empty_pb2.Empty(), timeout=CALL_TIMEOUT)
    assert isinstance(response, empty_pb2.Empty)
    assert response.ByteSize() == 0


async def test_empty_unary(port):
    """grpcio empty_unary: EmptyCall returns an empty message."""
    await in_thread(_empty_unary, port)


def _large_unary(port):
    with channel(port) as chan:
        response = stub(chan).UnaryCall(large_request(), timeout=CALL_TIMEOUT)
    assert_payload(response.payload, 314159)


async def test_large_unary(port):
    """grpcio large_unary: 271828 bytes in, 314159 zero bytes out."""
    await in_thread(_large_unary, port)


def _client_streaming(port):
    requests = [messages_pb2.StreamingInputCallRequest(payload=zeros(n))
                for n in (27182, 8, 1828, 45904)]
    with channel(port) as chan:
        response = stub(chan).StreamingInputCall(iter(requests), timeout=CALL_TIMEOUT)
    assert response.aggregated_payload_size == 74922


async def test_client_streaming(port):
    """grpcio client_streaming: four requests, aggregated size 74922."""
    await in_thread(_client_streaming, port)


def _server_streaming(port):
    sizes = [31415, 9, 2653, 58979]
    request = messages_pb2.StreamingOutputCallRequest(
        response_parameters=[messages_pb2.ResponseParameters(size=n) for n in sizes])
    with channel(port) as chan:
        responses = list(stub(chan).StreamingOutputCall(request, timeout=CALL_TIMEOUT))
    assert len(responses) == 4
    for response, size in zip(responses, sizes):
        assert_payload(response.payload, size)


async def test_server_streaming(port):
    """grpcio server_streaming: exactly four responses of 31415, 9, 2653, 58979 bytes."""
    await in_thread(_server_streaming, port)


def _ping_pong(port):
    sizes = [31415, 9, 2653, 58979]
    bodies = [27182, 8, 1828, 45904]
    pipe = Pipe()
    with channel(port) as chan:
        responses = stub(chan).FullDuplexCall(pipe, timeout=CALL_TIMEOUT)
        try:
            for size, body in zip(sizes, bodies):
                pipe.put(messages_pb2.StreamingOutputCallRequest(
                    response_parameters=[messages_pb2.ResponseParameters(size=size)],
                    payload=zeros(body)))
                assert_payload(next(responses).payload, size)
        finally:
            pipe.close()
        assert list(responses) == []
        assert responses.code() is grpc.StatusCode.OK


async def test_ping_pong(port):
    """grpcio ping_pong: each of four requests is answered before the next is sent."""
    await in_thread(_ping_pong, port)


def _empty_stream(port):
    with channel(port) as chan:
        responses = stub(chan).FullDuplexCall(iter([]), timeout=CALL_TIMEOUT)
        assert list(responses) == []
        assert responses.code() is grpc.StatusCode.OK


async def test_empty_stream(port):
    """grpcio empty_stream: no requests, no responses, status OK."""
    await in_thread(_empty_stream, port)


def _cancel_after_begin(port):
    pipe = Pipe()
    with channel(port) as chan:
        future = stub(chan).StreamingInputCall.future(pipe, timeout=CALL_TIMEOUT)
        try:
            assert future.cancel()
            assert future.cancelled()
            assert future.code() is grpc.StatusCode.CANCELLED
        finally:
            pipe.close()
        assert_channel_still_works(chan)


async def test_cancel_after_begin(port):
    """grpcio cancel_after_begin: a client stream cancelled before any message is CANCELLED
    (and the channel still serves a call afterwards)."""
    await in_thread(_cancel_after_begin, port)


def _cancel_after_first_response(port):
    pipe = Pipe()
    with channel(port) as chan:
        responses = stub(chan).FullDuplexCall(pipe, timeout=CALL_TIMEOUT)
        try:
            pipe.put(messages_pb2.StreamingOutputCallRequest(
                response_parameters=[messages_pb2.ResponseParameters(size=31415)],
                payload=zeros(27182)))
            assert_payload(next(responses).payload, 31415)
            responses.cancel()
            with pytest.raises(grpc.RpcError):
                next(responses)
            assert responses.code() is grpc.StatusCode.CANCELLED
        finally:
            pipe.close()
        assert_channel_still_works(chan)


async def test_cancel_after_first_response(port):
    """grpcio cancel_after_first_response: cancelled after one response, the call is
    CANCELLED (and the channel still serves a call afterwards)."""
    await in_thread(_cancel_after_first_response, port)


def _timeout_on_sleeping_server(port):
    pipe = Pipe()
    with channel(port) as chan:
        responses = stub(chan).FullDuplexCall(pipe, timeout=0.001)
        try:
            pipe.put(messages_pb2.StreamingOutputCallRequest(payload=zeros(27182)))
            with pytest.raises(grpc.RpcError):
                next(responses)
            assert responses.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            pipe.close()
        assert_channel_still_works(chan)


async def test_timeout_on_sleeping_server(port):
    """grpcio timeout_on_sleeping_server: a 1 ms deadline ends the call DEADLINE_EXCEEDED
    (and the channel still serves a call afterwards)."""
    await in_thread(_timeout_on_sleeping_server, port)


def _custom_metadata(port):
    metadata = ((ECHO_INITIAL, "test_initial_metadata_value"),
                (ECHO_TRAILING, b"\xab\xab\xab"))

    def check(initial, trailing):
        assert (ECHO_INITIAL, "test_initial_metadata_value") in list(initial)
        assert (ECHO_TRAILING, b"\xab\xab\xab") in list(trailing)

    with channel(port) as chan:
        response, call = stub(chan).UnaryCall.with_call(
            large_request(), metadata=metadata, timeout=CALL_TIMEOUT)
        assert_payload(response.payload, 314159)
        check(call.initial_metadata(), call.trailing_metadata())

        request = messages_pb2.StreamingOutputCallRequest(
            response_parameters=[messages_pb2.ResponseParameters(size=314159)],
            payload=zeros(271828))
        responses = stub(chan).FullDuplexCall(iter([request]), metadata=metadata,
                                              timeout=CALL_TIMEOUT)
        received = list(responses)
        assert len(received) == 1
        assert_payload(received[0].payload, 314159)
        check(responses.initial_metadata(), responses.trailing_metadata())


async def test_custom_metadata(port):
    """grpcio custom_metadata: the echo-initial header and the -bin trailer come back, on a
    unary and on a bidi call."""
    await in_thread(_custom_metadata, port)


def _status_code_and_message(port):
    echo = messages_pb2.EchoStatus(code=2, message="test status message")
    with channel(port) as chan:
        error = rpc_error(stub(chan).UnaryCall,
                          messages_pb2.SimpleRequest(response_status=echo), timeout=CALL_TIMEOUT)
        assert error.code() is grpc.StatusCode.UNKNOWN
        assert error.details() == "test status message"
        error = rpc_error(
            stub(chan).FullDuplexCall,
            iter([messages_pb2.StreamingOutputCallRequest(response_status=echo)]),
            timeout=CALL_TIMEOUT)
        assert error.code() is grpc.StatusCode.UNKNOWN
        assert error.details() == "test status message"


async def test_status_code_and_message(port):
    """grpcio status_code_and_message: the requested code 2 and message come back, unary and
    bidi."""
    await in_thread(_status_code_and_message, port)


def _special_status_message(port):
    echo = messages_pb2.EchoStatus(code=2, message=SPECIAL_MESSAGE)
    with channel(port) as chan:
        error = rpc_error(stub(chan).UnaryCall,
                          messages_pb2.SimpleRequest(response_status=echo), timeout=CALL_TIMEOUT)
    assert error.code() is grpc.StatusCode.UNKNOWN
    assert error.details() == SPECIAL_MESSAGE


async def test_special_status_message(port):
    """grpcio special_status_message: whitespace, BMP and non-BMP characters survive the
    grpc-message percent-encoding exactly."""
    await in_thread(_special_status_message, port)


RESERVED_MESSAGE = "a, b/c: d; e?f@g&h=i+j$k#l"


def _status_message_reserved_characters(port):
    echo = messages_pb2.EchoStatus(code=2, message=RESERVED_MESSAGE)
    with channel(port) as chan:
        error = rpc_error(stub(chan).UnaryCall,
                          messages_pb2.SimpleRequest(response_status=echo), timeout=CALL_TIMEOUT)
    assert error.code() is grpc.StatusCode.UNKNOWN
    assert error.details() == RESERVED_MESSAGE


async def test_status_message_reserved_characters(port):
    """Beyond the published cases: a status message with URI-reserved characters
    (``, / : ; ? @ & = + $ #``) arrives exactly."""
    await in_thread(_status_message_reserved_characters, port)


def _unimplemented_method(port):
    with channel(port) as chan:
        error = rpc_error(stub(chan).UnimplementedCall, empty_pb2.Empty(), timeout=CALL_TIMEOUT)
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_unimplemented_method(port):
    """grpcio unimplemented_method: TestService/UnimplementedCall is UNIMPLEMENTED."""
    await in_thread(_unimplemented_method, port)


def _unimplemented_service(port):
    with channel(port) as chan:
        error = rpc_error(test_pb2_grpc.UnimplementedServiceStub(chan).UnimplementedCall,
                          empty_pb2.Empty(), timeout=CALL_TIMEOUT)
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_unimplemented_service(port):
    """grpcio unimplemented_service: UnimplementedService/UnimplementedCall is UNIMPLEMENTED."""
    await in_thread(_unimplemented_service, port)


def _client_compressed_unary(port):
    def request(expect):
        return large_request(expect_compressed=messages_pb2.BoolValue(value=expect))

    with channel(port) as chan:
        error = rpc_error(stub(chan).UnaryCall, request(True), timeout=CALL_TIMEOUT)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
        response = stub(chan).UnaryCall(request(True), timeout=CALL_TIMEOUT,
                                        compression=grpc.Compression.Gzip)
        assert_payload(response.payload, 314159)
        response = stub(chan).UnaryCall(request(False), timeout=CALL_TIMEOUT)
        assert_payload(response.payload, 314159)


def request_flags(sniffer: Sniffer, path: str) -> list[list[bool]]:
    """The compressed flags of the request messages of each call to ``path``, in order."""
    assert not sniffer.errors
    return [[compressed for compressed, _ in call.request_messages]
            for call in sniffer.calls_to(path)]


def assert_client_compressed_unary(sniffer: Sniffer) -> None:
    assert request_flags(sniffer, UNARY_PATH) == [[False], [True], [False]]


async def test_client_compressed_unary(sniffed):
    """grpcio client_compressed_unary: the uncompressed probe is INVALID_ARGUMENT, a gzip
    request with expect_compressed and a plain one without both succeed (the request flags
    checked on the wire too)."""
    proxy_port, sniffer = sniffed
    await in_thread(_client_compressed_unary, proxy_port)
    assert_client_compressed_unary(sniffer)


def _client_compressed_streaming(port):
    def message(expect, size):
        return messages_pb2.StreamingInputCallRequest(
            expect_compressed=messages_pb2.BoolValue(value=expect), payload=zeros(size))

    with channel(port) as chan:
        error = rpc_error(stub(chan).StreamingInputCall, iter([message(True, 27182)]),
                          timeout=CALL_TIMEOUT)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
        # grpcio's Python API cannot clear compression for one message of a stream, so both
        # messages go compressed (the grpc-js case sends the second one uncompressed).
        response = stub(chan).StreamingInputCall(
            iter([message(True, 27182), message(True, 45904)]),
            timeout=CALL_TIMEOUT, compression=grpc.Compression.Gzip)
    assert response.aggregated_payload_size == 73086


async def test_client_compressed_streaming(sniffed):
    """grpcio client_compressed_streaming: the uncompressed probe is INVALID_ARGUMENT, a
    gzip stream checked message by message succeeds with aggregated size 73086 (the request
    flags checked on the wire too)."""
    proxy_port, sniffer = sniffed
    await in_thread(_client_compressed_streaming, proxy_port)
    assert request_flags(sniffer, STREAMING_INPUT_PATH) == [[False], [True, True]]


def assert_client_compressed_streaming_js(sniffer: Sniffer) -> None:
    assert request_flags(sniffer, STREAMING_INPUT_PATH) == [[False], [True, False]]


def _server_compressed_unary(port):
    with channel(port) as chan:
        for value in (True, False):
            response = stub(chan).UnaryCall(
                large_request(response_compressed=messages_pb2.BoolValue(value=value)),
                timeout=CALL_TIMEOUT)
            assert_payload(response.payload, 314159)


def assert_server_compressed_unary(sniffer: Sniffer) -> None:
    assert not sniffer.errors
    calls = sniffer.calls_to(UNARY_PATH)
    assert len(calls) == 2
    flags = [[compressed for compressed, _ in call.response_messages] for call in calls]
    assert flags == [[True], [False]], (
        f"compressed flags of the responses {flags}; grpc-encoding "
        f"{[call.header('grpc-encoding', response=True) for call in calls]}")


async def test_server_compressed_unary(sniffed):
    """grpcio server_compressed_unary: response_compressed true gives a response message with
    the compressed flag, false one without (seen on the wire)."""
    proxy_port, sniffer = sniffed
    await in_thread(_server_compressed_unary, proxy_port)
    assert_server_compressed_unary(sniffer)


def _server_compressed_streaming(port):
    request = messages_pb2.StreamingOutputCallRequest(response_parameters=[
        messages_pb2.ResponseParameters(compressed=messages_pb2.BoolValue(value=True),
                                        size=31415),
        messages_pb2.ResponseParameters(compressed=messages_pb2.BoolValue(value=False),
                                        size=92653),
    ])
    with channel(port) as chan:
        responses = list(stub(chan).StreamingOutputCall(request, timeout=CALL_TIMEOUT))
    assert len(responses) == 2
    assert_payload(responses[0].payload, 31415)
    assert_payload(responses[1].payload, 92653)


def assert_server_compressed_streaming(sniffer: Sniffer) -> None:
    assert not sniffer.errors
    calls = sniffer.calls_to(STREAMING_OUTPUT_PATH)
    assert len(calls) == 1
    flags = [compressed for compressed, _ in calls[0].response_messages]
    assert flags == [True, False], (
        f"compressed flags of the responses {flags}; grpc-encoding "
        f"{calls[0].header('grpc-encoding', response=True)!r}")


async def test_server_compressed_streaming(sniffed):
    """grpcio server_compressed_streaming: the first response is compressed, the second not
    (seen on the wire)."""
    proxy_port, sniffer = sniffed
    await in_thread(_server_compressed_streaming, proxy_port)
    assert_server_compressed_streaming(sniffer)


# --- grpc-js cases ---

GRPC_JS_CASES = [
    "empty_unary", "large_unary", "client_streaming", "server_streaming", "ping_pong",
    "empty_stream", "cancel_after_begin", "cancel_after_first_response",
    "timeout_on_sleeping_server", "custom_metadata", "status_code_and_message",
    "special_status_message", "status_message_reserved_characters", "unimplemented_method",
    "unimplemented_service",
    "client_compressed_unary", "client_compressed_streaming", "server_compressed_unary",
    "server_compressed_streaming",
]

#: Cases whose wire-level assertions the driver makes from the sniffer's records.
WIRE_CHECKS = {
    "client_compressed_unary": assert_client_compressed_unary,
    "client_compressed_streaming": assert_client_compressed_streaming_js,
    "server_compressed_unary": assert_server_compressed_unary,
    "server_compressed_streaming": assert_server_compressed_streaming,
}


def _run_grpc_js(port: int, case: str) -> dict:
    done = run_node(CLIENT_JS, "--port", str(port), "--case", case, timeout=NODE_TIMEOUT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, (
        f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    result = json.loads(lines[0])
    assert result["case"] == case
    assert done.returncode == (0 if result["ok"] else 1), done.stderr
    return result


@pytest.mark.parametrize("case", GRPC_JS_CASES)
async def test_grpc_js(case, port, nursery):
    """grpc-js runs one interop case against the edge and reports it passed (the compressed-
    response cases through the sniffer, whose records must show the compressed flags)."""
    target = port
    sniffer = None
    if case in WIRE_CHECKS:
        sniffer = Sniffer(port)
        target = await nursery.start(sniffer.serve)
    result = await in_thread(_run_grpc_js, target, case)
    assert result["ok"], result["detail"]
    if sniffer is not None:
        WIRE_CHECKS[case](sniffer)
