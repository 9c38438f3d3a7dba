"""The gRPC edge over real sockets on 127.0.0.1, with purerpc and grpcio clients."""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import re
import socket
import ssl
import subprocess
import sys

import purerpc
import grpc
import pytest
import trio
from purerpc import Status, StatusCode
from purerpc.grpclib.exceptions import RpcFailedError
from purerpc.wrappers import extract_message_from_singleton_stream

from anvil_trio import _codegen
from anvil_trio._proto.grpc.health.v1 import health_grpc, health_pb2
from anvil_trio.rpc import (
    DEFAULT_STATUS_TABLE,
    EdgeConfig,
    EdgeServer,
    HealthState,
    TLSConfig,
    status_for_exception,
)
from anvil_trio.storage import NotFoundError, QuotaExceededError, StorageIOError


_ECHO_PROTO = """
syntax = "proto3";
package edgetest.v1;
message Ping { string action = 1; bytes payload = 2; double seconds = 3; int32 count = 4; }
message Pong { string text = 1; bytes payload = 2; int32 index = 3; }
service Echo {
  rpc Unary(Ping) returns (Pong);
  rpc ServerStream(Ping) returns (stream Pong);
  rpc ClientStream(stream Ping) returns (Pong);
  rpc Bidi(stream Ping) returns (stream Pong);
}
"""

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def echo(tmp_path_factory):
    """Generate the test-only Echo proto with the project's codegen and import it."""
    root = tmp_path_factory.mktemp("echo")
    protos = root / "protos" / "edgetest" / "v1"
    protos.mkdir(parents=True)
    (protos / "echo.proto").write_text(_ECHO_PROTO)
    _codegen.generate(root / "edgetest_pkg", proto_root=root / "protos", package="edgetest_pkg")
    sys.path.insert(0, str(root))
    try:
        from edgetest_pkg.edgetest.v1 import echo_grpc, echo_pb2, echo_pb2_grpc
    finally:
        sys.path.remove(str(root))

    class Echo:
        pb2 = echo_pb2
        grpc_mod = echo_grpc
        pb2_grpc = echo_pb2_grpc

    return Echo


def make_servicer(echo):
    pb2 = echo.pb2

    class EchoServicer(echo.grpc_mod.EchoServicer):
        def __init__(self):
            self.cancelled = trio.Event()
            self.release = trio.Event()
            self.running = 0

        async def act(self, ping, request):
            action = ping.action
            if action == "echo":
                return pb2.Pong(text="echo", payload=ping.payload)
            if action == "sleep":
                try:
                    await trio.sleep(ping.seconds)
                except trio.Cancelled:
                    self.cancelled.set()
                    raise
                return pb2.Pong(text="slept")
            if action == "block":
                self.running += 1
                try:
                    await self.release.wait()
                finally:
                    self.running -= 1
                return pb2.Pong(text="released")
            if action == "notfound":
                raise NotFoundError("bucket 'b' does not exist")
            if action == "quota":
                raise QuotaExceededError("tenant quota exceeded")
            if action == "denied":
                raise purerpc.PermissionDeniedError("scope missing")
            if action == "rpc-cancelled":
                raise purerpc.CancelledError("stop")
            if action == "unexpected":
                raise RuntimeError("secret <object at 0xdeadbeef>")
            if action == "io":
                raise StorageIOError("/var/secret/path: EIO")
            if action == "group":
                raise ExceptionGroup("several", [RuntimeError("secret"), NotFoundError("gone")])
            if action == "metadata":
                request.trailing_metadata.append(("x-reply", "trailer"))
                return pb2.Pong(text=request.metadata("x-test", "-"))
            if action == "bad-initial-metadata":
                request.initial_metadata.append(("X-Upper", "v"))
                return pb2.Pong(text="never sent")
            if action == "bad-trailing-metadata":
                request.trailing_metadata.append(("x-reply", "line\r\nbreak"))
                return pb2.Pong(text="never sent")
            raise AssertionError(action)

        async def Unary(self, ping, request):  # noqa: N802
            return await self.act(ping, request)

        async def ServerStream(self, ping, request):  # noqa: N802
            for index in range(ping.count):
                yield pb2.Pong(index=index, payload=ping.payload)
            if ping.action != "echo":
                yield await self.act(ping, request)

        async def ClientStream(self, pings, request):  # noqa: N802
            count = total = 0
            async for ping in pings:
                count += 1
                total += len(ping.payload)
                if ping.action != "echo":
                    await self.act(ping, request)
            return pb2.Pong(index=count, text=str(total))

        async def Bidi(self, pings, request):  # noqa: N802
            async for ping in pings:
                yield await self.act(ping, request)

    return EchoServicer()


