"""serve(): start order, health, draining, stopping in order, supervision, keys, config."""

from __future__ import annotations

import socket
import stat

import jwt
import purerpc
import pytest
import trio
from purerpc import StatusCode
from purerpc.wrappers import extract_message_from_singleton_stream

import anvil_trio
from anvil_trio import Config, Server, StorageFailedError, serve
from anvil_trio._proto.anvil.v1 import bucket_grpc, bucket_pb2, object_grpc, object_pb2
from anvil_trio._proto.grpc.health.v1 import health_grpc, health_pb2
from anvil_trio._schedule import Schedule
from anvil_trio._server import edge_config, storage_config
from anvil_trio.actors import SupervisorEscalationError, SupervisorState
from anvil_trio.auth import (
    KEY_FILE_NAME,
    Authenticator,
    Grants,
    KeyRing,
    TokenCodec,
    rotate_keyring,
)
from anvil_trio.rpc import EdgeConfig, EdgeServer
from anvil_trio.rpc._auth_service import StorageAppStore
from anvil_trio.rpc._common import ServiceContext
from anvil_trio.rpc._services import build_servicers
from anvil_trio.storage import StorageUnavailableError, run_storage
from anvil_trio.testing import (  # noqa: F401
    anvil_server,
    bearer,
    code_of,
    config_for_tests,
    open_test_server,
    put_messages,
    status_of,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
JWT_KEY = "k" * 40


def mint(config: Config, tenant: str = "t1") -> tuple[tuple[str, str], ...]:
    """Metadata with a token signed by the configured jwt_key (no app needed)."""
    codec = TokenCodec(KeyRing.from_secret(config.jwt_key), issuer=config.jwt_issuer)
    token, _ = codec.encode(client_id="app_test", tenant=tenant, scopes=Grants.parse(["*:*"]))
    return bearer(token)


async def wait_until(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_serve_starts_ready_and_stops_on_cancel(tmp_path):
    """started(port) comes with health SERVING and a 0600 key file; cancelling serve returns."""
    config = config_for_tests(tmp_path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, config)
            async with purerpc.insecure_channel("127.0.0.1", port) as channel:
                health = health_grpc.HealthStub(channel)
                reply = await health.Check(health_pb2.HealthCheckRequest())
                assert reply.status == SERVING
            key_file = config.data_dir / KEY_FILE_NAME
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            nursery.cancel_scope.cancel()
    assert anvil_trio.serve is serve and anvil_trio.Config is Config


async def test_health_is_not_serving_while_draining(tmp_path):
    """Draining: health NOT_SERVING, new calls UNAVAILABLE, a running put still finishes."""
    async with open_test_server(tmp_path, config_overrides={"grace_period": 30.0}) as ts:
        await ts.buckets.CreateBucket(bucket_pb2.CreateBucketRequest(bucket_name="bkt"),
                                      metadata=ts.metadata)
        watch = ts.health.Watch(health_pb2.HealthCheckRequest())
        assert (await watch.__anext__()).status == SERVING
        # A call that keeps the drain waiting: a put whose stream has not ended yet.
        stream = await ts.channel._grpc_socket.start_request(
            "http", "anvil.v1.ObjectService", "PutObject", "anvil.v1.PutObjectRequest",
            f"127.0.0.1:{ts.port}", custom_metadata=ts.metadata,
        )
        stream.expect_message_type(object_pb2.PutObjectResponse)
        messages = [m async for m in put_messages("bkt", "k", b"payload")]
        await stream.send_message(messages[0])
        await wait_until(lambda: ts.server.edge.statistics().active_calls == 2)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ts.server.stop)
                assert (await watch.__anext__()).status == NOT_SERVING
                assert ts.server.health.get("") == NOT_SERVING
                refused = ts.buckets.ListBuckets(bucket_pb2.ListBucketsRequest(),
                                                 metadata=ts.metadata)
                assert await code_of(refused) == StatusCode.UNAVAILABLE
                for message in messages[1:]:
                    await stream.send_message(message)
                await stream.close()
                reply = await extract_message_from_singleton_stream(stream)
                assert reply.size == len(b"payload")
        assert ts.server.edge.statistics().state == "stopped"


async def test_cancel_drains_running_calls_then_stops_storage_and_data_persists(tmp_path):
    """Cancelling serve finishes a running put, stops storage; a restart keeps data and keys."""
    config = config_for_tests(tmp_path, {"jwt_key": JWT_KEY, "grace_period": 10.0})
    metadata = mint(config)
    server = Server(config)
    scope = trio.CancelScope()

    async def run_server(*, task_status):
        with scope:
            await server.run(task_status=task_status)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(run_server)
            await server.storage.create_tenant("t1")
            await server.storage.create_bucket("t1", "bkt")
            assert not (config.data_dir / KEY_FILE_NAME).exists()
            async with purerpc.insecure_channel("127.0.0.1", port) as channel:
                stream = await channel._grpc_socket.start_request(
                    "http", "anvil.v1.ObjectService", "PutObject", "anvil.v1.PutObjectRequest",
                    f"127.0.0.1:{port}", custom_metadata=metadata,
                )
                stream.expect_message_type(object_pb2.PutObjectResponse)
                messages = [m async for m in put_messages("bkt", "late", b"abc" * 1000)]
                await stream.send_message(messages[0])
                await wait_until(lambda: server.edge.statistics().active_calls == 1)
                scope.cancel()
                await wait_until(lambda: server.health.get("") == NOT_SERVING)
                for message in messages[1:]:
                    await stream.send_message(message)
                await stream.close()
                reply = await extract_message_from_singleton_stream(stream)
                assert reply.size == 3000
    assert server.storage.statistics().state == SupervisorState.STOPPED
    async with open_test_server(tmp_path, config_overrides={"jwt_key": JWT_KEY}) as ts:
        info, data, _ = await ts.get("bkt", "late", metadata=metadata)
        assert (data, info.etag) == (b"abc" * 1000, reply.etag)


async def test_storage_escalation_makes_serve_raise(tmp_path):
    """A storage supervisor that escalates stops the server: run raises StorageFailedError."""
    server = Server(config_for_tests(tmp_path))
    with trio.fail_after(30):
        with pytest.RaisesGroup(StorageFailedError) as caught:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                for _ in range(400):
                    try:
                        await server.storage._write(object())  # not a message: a crash
                    except StorageUnavailableError:
                        await trio.sleep(0.02)
                raise AssertionError("storage never escalated")
    failure = caught.value.exceptions[0]
    assert isinstance(failure.__cause__, SupervisorEscalationError)
    assert server.health.get("") == NOT_SERVING
    assert server.edge.statistics().state == "stopped"


async def test_storage_restart_is_retried_transparently(anvil_server):
    """A call arriving while the metadata actor restarts is retried and succeeds."""
    ts = anvil_server
    with pytest.raises(StorageUnavailableError):
        await ts.storage._write(object())
    made = await ts.buckets.CreateBucket(bucket_pb2.CreateBucketRequest(bucket_name="after"),
                                         metadata=ts.metadata)
    assert made.name == "after"
    assert ts.storage.statistics().child("metadata").restarts >= 1


async def test_storage_down_past_the_retry_schedule_is_unavailable(tmp_path):
    """When storage stays unavailable longer than the retry schedule, calls get UNAVAILABLE."""
    ring = KeyRing.generate()
    token, _ = TokenCodec(ring).encode(client_id="app_x", tenant="t1",
                                       scopes=Grants.parse(["*:*"]))
    async with trio.open_nursery() as nursery:
        storage = await nursery.start(run_storage, storage_config(config_for_tests(tmp_path)))
        await storage.create_tenant("t1")
        await storage.stop()
        ctx = ServiceContext(
            storage=storage,
            auth=Authenticator(ring, StorageAppStore(storage)),
            retry_schedule=Schedule.spaced(0.01).up_to(0.1),
        )
        edge = EdgeServer(build_servicers(ctx), config=EdgeConfig(port=0, drain_grace=1.0))
        port = await nursery.start(edge.serve)
        async with purerpc.insecure_channel("127.0.0.1", port) as channel:
            stub = bucket_grpc.BucketServiceStub(channel)
            status = await status_of(stub.CreateBucket(
                bucket_pb2.CreateBucketRequest(bucket_name="bkt"), metadata=bearer(token)
            ))
        assert status.status_code == StatusCode.UNAVAILABLE
        await edge.drain()


async def test_rotated_key_file_is_picked_up(tmp_path):
    """Keys the admin rotates into the key file sign new tokens; old tokens stay valid."""
    async with open_test_server(tmp_path, config_overrides={"key_poll_interval": 0.05}) as ts:
        old_kid = ts.server.auth.keyring.signing_key.kid
        assert jwt.get_unverified_header(ts.token)["kid"] == old_kid
        path = ts.config.data_dir / KEY_FILE_NAME
        ring = await trio.to_thread.run_sync(rotate_keyring, path)
        new_kid = ring.signing_key.kid
        assert new_kid != old_kid
        await wait_until(lambda: ts.server.auth.keyring.signing_key.kid == new_kid)
        fresh = (await ts.get_token(ts.client_id, ts.client_secret)).access_token
        assert jwt.get_unverified_header(fresh)["kid"] == new_kid
        for token in (ts.token, fresh):
            listed = ts.buckets.ListBuckets(bucket_pb2.ListBucketsRequest(),
                                            metadata=bearer(token))
            assert await code_of(listed) == StatusCode.OK


async def test_busy_port_fails_the_start_without_hanging(tmp_path):
    """A port in use makes serve raise OSError before started, and storage is stopped."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        server = Server(config_for_tests(tmp_path, {"port": taken.getsockname()[1]}))
        with trio.fail_after(30):
            with pytest.raises(OSError):
                await server.run()
        assert server.storage.statistics().state == SupervisorState.STOPPED
        with pytest.raises(RuntimeError):
            await server.run()
    finally:
        taken.close()


async def test_stop_makes_run_return(tmp_path):
    """Server.stop() drains and stops storage, and run() returns normally."""
    server = Server(config_for_tests(tmp_path))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await server.stop()
    assert server.storage.statistics().state == SupervisorState.STOPPED


def test_derived_storage_and_edge_configs(tmp_path):
    """Config fields reach the storage and edge configs they belong to."""
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    config = Config(
        data_dir=tmp_path / "d", host="::1", port=1234, reuse_port=True,
        tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem",
        tls_client_ca=tmp_path / "ca.pem", max_message_bytes=8 << 20,
        max_concurrent_calls=7, grace_period=3.5, dev_mode=True,
        max_object_bytes=None, upload_expiry=60.0, reaper_interval=7.0, direct_io=False,
    )
    sc = storage_config(config)
    assert (sc.data_dir, sc.max_object_size, sc.upload_ttl, sc.reaper_interval, sc.fsync,
            sc.direct_io) == (tmp_path / "d", None, 60.0, 7.0, True, False)
    assert storage_config(Config(data_dir=tmp_path)).direct_io
    ec = edge_config(config)
    assert (ec.host, ec.port, ec.reuse_port, ec.max_request_message_bytes) == (
        "::1", 1234, True, 8 << 20
    )
    assert (ec.max_concurrent_calls, ec.drain_grace, ec.dev_mode) == (7, 3.5, True)
    assert ec.tls.require_client_cert and ec.tls.client_ca_file == tmp_path / "ca.pem"
    plain = edge_config(Config(data_dir=tmp_path))
    assert plain.tls is None and not plain.dev_mode


async def test_testing_server_stubs_and_helpers(anvil_server):
    """The test server exposes working stubs for every service and a channel per call site."""
    ts = anvil_server
    assert ts.address == ("127.0.0.1", ts.port) and ts.token and ts.client_id
    assert (await ts.health.Check(health_pb2.HealthCheckRequest())).status == SERVING
    async with ts.open_channel() as channel:
        stub = object_grpc.ObjectServiceStub(channel)
        listed = stub.ListObjects(object_pb2.ListObjectsRequest(bucket_name="nothere"),
                                  metadata=ts.metadata)
        assert await code_of(listed) == StatusCode.NOT_FOUND
    other_token = await ts.token_for(["list:bucket:*"], tenant="other")
    claims = jwt.decode(other_token, options={"verify_signature": False})
    assert claims["tid"] == "other" and claims["scope"] == "list:bucket:*"
