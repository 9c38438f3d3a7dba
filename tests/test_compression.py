"""gRPC message compression (rpc/_compression.py, its use in _frames.py and _wire.py): gzip and
deflate requests are inflated within the message limit, an unknown encoding is UNIMPLEMENTED,
and responses are compressed when the client accepts it and it pays."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import struct
import threading
import tracemalloc
import urllib.parse
import zlib

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import grpc
import pytest
import purerpc
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from purerpc import Cardinality, RPCSignature, StatusCode
from purerpc.grpclib.exceptions import MessageTooLargeError

from anvil_trio._proto.anvil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    blob_pb2,
    bucket_pb2,
    object_pb2,
    object_pb2_grpc,
    upload_pb2,
    upload_pb2_grpc,
)
from anvil_trio.rpc._compression import (
    ACCEPT_ENCODING,
    MIN_COMPRESS_BYTES,
    CompressedFlagError,
    CorruptMessageError,
    InflatedMessage,
    InflatedTooLargeError,
    Inflater,
    compress_message,
    is_supported,
    response_encoding,
)
from anvil_trio.rpc._edge import EdgeConfig, EdgeServer
from anvil_trio.rpc._frames import MessageAssembler
from anvil_trio.rpc._messages import bytes_field_message
from anvil_trio.testing import open_test_server


MiB = 1 << 20
LIMIT = 4 * MiB


# ---------------------------------------------------------------- codecs, no I/O


def gzip_bytes(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


def zlib_bytes(data: bytes) -> bytes:
    return zlib.compress(data)


def raw_deflate_bytes(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def frame(payload: bytes, compressed: bool) -> bytes:
    return struct.pack(">?I", compressed, len(payload)) + payload


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


#: (grpc-encoding, packer) pairs the edge must read: the standard forms and the tolerated ones.
CODECS = [("gzip", gzip_bytes), ("deflate", zlib_bytes), ("deflate", raw_deflate_bytes),
          ("gzip", zlib_bytes), ("deflate", gzip_bytes)]


@settings(max_examples=150, deadline=None)
@given(codec=st.sampled_from(CODECS),
       messages=st.lists(st.tuples(st.binary(max_size=3000) | st.just(b"ab" * 4000),
                                   st.booleans()), max_size=6),
       cuts=st.lists(st.integers(0, 10**6), max_size=25))
def test_assembler_inflates_any_split_of_compressed_messages(codec, messages, cuts) -> None:
    """Compressed and plain messages, cut anywhere into DATA payloads, come out as they were
    sent (compressed ones as InflatedMessage); the flow-controlled lengths add up to the wire
    bytes; the assembler never holds more than the limit."""
    encoding, packer = codec
    wire = b"".join(frame(packer(m) if c else m, c) for m, c in messages)
    limit = 8000
    assembler = MessageAssembler(limit, encoding)
    got, reported = [], 0
    for piece in split(wire, cuts):
        for message, size in assembler.data_received(piece, len(piece)):
            got.append((bytes(message), isinstance(message, InflatedMessage)))
            reported += size
        assert assembler.buffered <= limit + 5 + len(piece)
    assert got == messages
    assert reported == len(wire)


@settings(max_examples=60, deadline=None)
@given(encoding=st.sampled_from(["gzip", "deflate"]), cuts=st.lists(st.integers(0, 10**6),
                                                                     max_size=40))
def test_bomb_is_refused_at_the_limit_for_any_split(encoding, cuts) -> None:
    """A ~6 KB message inflating to 6 MiB raises InflatedTooLargeError (a MessageTooLargeError,
    so RESOURCE_EXHAUSTED) whatever the split, having held at most limit + 1 inflated bytes."""
    bomb = (gzip_bytes if encoding == "gzip" else zlib_bytes)(bytes(6 * MiB))
    assert len(bomb) < 8000
    assembler = MessageAssembler(LIMIT, encoding)
    with pytest.raises(InflatedTooLargeError) as caught:
        for piece in split(frame(bomb, True), cuts):
            assembler.data_received(piece, len(piece))
            assert assembler.buffered <= LIMIT
    assert isinstance(caught.value, MessageTooLargeError)
    assert assembler.buffered <= LIMIT + 1


def test_a_message_of_exactly_the_limit_inflates() -> None:
    """The bound is exact: limit bytes inflate, limit + 1 do not."""
    for size, ok in ((1000, True), (1001, False)):
        inflater = Inflater("gzip", 1000)
        if ok:
            inflater.feed(gzip_bytes(b"x" * size))
            assert inflater.finish() == b"x" * size
        else:
            with pytest.raises(InflatedTooLargeError):
                inflater.feed(gzip_bytes(b"x" * size))


def test_bomb_memory_stays_bounded() -> None:
    """Inflating a 256 MiB bomb allocates little more than the 4 MiB limit (tracemalloc)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MiB)
    bomb = b"".join([packer.compress(block) for _ in range(256)] + [packer.flush()])
    gc.collect()
    tracemalloc.start()
    try:
        assembler = MessageAssembler(LIMIT, "gzip")
        with pytest.raises(InflatedTooLargeError):
            wire = frame(bomb, True)
            for start in range(0, len(wire), 16384):
                assembler.data_received(wire[start:start + 16384], 16384)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < LIMIT * 1.5 + len(bomb) * 2, peak


