"""Fixed defects, each over real sockets: a client cancel is not an error, health answers during
a drain, UNAUTHENTICATED wins over an undecodable request on every method needing a token."""

from __future__ import annotations

import logging
import os

import grpc
import pytest
import trio
from purerpc import StatusCode

from anvil_trio._proto.anvil.v1 import bucket_pb2, object_pb2, object_pb2_grpc
from anvil_trio._proto.grpc.health.v1 import health_pb2
from anvil_trio.testing import bearer, code_of, open_test_server, rpc_error

MiB = 1 << 20

#: Bytes that never decode as any request message (a length-delimited field running past the end).
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f" + b"x" * 10


def _noisy_records(caplog) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.name.startswith("anvil_trio") and r.levelno >= logging.WARNING
    ]


# ---------------------------------------------------------------- 1. a cancel is not an error


async def test_client_cancelling_get_object_logs_no_error_and_the_server_serves_on(
    tmp_path, caplog
):
    """A grpcio client cancelling GetObject of a 16 MiB object after its first chunk makes the
    server log nothing at WARNING or above (no 'internal error'); the server keeps serving."""
    caplog.set_level(logging.DEBUG, logger="anvil_trio")
    data = os.urandom(16 * MiB)
    async with open_test_server(tmp_path) as ts:
        await ts.buckets.CreateBucket(
            bucket_pb2.CreateBucketRequest(bucket_name="bkt"), metadata=ts.metadata
        )
        await ts.put("bkt", "big", data, chunk_size=MiB)
        target = f"127.0.0.1:{ts.port}"

        def cancel_mid_stream(rounds: int) -> None:
            with grpc.insecure_channel(target) as channel:
                stub = object_pb2_grpc.ObjectServiceStub(channel)
                for _ in range(rounds):
                    call = stub.GetObject(
                        object_pb2.GetObjectRequest(bucket_name="bkt", object_key="big"),
                        metadata=ts.metadata, timeout=30,
                    )
                    assert next(call).WhichOneof("data") == "info"
                    assert next(call).WhichOneof("data") == "chunk"
                    call.cancel()
                    with pytest.raises(grpc.RpcError) as failed:
                        list(call)
                    assert failed.value.code() == grpc.StatusCode.CANCELLED

        await trio.to_thread.run_sync(cancel_mid_stream, 5)
        # Let the server finish every cancelled call before looking at the log.
        with trio.fail_after(10):
            while ts.server.edge.statistics().active_calls:
                await trio.sleep(0.01)
        _, got, _ = await ts.get("bkt", "big")
        assert got == data
        noisy = _noisy_records(caplog)
        assert noisy == [], [(r.levelname, r.getMessage()) for r in noisy]
        assert not [r for r in caplog.records if "internal error" in r.getMessage()]


# ---------------------------------------------------------------- 2. health during a drain


async def test_health_check_during_a_drain_is_not_serving_not_unavailable(tmp_path):
    """While the server drains (a long call still running), Health/Check on an open connection
    answers NOT_SERVING, Watch streams NOT_SERVING, and other calls get UNAVAILABLE."""
    async with open_test_server(tmp_path, config_overrides={"grace_period": 3.0}) as ts:
        edge = ts.server.edge
        health = ts.health
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        ended: list[StatusCode] = []

        async def long_call() -> None:
            # An Upload stream that never sends: it runs until the drain's grace ends.
            async def silent():
                await trio.sleep_forever()
                yield  # pragma: no cover

            try:
                async for _ in ts.uploads.Upload(silent(), metadata=ts.metadata):
                    pass  # pragma: no cover
            except Exception as exc:  # noqa: BLE001 - sorted out by rpc_error
                ended.append(rpc_error(exc).status.status_code)

        async def drain_shielded() -> None:
            # Shielded: a failing assertion must not cut the drain short (leaving would hang).
            with trio.CancelScope(shield=True):
                await edge.drain()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_call)
            with trio.fail_after(5):
                while edge.statistics().active_calls < 1:
                    await trio.sleep(0.01)
            nursery.start_soon(drain_shielded)
            with trio.fail_after(5):
                while edge.statistics().state != "draining":
                    await trio.sleep(0.01)
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watched = [r.status async for r in health.Watch(health_pb2.HealthCheckRequest())]
            assert watched == [health_pb2.HealthCheckResponse.NOT_SERVING]
            assert await code_of(
                ts.buckets.ListBuckets(bucket_pb2.ListBucketsRequest(), metadata=ts.metadata)
            ) == StatusCode.UNAVAILABLE
            assert edge.statistics().state == "draining"  # all of it within the grace
        # The grace ended: the long call was answered UNAVAILABLE, the drain completed.
        assert ended == [StatusCode.UNAVAILABLE]
        assert edge.statistics().state == "stopped"


