"""Scale-out test plumbing: ``anvil-trio serve`` nodes as subprocesses sharing one PostgreSQL
database and one S3 prefix, the grpcio client the tests drive them with, and read-only looks
at what the shared stores hold (boto3 for the bytes, psycopg for the metadata).

* A :class:`Node` is one ``anvil-trio serve`` process on ``127.0.0.1:0`` (the port is parsed
  from its "listening" line), with its own TOML config and data dir; its log goes to a file.
  It dies with the test process (parent-death signal) and :meth:`Node.close` always ends it.
* A :class:`Client` is a grpcio channel to one node with an access token; every call has a
  deadline. Blocking calls: the tests run them in threads when they need concurrency.
* Nothing here sleeps for a fixed time to let something happen: :func:`wait_until` polls a
  condition until a generous bound, which is a safety net, not a timing assertion.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import _services
import grpc

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

KiB = 1 << 10
MiB = 1 << 20

CLI = [sys.executable, "-c", "import sys; from anvil_trio._cli import main; sys.exit(main())"]
#: Bounds (safety nets against a hang; never what a test asserts).
START_TIMEOUT = 90.0
CALL_TIMEOUT = 60.0
ADMIN_TIMEOUT = 120.0

_LISTENING = re.compile(r"^anvil-trio listening on (\S+):(\d+) \(")

_T = TypeVar("_T")


# ------------------------------------------------------------------------------ helpers


def content(seed: int, size: int) -> bytes:
    """``size`` pseudo-random bytes determined by ``seed`` (fast: one hash per 32 bytes is too
    slow for MiBs, so a seeded block is repeated with the seed mixed into every 4 KiB)."""
    block = hashlib.sha256(f"block-{seed}".encode()).digest() * 128  # 4 KiB
    out = bytearray()
    index = 0
    while len(out) < size:
        out += index.to_bytes(8, "little") + block[8:]
        index += 1
    return bytes(out[:size])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(predicate: Callable[[], _T], *, timeout: float, what: str,
               interval: float = 0.2) -> _T:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError with
    ``what`` (and the last value) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def rpc_code(fn: Callable[[], Any]) -> grpc.StatusCode:
    """Run ``fn`` (exhausting a stream it returns); the status code it ended with."""
    try:
        result = fn()
        if isinstance(result, Iterator):
            for _ in result:
                pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def with_retries(fn: Callable[[], _T], *, deadline: float, failures: list | None = None,
                 retry_on: Iterable[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE,),
                 pause: float = 0.2) -> _T:
    """``fn()``, retried while it fails with a code in ``retry_on`` and ``time.monotonic()`` is
    before ``deadline``; each failure's code is appended to ``failures``."""
    retry_on = frozenset(retry_on)
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            if failures is not None:
                failures.append((exc.code(), exc.details()))
            if exc.code() not in retry_on or time.monotonic() > deadline:
                raise
            time.sleep(pause)


def jwt_kid(token: str) -> str:
    """The ``kid`` of a JWT's header (not verified: the server does that)."""
    header = token.split(".", 1)[0]
    header += "=" * (-len(header) % 4)
    return json.loads(base64.urlsafe_b64decode(header))["kid"]


class Pipe:
    """A request iterator fed from the test: :meth:`put` a message, :meth:`close` to end it
    (grpcio's sending thread blocks in ``__next__`` meanwhile, at most ``CALL_TIMEOUT``)."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()

    def put(self, message: Any) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(self._END)

    def __iter__(self) -> Pipe:
        return self

    def __next__(self) -> Any:
        try:
            item = self._queue.get(timeout=CALL_TIMEOUT)
        except queue.Empty:
            raise StopIteration from None
        if item is self._END:
            raise StopIteration
        return item


# ------------------------------------------------------------------------------ admin


def admin(metadata_url: str, *args: str) -> str:
    """``anvil-trio admin --metadata-url URL ARGS...``; its stdout (AssertionError on failure)."""
    done = subprocess.run([*CLI, "admin", "--metadata-url", metadata_url, *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=ADMIN_TIMEOUT, check=False)
    if done.returncode != 0:
        raise AssertionError(f"admin {' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stdout}\n{done.stderr}")
    return done.stdout


def make_app(metadata_url: str, tenant: str = "t1", *,
             quota_bytes: int | None = None) -> tuple[str, str]:
    """Create ``tenant`` (with a quota if given) and an app granted ``*:*``; its
    ``(client_id, client_secret)``."""
    quota = [] if quota_bytes is None else ["--quota-bytes", str(quota_bytes)]
    admin(metadata_url, "tenant", "create", tenant, *quota)
    creds = json.loads(admin(metadata_url, "app", "create", "--tenant", tenant,
                             "--name", f"{tenant}-app", "--json"))
    admin(metadata_url, "policy", "grant", "--app", creds["client_id"], "*:*")
    return creds["client_id"], creds["client_secret"]


def rotate_keys(metadata_url: str, retire_after: float = 3600.0) -> str:
    """``admin keys rotate``; the new signing key's ``kid``."""
    out = admin(metadata_url, "keys", "rotate", "--retire-after", str(retire_after))
    match = re.search(r"new signing key (\S+) ", out)
    assert match is not None, out
    return match.group(1)


