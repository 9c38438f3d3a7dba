"""The server survives hostile clients: each attack runs against ``anvil-trio serve`` in a
subprocess, bounded to a few seconds, while a legitimate client on another connection keeps being
served (health Check p50 < 200 ms and max < 1 s, ListBuckets succeeding), the server's RSS stays
within a stated bound, and the server serves normally afterwards.

Each test's configuration holds only the keys that test needs, written to a TOML file passed
with ``--config``. Measured figures are printed (``ATTACK-FIGURES {...}``) and, when
``ANVIL_ATTACK_FIGURES`` names a file, appended to it as JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time

import attrs
import grpc
import pytest
import trio
from _attack_tools import (
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FRAME_SIZE_ERROR,
    HEADERS,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_FRAME_SIZE,
    AttackConnection,
    HeaderBlocks,
    LegitMonitor,
    MiB,
    cpu_seconds_of,
    frame,
    get_token,
    grpc_message,
    list_buckets_code,
    open_legit_channel,
    ping_frame,
    priority_frame,
    record_figures,
    rst_frame,
    settings_frame,
    window_update_frame,
    write_config,
)
from _h2client import HEALTH_CHECK, PREFACE, RawClient, request_headers
from test_interop import ServerProcess, admin

from anvil_trio._proto.anvil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    bucket_pb2,
    bucket_pb2_grpc,
    object_pb2,
    object_pb2_grpc,
)
from anvil_trio._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

HEAD_OBJECT = "/anvil.v1.ObjectService/HeadObject"
GET_OBJECT = "/anvil.v1.ObjectService/GetObject"
#: Every test's server drains quickly when stopped.
BASE_CONFIG = {"grace_period": 1.0}


@attrs.define
class Attack:
    """One server under attack and the legitimate client measuring it."""

    name: str
    server: ServerProcess
    monitor: LegitMonitor
    figures: dict = attrs.field(factory=dict)

    @property
    def port(self) -> int:
        return self.server.port


@contextlib.contextmanager
def under_attack(tmp_path, name: str, *, rss_bound_mib: float = 100, **config):
    """Start a server with ``config`` (plus :data:`BASE_CONFIG`), run the body with a
    :class:`LegitMonitor` measuring, then check that the legitimate client was served, the RSS
    growth stayed under ``rss_bound_mib`` and the server still serves a fresh client normally.
    The figures are recorded in any case."""
    path = write_config(tmp_path / "attack.toml", **{**BASE_CONFIG, **config})
    try:
        server = ServerProcess(tmp_path / "data", "--config", str(path))
    except AssertionError as exc:
        log = (tmp_path / "data-server.log").read_text(errors="replace")[-2000:]
        raise AssertionError(f"the server did not start with {config}: {log}") from exc
    attack = None
    try:
        monitor = LegitMonitor(server.port, server.process.pid, client_id=server.client_id,
                               client_secret=server.client_secret)
        attack = Attack(name, server, monitor)
        with monitor:
            yield attack
        problems = monitor.problems(rss_bound=int(rss_bound_mib * MiB))
        if not server.alive:
            problems.append(f"the server exited with {server.process.returncode}")
        else:
            problems += serves_normally(server, monitor.metadata)
        attack.figures["after"] = "ok" if not problems else "; ".join(problems)
        assert not problems, problems
    finally:
        if attack is not None:
            record_figures(name, {**attack.monitor.figures(), **attack.figures})
        server.stop()


def serves_normally(server: ServerProcess, metadata) -> list[str]:
    """A new connection is served: health SERVING and a ListBuckets with a valid token."""
    try:
        channel = open_legit_channel(server.port)
    except grpc.FutureTimeoutError:
        return ["a new client could not connect after the attack"]
    try:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=10).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            return [f"health after the attack: {status}"]
        code = list_buckets_code(channel, metadata, timeout=10)
        return [] if code == grpc.StatusCode.OK else [f"ListBuckets after the attack: {code}"]
    except grpc.RpcError as exc:
        return [f"health after the attack: {exc.code()}"]
    finally:
        channel.close()


def run(async_fn, *args):
    """Run one attack coroutine (in this thread; the monitor runs in its own)."""
    return trio.run(async_fn, *args)


def goaway_is_calm(conn: AttackConnection) -> bool:
    return conn.reader.goaway_code == ENHANCE_YOUR_CALM and conn.closed


# ---------------------------------------------------------------- 1. unauthenticated HEADERS


def test_headers_only_calls_without_a_token_are_refused_at_once(tmp_path):
    """300 HeadObject streams of HEADERS only (no DATA, no token) on one connection are each
    answered UNAUTHENTICATED from the headers alone, and the connection is not closed."""
    sids = [2 * i + 1 for i in range(300)]

    async def hostile(port):
        client = await RawClient.connect(port)
        started = trio.current_time()
        await client.send(*(client.headers_frame(sid, request_headers(HEAD_OBJECT))
                            for sid in sids))
        with trio.move_on_after(10):
            while not all(client.grpc_status(s) for s in sids) and await client.read_some():
                pass
        answered = trio.current_time() - started
        statuses = [client.grpc_status(sid) for sid in sids]
        result = statuses, answered, client.goaway(), client.closed
        await client.aclose()
        return result

    with under_attack(tmp_path, "1 unauthenticated HEADERS-only x300") as ctx:
        statuses, answered, goaway, closed = run(hostile, ctx.port)
        ctx.figures.update(seconds_to_all_answers=round(answered, 3),
                           statuses=sorted(set(map(str, statuses))))
    assert statuses == ["16"] * len(sids), sorted(set(map(str, statuses)))
    assert answered < 5
    assert goaway is None and not closed


# ---------------------------------------------------------------- 2. streams that never read


def _put_object(port, metadata, bucket: str, key: str, size: int) -> None:
    channel = open_legit_channel(port)
    try:
        bucket_pb2_grpc.BucketServiceStub(channel).CreateBucket(
            bucket_pb2.CreateBucketRequest(bucket_name=bucket), metadata=metadata, timeout=30)
        object_pb2_grpc.ObjectServiceStub(channel).PutObject(iter([
            object_pb2.PutObjectRequest(metadata=object_pb2.ObjectMetadata(
                bucket_name=bucket, object_key=key, content_length=size)),
            object_pb2.PutObjectRequest(chunk=os.urandom(size)),
        ]), metadata=metadata, timeout=30)
    finally:
        channel.close()


def test_downloads_that_never_open_their_window_hold_only_a_share_and_are_reset(tmp_path):
    """300 GetObject streams of a 1 MiB object on one connection that never grants flow-control
    window: it holds at most ``connection_call_share`` of the call slots (the rest get
    RESOURCE_EXHAUSTED), each held stream is ended after ``stream_stall_timeout`` (its slot
    free again), and the legitimate client's ListBuckets keeps succeeding meanwhile."""
    max_calls, share, stall = 40, 0.25, 1.0
    allowed = max(1, math.ceil(max_calls * share))
    sids = [2 * i + 1 for i in range(300)]

    async def hostile(port, authorization):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = RawClient(stream)
        # Stream windows of 0: the server may send HEADERS but no DATA byte, ever.
        await client.send_raw(PREFACE + settings_frame({SETTINGS_INITIAL_WINDOW_SIZE: 0}))
        message = grpc_message(object_pb2.GetObjectRequest(
            bucket_name="stall", object_key="big").SerializeToString())
        started = trio.current_time()
        await client.send(*(part for sid in sids for part in (
            client.headers_frame(sid, request_headers(GET_OBJECT, [authorization])),
            client.data_frame(sid, message, end_stream=True))))
        ended_at = {}
        with trio.move_on_after(stall + 8):
            while len(ended_at) < len(sids) and await client.read_some():
                now = trio.current_time() - started
                for sid in sids:
                    if sid not in ended_at and client.ended(sid):
                        ended_at[sid] = now
        result = {sid: (client.grpc_status(sid), client.resets(sid), ended_at.get(sid))
                  for sid in sids}
        # The held slots are free again: a call on the same connection gets one.
        after = 2 * len(sids) + 1
        await client.send(client.headers_frame(after, request_headers(HEAD_OBJECT, [
            authorization])), client.data_frame(after, grpc_message(object_pb2.HeadObjectRequest(
                bucket_name="stall", object_key="absent").SerializeToString()), end_stream=True))
        with trio.move_on_after(5):
            while not client.ended(after) and await client.read_some():
                pass
        await client.aclose()
        return result, client.grpc_status(after)

    config = {"max_concurrent_calls": max_calls, "connection_call_share": share,
              "stream_stall_timeout": stall}
    with under_attack(tmp_path, "2 zero-window GetObject x300", **config) as ctx:
        metadata = ctx.monitor.metadata
        _put_object(ctx.port, metadata, "stall", "big", MiB)
        outcome, later_call = run(hostile, ctx.port, metadata[0])
        held = {sid: v for sid, v in outcome.items() if v[0] != "8"}
        ctx.figures.update(
            refused=sum(v[0] == "8" for v in outcome.values()), held=len(held),
            unanswered=sum(v[2] is None for v in outcome.values()),
            held_ended_after_s=sorted({round(v[2], 1) for v in held.values() if v[2]}),
            held_ended_by=sorted({f"status {v[0]}" if v[0] else f"RST_STREAM {v[1]}"
                                  for v in held.values()}),
            later_call_status=later_call)
    assert all(v[2] is not None for v in outcome.values()), "some streams were never answered"
    assert 1 <= len(held) <= allowed, (len(held), allowed)
    for sid, (status, resets, ended) in held.items():
        # Ended by RST_STREAM, or by trailers with an error status when nothing was sent.
        assert resets or status not in (None, "0"), (sid, status, resets)
        assert stall * 0.5 <= ended <= stall + 5, (sid, ended)
    assert later_call == "5", later_call  # NOT_FOUND: the call got a slot


