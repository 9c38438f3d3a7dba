"""Tools for hostile-client tests against a server subprocess: a legitimate client that keeps
measuring while an attack runs (:class:`LegitMonitor`), the server's memory and CPU from /proc,
and attack connections that send raw HTTP/2 bytes on 127.0.0.1 in bounded loops.

Every attack loop here is bounded twice, by a frame count and by seconds, and stops as soon as
the server closes the connection; nothing here connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import struct
import threading
import time
from pathlib import Path
from typing import Self

import grpc
import trio
from _h2client import PREFACE
from hpack import Encoder

from anvil_trio._proto.anvil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    bucket_pb2,
    bucket_pb2_grpc,
)
from anvil_trio._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

MiB = 1 << 20

# Frame types and error codes (RFC 9113 sections 6 and 7).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x2, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
PROTOCOL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x1, 0x6, 0x9, 0xB
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5


# ---------------------------------------------------------------- the server process


def rss_of(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def cpu_seconds_of(pid: int) -> float:
    """User plus system CPU seconds ``pid`` has used (/proc/PID/stat fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_config(path: Path, **keys) -> Path:
    """Write ``keys`` as a flat TOML file of Config fields (numbers, booleans, strings)."""
    lines = []
    for name, value in keys.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        lines.append(f"{name} = {text}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def record_figures(name: str, figures: dict) -> None:
    """Print one attack's measured figures; also append them as a JSON line to the file named
    by ``ANVIL_ATTACK_FIGURES`` when that is set (for before/after tables)."""
    line = json.dumps({"attack": name, **figures}, sort_keys=True, default=str)
    print(f"ATTACK-FIGURES {line}")
    target = os.environ.get("ANVIL_ATTACK_FIGURES")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")


# ---------------------------------------------------------------- the legitimate client


def open_legit_channel(port: int) -> grpc.Channel:
    """A grpcio channel of its own (never sharing a subchannel with another channel)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                    options=[("grpc.use_local_subchannel_pool", 1)])
    grpc.channel_ready_future(channel).result(timeout=30)
    return channel


def get_token(channel, client_id: str, client_secret: str) -> tuple[tuple[str, str], ...]:
    """Call metadata with a fresh bearer token."""
    reply = auth_pb2_grpc.AuthServiceStub(channel).GetAccessToken(
        auth_pb2.GetAccessTokenRequest(client_id=client_id, client_secret=client_secret),
        timeout=30)
    return (("authorization", f"Bearer {reply.access_token}"),)


def list_buckets_code(channel, metadata, timeout: float = 5.0) -> grpc.StatusCode:
    try:
        bucket_pb2_grpc.BucketServiceStub(channel).ListBuckets(
            bucket_pb2.ListBucketsRequest(), metadata=metadata, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


class LegitMonitor:
    """A well-behaved client on its own connection, measuring while an attack runs.

    As a context manager: on entry it connects, takes a token and records the server's RSS as
    the baseline; then one thread sends a health Check every ``interval`` seconds (recording each
    latency; a Check that fails counts as an error) and a ListBuckets every ``list_interval``
    seconds, and another samples the server's RSS every 50 ms. On exit (never sooner than
    ``min_seconds`` after entry, so even a short attack has a measured window) both stop and
    one last ListBuckets is made.

    Attributes:
        latencies: seconds per health Check, in order.
        errors: status codes of the health Checks that failed.
        list_codes: status codes of every ListBuckets (the last is the one made on exit).
        metadata: the call metadata with the monitor's token (usable after exit).
    """

    def __init__(self, port: int, pid: int, *, client_id: str, client_secret: str,
                 interval: float = 0.02, list_interval: float = 0.25,
                 min_seconds: float = 1.0) -> None:
        self.port, self.pid = port, pid
        self._credentials = (client_id, client_secret)
        self.interval, self.list_interval = interval, list_interval
        self.min_seconds = min_seconds
        self._entered = 0.0
        self.latencies: list[float] = []
        self.errors: list[grpc.StatusCode] = []
        self.list_codes: list[grpc.StatusCode] = []
        self.rss_samples: list[int] = []
        self.rss_base = 0
        self.metadata: tuple[tuple[str, str], ...] = ()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.channel = None

    def __enter__(self) -> Self:
        self.channel = open_legit_channel(self.port)
        self.metadata = get_token(self.channel, *self._credentials)
        health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        self.rss_base = rss_of(self.pid)
        self._entered = time.monotonic()
        self._threads = [threading.Thread(target=self._checks, daemon=True),
                         threading.Thread(target=self._sample_rss, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.wait(max(0.0, self._entered + self.min_seconds - time.monotonic()))
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        try:
            self.list_codes.append(list_buckets_code(self.channel, self.metadata))
        finally:
            self.channel.close()

    def _checks(self) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)
        last_list = time.monotonic()
        while not self._stop.wait(self.interval):
            started = time.perf_counter()
            try:
                health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError as exc:
                self.errors.append(exc.code())
            self.latencies.append(time.perf_counter() - started)
            if time.monotonic() - last_list >= self.list_interval:
                self.list_codes.append(list_buckets_code(self.channel, self.metadata))
                last_list = time.monotonic()

    def _sample_rss(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.rss_samples.append(rss_of(self.pid))
            except (OSError, ValueError):
                return  # the server exited; the caller's checks say so

    @property
    def rss_growth(self) -> int:
        """Peak RSS during the run minus the baseline, in bytes."""
        return max(self.rss_samples, default=self.rss_base) - self.rss_base

    def figures(self) -> dict:
        ordered = sorted(self.latencies)
        return {
            "health_checks": len(ordered),
            "health_errors": len(self.errors),
            "health_p50_ms": round(statistics.median(ordered) * 1000, 1) if ordered else None,
            "health_max_ms": round(ordered[-1] * 1000, 1) if ordered else None,
            "list_buckets": f"{sum(c == grpc.StatusCode.OK for c in self.list_codes)}"
                            f"/{len(self.list_codes)} ok",
            "rss_base_mib": round(self.rss_base / MiB, 1),
            "rss_growth_mib": round(self.rss_growth / MiB, 1),
        }

    def problems(self, *, p50: float = 0.2, max_latency: float = 1.0,
                 rss_bound: int = 100 * MiB) -> list[str]:
        """What went wrong for the legitimate client (empty when it was served throughout)."""
        found = []
        if len(self.latencies) < 5:
            found.append(f"only {len(self.latencies)} health checks ran")
        if self.errors:
            found.append(f"health checks failed: {sorted({c.name for c in self.errors})}")
        if self.latencies:
            median, worst = statistics.median(self.latencies), max(self.latencies)
            if median >= p50:
                found.append(f"health p50 {median * 1000:.0f} ms >= {p50 * 1000:.0f} ms")
            if worst >= max_latency:
                found.append(f"health max {worst * 1000:.0f} ms >= {max_latency * 1000:.0f} ms")
        bad = [c.name for c in self.list_codes if c != grpc.StatusCode.OK]
        if not self.list_codes or bad:
            found.append(f"ListBuckets failed: {bad or 'never ran'}")
        if self.rss_growth >= rss_bound:
            found.append(f"server RSS grew {self.rss_growth / MiB:.1f} MiB "
                         f">= {rss_bound / MiB:.0f} MiB")
        return found


# ---------------------------------------------------------------- raw frames


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame, serialised as given (no checks at all)."""
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") \
        + payload


def settings_frame(settings: dict[int, int] | None = None) -> bytes:
    payload = b"".join(struct.pack(">HI", k, v) for k, v in (settings or {}).items())
    return frame(SETTINGS, 0, 0, payload)


def rst_frame(sid: int, code: int = 0x8) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def ping_frame(data: bytes = b"attack!!") -> bytes:
    return frame(PING, 0, 0, data)


def window_update_frame(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def priority_frame(sid: int, depends_on: int = 0) -> bytes:
    return frame(PRIORITY, 0, sid, struct.pack(">IB", depends_on, 15))


def grpc_message(payload: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


class HeaderBlocks:
    """HPACK blocks for one connection: the first block for a header list indexes it, later
    ones are the (constant) indexed form, so a flood can repeat one byte string."""

    def __init__(self) -> None:
        self.encoder = Encoder()

    def block(self, headers) -> bytes:
        return self.encoder.encode(headers)

    def repeatable(self, headers) -> tuple[bytes, bytes]:
        """(first block, block valid for every later use of the same list)."""
        first = self.encoder.encode(headers)
        return first, self.encoder.encode(headers)


class FrameReader:
    """Parses what the server sends without answering anything (no SETTINGS ACK)."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, int, int, bytes]] = []
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        self._buffer += data
        new = []
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                break
            ftype, flags = self._buffer[3], self._buffer[4]
            sid = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            new.append((ftype, flags, sid, bytes(self._buffer[9:9 + length])))
            del self._buffer[:9 + length]
        self.frames.extend(new)
        return new

    def first(self, ftype: int, *, ack: bool | None = None):
        for f in self.frames:
            if f[0] == ftype and (ack is None or bool(f[1] & ACK) == ack):
                return f
        return None

    @property
    def goaway_code(self) -> int | None:
        goaway = self.first(GOAWAY)
        return None if goaway is None else struct.unpack(">I", goaway[3][4:8])[0]

    def server_settings(self) -> dict[int, int] | None:
        found = self.first(SETTINGS, ack=False)
        if found is None:
            return None
        payload = found[3]
        return {struct.unpack(">H", payload[i:i + 2])[0]: struct.unpack(">I", payload[i + 2:i + 6])[0]
                for i in range(0, len(payload), 6)}


class AttackConnection:
    """One raw HTTP/2 connection for attacks.

    ``send`` returns False once the server has closed the connection; ``pump`` reads and parses
    one chunk (and, with ``ack_settings``, acknowledges the server's SETTINGS like a real client).

    Attributes:
        reader: every frame received.
        closed_at / goaway_at: ``trio.current_time()`` when the connection was found closed, when
            GOAWAY arrived (``None`` until then).
        sent_frames: frames counted by :meth:`flood`.
    """

    def __init__(self, stream: trio.SocketStream, *, ack_settings: bool) -> None:
        self.stream = stream
        self.ack_settings = ack_settings
        self.reader = FrameReader()
        self.closed_at: float | None = None
        self.goaway_at: float | None = None
        self.started = trio.current_time()
        self.sent_frames = 0
        self._send_lock = trio.StrictFIFOLock()  # the flood and the SETTINGS ACKs share it

    @classmethod
    async def connect(cls, port: int, *, settings: dict[int, int] | None = None,
                      rcvbuf: int | None = None, preface: bool = True,
                      ack_settings: bool = True) -> AttackConnection:
        """Connect to 127.0.0.1:``port``; with ``rcvbuf`` the socket's receive buffer is set
        that small before connecting (a peer that will not read)."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        conn = cls(trio.SocketStream(sock), ack_settings=ack_settings)
        if preface:
            await conn.send(PREFACE + settings_frame(settings))
        return conn

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def _mark_closed(self) -> None:
        if self.closed_at is None:
            self.closed_at = trio.current_time()

    async def send(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            async with self._send_lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._mark_closed()
            return False
        return True

    async def pump(self) -> bool:
        """Read one chunk; False once the server closed (EOF or reset)."""
        if self.closed:
            return False
        try:
            data = await self.stream.receive_some(1 << 16)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if not data:
            self._mark_closed()
            return False
        for ftype, flags, _, _ in self.reader.feed(data):
            if ftype == GOAWAY and self.goaway_at is None:
                self.goaway_at = trio.current_time()
            elif ftype == SETTINGS and not flags & ACK and self.ack_settings:
                await self.send(frame(SETTINGS, ACK, 0))
        return True

    async def wait_closed(self, timeout: float) -> bool:
        """Read (and drop) everything until the server closes or ``timeout`` passes."""
        with trio.move_on_after(timeout):
            while await self.pump():
                pass
        return self.closed

    async def read_until(self, predicate, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not predicate(self):
                if not await self.pump():
                    break
        return predicate(self)

    async def flood(self, batch, *, max_frames: int, seconds: float, read: bool = True) -> None:
        """Send ``batch(i)`` (bytes holding a count of frames, returned as ``(bytes, n)``) until
        ``max_frames`` frames went out, ``seconds`` passed or the server closed. With ``read``,
        the server's frames are read meanwhile; without, the socket is never read."""
        async with trio.open_nursery() as nursery:
            if read:
                nursery.start_soon(self._read_forever)
            with trio.move_on_after(seconds):
                while self.sent_frames < max_frames and not self.closed \
                        and self.goaway_at is None:
                    data, count = batch(self.sent_frames)
                    if not await self.send(data):
                        break
                    self.sent_frames += count
                    await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()

    async def _read_forever(self) -> None:
        while await self.pump():
            pass

    def outcome(self) -> dict:
        """GOAWAY code, and seconds from connecting to GOAWAY and to the close."""
        def since(at):
            return None if at is None else round(at - self.started, 3)
        return {"frames_sent": self.sent_frames, "goaway_code": self.reader.goaway_code,
                "seconds_to_goaway": since(self.goaway_at), "seconds_to_close": since(self.closed_at)}

    async def aclose(self) -> None:
        await self.stream.aclose()