# ------------------------------------------------------------------------------ nodes


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


class Node:
    """One ``anvil-trio serve`` subprocess (see the module docstring). Construct it (the
    process starts at once), then :meth:`wait_ready`."""

    def __init__(self, name: str, root: Path, *, metadata_url: str, blob_url: str,
                 s3_endpoint: str, settings: dict[str, Any] | None = None) -> None:
        self.name = name
        self.log_path = root / f"node-{name}.log"
        config = root / f"node-{name}.toml"
        config.write_text("".join(f"{key} = {_toml_value(value)}\n"
                                  for key, value in (settings or {}).items()))
        argv = [*CLI, "serve", "--config", str(config), "--data-dir", str(root / f"data-{name}"),
                "--listen", "127.0.0.1:0", "--metadata-url", metadata_url,
                "--blob-url", blob_url, "--s3-endpoint", s3_endpoint, "--log-level", "info"]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the node runs
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
            preexec_fn=_services._preexec(),  # noqa: PLW1509 - dies with the test process
        )
        self.port: int | None = None
        self._channels: list[grpc.Channel] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:  # one line, then EOF when the process ends
            self._lines.put(line.decode(errors="replace"))
        self._lines.put(None)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Node:
        """Wait for the "listening" line; AssertionError (with the log) if it never comes."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        match = _LISTENING.match(line or "")
        if match is None:
            raise AssertionError(f"node {self.name} did not report listening ({line!r}):\n"
                                 f"{self.log_tail()}")
        self.port = int(match.group(2))
        return self

    @property
    def address(self) -> str:
        assert self.port is not None, "wait_ready() first"
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def channel(self) -> grpc.Channel:
        """A new ready channel of its own (its own TCP connection), closed by :meth:`close`."""
        channel = grpc.insecure_channel(self.address, options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", 8 * MiB),
        ])
        self._channels.append(channel)
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        return channel

    def health(self, timeout: float = 10.0) -> int:
        """``grpc.health.v1.Health/Check`` of the whole server (a fresh channel each time)."""
        with grpc.insecure_channel(self.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return reply.status

    def kill(self) -> None:
        """kill -9, and wait for it to be gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        """Close its channels; SIGINT (drain), SIGKILL if it has not exited after 15 s."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


# ------------------------------------------------------------------------------ client


def put_requests(bucket: str, key: str, data: bytes, *, chunk: int = MiB,
                 content_length: bool = True) -> Iterator[object_pb2.PutObjectRequest]:
    meta = object_pb2.ObjectMetadata(bucket_name=bucket, object_key=key,
                                     content_type="application/octet-stream")
    if content_length:
        meta.content_length = len(data)
    yield object_pb2.PutObjectRequest(metadata=meta)
    for start in range(0, len(data), chunk):
        yield object_pb2.PutObjectRequest(chunk=data[start:start + chunk])


def upload_start(total_size: int, upload_id: str = "") -> upload_pb2.UploadMessage:
    return upload_pb2.UploadMessage(start=upload_pb2.StartUpload(
        total_size=total_size, upload_id=upload_id))


def upload_chunk(data: bytes, offset: int) -> upload_pb2.UploadMessage:
    return upload_pb2.UploadMessage(chunk=upload_pb2.UploadChunk(data=data, offset=offset))


def upload_complete(data: bytes) -> upload_pb2.UploadMessage:
    return upload_pb2.UploadMessage(complete=upload_pb2.CompleteUpload(
        expected_hash=hashlib.sha256(data).digest()))


def blob_key(data: bytes) -> bytes:
    return f"sha256:{sha256_hex(data)}".encode()


class Client:
    """grpcio stubs on a channel of its own to ``node``, with an access token of the app."""

    def __init__(self, node: Node, client_id: str, client_secret: str) -> None:
        self.node = node
        self.client_id, self.client_secret = client_id, client_secret
        channel = node.channel()
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.buckets = bucket_pb2_grpc.BucketServiceStub(channel)
        self.objects = object_pb2_grpc.ObjectServiceStub(channel)
        self.blobs = blob_pb2_grpc.BlobServiceStub(channel)
        self.uploads = upload_pb2_grpc.UploadServiceStub(channel)
        self.token = self.fetch_token()

    def fetch_token(self) -> str:
        reply = self.auth.GetAccessToken(auth_pb2.GetAccessTokenRequest(
            client_id=self.client_id, client_secret=self.client_secret), timeout=CALL_TIMEOUT)
        assert reply.token_type == "Bearer"
        return reply.access_token

    def md(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token or self.token}"),)

    # buckets and objects ------------------------------------------------------------------
    def create_bucket(self, name: str, *, versioning: bool = False) -> None:
        self.buckets.CreateBucket(bucket_pb2.CreateBucketRequest(
            bucket_name=name, versioning=versioning), metadata=self.md(), timeout=CALL_TIMEOUT)

    def list_buckets(self, token: str | None = None) -> list[str]:
        reply = self.buckets.ListBuckets(bucket_pb2.ListBucketsRequest(),
                                         metadata=self.md(token), timeout=CALL_TIMEOUT)
        return [b.name for b in reply.buckets]

    def put(self, bucket: str, key: str, data: bytes, *, timeout: float = CALL_TIMEOUT,
            chunk: int = MiB) -> object_pb2.PutObjectResponse:
        return self.objects.PutObject(put_requests(bucket, key, data, chunk=chunk),
                                      metadata=self.md(), timeout=timeout)

    def get(self, bucket: str, key: str, *,
            timeout: float = CALL_TIMEOUT) -> tuple[object_pb2.ObjectInfo, bytes]:
        info = None
        pieces = []
        for message in self.objects.GetObject(object_pb2.GetObjectRequest(
                bucket_name=bucket, object_key=key), metadata=self.md(), timeout=timeout):
            if message.HasField("info"):
                assert info is None, "two info messages"
                info = message.info
            else:
                assert info is not None, "a chunk before the info"
                pieces.append(message.chunk)
        assert info is not None, "no info message"
        return info, b"".join(pieces)

    def head(self, bucket: str, key: str, *, timeout: float = CALL_TIMEOUT) -> object_pb2.ObjectInfo:
        return self.objects.HeadObject(object_pb2.HeadObjectRequest(
            bucket_name=bucket, object_key=key), metadata=self.md(), timeout=timeout).info

    def list(self, bucket: str, prefix: str = "") -> list[object_pb2.ObjectInfo]:
        out, token = [], ""
        while True:
            reply = self.objects.ListObjects(object_pb2.ListObjectsRequest(
                bucket_name=bucket, prefix=prefix, page_token=token),
                metadata=self.md(), timeout=CALL_TIMEOUT)
            out.extend(reply.objects)
            token = reply.next_page_token
            if not token:
                return out

    def versions(self, bucket: str, prefix: str = "") -> list[object_pb2.ObjectVersion]:
        out, token = [], ""
        while True:
            reply = self.objects.ListObjectVersions(object_pb2.ListObjectVersionsRequest(
                bucket_name=bucket, prefix=prefix, page_token=token),
                metadata=self.md(), timeout=CALL_TIMEOUT)
            out.extend(reply.versions)
            token = reply.next_page_token
            if not token:
                return out

    # blobs --------------------------------------------------------------------------------
    def upload(self, data: bytes, *, chunk: int = MiB) -> upload_pb2.UploadComplete:
        """One whole Upload stream; the completion."""
        def messages() -> Iterator[upload_pb2.UploadMessage]:
            yield upload_start(len(data))
            for start in range(0, len(data), chunk):
                yield upload_chunk(data[start:start + chunk], start)
            yield upload_complete(data)

        last = None
        for ack in self.uploads.Upload(messages(), metadata=self.md(), timeout=CALL_TIMEOUT):
            last = ack
        assert last is not None and last.HasField("complete"), last
        return last.complete

    def get_blob(self, key: bytes, *, timeout: float = CALL_TIMEOUT) -> bytes:
        pieces, offset = [], 0
        for message in self.blobs.GetBlob(blob_pb2.GetBlobRequest(key=key),
                                          metadata=self.md(), timeout=timeout):
            assert message.offset == offset
            pieces.append(message.data)
            offset += len(message.data)
        return b"".join(pieces)


# ------------------------------------------------------------------------------ the stores


class S3Prefix:
    """Read-only looks at one ``s3://BUCKET/PREFIX`` of the anvil layout (see ``_s3``)."""

    def __init__(self, blob_url: str, client: Any) -> None:
        bucket, _, prefix = blob_url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix, self.s3 = bucket, prefix.strip("/"), client
        self.data = f"{self.prefix}/data/"
        self.uploads = f"{self.prefix}/uploads/"

    def objects(self, prefix: str) -> list[dict]:
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=prefix):
            out.extend(page.get("Contents") or ())
        return out

    def locations(self) -> set[str]:
        """The 32-hex names under ``data/``."""
        return {o["Key"][len(self.data):] for o in self.objects(self.data)}

    def digests(self) -> dict[str, str]:
        """location -> SHA-256 of its bytes (each object downloaded)."""
        out = {}
        for location in self.locations():
            body = self.s3.get_object(Bucket=self.bucket, Key=self.data + location)["Body"]
            hasher = hashlib.sha256()
            for piece in iter(lambda b=body: b.read(MiB), b""):
                hasher.update(piece)
            out[location] = hasher.hexdigest()
        return out

    def multipart_uploads(self) -> list[dict]:
        reply = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=self.data)
        return list(reply.get("Uploads") or ())

    def upload_keys(self) -> list[str]:
        return [o["Key"] for o in self.objects(self.uploads)]


def pg_query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of one read-only query on ``url`` (a connection of its own)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def tenant_used_bytes(url: str, tenant: str) -> int:
    return pg_query(url, "SELECT used_bytes FROM tenants WHERE name = %s", (tenant,))[0][0]


def blob_locations(url: str) -> dict[str, str]:
    """location -> digest of every ``blobs`` row."""
    return {loc: digest for digest, loc in pg_query(url, "SELECT digest, location FROM blobs")}
