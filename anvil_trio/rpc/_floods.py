"""Per-connection budgets for frames that cost the server work but move no call forward.

HTTP/2 lets a client make the server work without asking for anything: open a stream and reset
it at once (Rapid Reset, CVE-2023-44487), send PINGs and SETTINGS that each need an answer,
empty DATA frames, PRIORITY frames, or WINDOW_UPDATEs without end. Every one is legal on its
own, so servers bound how many a connection may send (nghttp2, Envoy, Go's net/http2 and
grpc-go each do); past the bound the connection ends with GOAWAY(ENHANCE_YOUR_CALM).
:class:`FloodGuard` keeps those budgets for one connection. It is sans-IO and pure apart from
the clock it is given; the frame layer (``_h2``) reports frames to it and raises what it says.

Budgets (each a token bucket of ``burst`` tokens refilled at ``rate`` per second, unless noted):

=======================================  ======================================================
frames                                   budget (defaults)
=======================================  ======================================================
streams reset early: RST_STREAM from     ``reset_rate`` per s, burst 10x (200/s, 2,000): a
the client on a live stream, or a        cancelled call costs one; a flood of them is Rapid
stream error the client caused           Reset (or its "MadeYouReset" variant)
PING and SETTINGS (not ACKs)             ``control_rate`` per s, burst 10x (100/s, 1,000)
PRIORITY                                 ``control_rate`` per s, burst 10x
DATA without payload or END_STREAM       ``control_rate`` per s, burst 10x
WINDOW_UPDATE (any stream)               at most 1,000 + 10 per DATA frame the server sent +
                                         10 per stream opened, over the connection's life
=======================================  ======================================================

Invariants:

* A budget only shrinks by frames of its kind and only grows with time (buckets) or with the
  server's own work (the WINDOW_UPDATE allowance); so a well-behaved client, whose such frames
  follow its calls and downloads, never runs out.
* :meth:`FloodGuard.charge` returns the reason once a budget is exceeded, and every call after
  that too (the connection is being closed).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

__all__ = ["FloodGuard", "FloodLimits", "TokenBucket"]


@attrs.define
class TokenBucket:
    """``burst`` tokens, refilled continuously at ``rate`` per second (never above ``burst``).

    Args:
        rate: tokens per second.
        burst: the most tokens held; a full bucket allows ``burst`` events at once.
        tokens: tokens now (default: full).
        updated: the clock reading ``tokens`` refers to.
    """

    rate: float
    burst: float
    tokens: float = attrs.field(default=None)
    updated: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = self.burst

    def take(self, now: float, count: float = 1.0) -> bool:
        """Spend ``count`` tokens at time ``now``; False (and nothing spent) if too few.

        The refill is ``min(burst, tokens + rate * (now - updated))``.
        """
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + self.rate * (now - self.updated))
            self.updated = now
        if self.tokens < count:
            return False
        self.tokens -= count
        return True


@attrs.frozen(kw_only=True)
class FloodLimits:
    """The budgets of :class:`FloodGuard` (see the module doc).

    Args:
        reset_rate: early stream resets per second (burst ``burst_factor`` times that).
        control_rate: PING/SETTINGS, PRIORITY and empty DATA frames per second, each kind its
            own bucket (burst ``burst_factor`` times that).
        burst_factor: bucket size in seconds of ``rate``.
        window_updates_base: WINDOW_UPDATEs allowed before any are earned.
        window_updates_per_data_frame: WINDOW_UPDATEs earned per DATA frame the server sends.
        window_updates_per_stream: WINDOW_UPDATEs earned per stream the client opens.
    """

    reset_rate: float = attrs.field(default=200.0, validator=attrs.validators.gt(0))
    control_rate: float = attrs.field(default=100.0, validator=attrs.validators.gt(0))
    burst_factor: float = attrs.field(default=10.0, validator=attrs.validators.ge(1))
    window_updates_base: int = 1000
    window_updates_per_data_frame: int = 10
    window_updates_per_stream: int = 10


class FloodGuard:
    """One connection's budgets.

    Args:
        limits: the budgets.
        clock: seconds, monotonic (default ``time.monotonic``).
    """

    def __init__(self, limits: FloodLimits | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        limits = limits if limits is not None else FloodLimits()
        self.limits = limits
        self._clock = clock
        now = clock()

        def bucket(rate: float) -> TokenBucket:
            return TokenBucket(rate, rate * limits.burst_factor, updated=now)

        self._resets = bucket(limits.reset_rate)
        self._control = bucket(limits.control_rate)
        self._priority = bucket(limits.control_rate)
        self._empty = bucket(limits.control_rate)
        self._window_updates = 0
        self._window_update_allowance = limits.window_updates_base
        #: Why the connection went over a budget, once it did.
        self.exceeded: str | None = None

    def _spend(self, bucket: TokenBucket, what: str) -> str | None:
        if self.exceeded is None and not bucket.take(self._clock()):
            self.exceeded = (f"too many {what} (over {bucket.rate:g}/s, burst "
                             f"{bucket.burst:g})")
        return self.exceeded

    def early_reset(self) -> str | None:
        """A live stream ended by a reset the client sent or caused; the reason if over budget."""
        return self._spend(self._resets, "streams reset early")

    def control_frame(self) -> str | None:
        """A PING or SETTINGS frame that is not an ACK (each needs an answer)."""
        return self._spend(self._control, "PING/SETTINGS frames")

    def priority_frame(self) -> str | None:
        """A PRIORITY frame."""
        return self._spend(self._priority, "PRIORITY frames")

    def empty_data_frame(self) -> str | None:
        """A DATA frame with no payload that does not end its stream."""
        return self._spend(self._empty, "empty DATA frames")

    def window_update(self) -> str | None:
        """A WINDOW_UPDATE frame."""
        self._window_updates += 1
        if self.exceeded is None and self._window_updates > self._window_update_allowance:
            self.exceeded = (f"too many WINDOW_UPDATE frames ({self._window_updates} for "
                             f"{self._window_update_allowance} allowed by the data sent)")
        return self.exceeded

    def stream_opened(self) -> None:
        """The client opened a stream (earns WINDOW_UPDATE allowance)."""
        self._window_update_allowance += self.limits.window_updates_per_stream

    def data_frames_sent(self, count: int = 1) -> None:
        """The server sent ``count`` DATA frames (earns WINDOW_UPDATE allowance)."""
        self._window_update_allowance += count * self.limits.window_updates_per_data_frame
