"""Past one machine: two or more ``anvil-trio serve`` processes sharing one PostgreSQL database and
one S3 prefix (SeaweedFS) serve as one store.

Every node is a real subprocess on ``127.0.0.1:0`` (``tests/_nodes.py``), driven with grpcio from
threads; what the shared stores hold is checked directly (boto3 on the prefix, psycopg on the
database). Faults are real: kill -9 of a node, a PostgreSQL restart and stop, a SeaweedFS stop.
Every wait is bounded (a safety net against a hang, never a timing assertion); outcomes never
depend on who wins a race: where one decides (which of two uploads deduplicates, which puts the
quota refuses), every side of it has one right answer that is checked.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from _nodes import (
    CALL_TIMEOUT,
    Client,
    KiB,
    MiB,
    Node,
    Pipe,
    S3Prefix,
    blob_key,
    blob_locations,
    content,
    jwt_kid,
    make_app,
    pg_query,
    put_requests,
    rotate_keys,
    rpc_code,
    sha256_hex,
    tenant_used_bytes,
    upload_chunk,
    upload_complete,
    upload_start,
    wait_until,
    with_retries,
)

from anvil_trio._proto.anvil.v1 import blob_pb2
from anvil_trio._proto.grpc.health.v1 import health_pb2

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

#: How long a background worker of a test may run at most (a safety net).
WORKER_TIMEOUT = 240.0


class Cluster:
    """The nodes of one test on one fresh database and prefix; :meth:`close` ends them all."""

    def __init__(self, root: Path, pg_url: str, s3_url: str, seaweed: Any) -> None:
        self.root, self.pg_url, self.s3_url, self.seaweed = root, pg_url, s3_url, seaweed
        self.nodes: list[Node] = []
        self.prefix = S3Prefix(s3_url, seaweed.client())
        self.creds: tuple[str, str] = ("", "")

    def start(self, *names: str, app: dict | None = None, **settings: Any) -> list[Node]:
        """Start nodes ``names`` at once with TOML ``settings``; return them once all listen.
        With ``app`` (``make_app`` keyword arguments), the admin CLI creates the tenant ``t1``
        and its app while they start (:attr:`creds`)."""
        fresh = [Node(name, self.root, metadata_url=self.pg_url, blob_url=self.s3_url,
                      s3_endpoint=self.seaweed.endpoint, settings=settings) for name in names]
        self.nodes.extend(fresh)
        if app is not None:
            self.creds = make_app(self.pg_url, **app)
        for node in fresh:
            node.wait_ready()
        return fresh

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
def cluster(tmp_path, pg_url, s3_url, seaweed_server):
    """A :class:`Cluster` on a fresh database and S3 prefix; every node is ended afterwards."""
    c = Cluster(tmp_path, pg_url, s3_url, seaweed_server)
    try:
        yield c
    finally:
        c.close()


def run_all(*fns: Callable[[], Any], timeout: float = WORKER_TIMEOUT) -> list[Any]:
    """Run ``fns`` in threads at once; their results in order (the first error is raised)."""
    with concurrent.futures.ThreadPoolExecutor(len(fns)) as pool:
        futures = [pool.submit(fn) for fn in fns]
        return [f.result(timeout=timeout) for f in futures]


def assert_object(client: Client, bucket: str, key: str, data: bytes) -> None:
    """``key`` reads back as ``data`` through ``client`` (head, get)."""
    info = client.head(bucket, key)
    assert (info.size, info.etag) == (len(data), sha256_hex(data)), key
    info, got = client.get(bucket, key)
    assert (info.size, info.etag) == (len(data), sha256_hex(data)), key
    assert len(got) == len(data) and sha256_hex(got) == sha256_hex(data), key


# ----------------------------------------------------------------------------- 1. visibility


def test_an_object_put_on_one_node_is_readable_on_another_at_once(cluster):
    """Every object A acknowledged is at once headable, gettable and listed on B, with its bytes,
    while A keeps putting more."""
    a, b = cluster.start("a", "b", app={})
    creds = cluster.creds
    putters = [Client(a, *creds) for _ in range(2)]
    reader = Client(b, *creds)
    putters[0].create_bucket("shared")
    sizes = [0, 1, 1000, 64 * KiB, MiB + 3, 5 * MiB, 9 * MiB + 5]
    acked: collections.deque = collections.deque()
    arrived = threading.Semaphore(0)
    total = len(putters) * len(sizes)

    def put(worker: int) -> None:
        try:
            for index, size in enumerate(sizes):
                key, data = f"w{worker}/obj-{index}", content(100 * worker + index, size)
                reply = putters[worker].put("shared", key, data)
                assert (reply.etag, reply.size) == (sha256_hex(data), size)
                acked.append((key, data))
                arrived.release()
        except BaseException:
            acked.append(None)  # stop the reader at once: this putter's error is the news
            arrived.release()
            raise

    def read() -> int:
        for _ in range(total):
            assert arrived.acquire(timeout=WORKER_TIMEOUT), "a putter hung"
            item = acked.popleft()
            if item is None:
                return 0
            key, data = item
            # No retry, no wait: the acknowledgement on A is all B needs.
            assert_object(reader, "shared", key, data)
            listed = {o.object_key: o for o in reader.list("shared", prefix=key)}
            assert key in listed and listed[key].size == len(data)
            assert listed[key].etag == sha256_hex(data)
        return total

    *_, checked = run_all(lambda: put(0), lambda: put(1), read)
    assert checked == total
    everything = {o.object_key: o.size for o in reader.list("shared")}
    assert everything == {f"w{w}/obj-{i}": s for w in range(2) for i, s in enumerate(sizes)}


# ----------------------------------------------------------------------------- 2. tokens


def test_tokens_of_one_node_work_on_every_node_across_a_key_rotation(cluster):
    """A token from A works on B; after ``admin keys rotate`` a token B signs with the new key
    works on A, and the tokens issued before the rotation still work on both."""
    a, b = cluster.start("a", "b", key_poll_interval=0.5, app={})
    creds = cluster.creds
    ca, cb = Client(a, *creds), Client(b, *creds)
    ca.create_bucket("tokens")
    old_a, old_b = ca.fetch_token(), cb.fetch_token()
    old_kid = jwt_kid(old_a)
    assert jwt_kid(old_b) == old_kid  # the nodes share one ring
    assert cb.list_buckets(token=old_a) == ["tokens"]
    assert ca.list_buckets(token=old_b) == ["tokens"]

    new_kid = rotate_keys(cluster.pg_url, retire_after=3600)
    assert new_kid != old_kid

    def signed_with_new_key(client: Client) -> str | None:
        token = client.fetch_token()
        return token if jwt_kid(token) == new_kid else None

    new_b = wait_until(lambda: signed_with_new_key(cb), timeout=60, what="B to sign with the new key")
    new_a = wait_until(lambda: signed_with_new_key(ca), timeout=60, what="A to sign with the new key")
    assert ca.list_buckets(token=new_b) == ["tokens"]
    assert cb.list_buckets(token=new_a) == ["tokens"]
    for token in (old_a, old_b):
        for client in (ca, cb):
            assert client.list_buckets(token=token) == ["tokens"]


# ----------------------------------------------------------------------------- 3. quota


def test_a_quota_holds_under_concurrent_puts_on_both_nodes(cluster):
    """Concurrent puts on two nodes that together ask for more than the quota: the stored total
    never exceeds it, equals the puts that succeeded, and the rest got RESOURCE_EXHAUSTED."""
    size, per_node = 256 * KiB, 8
    quota = 5 * size + size // 2  # room for exactly 5 of the 16
    a, b = cluster.start("a", "b", app={"quota_bytes": quota})
    creds = cluster.creds
    clients = {"a": Client(a, *creds), "b": Client(b, *creds)}
    clients["a"].create_bucket("quota")
    barrier = threading.Barrier(2 * per_node, timeout=CALL_TIMEOUT)
    done = threading.Event()
    samples: list[tuple[int, int]] = []

    def put(node: str, index: int) -> tuple[str, grpc.StatusCode]:
        key = f"{node}-{index}"
        data = content(300 + 100 * "ab".index(node) + index, size)
        barrier.wait()
        code = rpc_code(lambda: clients[node].put("quota", key, data))
        return key, code

    def sample() -> None:
        while not done.is_set():
            used = tenant_used_bytes(cluster.pg_url, "t1")
            listed = sum(o.size for o in clients["b"].list("quota"))
            samples.append((used, listed))
            assert used <= quota and listed <= quota, (used, listed)
            time.sleep(0.05)

    with concurrent.futures.ThreadPoolExecutor(2 * per_node + 1) as pool:
        sampler = pool.submit(sample)
        puts = [pool.submit(put, node, i) for node in "ab" for i in range(per_node)]
        results = [f.result(timeout=WORKER_TIMEOUT) for f in puts]
        done.set()
        sampler.result(timeout=WORKER_TIMEOUT)

    codes = collections.Counter(code for _, code in results)
    assert set(codes) <= {OK, RESOURCE_EXHAUSTED}, codes
    ok = {key for key, code in results if code == OK}
    assert len(ok) == quota // size, codes
    listed = {o.object_key: o.size for o in clients["a"].list("quota")}
    assert listed == {key: size for key in ok}
    assert tenant_used_bytes(cluster.pg_url, "t1") == len(ok) * size
    assert samples  # the sampler really looked while the puts ran


# ----------------------------------------------------------------------------- 4. dedup


def test_the_same_content_is_stored_once_across_nodes(cluster):
    """The same content put on A and on B under different keys and uploaded as a blob on both,
    all at once, ends up as one object in the S3 prefix (the losers' copies are deleted)."""
    a, b = cluster.start("a", "b", app={})
    creds = cluster.creds
    ca, cb = Client(a, *creds), Client(b, *creds)
    ca.create_bucket("dedup")
    contents = {"small": content(40, 3 * MiB + 1), "large": content(41, 10 * MiB + 7)}
    barrier = threading.Barrier(4 * len(contents), timeout=CALL_TIMEOUT)

    def call(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            barrier.wait()
            return fn()
        return run

    calls = []
    for name, data in contents.items():
        calls += [call(lambda n=name, d=data: ca.put("dedup", f"a-{n}", d)),
                  call(lambda n=name, d=data: cb.put("dedup", f"b-{n}", d)),
                  call(lambda d=data: ca.upload(d)),
                  call(lambda d=data: cb.upload(d))]
    results = run_all(*calls)
    for index, data in enumerate(contents.values()):
        put_a, put_b, up_a, up_b = results[4 * index:4 * index + 4]
        assert put_a.etag == put_b.etag == sha256_hex(data)
        assert up_a.key == up_b.key == blob_key(data)
        # The tenant held that blob already for exactly one of the two uploads.
        assert sorted([up_a.deduplicated, up_b.deduplicated]) == [False, True]

    wanted = collections.Counter(sha256_hex(d) for d in contents.values())

    def settled() -> dict[str, str] | None:
        held = cluster.prefix.digests()
        return held if collections.Counter(held.values()) == wanted else None

    held = wait_until(settled, timeout=60, interval=0.5, what="one stored object per content")
    rows = dict(pg_query(cluster.pg_url, "SELECT digest, refcount FROM blobs"))
    # Two object versions and one tenant blob reference each content.
    assert rows == {digest: 3 for digest in wanted}
    assert blob_locations(cluster.pg_url) == held
    for name, data in contents.items():
        assert_object(ca, "dedup", f"b-{name}", data)
        assert_object(cb, "dedup", f"a-{name}", data)
        assert ca.get_blob(blob_key(data)) == data
        assert cb.get_blob(blob_key(data)) == data


# ----------------------------------------------------------------------------- 5. resume


def test_an_upload_started_on_one_node_is_resumed_on_another(cluster):
    """An Upload dropped on A after an ack resumes on B from the acked count and completes with
    the right key; A then serves the blob's bytes."""
    a, b = cluster.start("a", "b", app={})
    creds = cluster.creds
    ca, cb = Client(a, *creds), Client(b, *creds)
    data = content(50, 9 * MiB + 123)
    sent = 5 * MiB

    pipe = Pipe()
    acks = ca.uploads.Upload(pipe, metadata=ca.md(), timeout=CALL_TIMEOUT)
    pipe.put(upload_start(len(data)))
    first = next(acks)
    upload_id = first.upload_id
    assert upload_id and first.received_bytes == 0
    for offset in range(0, sent, MiB):
        pipe.put(upload_chunk(data[offset:offset + MiB], offset))
    acked = 0
    for ack in acks:  # ends at the call's deadline at the latest
        assert ack.upload_id == upload_id and ack.received_bytes >= acked
        acked = ack.received_bytes
        if acked == sent:
            break
    assert acked == sent
    acks.cancel()  # drop the stream: nothing of it is left unwritten (all of it was acked)
    pipe.close()
    assert cluster.prefix.upload_keys()  # the upload's bytes are in the shared prefix

    resumed = Pipe()
    acks = cb.uploads.Upload(resumed, metadata=cb.md(), timeout=CALL_TIMEOUT)
    resumed.put(upload_start(len(data), upload_id=upload_id))
    first = next(acks)
    assert first.upload_id == upload_id
    held = first.received_bytes
    assert held == sent
    for offset in range(held, len(data), MiB):
        resumed.put(upload_chunk(data[offset:offset + MiB], offset))
    resumed.put(upload_complete(data))
    resumed.close()
    last = list(acks)[-1]
    assert last.HasField("complete")
    assert (last.complete.key, last.complete.size) == (blob_key(data), len(data))
    assert not last.complete.deduplicated
    assert ca.get_blob(blob_key(data)) == data
    stat = ca.blobs.StatBlob(blob_pb2.StatBlobRequest(key=blob_key(data)), metadata=ca.md(),
                             timeout=CALL_TIMEOUT)
    assert stat.size == len(data)
    assert wait_until(lambda: not cluster.prefix.upload_keys(), timeout=30,
                      what="the finished upload's segments to be deleted")


# ----------------------------------------------------------------------------- 6. kill -9


def test_kill_9_mid_put_and_mid_upload_loses_nothing_acknowledged(cluster):
    """kill -9 of A while a put streams and an upload is open: B serves everything A acked, the
    half put is invisible, the upload resumes on B from at least its last ack, and B's reaper
    leaves no unfinished multipart upload and no unreferenced object in the prefix."""
    (a,) = cluster.start("a", app={})
    creds = cluster.creds
    ca = Client(a, *creds)
    ca.create_bucket("crash")
    kept = {f"kept-{i}": content(600 + i, size)
            for i, size in enumerate([0, 1000, MiB + 7, 9 * MiB + 5])}
    old_victim = content(610, 2 * MiB)
    kept["victim"] = old_victim
    for key, data in kept.items():
        assert ca.put("crash", key, data).etag == sha256_hex(data)
    blob = content(611, 2 * MiB + 1)
    assert ca.upload(blob).key == blob_key(blob)

    # Two puts left streaming: a new key and a replacement of "victim", each past its first
    # 8 MiB part (so a multipart upload is open in S3) and short of its end.
    held_puts = []
    for key, data, sent in (("torn", content(612, 24 * MiB), 12 * MiB),
                            ("victim", content(613, 16 * MiB), 9 * MiB)):
        pipe = Pipe()
        future = ca.objects.PutObject.future(pipe, metadata=ca.md(), timeout=CALL_TIMEOUT)
        requests = put_requests("crash", key, data)
        pipe.put(next(requests))
        for _ in range(sent // MiB):
            pipe.put(next(requests))
        held_puts.append((pipe, future))
    # An upload with 3 MiB acked and 2 MiB more sent, not yet acked.
    upload = content(614, 12 * MiB)
    pipe = Pipe()
    acks = ca.uploads.Upload(pipe, metadata=ca.md(), timeout=CALL_TIMEOUT)
    pipe.put(upload_start(len(upload)))
    upload_id = next(acks).upload_id
    for offset in range(0, 3 * MiB, MiB):
        pipe.put(upload_chunk(upload[offset:offset + MiB], offset))
    last_acked = 0
    for ack in acks:
        last_acked = ack.received_bytes
        if last_acked == 3 * MiB:
            break
    for offset in range(3 * MiB, 5 * MiB, MiB):
        pipe.put(upload_chunk(upload[offset:offset + MiB], offset))

    wait_until(lambda: len(cluster.prefix.multipart_uploads()) == 2, timeout=CALL_TIMEOUT,
               what="both streaming puts to have a multipart upload open")
    a.kill()
    for put_pipe, future in held_puts:
        put_pipe.close()
        assert future.exception(timeout=CALL_TIMEOUT) is not None  # it never completed
    pipe.close()
    acks.cancel()
    assert len(cluster.prefix.multipart_uploads()) == 2  # the kill really left them behind

    (b,) = cluster.start("b", temp_max_age=1, reaper_interval=1)
    cb = Client(b, *creds)
    for key, data in kept.items():
        assert_object(cb, "crash", key, data)  # "victim" still holds its old bytes
    assert rpc_code(lambda: cb.head("crash", "torn")) == NOT_FOUND
    assert rpc_code(lambda: cb.get("crash", "torn")) == NOT_FOUND
    assert {o.object_key for o in cb.list("crash")} == set(kept)
    assert len(cb.versions("crash", prefix="victim")) == 1
    assert cb.get_blob(blob_key(blob)) == blob

    resumed = Pipe()
    acks = cb.uploads.Upload(resumed, metadata=cb.md(), timeout=CALL_TIMEOUT)
    resumed.put(upload_start(len(upload), upload_id=upload_id))
    first = next(acks)
    held = first.received_bytes
    assert first.upload_id == upload_id and last_acked <= held <= 5 * MiB
    for offset in range(held, len(upload), MiB):
        resumed.put(upload_chunk(upload[offset:offset + MiB], offset))
    resumed.put(upload_complete(upload))
    resumed.close()
    last = list(acks)[-1]
    assert (last.complete.key, last.complete.size) == (blob_key(upload), len(upload))
    assert cb.get_blob(blob_key(upload)) == upload

    def clean() -> bool:
        prefix = cluster.prefix
        return (not prefix.multipart_uploads() and not prefix.upload_keys()
                and prefix.locations() == set(blob_locations(cluster.pg_url)))

    wait_until(clean, timeout=90, interval=0.5,
               what="B's reaper to abort A's multipart uploads and leave only referenced objects")
    stored = cluster.prefix.digests()
    assert sorted(stored.values()) == sorted(blob_locations(cluster.pg_url)[loc] for loc in stored)
    assert pg_query(cluster.pg_url, "SELECT upload_id FROM uploads") == []
    for key, data in kept.items():
        assert_object(cb, "crash", key, data)


# ----------------------------------------------------------------------------- 7. PostgreSQL


def test_a_postgres_restart_under_load_loses_and_doubles_nothing(cluster, postgres_server):
    """PostgreSQL restarted while clients on both nodes put and get: failed calls are UNAVAILABLE
    (never INTERNAL), their retries succeed, every acked object reads back, one version a key,
    and the tenant's usage equals what is listed."""
    a, b = cluster.start("a", "b", health_probe_interval=0.5, app={})
    creds = cluster.creds
    ca = Client(a, *creds)
    ca.create_bucket("load")
    pairs = [(Client(a, *creds), Client(b, *creds)) for _ in range(2)]
    pairs += [(Client(b, *creds), Client(a, *creds)) for _ in range(2)]
    put_failures: list[tuple[grpc.StatusCode, str]] = []
    get_failures: list[tuple[grpc.StatusCode, str]] = []
    expected: dict[str, bytes] = {}
    lock = threading.Lock()
    progress = [0] * len(pairs)
    restarted = threading.Event()

    def work(worker: int) -> int:
        putter, getter = pairs[worker]
        stop_at = time.monotonic() + WORKER_TIMEOUT - 30
        index = after = 0
        while not (restarted.is_set() and after >= 3):
            assert time.monotonic() < stop_at, "the workload did not finish"
            began_after = restarted.is_set()
            key = f"w{worker}/k{index % 4}"  # keys are put again and again: one version each
            data = content(1000 * worker + index, 1 + (index * 37 * KiB) % (200 * KiB))
            deadline = time.monotonic() + 90
            reply = with_retries(lambda k=key, d=data: putter.put("load", k, d),
                                 deadline=deadline, failures=put_failures)
            assert (reply.etag, reply.size) == (sha256_hex(data), len(data))
            with lock:
                expected[key] = data
            _, got = with_retries(lambda k=key: getter.get("load", k),
                                  deadline=deadline, failures=get_failures)
            assert sha256_hex(got) == sha256_hex(data), key
            index += 1
            progress[worker] = index
            after += began_after
        return index

    try:
        with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
            workers = [pool.submit(work, w) for w in range(len(pairs))]
            try:
                wait_until(lambda: min(progress) >= 2 or any(f.done() for f in workers),
                           timeout=120, what="the workload to get going")
                postgres_server.restart()
            finally:
                restarted.set()
            done = [f.result(timeout=WORKER_TIMEOUT) for f in workers]
    finally:
        if not postgres_server.running:
            postgres_server.start()

    assert all(count >= 5 for count in done), done
    wrong = [f for f in put_failures + get_failures if f[0] != UNAVAILABLE]
    assert not wrong, wrong
    for client in (ca, pairs[-1][0]):
        listed = {o.object_key: (o.size, o.etag) for o in client.list("load")}
        assert listed == {k: (len(d), sha256_hex(d)) for k, d in expected.items()}
        versions = collections.Counter(v.info.object_key for v in client.versions("load"))
        assert set(versions.values()) == {1}, versions
    for key, data in expected.items():
        assert_object(ca, "load", key, data)
    used = tenant_used_bytes(cluster.pg_url, "t1")
    assert used == sum(len(d) for d in expected.values())
    # Every referenced location is stored; replaced bytes were reclaimed by the commits that
    # replaced them, except what a put that failed may have left for the reaper (one each).
    referenced = set(blob_locations(cluster.pg_url))
    stored = cluster.prefix.locations()
    assert referenced <= stored
    assert len(stored - referenced) <= len(put_failures), (stored - referenced, put_failures)


def test_health_is_not_serving_while_postgres_is_down(cluster, postgres_server):
    """With PostgreSQL stopped both nodes report NOT_SERVING and calls get UNAVAILABLE; once it
    is back they report SERVING and serve puts and gets again without a restart."""
    a, b = cluster.start("a", "b", health_probe_interval=0.5, app={})
    creds = cluster.creds
    ca, cb = Client(a, *creds), Client(b, *creds)
    ca.create_bucket("health")
    data = content(70, 10 * KiB)
    ca.put("health", "before", data)
    assert a.health() == SERVING and b.health() == SERVING
    postgres_server.stop()
    try:
        wait_until(lambda: a.health() == NOT_SERVING and b.health() == NOT_SERVING, timeout=60,
                   what="both nodes to report NOT_SERVING")
        # A node retries an unreachable store for a while before it answers: ask at once.
        codes = run_all(lambda: rpc_code(lambda: cb.head("health", "before")),
                        lambda: rpc_code(lambda: ca.put("health", "during", data)))
        assert codes == [UNAVAILABLE] * 2
    finally:
        postgres_server.start()
    wait_until(lambda: a.health() == SERVING and b.health() == SERVING, timeout=60,
               what="both nodes to report SERVING again")
    deadline = time.monotonic() + 60
    with_retries(lambda: cb.put("health", "after", data), deadline=deadline)
    with_retries(lambda: assert_object(ca, "health", "after", data), deadline=deadline)
    assert_object(cb, "health", "before", data)
    assert rpc_code(lambda: ca.head("health", "during")) == NOT_FOUND
    assert a.alive and b.alive


# ----------------------------------------------------------------------------- 8. S3 down


def test_an_s3_outage_is_unavailable_and_heals_without_a_restart(cluster, seaweed_server):
    """With the S3 endpoint down, PutObject, GetObject and Upload get UNAVAILABLE while HeadObject
    and ListObjects (metadata only) still work; once it is back the same node puts and gets."""
    (a,) = cluster.start("a", app={})
    creds = cluster.creds
    ca = Client(a, *creds)
    ca.create_bucket("outage")
    before = content(80, 100 * KiB)
    ca.put("outage", "before", before)
    seaweed_server.stop()
    try:
        # A node retries an unavailable store for a while before it answers: ask all at once.
        codes = run_all(lambda: rpc_code(lambda: ca.put("outage", "during", content(81, 50 * KiB))),
                        lambda: rpc_code(lambda: ca.get("outage", "before")),
                        lambda: rpc_code(lambda: ca.upload(content(82, 50 * KiB))))
        assert codes == [UNAVAILABLE] * 3
        info = ca.head("outage", "before")
        assert (info.size, info.etag) == (len(before), sha256_hex(before))
        assert [o.object_key for o in ca.list("outage")] == ["before"]
    finally:
        seaweed_server.start()
    after = content(83, 3 * MiB)
    deadline = time.monotonic() + 60
    with_retries(lambda: ca.put("outage", "after", after), deadline=deadline)
    assert_object(ca, "outage", "before", before)
    assert_object(ca, "outage", "after", after)
    assert rpc_code(lambda: ca.head("outage", "during")) == NOT_FOUND
    assert a.alive