# ---------------------------------------------------------------- 3. rapid reset


def test_rapid_reset_is_answered_with_enhance_your_calm(tmp_path):
    """HEADERS + RST_STREAM pairs as fast as possible (up to 100,000 streams or 3 s): the server
    sends GOAWAY(ENHANCE_YOUR_CALM) and closes, with bounded memory."""

    async def hostile(port):
        conn = await AttackConnection.connect(port)
        first, again = HeaderBlocks().repeatable(request_headers(HEALTH_CHECK))
        await conn.send(frame(HEADERS, END_HEADERS, 1, first) + rst_frame(1))

        def batch(sent):
            sids = range(2 * sent + 3, 2 * (sent + 500) + 3, 2)
            return b"".join(frame(HEADERS, END_HEADERS, sid, again) + rst_frame(sid)
                            for sid in sids), 500

        await conn.flood(batch, max_frames=100_000, seconds=3)
        await conn.wait_closed(5)
        return conn

    with under_attack(tmp_path, "3 rapid reset") as ctx:
        conn = run(hostile, ctx.port)
        ctx.figures.update(conn.outcome())
        ctx.figures["streams_opened_and_reset"] = ctx.figures.pop("frames_sent")
    assert goaway_is_calm(conn), conn.outcome()


# ---------------------------------------------------------------- 4. floods from a peer that never reads


