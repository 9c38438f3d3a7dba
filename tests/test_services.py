"""The test session's real PostgreSQL and SeaweedFS servers (``_services``) work as fixtures:
fresh databases and prefixes, data surviving restarts and crashes, S3 ranges and multipart."""

from __future__ import annotations

import os
import socket

import _services
import psycopg
import pytest


def _split(s3_url: str) -> tuple[str, str]:
    assert s3_url.startswith("s3://")
    bucket, _, prefix = s3_url[len("s3://"):].partition("/")
    return bucket, prefix


# --------------------------------------------------------------------------- ports


def test_free_ports_leave_room_for_weed_grpc_twins():
    ports = _services.free_ports(4, grpc_offset=10000)
    assert len(set(ports)) == 4
    assert not set(ports) & {p + 10000 for p in ports}
    for port in ports:
        assert port <= 65535 - 10000
        for candidate in (port, port + 10000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", candidate))


# --------------------------------------------------------------------------- PostgreSQL


def test_pg_url_is_a_fresh_database(pg_url, postgres_server):
    assert pg_url.startswith(f"postgresql://anvil@127.0.0.1:{postgres_server.port}/t_")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        assert pg_url.endswith("/" + name)
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        assert tables == 0
        conn.execute("CREATE TABLE t (k int PRIMARY KEY, v text NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        assert conn.execute("SELECT v FROM t ORDER BY k").fetchall() == [("one",), ("two",)]
        assert conn.execute("SHOW fsync").fetchone()[0] == "on"
        assert conn.execute("SHOW max_connections").fetchone()[0] == "200"


def test_pg_restart_and_crash_keep_committed_data(postgres_server):
    url = postgres_server.create_database()
    port = postgres_server.port
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (k int PRIMARY KEY)")
            conn.execute("INSERT INTO t VALUES (1)")
        pending = psycopg.connect(url)  # an open transaction the restart rolls back
        pending.execute("INSERT INTO t VALUES (2)")

        postgres_server.restart()
        assert postgres_server.port == port and postgres_server.running
        with pytest.raises(psycopg.OperationalError):
            pending.execute("SELECT 1")
        pending.close()
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT k FROM t").fetchall() == [(1,)]
            conn.execute("INSERT INTO t VALUES (3)")

        postgres_server.kill()  # crash: no shutdown checkpoint, recovery on start
        assert not postgres_server.running
        postgres_server.start()
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT k FROM t ORDER BY k").fetchall() == [(1,), (3,)]
    finally:
        postgres_server.drop_database(url.rsplit("/", 1)[1])


# --------------------------------------------------------------------------- SeaweedFS


def test_s3_url_env_and_object_round_trip(s3_url, seaweed_server):
    bucket, prefix = _split(s3_url)
    assert bucket == _services.TEST_BUCKET and len(prefix) >= 8
    assert os.environ["AWS_ACCESS_KEY_ID"] == _services.AWS_ACCESS_KEY_ID
    assert os.environ["AWS_ENDPOINT_URL"] == seaweed_server.endpoint
    s3 = seaweed_server.client()
    assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["KeyCount"] == 0

    data = bytes(range(256)) * 64
    s3.put_object(Bucket=bucket, Key=f"{prefix}/a", Body=data)
    assert s3.get_object(Bucket=bucket, Key=f"{prefix}/a")["Body"].read() == data
    part = s3.get_object(Bucket=bucket, Key=f"{prefix}/a", Range="bytes=100-1099")
    assert part["ContentRange"] == f"bytes 100-1099/{len(data)}"
    assert part["Body"].read() == data[100:1100]
    assert s3.head_object(Bucket=bucket, Key=f"{prefix}/a")["ContentLength"] == len(data)

    # a client built from the environment alone reaches the same server
    import boto3

    plain = boto3.client("s3")
    assert plain.get_object(Bucket=bucket, Key=f"{prefix}/a")["Body"].read() == data
    s3.delete_object(Bucket=bucket, Key=f"{prefix}/a")
    assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["KeyCount"] == 0


def test_s3_multipart_upload(s3_url, seaweed_server):
    bucket, prefix = _split(s3_url)
    key = f"{prefix}/big"
    s3 = seaweed_server.client()
    first, second = os.urandom(5 * 1024 * 1024), b"tail" * 1000

    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    listed = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in listed] == [(key, upload)]
    etags = [
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n, Body=body)["ETag"]
        for n, body in ((1, first), (2, second))
    ]
    parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, len(first)), (2, len(second))]
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags)]})

    assert s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", []) == []
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["ContentLength"] == len(first) + len(second)
    assert got["Body"].read() == first + second
    edge = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={len(first) - 2}-{len(first) + 1}")
    assert edge["Body"].read() == first[-2:] + second[:2]

    aborted = s3.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/gone")["UploadId"]
    s3.abort_multipart_upload(Bucket=bucket, Key=f"{prefix}/gone", UploadId=aborted)
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", []) == []


def test_weed_restart_and_crash_keep_objects(s3_url, seaweed_server):
    bucket, prefix = _split(s3_url)
    endpoint = seaweed_server.endpoint
    s3 = seaweed_server.client()
    s3.put_object(Bucket=bucket, Key=f"{prefix}/kept", Body=b"kept across restarts")

    seaweed_server.stop()
    assert not seaweed_server.running
    seaweed_server.start()
    assert seaweed_server.endpoint == endpoint
    assert s3.get_object(Bucket=bucket, Key=f"{prefix}/kept")["Body"].read() == \
        b"kept across restarts"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/after", Body=b"written after restart")

    seaweed_server.kill()
    seaweed_server.restart()
    for key, body in (("kept", b"kept across restarts"), ("after", b"written after restart")):
        assert s3.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read() == body