# ---------------------------------------------------------------- 3. UNAUTHENTICATED wins

#: Every method that needs a token, by kind: (client streams, server streams).
_NEEDS_TOKEN = {
    "/anvil.v1.ObjectService/HeadObject": (False, False),
    "/anvil.v1.ObjectService/DeleteObject": (False, False),
    "/anvil.v1.ObjectService/ListObjects": (False, False),
    "/anvil.v1.ObjectService/ListObjectVersions": (False, False),
    "/anvil.v1.BucketService/CreateBucket": (False, False),
    "/anvil.v1.BucketService/DeleteBucket": (False, False),
    "/anvil.v1.BucketService/ListBuckets": (False, False),
    "/anvil.v1.BlobService/StatBlob": (False, False),
    "/anvil.v1.BlobService/DeleteBlob": (False, False),
    "/anvil.v1.ObjectService/GetObject": (False, True),
    "/anvil.v1.BlobService/GetBlob": (False, True),
    "/anvil.v1.BlobService/ListBlobs": (False, True),
    "/anvil.v1.ObjectService/PutObject": (True, False),
    "/anvil.v1.UploadService/Upload": (True, True),
}
_PUBLIC = {
    "/anvil.v1.AuthService/GetAccessToken": (False, False),
    "/grpc.health.v1.Health/Check": (False, False),
}


def _raw_code(channel: grpc.Channel, path: str, kind: tuple[bool, bool], metadata):
    """Send GARBAGE as the (first) request message of ``path``; the status code it ends with."""
    client_streams, server_streams = kind
    make = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[kind]
    call = make(path, request_serializer=None, response_deserializer=None)
    request = iter([GARBAGE]) if client_streams else GARBAGE
    try:
        reply = call(request, metadata=metadata, timeout=30)
        if server_streams:
            list(reply)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_unauthenticated_wins_over_an_undecodable_request(tmp_path):
    """Garbage request bytes: no token or a garbage token -> UNAUTHENTICATED, a valid token ->
    INVALID_ARGUMENT, for every method that needs a token (all four call kinds); methods that
    need none answer garbage INVALID_ARGUMENT whatever the token."""
    async with open_test_server(tmp_path) as ts:
        target = f"127.0.0.1:{ts.port}"
        cases = {
            "missing": (),
            "garbage": bearer("not.a.jwt"),
            "scheme": (("authorization", "Basic Zm9vOmJhcg=="),),
            "valid": ts.metadata,
        }

        def probe() -> dict[tuple[str, str], grpc.StatusCode]:
            found = {}
            with grpc.insecure_channel(target) as channel:
                for path, kind in {**_NEEDS_TOKEN, **_PUBLIC}.items():
                    for name, metadata in cases.items():
                        found[path, name] = _raw_code(channel, path, kind, metadata)
            return found

        found = await trio.to_thread.run_sync(probe)
        expected = {
            (path, name): (
                grpc.StatusCode.UNAUTHENTICATED
                if path in _NEEDS_TOKEN and name != "valid"
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            for path, name in found
        }
        wrong = {k: v for k, v in found.items() if v != expected[k]}
        assert wrong == {}
        assert len(found) == 4 * (len(_NEEDS_TOKEN) + len(_PUBLIC))
        # Public calls are still answered without a token.
        reply = await ts.health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (await ts.get_token(ts.client_id, ts.client_secret)).access_token


async def test_every_method_but_the_public_ones_requires_authentication(tmp_path):
    """The server's dispatcher has the authenticate hook, and exactly the methods API.md
    exempts (GetAccessToken, grpc.health.v1.*, grpc.reflection.* when served) are served
    without a token."""
    async with open_test_server(tmp_path) as ts:
        dispatcher = ts.server.edge._dispatcher
        assert dispatcher.authenticate is not None
        public = set()
        needs = set()
        for name, service in dispatcher.services.items():
            for method in service.methods:
                path = f"/{name}/{method}"
                (needs if dispatcher.requires_auth(name, method) else public).add(path)
        reflection = {p for p in public if p.startswith("/grpc.reflection.")}
        assert public - reflection == {
            "/anvil.v1.AuthService/GetAccessToken",
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
        }
        assert needs == set(_NEEDS_TOKEN)