_UNREAD_FLOODS = {
    "ping": ping_frame(),
    "settings": settings_frame(),
    "window_update": window_update_frame(0, 1),
}


# (The bound on unread replies alone, with the frame budget out of the way, is tested sans-IO
# in test_floods.py: through a socket it needs megabytes of PINGs past the kernel's buffers.)
@pytest.mark.parametrize(("kind", "config"), [
    ("ping", {}), ("settings", {}), ("window_update", {}),
], ids=["ping", "settings", "window_update"])
def test_control_frame_floods_from_a_peer_that_never_reads_end_the_connection(tmp_path, kind,
                                                                               config):
    """A PING / SETTINGS / WINDOW_UPDATE flood from a connection that never reads its socket
    (SO_RCVBUF 4 KiB) ends in GOAWAY(ENHANCE_YOUR_CALM) or a close within seconds; the
    answers the peer never reads stay bounded (RSS)."""
    one = _UNREAD_FLOODS[kind]

    async def hostile(port):
        conn = await AttackConnection.connect(port, rcvbuf=4096, ack_settings=False)
        data = one * 1000
        await conn.flood(lambda sent: (data, 1000), max_frames=500_000, seconds=4, read=False)
        flood_end = trio.current_time() - conn.started
        await conn.wait_closed(4)  # only now is the socket read
        return conn, flood_end

    label = f"4 {kind} flood, never read{', rate unlimited' if config else ''}"
    with under_attack(tmp_path, label, rss_bound_mib=64, **config) as ctx:
        conn, flood_end = run(hostile, ctx.port)
        ctx.figures.update(conn.outcome(), flood_seconds=round(flood_end, 3))
    assert conn.closed and conn.closed_at - conn.started < 8, conn.outcome()
    assert conn.reader.goaway_code in (None, ENHANCE_YOUR_CALM), conn.outcome()


# ---------------------------------------------------------------- 5. empty DATA and PRIORITY floods


