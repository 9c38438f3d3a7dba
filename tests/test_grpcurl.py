"""grpcurl (a Go gRPC client) drives every call kind of an ``anvil-trio serve`` subprocess through
server reflection alone, with no ``.proto`` files: unary, client streaming, server streaming and
bidi, with JSON messages on stdin (``-d @``) and bytes fields as base64.

Calls run one at a time (each grpcurl run is its own connection).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from test_interop import ServerProcess
from test_reflection import json_stream, run_grpcurl

MiB = 1 << 20
CHUNK = MiB


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def ok(done) -> list[dict]:
    """The JSON documents of a grpcurl run that must have succeeded."""
    assert done.returncode == 0, f"grpcurl exited {done.returncode}: {done.stderr}"
    return json_stream(done.stdout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One ``anvil-trio serve`` subprocess for the module (always stopped at the end)."""
    proc = ServerProcess(tmp_path_factory.mktemp("grpcurl") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def auth(server) -> tuple[str, ...]:
    """A bearer header from GetAccessToken (a unary call made by grpcurl itself)."""
    [reply] = ok(run_grpcurl(
        server.port, "-d",
        json.dumps({"client_id": server.client_id, "client_secret": server.client_secret}),
        "anvil.v1.AuthService/GetAccessToken",
    ))
    assert reply["token_type"] == "Bearer"
    assert int(reply["expires_in"]) > 0
    assert reply["scopes"] == ["*:*"]
    return (f"authorization: Bearer {reply['access_token']}",)


@pytest.fixture(scope="module")
def bucket(server, auth) -> str:
    """Bucket ``grpcurl`` created with a unary CreateBucket."""
    [created] = ok(run_grpcurl(server.port, "-d", json.dumps({"bucket_name": "grpcurl"}),
                               "anvil.v1.BucketService/CreateBucket", headers=auth))
    assert created["name"] == "grpcurl"
    assert created["created_at"].endswith("Z")
    return "grpcurl"


def put_object(server, auth, bucket: str, key: str, data: bytes) -> dict:
    """PutObject (client streaming): metadata, then chunks, as JSON messages on stdin."""
    messages = [{"metadata": {"bucket_name": bucket, "object_key": key,
                              "content_type": "application/x-test",
                              "user_metadata": {"via": "grpcurl"},
                              "content_length": str(len(data))}}]
    messages += [{"chunk": b64(data[at:at + CHUNK])} for at in range(0, len(data), CHUNK)]
    [reply] = ok(run_grpcurl(server.port, "-d", "@", "anvil.v1.ObjectService/PutObject",
                             stdin="\n".join(json.dumps(m) for m in messages), headers=auth))
    return reply


def test_unary_calls_without_token_and_with_one(server, auth, bucket):
    """A call without a token is UNAUTHENTICATED; HeadObject of a missing key is NOT_FOUND and
    ListBuckets shows the bucket."""
    bare = run_grpcurl(server.port, "-d", "{}", "anvil.v1.BucketService/ListBuckets")
    assert bare.returncode != 0 and "Code: Unauthenticated" in bare.stderr, bare.stderr
    missing = run_grpcurl(server.port, "-d",
                          json.dumps({"bucket_name": bucket, "object_key": "absent"}),
                          "anvil.v1.ObjectService/HeadObject", headers=auth)
    assert missing.returncode != 0 and "Code: NotFound" in missing.stderr, missing.stderr
    [listed] = ok(run_grpcurl(server.port, "-d", "{}", "anvil.v1.BucketService/ListBuckets",
                              headers=auth))
    assert [b["name"] for b in listed["buckets"]] == [bucket]


def test_client_stream_put_then_unary_head(server, auth, bucket):
    """A 3.5 MiB PutObject in four chunks returns the size and SHA-256 etag that HeadObject
    then reports, with the content type and user metadata."""
    data = os.urandom(3 * MiB + MiB // 2)
    put = put_object(server, auth, bucket, "dir/three-and-a-half", data)
    assert put["etag"] == hashlib.sha256(data).hexdigest()
    assert int(put["size"]) == len(data)
    assert put["version_id"]
    [head] = ok(run_grpcurl(server.port, "-d",
                            json.dumps({"bucket_name": bucket,
                                        "object_key": "dir/three-and-a-half"}),
                            "anvil.v1.ObjectService/HeadObject", headers=auth))
    info = head["info"]
    assert info["etag"] == put["etag"] and int(info["size"]) == len(data)
    assert info["version_id"] == put["version_id"]
    assert info["content_type"] == "application/x-test"
    assert info["user_metadata"] == {"via": "grpcurl"}


def test_server_stream_get_returns_the_bytes_put(server, auth, bucket):
    """GetObject streams the info, then chunks of at most 1 MiB whose bytes equal the put; a
    ranged get returns exactly that slice."""
    data = os.urandom(2 * MiB + 12345)
    put_object(server, auth, bucket, "streamed", data)
    request = {"bucket_name": bucket, "object_key": "streamed"}
    replies = ok(run_grpcurl(server.port, "-d", json.dumps(request),
                             "anvil.v1.ObjectService/GetObject", headers=auth))
    assert list(replies[0]) == ["info"] and int(replies[0]["info"]["size"]) == len(data)
    chunks = [unb64(r["chunk"]) for r in replies[1:]]
    assert len(chunks) >= 3 and all(len(c) <= MiB for c in chunks)
    assert b"".join(chunks) == data
    ranged = ok(run_grpcurl(
        server.port, "-d",
        json.dumps({**request, "range": {"start": "1000", "end": str(MiB + 7)}}),
        "anvil.v1.ObjectService/GetObject", headers=auth))
    assert int(ranged[0]["info"]["size"]) == len(data)
    assert b"".join(unb64(r["chunk"]) for r in ranged[1:]) == data[1000:MiB + 7]


def upload(server, auth, data: bytes) -> list[dict]:
    """UploadService/Upload (bidi): start, chunks with their offsets, complete with the hash."""
    messages = [{"start": {"total_size": str(len(data)),
                           "attributes": {"content-type": "text/x-grpcurl"}}}]
    messages += [{"chunk": {"data": b64(data[at:at + CHUNK]), "offset": str(at)}}
                 for at in range(0, len(data), CHUNK)]
    messages.append({"complete": {"expected_hash": b64(hashlib.sha256(data).digest())}})
    return ok(run_grpcurl(server.port, "-d", "@", "anvil.v1.UploadService/Upload",
                          stdin="\n".join(json.dumps(m) for m in messages), headers=auth))


def test_bidi_upload_returns_the_sha256_key_and_dedups(server, auth):
    """Upload acks the start, then completes with key ``sha256:<hex>`` of the data; the same
    bytes again are deduplicated; StatBlob and GetBlob (by that key) agree."""
    data = os.urandom(2 * MiB + 777)
    acks = upload(server, auth, data)
    assert acks[0]["upload_id"] and int(acks[0].get("received_bytes", "0")) == 0
    done = acks[-1]["complete"]
    key = unb64(done["key"])
    assert key == b"sha256:" + hashlib.sha256(data).hexdigest().encode("ascii")
    assert int(done["size"]) == len(data)
    assert not done.get("deduplicated", False)
    again = upload(server, auth, data)[-1]["complete"]
    assert unb64(again["key"]) == key and again["deduplicated"] is True
    [stat] = ok(run_grpcurl(server.port, "-d", json.dumps({"key": b64(key)}),
                            "anvil.v1.BlobService/StatBlob", headers=auth))
    assert int(stat["size"]) == len(data) and stat["content_type"] == "text/x-grpcurl"
    blob = ok(run_grpcurl(server.port, "-d", json.dumps({"key": b64(key)}),
                          "anvil.v1.BlobService/GetBlob", headers=auth))
    assert b"".join(unb64(c["data"]) for c in blob) == data
    assert [int(c.get("offset", "0")) for c in blob][0] == 0


def test_bidi_upload_with_a_wrong_hash_is_invalid_argument(server, auth):
    """A CompleteUpload hash that does not match the bytes ends the stream INVALID_ARGUMENT."""
    messages = [{"start": {"total_size": "5"}},
                {"chunk": {"data": b64(b"hello"), "offset": "0"}},
                {"complete": {"expected_hash": b64(hashlib.sha256(b"other").digest())}}]
    done = run_grpcurl(server.port, "-d", "@", "anvil.v1.UploadService/Upload",
                       stdin="\n".join(json.dumps(m) for m in messages), headers=auth)
    assert done.returncode != 0 and "Code: InvalidArgument" in done.stderr, done.stderr
    assert server.alive