def test_bad_compressed_messages_are_named_errors() -> None:
    """Flag without encoding, corrupt, truncated and trailing bytes: INTERNAL errors."""
    for encoding in (None, "identity", " IDENTITY"):
        with pytest.raises(CompressedFlagError):
            MessageAssembler(LIMIT, encoding).data_received(frame(b"abc", True), 8)
    with pytest.raises(CorruptMessageError):
        MessageAssembler(LIMIT, "gzip").data_received(frame(b"not gzip at all", True), 20)
    with pytest.raises(CorruptMessageError):
        MessageAssembler(LIMIT, "gzip").data_received(frame(gzip_bytes(b"x" * 100)[:-4], True),
                                                      100)
    with pytest.raises(CorruptMessageError):
        MessageAssembler(LIMIT, "deflate").data_received(frame(zlib_bytes(b"x") + b"junk", True),
                                                         100)
    for error in (CompressedFlagError, CorruptMessageError):
        assert error.status_code == StatusCode.INTERNAL
    assert InflatedTooLargeError.status_code == StatusCode.RESOURCE_EXHAUSTED
    assert MessageAssembler(LIMIT, "gzip").data_received(frame(b"", True), 5) == [(b"", 5)]


def test_encoding_negotiation_and_the_response_rule() -> None:
    """Supported request encodings; gzip preferred for responses; the size and gain rule."""
    assert ACCEPT_ENCODING == "identity,deflate,gzip"
    assert all(is_supported(e) for e in (None, "identity", "gzip", "deflate"))
    assert not is_supported("snappy")
    assert response_encoding(["identity", "deflate", "gzip"]) == "gzip"
    assert response_encoding("identity, deflate") == "deflate"
    assert response_encoding(["identity"]) is None and response_encoding(None) is None
    text = b"compressible " * 200
    assert zlib.decompress(compress_message(text, "gzip", mode=None), 31) == text
    assert zlib.decompress(compress_message(text, "deflate", mode=None)) == text  # zlib format
    assert compress_message(text[:MIN_COMPRESS_BYTES - 1], "gzip", mode=None) is None
    assert compress_message(os.urandom(4096), "gzip", mode=None) is None  # would not shrink
    assert compress_message(text, "gzip", mode=None, preframed=True) is None
    assert compress_message(text, None, mode=True) is None  # the client accepts nothing
    assert compress_message(text, "gzip", mode=False) is None
    assert compress_message(b"ab", "gzip", mode=True) is not None  # forced: even if small


# ---------------------------------------------------------------- a raw HTTP/2 client