@pytest.mark.parametrize("kind", ["empty_data", "priority"])
def test_empty_data_and_priority_floods_get_enhance_your_calm(tmp_path, kind):
    """Empty DATA frames on an open stream, or PRIORITY frames, sent without end: GOAWAY
    (ENHANCE_YOUR_CALM) and a close."""

    async def hostile(port):
        conn = await AttackConnection.connect(port)
        blocks = HeaderBlocks()
        await conn.send(frame(HEADERS, END_HEADERS, 1, blocks.block(request_headers(
            HEALTH_CHECK))))
        if kind == "empty_data":
            data = frame(DATA, 0, 1) * 1000
        else:
            data = b"".join(priority_frame(2 * i + 1) for i in range(1000))
        await conn.flood(lambda sent: (data, 1000), max_frames=200_000, seconds=3)
        await conn.wait_closed(5)
        return conn

    with under_attack(tmp_path, f"5 {kind} flood") as ctx:
        conn = run(hostile, ctx.port)
        ctx.figures.update(conn.outcome())
    assert goaway_is_calm(conn), conn.outcome()


# ---------------------------------------------------------------- 6. frame sizes


def _padded_header_block(size: int) -> bytes:
    """A valid request header block of exactly ``size`` bytes (fresh HPACK context)."""
    for pad in range(size - 200, size):
        block = HeaderBlocks().encoder.encode(
            request_headers(HEALTH_CHECK) + [("x-pad", "p" * pad)], huffman=False)
        if len(block) == size:
            return block
    raise AssertionError(f"no header block of {size} bytes")


def test_frames_past_16_kib_are_a_frame_size_error(tmp_path):
    """The server advertises SETTINGS_MAX_FRAME_SIZE 16384; a HEADERS frame of 16 KiB + 1 is a
    connection error: GOAWAY(FRAME_SIZE_ERROR) and a close."""

    async def hostile(port):
        conn = await AttackConnection.connect(port)
        assert await conn.read_until(lambda c: c.reader.server_settings() is not None, 10)
        await conn.send(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                              _padded_header_block(16385)))
        await conn.wait_closed(5)
        return conn

    with under_attack(tmp_path, "6a 16 KiB + 1 frame") as ctx:
        conn = run(hostile, ctx.port)
        settings = conn.reader.server_settings()
        ctx.figures.update(conn.outcome(), server_settings=settings)
    assert settings.get(SETTINGS_MAX_FRAME_SIZE, 16384) == 16384, settings
    assert conn.reader.goaway_code == FRAME_SIZE_ERROR and conn.closed, conn.outcome()


def test_stalled_16_mib_frames_are_not_buffered(tmp_path):
    """10 connections each send the 9-byte header of a 16 MiB DATA frame and then try to push
    4 MiB of its body and stall: each is ended (GOAWAY(FRAME_SIZE_ERROR) or a close) instead of
    being buffered, and the server's RSS grows by well under what was offered (40 MiB)."""

    async def one(port, conns):
        conn = await AttackConnection.connect(port)
        conns.append(conn)
        blocks = HeaderBlocks()
        await conn.send(frame(HEADERS, END_HEADERS, 1, blocks.block(request_headers(
            HEALTH_CHECK))))
        header = ((1 << 24) - 1).to_bytes(3, "big") + bytes((DATA, 0)) + (1).to_bytes(4, "big")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.wait_closed, 6)
            with trio.move_on_after(2):
                await conn.send(header)
                for _ in range(64):
                    if not await conn.send(b"\0" * 65536):
                        break
            await trio.sleep(2)  # stall with the frame unfinished

    async def hostile(port):
        conns = []
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one, port, conns)
        return conns

    with under_attack(tmp_path, "6b 10 stalled 16 MiB frames", rss_bound_mib=24) as ctx:
        conns = run(hostile, ctx.port)
        ctx.figures.update(goaway_codes=sorted({str(c.reader.goaway_code) for c in conns}),
                           closed=sum(c.closed for c in conns),
                           seconds_to_close_max=max((c.outcome()["seconds_to_close"] or 99)
                                                    for c in conns))
    for conn in conns:
        assert conn.closed and conn.closed_at - conn.started < 4, conn.outcome()
        assert conn.reader.goaway_code in (None, FRAME_SIZE_ERROR), conn.outcome()


@pytest.mark.parametrize("fragments", [(60, 16384), (20_000, 50)],
                         ids=["60x16KiB", "20000x50B"])
