"""The official grpcio client against ``anvil-trio serve`` running as a separate process."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from anvil_trio._proto.anvil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    blob_pb2,
    blob_pb2_grpc,
    bucket_pb2,
    bucket_pb2_grpc,
    object_pb2,
    object_pb2_grpc,
    upload_pb2,
    upload_pb2_grpc,
)
from anvil_trio._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

grpc = pytest.importorskip("grpc")

MiB = 1 << 20
CLI = [sys.executable, "-c", "import sys; from anvil_trio._cli import main; sys.exit(main())"]
START_TIMEOUT = 60.0
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def admin(data_dir: Path, *args: str) -> str:
    """Run ``anvil-trio admin --data-dir D ...`` and return its stdout."""
    done = subprocess.run([*CLI, "admin", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


class ServerProcess:
    """``anvil-trio serve`` on 127.0.0.1 with a free port, a tenant and an app granted ``*:*``."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        admin(data_dir, "tenant", "create", "t1")
        creds = json.loads(admin(data_dir, "app", "create", "--tenant", "t1", "--name", "interop",
                                 "--json"))
        self.client_id, self.client_secret = creds["client_id"], creds["client_secret"]
        admin(data_dir, "policy", "grant", "--app", self.client_id, "*:*")
        self.log = open(data_dir.parent / f"{data_dir.name}-server.log", "wb")
        self.process = subprocess.Popen(
            [*CLI, "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
             "--log-level", "warning", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.append(self.process.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        match = _LISTENING.search(found[0]) if found else None
        if match is None:
            self.stop()
            raise AssertionError(f"server did not report listening: {found!r}")
        return int(match.group(2))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGINT (graceful drain), then kill if it does not exit within 15 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One plaintext server process for the module (always stopped at the end)."""
    proc = ServerProcess(tmp_path_factory.mktemp("interop") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def open_channel(server_proc, **options):
    channel = grpc.insecure_channel(f"127.0.0.1:{server_proc.port}", options=list(options.items()))
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel
    finally:
        channel.close()


def token_for(channel, server_proc) -> tuple[tuple[str, str], ...]:
    reply = auth_pb2_grpc.AuthServiceStub(channel).GetAccessToken(
        auth_pb2.GetAccessTokenRequest(client_id=server_proc.client_id,
                                       client_secret=server_proc.client_secret),
        timeout=30,
    )
    assert reply.token_type == "Bearer" and reply.expires_in > 0
    return (("authorization", f"Bearer {reply.access_token}"),)


def code_of(fn) -> "grpc.StatusCode":
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def put_requests(bucket: str, key: str, data: bytes, chunk: int = MiB):
    yield object_pb2.PutObjectRequest(
        metadata=object_pb2.ObjectMetadata(bucket_name=bucket, object_key=key,
                                           content_length=len(data)))
    for start in range(0, len(data), chunk):
        yield object_pb2.PutObjectRequest(chunk=data[start:start + chunk])


def still_serving(channel, metadata, bucket="interop") -> None:
    """The server (and this channel) still answer: Health SERVING and a HeadObject."""
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    code = code_of(lambda: object_pb2_grpc.ObjectServiceStub(channel).HeadObject(
        object_pb2.HeadObjectRequest(bucket_name=bucket, object_key="absent"),
        metadata=metadata, timeout=30))
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def ready(server):
    """A channel, a token and a bucket ``interop`` on the module's server."""
    with open_channel(server, **{"grpc.max_send_message_length": 64 * MiB}) as channel:
        metadata = token_for(channel, server)
        bucket_pb2_grpc.BucketServiceStub(channel).CreateBucket(
            bucket_pb2.CreateBucketRequest(bucket_name="interop"), metadata=metadata, timeout=30)
        yield channel, metadata


# ---------------------------------------------------------------- the four call kinds


def test_unary_calls(server, ready):
    """GetAccessToken, CreateBucket and HeadObject work; errors carry their codes."""
    channel, metadata = ready
    buckets = bucket_pb2_grpc.BucketServiceStub(channel)
    made = buckets.CreateBucket(bucket_pb2.CreateBucketRequest(bucket_name="unary-b"),
                                metadata=metadata, timeout=30)
    assert made.name == "unary-b" and made.created_at.seconds > 0
    assert code_of(lambda: buckets.CreateBucket(bucket_pb2.CreateBucketRequest(
        bucket_name="unary-b"), metadata=metadata, timeout=30)) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: buckets.ListBuckets(bucket_pb2.ListBucketsRequest(), timeout=30)) \
        == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: auth_pb2_grpc.AuthServiceStub(channel).GetAccessToken(
        auth_pb2.GetAccessTokenRequest(client_id=server.client_id, client_secret="nope"),
        timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
    still_serving(channel, metadata)


def test_client_stream_put_and_server_stream_get(ready):
    """PutObject streams 1 MiB chunks in; GetObject streams info then <= 1 MiB chunks out."""
    channel, metadata = ready
    objects = object_pb2_grpc.ObjectServiceStub(channel)
    data = os.urandom(3 * MiB + 77)
    reply = objects.PutObject(put_requests("interop", "streamed", data), metadata=metadata,
                              timeout=60)
    assert reply.etag == hashlib.sha256(data).hexdigest() and reply.size == len(data)
    head = objects.HeadObject(object_pb2.HeadObjectRequest(bucket_name="interop",
                                                           object_key="streamed"),
                              metadata=metadata, timeout=30)
    assert head.info.size == len(data)
    responses = list(objects.GetObject(object_pb2.GetObjectRequest(
        bucket_name="interop", object_key="streamed"), metadata=metadata, timeout=60))
    assert responses[0].WhichOneof("data") == "info"
    chunks = [r.chunk for r in responses[1:]]
    assert all(0 < len(c) <= MiB for c in chunks) and b"".join(chunks) == data


def test_bidi_upload_resumes_after_the_first_stream_is_cancelled(ready):
    """Upload: cancel the first stream after an ack, resume with its id, complete; ListBlobs."""
    channel, metadata = ready
    uploads = upload_pb2_grpc.UploadServiceStub(channel)
    data = os.urandom(8 * MiB)
    stall = threading.Event()

    def first_stream():
        # 5 MiB, then stall: the contract promises an ack at least once per 4 MiB received.
        yield upload_pb2.UploadMessage(start=upload_pb2.StartUpload(total_size=len(data)))
        for start in range(0, 5 * MiB, MiB):
            yield upload_pb2.UploadMessage(chunk=upload_pb2.UploadChunk(
                data=data[start:start + MiB], offset=start))
        stall.wait(60)

    call = uploads.Upload(first_stream(), metadata=metadata, timeout=20)
    upload_id, acked = "", 0
    with contextlib.suppress(grpc.RpcError):
        for ack in call:
            upload_id, acked = ack.upload_id, ack.received_bytes
            if acked > 0:
                break
    call.cancel()
    stall.set()
    assert upload_id and acked > 0, "no ack of received bytes while the stream was open"

    offsets = {}

    def second_stream(held: threading.Event):
        yield upload_pb2.UploadMessage(start=upload_pb2.StartUpload(total_size=len(data),
                                                                    upload_id=upload_id))
        held.wait(30)
        position = offsets["held"]
        for start in range(position, len(data), MiB):
            yield upload_pb2.UploadMessage(chunk=upload_pb2.UploadChunk(
                data=data[start:start + MiB], offset=start))
        yield upload_pb2.UploadMessage(complete=upload_pb2.CompleteUpload(
            expected_hash=hashlib.sha256(data).digest()))

    held = threading.Event()
    acks = []
    for ack in uploads.Upload(second_stream(held), metadata=metadata, timeout=60):
        if not acks:
            offsets["held"] = ack.received_bytes
            held.set()
        acks.append(ack)
    assert acks[0].upload_id == upload_id and acks[0].received_bytes >= acked
    key = f"sha256:{hashlib.sha256(data).hexdigest()}".encode()
    assert acks[-1].complete.key == key and acks[-1].complete.size == len(data)
    listed = list(blob_pb2_grpc.BlobServiceStub(channel).ListBlobs(
        blob_pb2.ListBlobsRequest(), metadata=metadata, timeout=30))
    assert key in [b.key for b in listed]


# ---------------------------------------------------------------- deadlines and cancellation


def test_deadline_exceeded_on_a_slowly_read_stream(ready):
    """A GetObject read slower than its deadline ends DEADLINE_EXCEEDED; the server serves on."""
    channel, metadata = ready
    objects = object_pb2_grpc.ObjectServiceStub(channel)
    objects.PutObject(put_requests("interop", "slow", os.urandom(24 * MiB)), metadata=metadata,
                      timeout=60)

    def read_slowly():
        for _ in objects.GetObject(object_pb2.GetObjectRequest(
                bucket_name="interop", object_key="slow"), metadata=metadata, timeout=0.5):
            time.sleep(0.1)

    assert code_of(read_slowly) == grpc.StatusCode.DEADLINE_EXCEEDED
    still_serving(channel, metadata)


def test_cancelling_get_object_mid_stream_keeps_the_server_serving(ready):
    """A GetObject cancelled after one chunk leaves the server and the channel serving."""
    channel, metadata = ready
    objects = object_pb2_grpc.ObjectServiceStub(channel)
    data = os.urandom(16 * MiB)
    objects.PutObject(put_requests("interop", "cancel-me", data), metadata=metadata, timeout=60)
    for _ in range(3):
        call = objects.GetObject(object_pb2.GetObjectRequest(
            bucket_name="interop", object_key="cancel-me"), metadata=metadata, timeout=60)
        next(call)
        next(call)
        call.cancel()
        assert code_of(lambda: list(call)) == grpc.StatusCode.CANCELLED
    got = list(objects.GetObject(object_pb2.GetObjectRequest(
        bucket_name="interop", object_key="cancel-me"), metadata=metadata, timeout=60))
    assert b"".join(r.chunk for r in got[1:]) == data
    still_serving(channel, metadata)


# ---------------------------------------------------------------- hostile requests


def test_garbage_request_bytes_are_invalid_argument_never_internal(ready):
    """Bytes that do not decode get INVALID_ARGUMENT (never INTERNAL); the server serves on."""
    channel, metadata = ready
    raw = channel.unary_unary("/anvil.v1.ObjectService/HeadObject",
                              request_serializer=None, response_deserializer=None)
    truncated = b"\x0a\xff\xff\xff\xff\x0f" + b"x" * 10
    assert code_of(lambda: raw(truncated, metadata=metadata, timeout=30)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    rng = random.Random(1234)
    for _ in range(20):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        code = code_of(lambda: raw(junk, metadata=metadata, timeout=30))
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), code
    still_serving(channel, metadata)


def test_a_40_mib_message_is_resource_exhausted_and_the_channel_survives(ready):
    """One 40 MiB request message is refused RESOURCE_EXHAUSTED; the same channel still works."""
    channel, metadata = ready
    objects = object_pb2_grpc.ObjectServiceStub(channel)

    def huge():
        yield object_pb2.PutObjectRequest(metadata=object_pb2.ObjectMetadata(
            bucket_name="interop", object_key="huge"))
        yield object_pb2.PutObjectRequest(chunk=b"\0" * (40 * MiB))

    assert code_of(lambda: objects.PutObject(huge(), metadata=metadata, timeout=60)) \
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(lambda: objects.HeadObject(object_pb2.HeadObjectRequest(
        bucket_name="interop", object_key="huge"), metadata=metadata, timeout=30)) \
        == grpc.StatusCode.NOT_FOUND
    still_serving(channel, metadata)


def test_gzip_and_deflate_requests_are_served_and_bombs_refused(ready):
    """A gzip- or deflate-compressed request is served like a plain one (NOT_FOUND for an
    absent key, the object for a present one), a bomb is RESOURCE_EXHAUSTED; channel usable."""
    channel, metadata = ready
    objects = object_pb2_grpc.ObjectServiceStub(channel)
    # A compressible request, so grpcio really sets the message's compressed flag.
    request = object_pb2.HeadObjectRequest(bucket_name="interop", object_key="k" * 1000)
    for compression in (grpc.Compression.Gzip, grpc.Compression.Deflate):
        assert code_of(lambda: objects.HeadObject(
            request, metadata=metadata, timeout=30, compression=compression,
        )) == grpc.StatusCode.NOT_FOUND
    data = b"compressible " * 100000
    reply = objects.PutObject(put_requests("interop", "zipped", data), metadata=metadata,
                              timeout=60, compression=grpc.Compression.Gzip)
    assert reply.size == len(data)
    head = objects.HeadObject(object_pb2.HeadObjectRequest(bucket_name="interop",
                                                           object_key="zipped"),
                              metadata=metadata, timeout=30, compression=grpc.Compression.Gzip)
    assert head.info.etag == hashlib.sha256(data).hexdigest()
    bomb = [object_pb2.PutObjectRequest(metadata=object_pb2.ObjectMetadata(
                bucket_name="interop", object_key="bomb")),
            object_pb2.PutObjectRequest(chunk=bytes(6 * MiB))]  # ~6 KB once gzipped
    assert code_of(lambda: objects.PutObject(
        iter(bomb), metadata=metadata, timeout=30, compression=grpc.Compression.Gzip,
    )) == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(channel, metadata)


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A second server process speaking TLS with a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    proc = ServerProcess(root / "data", "--tls-cert", str(cert), "--tls-key", str(key))
    proc.cert = cert
    try:
        yield proc
    finally:
        proc.stop()


def test_tls_with_a_self_signed_certificate(tls_server):
    """grpcio (and AnvilClient) talk to the server over TLS; a plaintext client cannot."""
    creds = grpc.ssl_channel_credentials(root_certificates=tls_server.cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{tls_server.port}", creds) as channel:
        metadata = token_for(channel, tls_server)
        made = bucket_pb2_grpc.BucketServiceStub(channel).CreateBucket(
            bucket_pb2.CreateBucketRequest(bucket_name="secure"), metadata=metadata, timeout=30)
        assert made.name == "secure"
    with grpc.insecure_channel(f"127.0.0.1:{tls_server.port}") as plain:
        code = code_of(lambda: health_pb2_grpc.HealthStub(plain).Check(
            health_pb2.HealthCheckRequest(), timeout=5))
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    from anvil_trio.client import AnvilClient

    async def with_anvil_client():
        context = ssl.create_default_context(cafile=str(tls_server.cert))
        async with AnvilClient.connect(
            "127.0.0.1", tls_server.port, client_id=tls_server.client_id,
            client_secret=tls_server.client_secret, ssl_context=context,
        ) as client:
            await client.put_object("secure", "k", b"over tls")
            return await client.read_object("secure", "k")

    assert trio.run(with_anvil_client) == b"over tls"
    assert tls_server.alive