@contextlib.asynccontextmanager
async def running(services, *, ssl_context=None, health=None, **config):
    server = EdgeServer(
        services, config=EdgeConfig(port=0, **config), ssl_context=ssl_context, health=health
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            await server.drain(grace=0.5)


def rpc_error(exc: BaseException) -> RpcFailedError:
    """The purerpc status error inside whatever (possibly grouped) exception the client raised."""
    if isinstance(exc, RpcFailedError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            with contextlib.suppress(LookupError):
                return rpc_error(inner)
    raise LookupError(repr(exc))


async def purerpc_call(coro) -> Status:
    try:
        await coro
    except BaseException as exc:  # noqa: BLE001 - sorted out by rpc_error
        return rpc_error(exc).status
    return Status(StatusCode.OK)


async def in_thread(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


def grpcio_status(fn):
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


async def wait_until(predicate, timeout=10.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# ---------------------------------------------------------------- listening


async def test_binds_only_the_configured_host_with_port_zero_and_no_reuseport(echo):
    """Port 0 yields a real port bound on 127.0.0.1 only, without SO_REUSEPORT."""
    async with running([make_servicer(echo)]) as server:
        assert server.port and server.address == ("127.0.0.1", server.port)
        sock = server.listen_socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        rival = socket.socket()
        rival.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError) as info:
            rival.bind(("127.0.0.1", server.port))
        rival.close()
        assert info.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.2", server.port)


async def test_reuse_port_is_an_explicit_option(echo):
    """reuse_port=True sets SO_REUSEPORT on the listening socket."""
    async with running([make_servicer(echo)], reuse_port=True) as server:
        assert server.listen_socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1


# ---------------------------------------------------------------- call kinds


async def test_all_four_call_kinds_with_purerpc_client(echo):
    """Unary, server-, client- and bidi-streaming calls work with metadata both ways."""
    pb2 = echo.pb2
    async with running([make_servicer(echo)]) as server:
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = echo.grpc_mod.EchoStub(channel)
            reply = await stub.Unary(pb2.Ping(action="metadata"), metadata=[("x-test", "hi")])
            assert reply.text == "hi"
            got = [p.index async for p in stub.ServerStream(pb2.Ping(action="echo", count=3))]
            assert got == [0, 1, 2]

            async def pings():
                for _ in range(4):
                    yield pb2.Ping(action="echo", payload=b"ab")

            reply = await stub.ClientStream(pings())
            assert (reply.index, reply.text) == (4, "8")
            got = [p.payload async for p in stub.Bidi(pings())]
            assert got == [b"ab"] * 4


async def test_all_four_call_kinds_with_grpcio_client(echo):
    """The official grpcio client talks to the edge for all call kinds, reading trailers."""
    pb2 = echo.pb2
    async with running([make_servicer(echo)]) as server:

        def client():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = echo.pb2_grpc.EchoStub(channel)
                reply, call = stub.Unary.with_call(
                    pb2.Ping(action="metadata"), metadata=[("x-test", "yo")], timeout=10
                )
                assert reply.text == "yo"
                assert ("x-reply", "trailer") in tuple(call.trailing_metadata())
                got = [p.index for p in stub.ServerStream(pb2.Ping(action="echo", count=3))]
                assert got == [0, 1, 2]
                many = [pb2.Ping(action="echo", payload=b"xyz")] * 5
                assert stub.ClientStream(iter(many), timeout=10).index == 5
                assert len(list(stub.Bidi(iter(many), timeout=10))) == 5

        await in_thread(client)


# ---------------------------------------------------------------- deadlines


async def test_deadline_enforced_for_purerpc_client(echo):
    """A grpc-timeout sent by the client cancels the handler and answers DEADLINE_EXCEEDED."""
    pb2 = echo.pb2
    servicer = make_servicer(echo)
    async with running([servicer]) as server:
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            # purerpc's stubs cannot send grpc-timeout; its socket API can.
            stream = await channel._grpc_socket.start_request(
                "http", "edgetest.v1.Echo", "Unary", "edgetest.v1.Ping",
                f"127.0.0.1:{server.port}", timeout=datetime.timedelta(seconds=0.3),
            )
            stream.expect_message_type(pb2.Pong)
            await stream.send_message(pb2.Ping(action="sleep", seconds=30))
            await stream.close()
            with trio.fail_after(10):
                status = await purerpc_call(extract_message_from_singleton_stream(stream))
        assert status.status_code == StatusCode.DEADLINE_EXCEEDED
        assert servicer.cancelled.is_set()


async def test_expired_grpc_timeout_is_deadline_exceeded_without_running_the_handler(echo):
    """A zero grpc-timeout answers DEADLINE_EXCEEDED without entering the handler (a tiny one
    answers it too); the connection then serves the next call normally."""
    pb2 = echo.pb2
    servicer = make_servicer(echo)
    entered = []
    client_stream = servicer.ClientStream

    async def counting_client_stream(pings, request):
        entered.append(request.timeout)  # before any checkpoint: counts every entry
        return await client_stream(pings, request)

    servicer.ClientStream = counting_client_stream
    async with running([servicer]) as server:
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:

            async def client_stream_call(timeout):
                # purerpc's stubs cannot send grpc-timeout; its socket API can (0 s is "0S").
                stream = await channel._grpc_socket.start_request(
                    "http", "edgetest.v1.Echo", "ClientStream", "edgetest.v1.Ping",
                    f"127.0.0.1:{server.port}", timeout=timeout,
                )
                stream.expect_message_type(pb2.Pong)
                await stream.send_message(pb2.Ping(action="echo", payload=b"x"))
                await stream.close()
                with trio.fail_after(10):
                    return await purerpc_call(extract_message_from_singleton_stream(stream))

            expired = await client_stream_call(datetime.timedelta(0))
            assert expired.status_code == StatusCode.DEADLINE_EXCEEDED, expired
            assert entered == []
            tiny = await client_stream_call(datetime.timedelta(microseconds=1))
            assert tiny.status_code == StatusCode.DEADLINE_EXCEEDED, tiny
            served = await client_stream_call(None)
            assert served.status_code == StatusCode.OK, served
            assert entered[-1] is None


async def test_deadline_for_grpcio_client_cancels_the_handler(echo):
    """With grpcio's timeout the client sees DEADLINE_EXCEEDED and the handler is cancelled."""
    pb2 = echo.pb2
    servicer = make_servicer(echo)
    async with running([servicer]) as server:

        def client():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = echo.pb2_grpc.EchoStub(channel)
                return grpcio_status(
                    lambda: stub.Unary(pb2.Ping(action="sleep", seconds=30), timeout=0.3)
                )

        code, _ = await in_thread(client)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        with trio.fail_after(10):
            await servicer.cancelled.wait()


async def test_client_cancel_cancels_the_handler(echo):
    """A call the client cancels (RST_STREAM) cancels its handler on the server."""
    pb2 = echo.pb2
    servicer = make_servicer(echo)
    async with running([servicer]) as server:

        def client():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = echo.pb2_grpc.EchoStub(channel)
                future = stub.Unary.future(pb2.Ping(action="sleep", seconds=30))
                trio.from_thread.run(wait_until, lambda: server.statistics().active_calls == 1)
                future.cancel()
                # Keep the channel open: only the stream reset may cancel the handler.
                trio.from_thread.run(wait_until, servicer.cancelled.is_set)
                trio.from_thread.run(wait_until, lambda: server.statistics().active_calls == 0)
                return server.statistics().connections

        assert await in_thread(client) == 1


# ---------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("action", "code", "message"),
    [
        ("notfound", grpc.StatusCode.NOT_FOUND, "bucket 'b' does not exist"),
        ("quota", grpc.StatusCode.RESOURCE_EXHAUSTED, "tenant quota exceeded"),
        ("denied", grpc.StatusCode.PERMISSION_DENIED, "scope missing"),
        ("group", grpc.StatusCode.NOT_FOUND, "gone"),
    ],
)
async def test_known_errors_map_to_their_codes(echo, action, code, message):
    """Domain errors, purerpc status errors and exception groups get the table's code."""
    pb2 = echo.pb2
    async with running([make_servicer(echo)]) as server:

        def client():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = echo.pb2_grpc.EchoStub(channel)
                unary = grpcio_status(lambda: stub.Unary(pb2.Ping(action=action), timeout=10))
                streamed = grpcio_status(
                    lambda: list(stub.ServerStream(pb2.Ping(action=action, count=2), timeout=10))
                )
                return unary, streamed

        unary, streamed = await in_thread(client)
        assert unary == (code, message)
        assert streamed == (code, message)


@pytest.mark.parametrize("action", ["unexpected", "io", "rpc-cancelled"])
async def test_unexpected_errors_are_internal_with_only_a_correlation_id(echo, caplog, action):
    """Unexpected errors give INTERNAL, a correlation id, no repr; the log has the traceback."""
    pb2 = echo.pb2
    caplog.set_level(logging.ERROR, logger="anvil_trio.rpc")
    async with running([make_servicer(echo)]) as server:
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = echo.grpc_mod.EchoStub(channel)
            status = await purerpc_call(stub.Unary(pb2.Ping(action=action)))
    assert status.status_code == StatusCode.INTERNAL
    match = re.fullmatch(r"internal error \(correlation id ([0-9a-f]{16})\)", status.status_message)
    assert match, status.status_message
    records = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert records and records[0].exc_info is not None


@pytest.mark.parametrize("action", ["bad-initial-metadata", "bad-trailing-metadata"])
async def test_invalid_response_metadata_is_internal_and_the_connection_lives(echo, caplog, action):
    """Response metadata a handler got wrong (uppercase name, CR LF in a value) is never put on
    the wire: the call is INTERNAL with a correlation id and the connection keeps serving."""
    pb2 = echo.pb2
    caplog.set_level(logging.ERROR, logger="anvil_trio.rpc")
    async with running([make_servicer(echo)]) as server:
        def client():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = echo.pb2_grpc.EchoStub(channel)
                bad = grpcio_status(lambda: stub.Unary(pb2.Ping(action=action), timeout=10))
                good = stub.Unary(pb2.Ping(action="echo", payload=b"ok"), timeout=10)
                return bad, good

        (code, details), good = await in_thread(client)
    assert code == grpc.StatusCode.INTERNAL
    assert re.fullmatch(r"internal error \(correlation id [0-9a-f]{16}\)", details), details
    assert good.payload == b"ok"



async def test_dev_mode_puts_detail_into_internal_messages(echo):
    """With dev_mode the INTERNAL message carries the exception text and traceback."""
    pb2 = echo.pb2
    async with running([make_servicer(echo)], dev_mode=True) as server:
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = echo.grpc_mod.EchoStub(channel)
            status = await purerpc_call(stub.Unary(pb2.Ping(action="unexpected")))
    assert status.status_code == StatusCode.INTERNAL
    assert "RuntimeError: secret" in status.status_message
    assert "Traceback" in status.status_message


def test_status_table_covers_storage_errors_and_group_priority():
    """Every storage error has one code; groups pick by API priority; CANCELLED never leaks."""
    from anvil_trio.storage import _errors

    for name in _errors.__all__:
        klass = getattr(_errors, name)
        if klass is _errors.StorageError:
            continue
        assert DEFAULT_STATUS_TABLE.lookup(klass("m")) is not None, name
    group = ExceptionGroup("g", [NotFoundError("nf"), _errors.InvalidArgumentError("bad")])
    assert status_for_exception(group).status_code == StatusCode.INVALID_ARGUMENT
    cancelled = status_for_exception(purerpc.CancelledError("x"))
    assert cancelled.status_code == StatusCode.INTERNAL
    assert "CancelledError" not in cancelled.status_message


# ---------------------------------------------------------------- message limits


async def test_oversized_message_from_grpcio_fails_only_its_call(echo):
    """A 40 MiB request gets RESOURCE_EXHAUSTED; calls on the same channel keep working."""
    pb2 = echo.pb2
    async with running([make_servicer(echo)]) as server:

        def client():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = echo.pb2_grpc.EchoStub(channel)
                stream = stub.ServerStream(pb2.Ping(action="echo", count=2), timeout=20)
                first = next(stream)
                big = grpcio_status(
                    lambda: stub.Unary(pb2.Ping(action="echo", payload=b"x" * (40 * MiB)),
                                       timeout=20)
                )
                rest = [p.index for p in stream]
                fits = stub.Unary(pb2.Ping(action="echo", payload=b"y" * (4 * MiB - 64)),
                                  timeout=20)
                again = stub.Unary(pb2.Ping(action="echo", payload=b"ok"), timeout=20)
                # Every byte of the refused message was handed back to flow control.
                trio.from_thread.run(
                    wait_until, lambda: server.statistics().unacknowledged_bytes == 0
                )
                return first.index, big, rest, len(fits.payload), again.payload

        first, big, rest, fits, again = await in_thread(client)
        assert big[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exceeds the limit of 4194304 bytes" in big[1]
        assert (first, rest, fits, again) == (0, [1], 4 * MiB - 64, b"ok")


async def test_oversized_message_from_purerpc_fails_only_its_call(echo):
    """A 5 MiB request from purerpc gets RESOURCE_EXHAUSTED on a connection that stays usable."""
    pb2 = echo.pb2
    async with running([make_servicer(echo)]) as server:
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = echo.grpc_mod.EchoStub(channel)
            status = await purerpc_call(stub.Unary(pb2.Ping(payload=b"z" * (5 * MiB))))
            assert status.status_code == StatusCode.RESOURCE_EXHAUSTED
            reply = await stub.Unary(pb2.Ping(action="echo", payload=b"fine"))
            assert reply.payload == b"fine"


async def test_message_limit_is_configurable_upwards(echo):
    """With an 8 MiB limit a 6 MiB request is served."""
    pb2 = echo.pb2
    async with running([make_servicer(echo)], max_request_message_bytes=8 * MiB) as server:
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = echo.grpc_mod.EchoStub(channel)
            reply = await stub.ClientStream(_aiter([pb2.Ping(action="echo", payload=b"q" * 6 * MiB)]))
            assert reply.text == str(6 * MiB)
    with pytest.raises(ValueError):
        EdgeConfig(max_request_message_bytes=MiB)


async def _aiter(items):
    for item in items:
        yield item


async def test_gzip_request_from_grpcio_is_served_and_connection_survives(echo):
    """A gzip-compressed request is inflated and served (see test_compression); the channel
    works on for plain calls."""
    pb2 = echo.pb2
    async with running([make_servicer(echo)]) as server:

        def client():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = echo.pb2_grpc.EchoStub(channel)
                zipped = stub.Unary(pb2.Ping(action="echo", payload=b"a" * 5000), timeout=10,
                                    compression=grpc.Compression.Gzip)
                plain = stub.Unary(pb2.Ping(action="echo", payload=b"b"), timeout=10)
                return zipped.payload, plain.payload

        zipped, plain = await in_thread(client)
        assert zipped == b"a" * 5000
        assert plain == b"b"


async def test_garbage_request_bytes_are_invalid_argument(echo):
    """Bytes that do not decode as the request type give INVALID_ARGUMENT; serving goes on."""
    pb2 = echo.pb2
    async with running([make_servicer(echo)]) as server:

        def client():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                raw = channel.unary_unary(
                    "/edgetest.v1.Echo/Unary",
                    request_serializer=lambda b: b,
                    response_deserializer=pb2.Pong.FromString,
                )
                bad = grpcio_status(lambda: raw(b"\xff\xff\xff\xff\xff", timeout=10))
                stub = echo.pb2_grpc.EchoStub(channel)
                good = stub.Unary(pb2.Ping(action="echo", payload=b"c"), timeout=10)
                return bad, good.payload

        (code, details), good = await in_thread(client)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not decode" in details
        assert good == b"c"


async def test_garbage_on_the_wire_closes_only_that_connection(echo):
    """A peer that does not speak HTTP/2 is disconnected; the server serves the next client."""
    pb2 = echo.pb2
    async with running([make_servicer(echo)]) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00garbage" * 100)
        with trio.fail_after(10):
            while await stream.receive_some(65536):
                pass
        await stream.aclose()
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            reply = await echo.grpc_mod.EchoStub(channel).Unary(pb2.Ping(action="echo"))
            assert reply.text == "echo"


# ---------------------------------------------------------------- concurrency


async def test_concurrency_limit_answers_resource_exhausted(echo):
    """Past max_concurrent_calls a call gets RESOURCE_EXHAUSTED; after release calls work."""
    pb2 = echo.pb2
    servicer = make_servicer(echo)
    async with running([servicer], max_concurrent_calls=3, connection_call_share=1.0) as server:
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = echo.grpc_mod.EchoStub(channel)
            results = []
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(
                        lambda: _collect(results, stub.Unary(pb2.Ping(action="block")))
                    )
                await wait_until(lambda: servicer.running == 3)
                status = await purerpc_call(stub.Unary(pb2.Ping(action="echo")))
                assert status.status_code == StatusCode.RESOURCE_EXHAUSTED
                servicer.release.set()
            assert results == ["released"] * 3
            assert (await stub.Unary(pb2.Ping(action="echo"))).text == "echo"
            assert server.statistics().calls_refused == 1


async def _collect(results, coro):
    results.append((await coro).text)


async def test_at_least_100_concurrent_calls_are_served(echo):
    """With default limits 120 calls run at once and all succeed."""
    pb2 = echo.pb2
    servicer = make_servicer(echo)
    async with running([servicer]) as server:
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = echo.grpc_mod.EchoStub(channel)
            results = []
            async with trio.open_nursery() as nursery:
                for _ in range(120):
                    nursery.start_soon(
                        lambda: _collect(results, stub.Unary(pb2.Ping(action="block")))
                    )
                await wait_until(lambda: servicer.running == 120, timeout=30)
                servicer.release.set()
            assert results == ["released"] * 120


# ---------------------------------------------------------------- drain and health


async def test_drain_lets_an_inflight_call_finish_then_stops(echo):
    """drain() refuses new calls, lets the running call complete, then serve() returns."""
    pb2 = echo.pb2
    servicer = make_servicer(echo)
    server = EdgeServer([servicer], config=EdgeConfig(port=0))
    results = []
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = echo.grpc_mod.EchoStub(channel)
            nursery.start_soon(lambda: _collect(results, stub.Unary(pb2.Ping(action="block"))))
            await wait_until(lambda: servicer.running == 1)
            nursery.start_soon(server.drain, 10.0)
            await wait_until(lambda: server.statistics().state == "draining")
            refused = await purerpc_call(stub.Unary(pb2.Ping(action="echo")))
            assert refused.status_code == StatusCode.UNAVAILABLE
            servicer.release.set()
            await wait_until(lambda: server.statistics().state == "stopped")
    assert results == ["released"]
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", server.port)


async def test_drain_cancels_calls_after_the_grace_period(echo):
    """A call still running when the grace runs out is cancelled and answered UNAVAILABLE."""
    pb2 = echo.pb2
    servicer = make_servicer(echo)
    server = EdgeServer([servicer], config=EdgeConfig(port=0, drain_grace=0.3))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = echo.grpc_mod.EchoStub(channel)
            statuses = []

            async def call():
                statuses.append(await purerpc_call(stub.Unary(pb2.Ping(action="sleep", seconds=30))))

            nursery.start_soon(call)
            await wait_until(lambda: server.statistics().active_calls == 1)
            with trio.fail_after(10):
                await server.drain()
            await wait_until(lambda: statuses)
    assert statuses[0].status_code == StatusCode.UNAVAILABLE
    assert servicer.cancelled.is_set()


async def test_cancelling_serve_drains_gracefully(echo):
    """Cancelling the task running serve() still lets the in-flight call finish."""
    pb2 = echo.pb2
    servicer = make_servicer(echo)
    server = EdgeServer([servicer], config=EdgeConfig(port=0))
    results = []
    async with trio.open_nursery() as outer:
        serve_scope = trio.CancelScope()

        async def serve_until_cancelled(task_status=trio.TASK_STATUS_IGNORED):
            with serve_scope:
                await server.serve(task_status=task_status)

        await outer.start(serve_until_cancelled)
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = echo.grpc_mod.EchoStub(channel)
            outer.start_soon(lambda: _collect(results, stub.Unary(pb2.Ping(action="sleep", seconds=0.3))))
            await wait_until(lambda: server.statistics().active_calls == 1)
            serve_scope.cancel()
            await wait_until(lambda: server.statistics().state == "stopped")
    assert results == ["slept"]


async def test_health_reports_readiness_and_draining(echo):
    """Health is NOT_SERVING until set ready, SERVING then, and NOT_SERVING once draining."""
    health = HealthState()
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    async with running([make_servicer(echo)], health=health) as server:
        async with purerpc.insecure_channel("127.0.0.1", server.port) as channel:
            stub = health_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()
            assert (await stub.Check(request)).status == not_serving
            seen = []
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:

                    async def watch():
                        async for reply in stub.Watch(request):
                            seen.append(reply.status)

                    nursery.start_soon(watch)
                    await wait_until(lambda: seen == [not_serving])
                    health.set_serving()
                    assert (await stub.Check(request)).status == serving
                    await wait_until(lambda: seen == [not_serving, serving])
                    nursery.start_soon(server.drain, 5.0)
            assert seen == [not_serving, serving, not_serving]
    health.set_serving()
    assert health.get() == not_serving


# ---------------------------------------------------------------- TLS


def _self_signed(folder, name):
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_tls_with_self_signed_certificate_and_client_certs(echo, tmp_path):
    """TLS (ALPN h2) serves grpcio and purerpc clients; required client certs are enforced."""
    pb2 = echo.pb2
    server_cert, server_key = _self_signed(tmp_path, "server")
    client_cert, client_key = _self_signed(tmp_path, "client")
    tls = TLSConfig(certfile=server_cert, keyfile=server_key, client_ca_file=client_cert,
                    require_client_cert=True)
    async with running([make_servicer(echo)], tls=tls, handshake_timeout=5) as server:

        def client(with_cert):
            creds = grpc.ssl_channel_credentials(
                root_certificates=server_cert.read_bytes(),
                private_key=client_key.read_bytes() if with_cert else None,
                certificate_chain=client_cert.read_bytes() if with_cert else None,
            )
            with grpc.secure_channel(f"127.0.0.1:{server.port}", creds) as channel:
                stub = echo.pb2_grpc.EchoStub(channel)
                return grpcio_status(lambda: stub.Unary(pb2.Ping(action="echo"), timeout=5))

        assert (await in_thread(client, True))[0] == grpc.StatusCode.OK
        assert (await in_thread(client, False))[0] == grpc.StatusCode.UNAVAILABLE

        context = ssl.create_default_context(cafile=str(server_cert))
        context.load_cert_chain(client_cert, client_key)
        context.set_alpn_protocols(["h2"])
        async with purerpc.secure_channel("127.0.0.1", server.port, context) as channel:
            reply = await echo.grpc_mod.EchoStub(channel).Unary(pb2.Ping(action="echo"))
            assert reply.text == "echo"