def test_a_header_block_past_the_header_list_limit_is_a_connection_error(tmp_path, fragments):
    """One header block sent as many CONTINUATION frames (never END_HEADERS) grows past the
    header-list size limit: GOAWAY(ENHANCE_YOUR_CALM or COMPRESSION_ERROR), a close, bounded
    RSS."""
    count, size = fragments

    async def hostile(port):
        conn = await AttackConnection.connect(port)
        # A valid block: the request headers and one literal header whose value spans it all.
        block = HeaderBlocks().encoder.encode(
            request_headers(HEALTH_CHECK) + [("x-huge", "h" * (count * size))], huffman=False)
        pieces = [block[i:i + size] for i in range(0, len(block), size)]
        await conn.send(frame(HEADERS, 0, 1, pieces[0]))
        rest = pieces[1:]

        def batch(sent):
            part = rest[sent:sent + 200]
            return b"".join(frame(CONTINUATION, 0, 1, p) for p in part), max(1, len(part))

        await conn.flood(batch, max_frames=len(rest), seconds=5)
        await conn.wait_closed(5)
        return conn

    with under_attack(tmp_path, f"6c CONTINUATION {count}x{size}", rss_bound_mib=64) as ctx:
        conn = run(hostile, ctx.port)
        ctx.figures.update(conn.outcome())
    assert conn.closed and conn.reader.goaway_code in (ENHANCE_YOUR_CALM, COMPRESSION_ERROR), \
        conn.outcome()


# ---------------------------------------------------------------- 7. connections that never speak


def test_connections_that_never_send_the_preface_are_closed(tmp_path):
    """300 TCP connections that never send the client preface are closed by the server after
    ``preface_timeout`` (1 s)."""
    preface_timeout = 1.0

    async def hostile(port):
        lifetimes = []

        async def idle(stream, opened):
            with trio.move_on_after(preface_timeout + 6):
                try:
                    while await stream.receive_some(4096):
                        pass
                except trio.BrokenResourceError:
                    pass
                lifetimes.append(trio.current_time() - opened)
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(300):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                nursery.start_soon(idle, stream, trio.current_time())
        return lifetimes

    with under_attack(tmp_path, "7 300 silent connections", preface_timeout=preface_timeout) \
            as ctx:
        lifetimes = run(hostile, ctx.port)
        ctx.figures.update(closed=len(lifetimes),
                           lifetime_max_s=round(max(lifetimes, default=0), 3))
    assert len(lifetimes) == 300, f"only {len(lifetimes)} of 300 were closed"
    assert max(lifetimes) < preface_timeout + 3


# ---------------------------------------------------------------- 8. too many connections


async def _served(client: RawClient, sid: int) -> bool:
    await client.request(sid)
    with trio.move_on_after(10):
        while not client.ended(sid) and await client.read_some():
            pass
    return client.grpc_status(sid) == "0"


def test_connections_past_max_connections_are_closed_at_once(tmp_path):
    """With ``max_connections`` 20 and 20 open (the monitor's and 19 more), 10 more are each
    closed at once without being served, while the 20 keep working; after some close, new
    connections are served again."""
    limit = 20

    async def hostile(port):
        holders = [await RawClient.connect(port) for _ in range(limit - 1)]
        holders_ok = [await _served(c, 1) for c in holders]
        extras = []
        for _ in range(10):
            opened = trio.current_time()
            client = await RawClient.connect(port)
            await client.request(1)
            with trio.move_on_after(3):
                while await client.read_some():
                    pass
            extras.append((client.closed, trio.current_time() - opened,
                           client.grpc_status(1)))
            await client.aclose()
        still_ok = [await _served(c, 3) for c in holders]
        for client in holders[:5]:
            await client.aclose()
        fresh_ok = False
        with trio.move_on_after(5):
            while not fresh_ok:
                fresh = await RawClient.connect(port)
                fresh_ok = await _served(fresh, 1)
                await fresh.aclose()
                await trio.sleep(0.1)
        for client in holders[5:]:
            await client.aclose()
        return holders_ok, extras, still_ok, fresh_ok

    with under_attack(tmp_path, "8 past max_connections", max_connections=limit) as ctx:
        holders_ok, extras, still_ok, fresh_ok = run(hostile, ctx.port)
        ctx.figures.update(extras_closed=sum(e[0] for e in extras),
                           extras_served=sum(e[2] == "0" for e in extras),
                           extra_close_max_s=round(max(e[1] for e in extras), 3))
    assert all(holders_ok)
    for closed, seconds, status in extras:
        assert closed and seconds < 1 and status is None, (closed, seconds, status)
    assert all(still_ok) and fresh_ok


