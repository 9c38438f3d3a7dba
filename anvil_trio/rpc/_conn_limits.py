"""Per-connection deadlines of the edge (sans-IO): the client preface, idleness, keepalive; and
the rate-limited report of connections refused past ``max_connections``.

:class:`ConnectionTimers` is stepped by its driver (``_edge._Connection``) with the current time;
it never reads a clock and never does I/O. Its rules:

* Until the whole client preface (24 bytes) and the whole first frame after it (SETTINGS, as
  RFC 9113 requires; h2 itself rejects anything else) have arrived, only the preface deadline
  applies: ``started + preface_timeout``. Past it the connection is closed (no GOAWAY: the peer
  never spoke HTTP/2). This is the only rule before the preface; keepalive and idleness start
  once it is complete.
* Keepalive (received bytes are the liveness signal): when nothing was received for
  ``keepalive_interval`` seconds, one PING is due. While it is outstanding any received byte
  answers it (an ACK or any other frame). If nothing arrives within ``keepalive_timeout`` after
  it was sent, the peer is dead: GOAWAY best-effort, then close. At most one PING is
  outstanding.
* Idleness: with no call open for ``idle_timeout`` seconds (counted from when the preface was
  complete or when the last open call ended), GOAWAY(NO_ERROR) and close. Received bytes
  (PINGs, SETTINGS) do not count as activity here; only calls do (grpc-go's
  ``MaxConnectionIdle``).
* ``math.inf`` disables a timer. When several actions are due at once, the first of: preface
  close, dead-peer close, idle close, PING.
"""

from __future__ import annotations

import enum
import math

import attrs

__all__ = ["ConnectionLimits", "ConnectionTimers", "Due", "PrefaceReader", "RefusalReport"]

#: The HTTP/2 client connection preface (RFC 9113 section 3.4).
CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEADER = 9


class Due(enum.Enum):
    """What the driver must do now."""

    NOTHING = "nothing"
    PING = "ping"
    CLOSE_PREFACE = "close: no preface"
    CLOSE_DEAD = "close: keepalive unanswered"
    CLOSE_IDLE = "close: idle"


@attrs.frozen(kw_only=True)
class ConnectionLimits:
    """The per-connection timers, in seconds (``math.inf`` disables one).

    Args:
        preface_timeout: time for the client preface and its first SETTINGS frame to arrive.
        idle_timeout: time a connection may stay without open calls.
        keepalive_interval: time without received bytes before a PING is sent.
        keepalive_timeout: time after that PING for anything to arrive.
    """

    preface_timeout: float = 10.0
    idle_timeout: float = 300.0
    keepalive_interval: float = 60.0
    keepalive_timeout: float = 20.0


class PrefaceReader:
    """Counts received bytes until the client preface and the first frame after it are complete.

    It does not check the bytes (h2 does, and answers a bad preface with a connection error);
    it only knows how long the preface is and reads the first frame's length field.
    """

    __slots__ = ("_head", "_needed", "_seen")

    def __init__(self) -> None:
        self._head = bytearray()
        self._needed: int | None = None
        self._seen = 0

    @property
    def complete(self) -> bool:
        """Whether the preface and the whole first frame have arrived."""
        return self._needed is not None and self._seen >= self._needed

    def feed(self, data: bytes) -> bool:
        """Count ``data`` (the next received bytes); return :attr:`complete`."""
        self._seen += len(data)
        if self._needed is None:
            header_end = len(CLIENT_PREFACE) + _FRAME_HEADER
            self._head += data[: header_end - len(self._head)]
            if len(self._head) >= header_end:
                length = int.from_bytes(self._head[len(CLIENT_PREFACE):len(CLIENT_PREFACE) + 3],
                                        "big")
                self._needed = header_end + length
        return self.complete


@attrs.define
class ConnectionTimers:
    """One connection's deadlines (rules in the module doc).

    Args:
        limits: the timeouts.
        started: the time the connection started speaking HTTP/2 (after any TLS handshake).
    """

    limits: ConnectionLimits
    started: float
    open_calls: int = 0
    preface_done: bool = False
    last_received: float = attrs.field(init=False)
    idle_since: float = attrs.field(init=False)
    ping_sent_at: float | None = None
    _preface: PrefaceReader = attrs.field(factory=PrefaceReader, init=False)

    def __attrs_post_init__(self) -> None:
        self.last_received = self.started
        self.idle_since = self.started

    # --- inputs ---

    def received(self, now: float, data: bytes) -> None:
        """Bytes arrived from the peer."""
        self.last_received = now
        self.ping_sent_at = None
        if not self.preface_done and self._preface.feed(data):
            self.preface_done = True
            self.idle_since = now

    def call_started(self) -> None:
        """A call opened on the connection."""
        self.open_calls += 1

    def call_ended(self, now: float) -> None:
        """A call on the connection ended."""
        self.open_calls -= 1
        if self.open_calls == 0:
            self.idle_since = now

    def ping_sent(self, now: float) -> None:
        """The driver queued the PING that :meth:`poll` asked for."""
        self.ping_sent_at = now

    # --- decision ---

    def poll(self, now: float) -> tuple[Due, float]:
        """What is due at ``now``, and when to poll next if nothing is.

        Returns:
            ``(action, deadline)``: ``deadline`` is the earliest time something can become due
            without further input (``math.inf``: none); it is meaningful only with
            ``Due.NOTHING``. Inputs only move deadlines later, except :meth:`call_ended`
            (the idle deadline starts) and :meth:`ping_sent`.
        """
        limits = self.limits
        if not self.preface_done:
            deadline = self.started + limits.preface_timeout
            return (Due.CLOSE_PREFACE if now >= deadline else Due.NOTHING), deadline
        deadlines = []
        if self.ping_sent_at is not None:
            dead_at = self.ping_sent_at + limits.keepalive_timeout
            if now >= dead_at:
                return Due.CLOSE_DEAD, dead_at
            deadlines.append(dead_at)
        if self.open_calls == 0:
            idle_at = self.idle_since + limits.idle_timeout
            if now >= idle_at:
                return Due.CLOSE_IDLE, idle_at
            deadlines.append(idle_at)
        if self.ping_sent_at is None:
            ping_at = self.last_received + limits.keepalive_interval
            if now >= ping_at:
                return Due.PING, ping_at
            deadlines.append(ping_at)
        return Due.NOTHING, min(deadlines, default=math.inf)


@attrs.define
class RefusalReport:
    """Rate limit for the "connection refused" log line: one line per burst.

    The first refusal is reported at once; later ones are counted and reported with the next
    refusal at least ``interval`` seconds after the last report.

    Args:
        interval: the least time between two reports.
    """

    interval: float = 10.0
    total: int = 0
    _unreported: int = 0
    _last_report: float = -math.inf

    def refused(self, now: float) -> int | None:
        """Count one refusal at ``now``; return how many to report now (``None``: stay quiet)."""
        self.total += 1
        self._unreported += 1
        if now - self._last_report < self.interval:
            return None
        count, self._unreported = self._unreported, 0
        self._last_report = now
        return count
