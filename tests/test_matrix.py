"""The concurrency matrix: many calls of all four kinds at once, over shared and separate
HTTP/2 connections, from grpcio and from @grpc/grpc-js, against ``anvil-trio serve`` running as
a separate process.

Every workload is a plan drawn from a fixed seed: unary calls (HeadObject, ListObjects,
GetAccessToken), client streams (PutObject, read back), server streams (GetObject, whole and
ranged), bidi streams (UploadService/Upload start/chunks/complete, read back with GetBlob), with
sizes from 0 B to 8 MiB, interleaved with deliberate cancellations (a GetObject after its first
chunk, a PutObject mid-stream: the object must stay absent or unchanged) and short deadlines
(a call either succeeds with the right bytes or ends DEADLINE_EXCEEDED -- or CANCELLED, but only
once its deadline has passed: see :func:`expired`). Every byte read is
compared with what was put; any other outcome of any call fails the test, with the list of
what failed. Outcomes never depend on timing: where a race decides (a deadline, a cancel that
lands after the last byte), each side of it has one right answer that is checked.

The server's limits: ``max_concurrent_calls`` defaults to 256 (``Config``), below the 1,000
concurrent calls of :func:`test_a_thousand_concurrent_calls_over_eight_connections`, so the
module's server raises it to 1,200 in its TOML config; ``max_concurrent_streams`` (per
connection, SETTINGS_MAX_CONCURRENT_STREAMS) is the edge's 1,000, above the 125 streams each
connection carries; ``max_upload_sessions`` (64) is above the 32 concurrent uploads at most.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import random
import threading
import time
from pathlib import Path

import grpc  # imported outright: a missing grpcio fails this module, never skips it
import pytest

from _node import run_node
from anvil_trio._proto.anvil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    blob_pb2,
    blob_pb2_grpc,
    bucket_pb2,
    bucket_pb2_grpc,
    common_pb2,
    object_pb2,
    object_pb2_grpc,
    upload_pb2,
    upload_pb2_grpc,
)
from test_interop import ServerProcess

KiB = 1 << 10
MiB = 1 << 20
#: Object sizes of the plans, with how often each is drawn (big ones rarely: bounded time).
SIZES = (0, 1, 1000, 64 * KiB, MiB + 3, 3 * MiB + 5, 8 * MiB)
SIZE_WEIGHTS = (3, 3, 3, 3, 4, 2, 1)
#: GetObjects cancelled after their first message (the info) or their first chunk: (size, after).
#: The small ones race the server's end of the stream (the RST_STREAM may reach an ended stream).
CANCEL_GETS = ((0, 1), (1000, 1), (1000, 2), (64 * KiB, 2), (MiB + 3, 2), (3 * MiB + 5, 2),
               (8 * MiB, 2))
#: The timeout of every call that is not deliberately short.
CALL_TIMEOUT = 60.0
#: Deliberately short timeouts: some expire, some do not, depending on the machine.
SHORT_TIMEOUTS = (0.001, 0.02, 0.1, 0.5)
#: The server's call limit for this module (its default, 256, is below 1,000).
MAX_CONCURRENT_CALLS = 1200
HERE = Path(__file__).resolve().parent
PROTOS = HERE.parent / "protos"
GRPCJS_CLIENT = HERE / "matrix" / "grpcjs_client.js"
OK, CANCELLED, DEADLINE = (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED,
                           grpc.StatusCode.DEADLINE_EXCEEDED)


def content(seed: int, size: int) -> bytes:
    """``size`` bytes determined by ``seed`` (distinct seeds give distinct content)."""
    return random.Random(seed).randbytes(size)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- the server and its connections


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server process for the module, with ``max_concurrent_calls`` raised to 1,200."""
    root = tmp_path_factory.mktemp("matrix")
    config = root / "server.toml"
    config.write_text(f"max_concurrent_calls = {MAX_CONCURRENT_CALLS}\n")
    proc = ServerProcess(root / "data", "--config", str(config))
    try:
        yield proc
    finally:
        proc.stop()


def open_channels(port: int, count: int, *, separate: bool) -> list[grpc.Channel]:
    """``count`` ready channels; ``separate`` gives each its own subchannel pool (so its own TCP
    connection), otherwise grpcio's global pool puts them all on one connection."""
    options = [("grpc.max_send_message_length", 64 * MiB),
               ("grpc.max_receive_message_length", 64 * MiB)]
    if separate:
        options.append(("grpc.use_local_subchannel_pool", 1))
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(count)]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
    except BaseException:
        for channel in channels:
            channel.close()
        raise
    return channels