async def raw_call(port: int, path: str, body: bytes, *, headers=()) -> dict:
    """One gRPC call by hand over h2: returns the response headers, the messages as
    ``(compressed_flag, payload)`` and the trailers (trailers-only: all in ``headers``)."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path),
                            (":authority", f"127.0.0.1:{port}"), ("te", "trailers"),
                            ("content-type", "application/grpc"), *headers])
    result: dict = {"headers": None, "trailers": {}, "data": bytearray()}
    unsent = memoryview(body)

    def send_body() -> None:  # as much as flow control allows
        nonlocal unsent
        while unsent:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if room <= 0:
                return
            piece, unsent = unsent[:room], unsent[room:]
            conn.send_data(sid, bytes(piece), end_stream=not unsent)
        if not body:
            conn.end_stream(sid)

    try:
        with trio.fail_after(30):
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                send_body()
            await stream.send_all(conn.data_to_send())
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                done = False
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        result["headers"] = dict(event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        result["data"] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    elif isinstance(event, h2.events.TrailersReceived):
                        result["trailers"] = dict(event.headers)
                    elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                        done = done or event.stream_id == sid
                    elif isinstance(event, (h2.events.WindowUpdated,
                                            h2.events.RemoteSettingsChanged)) and unsent:
                        with contextlib.suppress(h2.exceptions.StreamClosedError):
                            send_body()
                await stream.send_all(conn.data_to_send())
                if done:
                    break
    finally:
        await stream.aclose()
    messages, raw = [], bytes(result["data"])
    while raw:
        flag, length = struct.unpack(">?I", raw[:5])
        messages.append((flag, raw[5:5 + length]))
        raw = raw[5 + length:]
    result["messages"] = messages
    final = result["trailers"] or result["headers"]
    result["status"] = int(final["grpc-status"])
    result["message"] = urllib.parse.unquote(final.get("grpc-message", ""))
    return result


# ---------------------------------------------------------------- a probe service


def probe_service(seen: list) -> purerpc.Service:
    """``/anviltest.Probe/*`` on ``BlobChunk`` messages: Echo answers ``data`` with the
    handler's compression knob taken from ``offset`` (0 auto, 1 on, 2 off) and records
    ``request_compressed``; Collect records it per message; Two sends two compressible
    replies, the first compressed on request, the second not (interop's
    server_compressed_streaming); Bulk sends ``data`` pre-framed."""
    service = purerpc.Service("anviltest.Probe")
    chunk = blob_pb2.BlobChunk
    knobs = {0: None, 1: True, 2: False}

    async def echo(message, request):
        seen.append(request.request_compressed)
        request.compress_responses = knobs[message.offset]
        return chunk(data=message.data, offset=int(request.request_compressed))

    async def collect(messages, request):
        flags = []
        async for _ in messages:
            flags.append(request.request_compressed)
        seen.append(flags)
        return chunk(data=bytes(flags))

    async def two(message, request):
        request.compress_responses = True
        yield chunk(data=message.data)
        request.compress_responses = False
        yield chunk(data=message.data)

    async def bulk(message, request):
        yield bytes_field_message(1, message.data)

    service.add_method("Echo", echo, RPCSignature(Cardinality.UNARY_UNARY, chunk, chunk))
    service.add_method("Collect", collect, RPCSignature(Cardinality.STREAM_UNARY, chunk, chunk))
    service.add_method("Two", two, RPCSignature(Cardinality.UNARY_STREAM, chunk, chunk))
    service.add_method("Bulk", bulk, RPCSignature(Cardinality.UNARY_STREAM, chunk, chunk))
    return service


@pytest.fixture
async def probe():
    seen: list = []
    server = EdgeServer([probe_service(seen)], config=EdgeConfig(port=0))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        server.seen = seen
        try:
            yield server
        finally:
            await server.drain(0.5)


def chunk_bytes(data: bytes, offset: int = 0) -> bytes:
    return blob_pb2.BlobChunk(data=data, offset=offset).SerializeToString()


TEXT = b"the same words again and again; " * 400  # 12.8 KB, compresses well


async def test_unknown_encoding_is_unimplemented_with_accept_encoding(probe):
    """grpc-encoding snappy: UNIMPLEMENTED naming the supported encodings, with
    grpc-accept-encoding (trailers-only); the handler never runs."""
    reply = await raw_call(probe.port, "/anviltest.Probe/Echo", frame(b"\x00" * 10, True),
                           headers=[("grpc-encoding", "snappy")])
    assert reply["status"] == StatusCode.UNIMPLEMENTED.value
    assert "snappy" in reply["message"] and "gzip" in reply["message"]
    assert reply["headers"]["grpc-accept-encoding"] == "identity,deflate,gzip"
    assert reply["messages"] == [] and probe.seen == []


async def test_flag_without_encoding_is_internal_and_others_go_on(probe):
    """The compressed flag without grpc-encoding is INTERNAL (spec); corrupt gzip too; the
    server serves the next call."""
    bad = await raw_call(probe.port, "/anviltest.Probe/Echo", frame(gzip_bytes(b"x"), True))
    assert bad["status"] == StatusCode.INTERNAL.value
    assert "compressed flag set without grpc-encoding" in bad["message"]
    corrupt = await raw_call(probe.port, "/anviltest.Probe/Echo", frame(b"garbage!", True),
                             headers=[("grpc-encoding", "gzip")])
    assert corrupt["status"] == StatusCode.INTERNAL.value and "inflate" in corrupt["message"]
    fine = await raw_call(probe.port, "/anviltest.Probe/Echo", frame(chunk_bytes(b"ok"), False))
    assert fine["status"] == 0 and fine["messages"] == [(False, chunk_bytes(b"ok"))]


async def test_request_compressed_is_per_message(probe):
    """Messages compressed, plain, compressed on one gzip call: the handler sees each flag."""
    body = (frame(gzip_bytes(chunk_bytes(b"a" * 50)), True) + frame(chunk_bytes(b"b"), False)
            + frame(gzip_bytes(chunk_bytes(b"")), True))
    reply = await raw_call(probe.port, "/anviltest.Probe/Collect", body,
                           headers=[("grpc-encoding", "gzip")])
    assert reply["status"] == 0
    assert probe.seen == [[True, False, True]]


async def test_responses_compressed_when_accepted_and_it_pays(probe):
    """With grpc-accept-encoding gzip: a 12 KB compressible reply comes back gzip (flag set,
    grpc-encoding gzip); a small reply, an incompressible one and a pre-framed bulk one come
    back uncompressed; without the header nothing is compressed."""
    gz = [("grpc-accept-encoding", "gzip")]
    big = await raw_call(probe.port, "/anviltest.Probe/Echo", frame(chunk_bytes(TEXT), False),
                         headers=gz)
    assert big["headers"]["grpc-encoding"] == "gzip"
    assert big["headers"]["grpc-accept-encoding"] == ACCEPT_ENCODING
    [(flag, payload)] = big["messages"]
    assert flag and len(payload) < len(TEXT) // 4
    assert blob_pb2.BlobChunk.FromString(zlib.decompress(payload, 31)).data == TEXT
    noise = os.urandom(20000)
    for data in (b"tiny", noise):
        reply = await raw_call(probe.port, "/anviltest.Probe/Echo", frame(chunk_bytes(data), False),
                               headers=gz)
        [(flag, payload)] = reply["messages"]
        assert not flag and blob_pb2.BlobChunk.FromString(payload).data == data
    bulk = await raw_call(probe.port, "/anviltest.Probe/Bulk", frame(chunk_bytes(TEXT), False),
                          headers=gz)
    [(flag, payload)] = bulk["messages"]
    assert not flag and blob_pb2.BlobChunk.FromString(payload).data == TEXT
    plain = await raw_call(probe.port, "/anviltest.Probe/Echo", frame(chunk_bytes(TEXT), False))
    assert "grpc-encoding" not in plain["headers"]
    assert plain["messages"] == [(False, chunk_bytes(TEXT))]
    deflated = await raw_call(probe.port, "/anviltest.Probe/Echo",
                              frame(chunk_bytes(TEXT), False),
                              headers=[("grpc-accept-encoding", "identity,deflate")])
    assert deflated["headers"]["grpc-encoding"] == "deflate"
    [(flag, payload)] = deflated["messages"]
    assert flag and blob_pb2.BlobChunk.FromString(zlib.decompress(payload)).data == TEXT


async def test_handler_knob_forces_or_forbids_compression(probe):
    """compress_responses True compresses even a tiny reply, False keeps a big one plain; per
    message in a stream (interop's server_compressed_streaming)."""
    gz = [("grpc-accept-encoding", "identity,gzip")]
    forced = await raw_call(probe.port, "/anviltest.Probe/Echo",
                            frame(chunk_bytes(b"hi", offset=1), False), headers=gz)
    [(flag, payload)] = forced["messages"]
    assert flag and blob_pb2.BlobChunk.FromString(zlib.decompress(payload, 31)).data == b"hi"
    forbidden = await raw_call(probe.port, "/anviltest.Probe/Echo",
                               frame(chunk_bytes(TEXT, offset=2), False), headers=gz)
    assert [flag for flag, _ in forbidden["messages"]] == [False]
    two = await raw_call(probe.port, "/anviltest.Probe/Two", frame(chunk_bytes(b"x" * 3000), False),
                         headers=gz)
    assert [flag for flag, _ in two["messages"]] == [True, False]
    never = await raw_call(probe.port, "/anviltest.Probe/Echo",
                           frame(chunk_bytes(b"hi", offset=1), False))
    assert [flag for flag, _ in never["messages"]] == [False]  # the client accepts none


async def test_grpcio_compressed_both_ways_with_the_probe(probe):
    """grpcio with gzip and deflate requests: the handler sees request_compressed; grpcio reads
    the server's gzip replies (forced and automatic)."""
    def client():
        results = []
        with grpc.insecure_channel(f"127.0.0.1:{probe.port}") as channel:
            echo = channel.unary_unary("/anviltest.Probe/Echo",
                                       request_serializer=blob_pb2.BlobChunk.SerializeToString,
                                       response_deserializer=blob_pb2.BlobChunk.FromString)
            for compression in (grpc.Compression.Gzip, grpc.Compression.Deflate):
                for offset in (0, 1):
                    reply = echo(blob_pb2.BlobChunk(data=TEXT, offset=offset), timeout=30,
                                 compression=compression)
                    results.append((reply.data == TEXT, reply.offset))
            reply = echo(blob_pb2.BlobChunk(data=b"plain"), timeout=30)
            results.append((reply.data == b"plain", reply.offset))
        return results

    results = await trio.to_thread.run_sync(client)
    assert results == [(True, 1)] * 4 + [(True, 0)]
    assert probe.seen == [True] * 4 + [False]


# ---------------------------------------------------------------- the real server, grpcio


@pytest.fixture
async def anvil(tmp_path):
    async with open_test_server(tmp_path) as ts:
        await ts.buckets.CreateBucket(bucket_pb2.CreateBucketRequest(bucket_name="zip"),
                                      metadata=ts.metadata)
        yield ts


def put_requests(key: str, data: bytes, chunk: int = MiB, content_length: int | None = None):
    yield object_pb2.PutObjectRequest(metadata=object_pb2.ObjectMetadata(
        bucket_name="zip", object_key=key,
        content_length=len(data) if content_length is None else content_length))
    for start in range(0, len(data), chunk):
        yield object_pb2.PutObjectRequest(chunk=data[start:start + chunk])


@pytest.mark.parametrize("algorithm", ["Gzip", "Deflate"])
@pytest.mark.parametrize("where", ["channel", "call"])
async def test_grpcio_compressed_calls_against_the_server(anvil, algorithm, where):
    """grpcio compressing on the channel or per call: GetAccessToken, PutObject of
    compressible and incompressible data, HeadObject and Upload work; the bytes read back are
    the bytes sent."""
    compression = getattr(grpc.Compression, algorithm)
    text = b"log line: all is well at the edge\n" * 60000  # ~2 MiB, compresses ~100x
    noise = os.urandom(3 * MiB + 5)

    def client():
        per_call = {"compression": compression} if where == "call" else {}
        with grpc.insecure_channel(
            f"127.0.0.1:{anvil.port}",
            compression=compression if where == "channel" else None,
        ) as channel:
            token = auth_pb2_grpc.AuthServiceStub(channel).GetAccessToken(
                auth_pb2.GetAccessTokenRequest(client_id=anvil.client_id,
                                               client_secret=anvil.client_secret),
                timeout=30, **per_call).access_token
            metadata = (("authorization", f"Bearer {token}"),)
            objects = object_pb2_grpc.ObjectServiceStub(channel)
            sizes = []
            for key, data in (("text", text), ("noise", noise)):
                reply = objects.PutObject(put_requests(key, data), metadata=metadata, timeout=60,
                                          **per_call)
                assert reply.etag == hashlib.sha256(data).hexdigest()
                head = objects.HeadObject(object_pb2.HeadObjectRequest(
                    bucket_name="zip", object_key=key), metadata=metadata, timeout=30, **per_call)
                sizes.append(head.info.size)
                got = b"".join(r.chunk for r in objects.GetObject(object_pb2.GetObjectRequest(
                    bucket_name="zip", object_key=key), metadata=metadata, timeout=60,
                    **per_call) if r.WhichOneof("data") == "chunk")
                assert got == data

            def upload():
                yield upload_pb2.UploadMessage(start=upload_pb2.StartUpload(total_size=len(text)))
                yield upload_pb2.UploadMessage(chunk=upload_pb2.UploadChunk(data=text, offset=0))
                yield upload_pb2.UploadMessage(complete=upload_pb2.CompleteUpload(
                    expected_hash=hashlib.sha256(text).digest()))

            acks = list(upload_pb2_grpc.UploadServiceStub(channel).Upload(
                upload(), metadata=metadata, timeout=60, **per_call))
            return sizes, acks[-1].complete.size

    sizes, uploaded = await trio.to_thread.run_sync(client)
    assert sizes == [len(text), len(noise)] and uploaded == len(text)


async def test_grpcio_gzip_bomb_fails_alone(anvil):
    """A 6 KB gzip message inflating to 6 MiB (over the 4 MiB limit) is RESOURCE_EXHAUSTED,
    while a call running at the same time on the same channel succeeds, and so do later ones."""
    bomb_done = threading.Event()

    def client():
        with grpc.insecure_channel(f"127.0.0.1:{anvil.port}") as channel:
            objects = object_pb2_grpc.ObjectServiceStub(channel)

            def slow_put():  # stays open until the bomb's call is over
                yield from put_requests("alongside", b"first half ", content_length=22)
                bomb_done.wait(60)
                yield object_pb2.PutObjectRequest(chunk=b"second half")

            alongside = objects.PutObject.future(slow_put(), metadata=anvil.metadata, timeout=60)
            head = next(put_requests("bomb", b""))
            bomb = object_pb2.PutObjectRequest(chunk=bytes(6 * MiB))
            try:
                objects.PutObject(iter([head, bomb]), metadata=anvil.metadata, timeout=30,
                                  compression=grpc.Compression.Gzip)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()
                assert "limit" in details
            finally:
                bomb_done.set()
            size = alongside.result(timeout=60).size
            head = objects.HeadObject(object_pb2.HeadObjectRequest(
                bucket_name="zip", object_key="alongside"), metadata=anvil.metadata, timeout=30)
            return code, size, head.info.size

    code, size, head_size = await trio.to_thread.run_sync(client)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert size == head_size == len(b"first half second half")


async def test_raw_bomb_on_the_real_server_is_refused_and_serving_goes_on(anvil):
    """A 256 MiB gzip bomb sent by hand: RESOURCE_EXHAUSTED; the server answers the next call."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    message = object_pb2.PutObjectRequest(chunk=bytes(MiB)).SerializeToString()
    bomb = b"".join([packer.compress(message) for _ in range(256)] + [packer.flush()])
    headers = [("grpc-encoding", "gzip"), *anvil.metadata]
    reply = await raw_call(anvil.port, "/anvil.v1.ObjectService/PutObject", frame(bomb, True),
                           headers=headers)
    assert reply["status"] == StatusCode.RESOURCE_EXHAUSTED.value
    head = await raw_call(anvil.port, "/anvil.v1.ObjectService/HeadObject",
                          frame(object_pb2.HeadObjectRequest(bucket_name="zip",
                                                             object_key="nope")
                                .SerializeToString(), False), headers=list(anvil.metadata))
    assert head["status"] == StatusCode.NOT_FOUND.value