# ---------------------------------------------------------------- 9. secret guessing


def test_secret_guessing_is_refused_quickly_without_scrypt_work(tmp_path):
    """50 wrong-secret GetAccessToken calls for one client id, as fast as possible: after a
    few, each is refused at once with RESOURCE_EXHAUSTED and costs no scrypt (server CPU grows
    far less than 50 checks' worth); a correct secret for another app gets a token promptly."""
    with under_attack(tmp_path, "9 GetAccessToken brute force") as ctx:
        other = json.loads(admin(ctx.server.data_dir, "app", "create", "--tenant", "t1",
                                 "--name", "other", "--json"))
        admin(ctx.server.data_dir, "policy", "grant", "--app", other["client_id"], "*:*")
        channel = open_legit_channel(ctx.port)
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        try:
            # What one secret check costs the server, measured with two real sign-ins.
            before = cpu_seconds_of(ctx.server.process.pid)
            for _ in range(2):
                get_token(channel, other["client_id"], other["client_secret"])
            per_check = (cpu_seconds_of(ctx.server.process.pid) - before) / 2

            attempts = []
            before = cpu_seconds_of(ctx.server.process.pid)
            for i in range(50):
                started = time.perf_counter()
                try:
                    auth.GetAccessToken(auth_pb2.GetAccessTokenRequest(
                        client_id=ctx.server.client_id, client_secret=f"guess-{i}"), timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                attempts.append((code, time.perf_counter() - started))
            guessing_cpu = cpu_seconds_of(ctx.server.process.pid) - before

            started = time.perf_counter()
            get_token(channel, other["client_id"], other["client_secret"])
            other_took = time.perf_counter() - started
        finally:
            channel.close()
        refused = [t for c, t in attempts if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
        first_refused = next((i for i, (c, _) in enumerate(attempts)
                              if c == grpc.StatusCode.RESOURCE_EXHAUSTED), None)
        ctx.figures.update(
            per_check_cpu_ms=round(per_check * 1000, 1),
            guessing_cpu_ms=round(guessing_cpu * 1000, 1),
            codes=sorted({c.name for c, _ in attempts}), refused=len(refused),
            first_refused=first_refused,
            refused_p50_ms=round(statistics.median(refused) * 1000, 1) if refused else None,
            other_app_token_ms=round(other_took * 1000, 1))
    assert all(c in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED)
               for c, _ in attempts), attempts
    assert attempts[0][0] == grpc.StatusCode.UNAUTHENTICATED
    assert first_refused is not None and first_refused <= 10, first_refused
    assert all(c == grpc.StatusCode.RESOURCE_EXHAUSTED for c, _ in attempts[first_refused + 5:])
    assert statistics.median(refused) < 0.05
    assert guessing_cpu < 0.3 * 50 * per_check + 0.3, (guessing_cpu, per_check)
    assert other_took < 1.0


# ---------------------------------------------------------------- 10. control characters


def test_nul_cr_lf_in_a_header_value_reset_only_that_stream(tmp_path):
    """A header value holding NUL, CR or LF is RST_STREAM(PROTOCOL_ERROR) on that stream only;
    the next call on the same connection is served."""
    bad = {1: "a\x00b", 3: "a\rb", 5: "a\nb"}

    async def hostile(port):
        client = await RawClient.connect(port)
        for sid, value in bad.items():
            await client.send(client.headers_frame(sid, raw_headers=request_headers(
                HEALTH_CHECK, [("x-bad", value)])), client.data_frame(sid, end_stream=True))
        with trio.move_on_after(10):
            while not all(client.resets(s) for s in bad) and await client.read_some():
                pass
        resets = {sid: client.resets(sid) for sid in bad}
        statuses = {sid: client.grpc_status(sid) for sid in bad}
        served = await _served(client, 7)
        goaway = client.goaway()
        await client.aclose()
        return resets, statuses, served, goaway

    with under_attack(tmp_path, "10 NUL/CR/LF header values") as ctx:
        resets, statuses, served, goaway = run(hostile, ctx.port)
        ctx.figures.update(resets={str(k): v for k, v in resets.items()})
    assert resets == {sid: [0x1] for sid in bad}, resets
    assert all(s is None for s in statuses.values()), statuses
    assert served and goaway is None