def established_connections(port: int) -> int:
    """ESTABLISHED TCP connections (of any local process) whose remote end is ``port``."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # grpcio uses dual-stack sockets
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def fetch_token(channel: grpc.Channel, server_proc: ServerProcess) -> str:
    reply = auth_pb2_grpc.AuthServiceStub(channel).GetAccessToken(
        auth_pb2.GetAccessTokenRequest(client_id=server_proc.client_id,
                                       client_secret=server_proc.client_secret),
        timeout=CALL_TIMEOUT)
    assert reply.token_type == "Bearer"
    return reply.access_token


class Stubs:
    """The stubs of one channel, and the call metadata."""

    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.objects = object_pb2_grpc.ObjectServiceStub(channel)
        self.blobs = blob_pb2_grpc.BlobServiceStub(channel)
        self.uploads = upload_pb2_grpc.UploadServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),)


# ---------------------------------------------------------------- the plan


def make_plan(seed: int) -> list[dict]:
    """197 operations (some 270 calls) in a seeded order; each a dict of plain values."""
    rng = random.Random(seed)

    def size() -> int:
        return rng.choices(SIZES, SIZE_WEIGHTS)[0]

    ops: list[dict] = []
    ops += [{"kind": "head", "size": size()} for _ in range(30)]
    ops += [{"kind": "list"} for _ in range(12)]
    ops += [{"kind": "token"} for _ in range(6)]
    ops += [{"kind": "put", "size": size()} for _ in range(30)]
    ops += [{"kind": "get", "size": size()} for _ in range(36)]
    for _ in range(20):
        whole = rng.choice([s for s in SIZES if s >= 1000])
        start = rng.randrange(whole)
        end = rng.choice([None, rng.randrange(start + 1, whole + 100)])
        ops.append({"kind": "range", "size": whole, "start": start, "end": end})
    ops += [{"kind": "upload", "size": size()} for _ in range(20)]
    ops += [{"kind": "cancel_get", "size": size, "after": after}
            for size, after in CANCEL_GETS + CANCEL_GETS[3:]]
    ops += [{"kind": "cancel_put", "replace": index % 2 == 0} for index in range(8)]
    ops += [{"kind": rng.choice(["deadline_get", "deadline_head", "deadline_put"]),
             "size": size(), "timeout": rng.choice(SHORT_TIMEOUTS)} for _ in range(24)]
    rng.shuffle(ops)
    for index, op in enumerate(ops):
        op["id"] = index
        op["seed"] = seed * 100_000 + index
    return ops


def seed_key(size: int) -> str:
    return f"seed-{size}"


def seed_content(seed: int, size: int) -> bytes:
    return content(seed * 1_000 + SIZES.index(size), size)


def put_seeds(stubs: Stubs, bucket: str, seed: int) -> None:
    """Put one ``seed-SIZE`` object of each size (what the plan's gets and heads read)."""
    for size in SIZES:
        data = seed_content(seed, size)
        reply = stubs.objects.PutObject(put_messages(bucket, seed_key(size), data),
                                        metadata=stubs.metadata, timeout=CALL_TIMEOUT)
        assert reply.etag == sha256_hex(data) and reply.size == size


def put_messages(bucket: str, key: str, data: bytes, chunk: int = MiB):
    yield object_pb2.PutObjectRequest(metadata=object_pb2.ObjectMetadata(
        bucket_name=bucket, object_key=key, content_length=len(data)))
    for start in range(0, len(data), chunk):
        yield object_pb2.PutObjectRequest(chunk=data[start:start + chunk])


class Mismatch(AssertionError):
    """A call succeeded with the wrong answer."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Mismatch(what)


def read_object(stubs: Stubs, bucket: str, key: str, *, timeout: float = CALL_TIMEOUT,
                byte_range=None) -> tuple[object_pb2.ObjectInfo, bytes]:
    """GetObject: the info message, then the chunks joined (each checked <= 1 MiB)."""
    request = object_pb2.GetObjectRequest(bucket_name=bucket, object_key=key)
    if byte_range is not None:
        request.range.CopyFrom(byte_range)
    responses = iter(stubs.objects.GetObject(request, metadata=stubs.metadata, timeout=timeout))
    first = next(responses)
    check(first.WhichOneof("data") == "info", "GetObject did not start with info")
    chunks = []
    for response in responses:
        check(response.WhichOneof("data") == "chunk", "GetObject sent info twice")
        check(0 < len(response.chunk) <= MiB, f"a chunk of {len(response.chunk)} bytes")
        chunks.append(response.chunk)
    return first.info, b"".join(chunks)


def check_object(stubs: Stubs, bucket: str, key: str, data: bytes, **kwargs) -> None:
    info, got = read_object(stubs, bucket, key, **kwargs)
    check(info.size == len(data) and info.etag == sha256_hex(data), f"info of {key}: {info}")
    check(got == data, f"bytes of {key}: {len(got)} read, {len(data)} put")


# ---------------------------------------------------------------- running one operation


class Runner:
    """Runs plan operations against one bucket; each returns the outcome it ended with."""

    def __init__(self, server_proc: ServerProcess, bucket: str, seed: int) -> None:
        self.server = server_proc
        self.bucket = bucket
        self.seed = seed

    def run(self, op: dict, stubs: Stubs) -> str:
        """Run ``op``; return ``"ok"``, ``"cancelled"`` or ``"expired"``.

        Raises:
            grpc.RpcError: a call failed in a way the operation does not allow.
            Mismatch: a call answered wrongly.
        """
        return getattr(self, f"op_{op['kind']}")(op, stubs)

    def op_head(self, op, stubs):
        data = seed_content(self.seed, op["size"])
        reply = stubs.objects.HeadObject(object_pb2.HeadObjectRequest(
            bucket_name=self.bucket, object_key=seed_key(op["size"])),
            metadata=stubs.metadata, timeout=CALL_TIMEOUT)
        check(reply.info.size == len(data) and reply.info.etag == sha256_hex(data),
              f"HeadObject: {reply.info}")
        return "ok"

    def op_list(self, op, stubs):
        reply = stubs.objects.ListObjects(object_pb2.ListObjectsRequest(
            bucket_name=self.bucket, prefix="seed-"), metadata=stubs.metadata,
            timeout=CALL_TIMEOUT)
        keys = [info.object_key for info in reply.objects]
        check(keys == sorted(seed_key(s) for s in SIZES), f"ListObjects: {keys}")
        return "ok"

    def op_token(self, op, stubs):
        reply = stubs.auth.GetAccessToken(auth_pb2.GetAccessTokenRequest(
            client_id=self.server.client_id, client_secret=self.server.client_secret),
            timeout=CALL_TIMEOUT)
        check(reply.token_type == "Bearer" and reply.access_token, "GetAccessToken")
        return "ok"

    def op_put(self, op, stubs):
        data = content(op["seed"], op["size"])
        key = f"put-{op['id']}"
        reply = stubs.objects.PutObject(put_messages(self.bucket, key, data),
                                        metadata=stubs.metadata, timeout=CALL_TIMEOUT)
        check(reply.etag == sha256_hex(data) and reply.size == len(data), f"PutObject: {reply}")
        check_object(stubs, self.bucket, key, data)
        return "ok"

    def op_get(self, op, stubs):
        check_object(stubs, self.bucket, seed_key(op["size"]), seed_content(self.seed, op["size"]))
        return "ok"

    def op_range(self, op, stubs):
        data = seed_content(self.seed, op["size"])
        wanted = common_pb2.ByteRange(start=op["start"])
        if op["end"] is not None:
            wanted.end = op["end"]
        info, got = read_object(stubs, self.bucket, seed_key(op["size"]), byte_range=wanted)
        check(info.size == len(data), f"ranged GetObject info.size {info.size}")
        check(got == data[op["start"]:op["end"]], f"ranged bytes {op}: {len(got)} read")
        return "ok"

    def op_upload(self, op, stubs):
        data = content(op["seed"], op["size"])
        digest = hashlib.sha256(data).digest()
        messages = [upload_pb2.UploadMessage(start=upload_pb2.StartUpload(total_size=len(data)))]
        messages += [upload_pb2.UploadMessage(chunk=upload_pb2.UploadChunk(
            data=data[start:start + MiB], offset=start)) for start in range(0, len(data), MiB)]
        messages.append(upload_pb2.UploadMessage(
            complete=upload_pb2.CompleteUpload(expected_hash=digest)))
        acks = list(stubs.uploads.Upload(iter(messages), metadata=stubs.metadata,
                                         timeout=CALL_TIMEOUT))
        key = f"sha256:{digest.hex()}".encode()
        check(bool(acks) and acks[0].upload_id != "", "Upload: no start ack")
        check(acks[-1].HasField("complete") and acks[-1].complete.key == key
              and acks[-1].complete.size == len(data), f"Upload: last ack {acks[-1]}")
        got = [chunk for chunk in stubs.blobs.GetBlob(blob_pb2.GetBlobRequest(key=key),
                                                      metadata=stubs.metadata,
                                                      timeout=CALL_TIMEOUT)]
        offset = 0
        for chunk in got:
            check(chunk.offset == offset, f"GetBlob offset {chunk.offset}, expected {offset}")
            offset += len(chunk.data)
        check(b"".join(chunk.data for chunk in got) == data, "GetBlob bytes")
        return "ok"

    def op_cancel_get(self, op, stubs):
        """GetObject cancelled after ``op["after"]`` messages (the info, and the first chunk)."""
        data = seed_content(self.seed, op["size"])
        call = stubs.objects.GetObject(object_pb2.GetObjectRequest(
            bucket_name=self.bucket, object_key=seed_key(op["size"])), metadata=stubs.metadata,
            timeout=CALL_TIMEOUT)
        taken = [next(call) for _ in range(op["after"])]
        check(taken[0].WhichOneof("data") == "info", "GetObject did not start with info")
        got = b"".join(response.chunk for response in taken[1:])
        check(got == data[:len(got)], "the first chunk before the cancel")
        if call.cancel():
            code = code_of_rest(call)
            check(code == CANCELLED, f"a cancelled GetObject ended {code}")
            return "cancelled"
        # Every byte and the status had arrived before the cancel: then all of it must be right.
        rest = b"".join(response.chunk for response in call)
        check(got + rest == data, "GetObject bytes (the cancel came after the end)")
        return "ok"

    def op_cancel_put(self, op, stubs):
        """A PutObject cancelled after 2 of its 3 MiB: the key stays absent or unchanged."""
        key = f"cancelled-{op['id']}"
        before = None
        if op["replace"]:
            before = content(op["seed"], MiB + 3)
            stubs.objects.PutObject(put_messages(self.bucket, key, before),
                                    metadata=stubs.metadata, timeout=CALL_TIMEOUT)
        data = content(op["seed"] + 1, 3 * MiB)
        sent, release = threading.Event(), threading.Event()

        def messages():
            for index, message in enumerate(put_messages(self.bucket, key, data)):
                if index == 3:  # metadata and two chunks were taken; hold the third back
                    sent.set()
                    release.wait(CALL_TIMEOUT)
                    return
                yield message

        future = stubs.objects.PutObject.future(messages(), metadata=stubs.metadata,
                                                timeout=CALL_TIMEOUT)
        try:
            while not sent.wait(0.01):  # until it took two chunks, or ended (a failure)
                if future.done():
                    break
            cancelled = future.cancel()
        finally:
            release.set()
        if not cancelled:
            future.result()  # raises the RpcError it ended with (it cannot have succeeded)
            raise Mismatch("a PutObject missing its last MiB succeeded")
        check(future.code() == CANCELLED, f"a cancelled PutObject ended {future.code()}")
        if before is None:
            code = code_of(lambda: stubs.objects.HeadObject(object_pb2.HeadObjectRequest(
                bucket_name=self.bucket, object_key=key), metadata=stubs.metadata,
                timeout=CALL_TIMEOUT))
            check(code == grpc.StatusCode.NOT_FOUND, f"a cancelled put left {key}: {code}")
        else:
            check_object(stubs, self.bucket, key, before)
        return "cancelled"

    def op_deadline_get(self, op, stubs):
        data = seed_content(self.seed, op["size"])
        started = time.monotonic()
        try:
            check_object(stubs, self.bucket, seed_key(op["size"]), data, timeout=op["timeout"])
        except grpc.RpcError as exc:
            if not expired(exc, started, op["timeout"]):
                raise
            return "expired"
        return "ok"

    def op_deadline_head(self, op, stubs):
        started = time.monotonic()
        try:
            reply = stubs.objects.HeadObject(object_pb2.HeadObjectRequest(
                bucket_name=self.bucket, object_key=seed_key(op["size"])),
                metadata=stubs.metadata, timeout=op["timeout"])
        except grpc.RpcError as exc:
            if not expired(exc, started, op["timeout"]):
                raise
            return "expired"
        check(reply.info.size == op["size"], f"HeadObject: {reply.info}")
        return "ok"

    def op_deadline_put(self, op, stubs):
        """A put under a short deadline: OK with the right bytes, or DEADLINE_EXCEEDED (and then
        the key holds nothing, or exactly what was put: the put may have landed just before)."""
        data = content(op["seed"], op["size"])
        key = f"deadline-{op['id']}"
        started = time.monotonic()
        try:
            reply = stubs.objects.PutObject(put_messages(self.bucket, key, data),
                                            metadata=stubs.metadata, timeout=op["timeout"])
        except grpc.RpcError as exc:
            if not expired(exc, started, op["timeout"]):
                raise
            try:
                check_object(stubs, self.bucket, key, data)
            except grpc.RpcError as later:
                if later.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            return "expired"
        check(reply.etag == sha256_hex(data), f"PutObject: {reply}")
        check_object(stubs, self.bucket, key, data)
        return "ok"


def expired(exc: grpc.RpcError, started: float, timeout: float) -> bool:
    """Whether a call under a ``timeout`` deadline ended as an expired one may.

    DEADLINE_EXCEEDED; or CANCELLED once the deadline has passed: a server whose own copy of
    the deadline (``grpc-timeout``, counted from its receipt, so never earlier than the
    client's) fires while a response message is half sent must reset the stream with
    RST_STREAM(CANCEL) (the gRPC HTTP/2 protocol), which reaches a client whose deadline timer
    is late as CANCELLED. A CANCELLED before the deadline is a failure.
    """
    code = exc.code()
    return code == DEADLINE or (code == CANCELLED and time.monotonic() - started >= timeout)


def code_of(fn) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    return OK


def code_of_rest(call) -> grpc.StatusCode:
    """Drain a streaming call; the status it ended with."""
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        return exc.code()
    return OK


def run_plan(runner: Runner, plan: list[dict], stubs: list[Stubs], threads: int) -> dict:
    """Run ``plan`` on ``threads`` threads, operation i on ``stubs[i % len(stubs)]``.

    Returns:
        ``{"outcomes": {outcome: count}, "failures": [description, ...]}``.
    """
    def one(op: dict) -> str:
        try:
            return runner.run(op, stubs[op["id"] % len(stubs)])
        except grpc.RpcError as exc:
            return f"FAILED op {op}: {exc.code()} {exc.details()!r}"
        except Mismatch as exc:
            return f"WRONG op {op}: {exc}"

    outcomes: dict[str, int] = {}
    failures: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for result in pool.map(one, plan):
            if result.startswith(("FAILED", "WRONG")):
                failures.append(result)
            else:
                outcomes[result] = outcomes.get(result, 0) + 1
    return {"outcomes": outcomes, "failures": failures}


def summarize(failures: list[str]) -> str:
    shown = "\n".join(failures[:15])
    return f"{len(failures)} operation(s) failed:\n{shown}"


# ---------------------------------------------------------------- grpcio


@pytest.mark.parametrize(("seed", "channel_count", "separate"), [
    pytest.param(1, 1, False, id="one-channel"),
    pytest.param(2, 16, False, id="16-channels-pooled"),
    pytest.param(3, 16, True, id="16-connections"),
])
def test_grpcio_mixed_calls(server, seed, channel_count, separate):
    """Some 270 calls of all four kinds at once from 32 threads (one channel, 16 channels pooled
    onto one connection, 16 connections), with cancels and deadlines: none fails, all bytes
    round-trip."""
    bucket = f"grpcio-{seed}"
    channels = open_channels(server.port, channel_count, separate=separate)
    try:
        token = fetch_token(channels[0], server)
        stubs = [Stubs(channel, token) for channel in channels]
        bucket_pb2_grpc.BucketServiceStub(channels[0]).CreateBucket(
            bucket_pb2.CreateBucketRequest(bucket_name=bucket), metadata=stubs[0].metadata,
            timeout=CALL_TIMEOUT)
        put_seeds(stubs[0], bucket, seed)
        connections = established_connections(server.port)
        if separate:  # what the layout claims: one connection per channel, or all on one
            assert connections >= channel_count, connections
        else:
            assert 1 <= connections <= 2, connections  # 1, maybe 1 an earlier test is closing
        result = run_plan(Runner(server, bucket, seed), make_plan(seed), stubs, threads=32)
    finally:
        for channel in channels:
            channel.close()
    assert not result["failures"], summarize(result["failures"])
    assert result["outcomes"].get("cancelled", 0) >= 8, result["outcomes"]  # the 8 cancelled puts
    assert server.alive


# ---------------------------------------------------------------- @grpc/grpc-js


@pytest.mark.parametrize(("seed", "clients", "separate"), [
    pytest.param(11, 1, False, id="one-channel"),
    pytest.param(12, 8, True, id="8-connections"),
])
def test_grpcjs_mixed_calls(server, seed, clients, separate):
    """@grpc/grpc-js: the same kind of mix (all four call kinds, 0 B - 8 MiB, cancels, deadlines)
    on one channel and on 8 channels with their own connections: none fails, all bytes match."""
    done = run_node(GRPCJS_CLIENT, json.dumps({
        "protos": str(PROTOS), "address": f"127.0.0.1:{server.port}",
        "client_id": server.client_id, "client_secret": server.client_secret,
        "bucket": f"grpcjs-{seed}", "seed": seed, "clients": clients,
        "separate": separate, "concurrency": 32,
    }), timeout=240)
    assert done.returncode == 0, f"node exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert not summary["failures"], summarize(summary["failures"])
    assert summary["calls"] >= 200, summary
    for kind in ("head", "list", "token", "put", "get", "range", "upload", "cancel_get",
                 "cancel_put", "deadline_get"):
        assert summary["kinds"].get(kind, 0) > 0, summary
    assert summary["outcomes"].get("cancelled", 0) >= 6, summary
    assert server.alive


# ---------------------------------------------------------------- 1,000 streams at once


def test_a_thousand_concurrent_calls_over_eight_connections(server):
    """1,000 calls in flight at once over 8 connections, 125 on each (40 GetObject streams held
    open by unread flow-control windows, 20 PutObjects, 65 HeadObjects): none fails."""
    connections, streams_each, puts_each, heads_each = 8, 40, 20, 65
    bucket = "thousand"
    small = content(4242, 200 * KiB)  # more than a stream window: an unread get stays open
    channels = open_channels(server.port, connections, separate=True)
    try:
        token = fetch_token(channels[0], server)
        stubs = [Stubs(channel, token) for channel in channels]
        bucket_pb2_grpc.BucketServiceStub(channels[0]).CreateBucket(
            bucket_pb2.CreateBucketRequest(bucket_name=bucket), metadata=stubs[0].metadata,
            timeout=CALL_TIMEOUT)
        stubs[0].objects.PutObject(put_messages(bucket, "small", small),
                                   metadata=stubs[0].metadata, timeout=CALL_TIMEOUT)
        assert established_connections(server.port) >= connections
        get_request = object_pb2.GetObjectRequest(bucket_name=bucket, object_key="small")
        head_request = object_pb2.HeadObjectRequest(bucket_name=bucket, object_key="small")
        streams, puts, heads = [], [], []
        for stub in stubs:  # every call is started before any answer is read
            streams += [stub.objects.GetObject(get_request, metadata=stub.metadata,
                                               timeout=CALL_TIMEOUT)
                        for _ in range(streams_each)]
        for number, stub in enumerate(stubs):
            for index in range(puts_each):
                data = content(number * 1000 + index, 64 * KiB + index)
                future = stub.objects.PutObject.future(
                    put_messages(bucket, f"put-{number}-{index}", data),
                    metadata=stub.metadata, timeout=CALL_TIMEOUT)
                puts.append((future, data))
            heads += [stub.objects.HeadObject.future(head_request, metadata=stub.metadata,
                                                     timeout=CALL_TIMEOUT)
                      for _ in range(heads_each)]
        assert len(streams) + len(puts) + len(heads) == 1000

        def outcome(name: str, fn) -> str | None:
            try:
                return fn()
            except grpc.RpcError as exc:
                return f"{name}: {exc.code()} {exc.details()!r}"

        def drain(call) -> str | None:
            responses = list(call)
            if b"".join(r.chunk for r in responses[1:]) != small:
                return "GetObject bytes differ"
            return None

        failures = [outcome("HeadObject", lambda: None if future.result().info.size == len(small)
                            else "HeadObject size differs") for future in heads]
        failures += [outcome("PutObject", lambda: None if future.result().etag == sha256_hex(data)
                             else "PutObject etag differs") for future, data in puts]
        with concurrent.futures.ThreadPoolExecutor(32) as pool:  # read the streams at once too
            failures += pool.map(lambda call: outcome("GetObject", lambda: drain(call)), streams)
        failures = [failure for failure in failures if failure]
    finally:
        for channel in channels:
            channel.close()
    assert not failures, summarize(failures)
    assert server.alive
