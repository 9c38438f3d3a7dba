"""Which received HTTP/2 frames reach h2: the edge's own record of every client stream's state.

h2 3.x (pinned by purerpc) forgets how a stream closed once a newer stream opens, and then
treats a frame every busy client sends -- a WINDOW_UPDATE or RST_STREAM for a stream the
server has just ended -- as a connection error, failing every call on the connection. It also
turns more streams than ``SETTINGS_MAX_CONCURRENT_STREAMS`` and a malformed request header into
connection errors. :class:`StreamGate` decides instead, before h2 sees a frame, from a record
of its own: the highest stream id the client used, the streams still live (and which side has
ended each), and the streams the server reset recently. It is sans-IO: the caller (``_h2``)
feeds it frame facts and carries out its decision.

Rules, server side (the client opens odd streams; the server opens none), after RFC 9113:

=========================  =====================================================================
frame on stream S != 0     decision
=========================  =====================================================================
any, S even                connection error PROTOCOL_ERROR (5.1.1), except PRIORITY (ignored)
HEADERS, S new (> highest) opens S, unless the live streams are at the limit: then RST_STREAM
                           REFUSED_STREAM (5.1.2) and S counts as reset by us
HEADERS, S live            trailers: passed if they end the stream; after the client ended S,
                           RST_STREAM STREAM_CLOSED (5.1); without END_STREAM, RST_STREAM
                           PROTOCOL_ERROR (8.1)
HEADERS, S closed          ignored if we reset S recently (5.1 "closed"); otherwise connection
                           error PROTOCOL_ERROR (a stream id used again or out of order, 5.1.1)
DATA, S idle (> highest)   connection error PROTOCOL_ERROR (5.1 "idle")
DATA, S live               passed; after the client ended S, RST_STREAM STREAM_CLOSED (5.1)
DATA, S closed             counted against the connection window and dropped; ignored if we
                           reset S recently, otherwise answered once with RST_STREAM
                           STREAM_CLOSED (6.1)
WINDOW_UPDATE, S idle      connection error PROTOCOL_ERROR (5.1 "idle")
WINDOW_UPDATE, S live      passed; an increment of 0 is RST_STREAM PROTOCOL_ERROR (6.9)
WINDOW_UPDATE, S closed    ignored (6.9: MUST NOT be treated as an error)
RST_STREAM, S idle         connection error PROTOCOL_ERROR (6.4)
RST_STREAM, S live         passed (the call is cancelled)
RST_STREAM, S closed       ignored (5.1 "closed")
PRIORITY, any S            ignored (5.3.2: priority signals are advisory); depending on itself
                           is RST_STREAM PROTOCOL_ERROR (5.3.1)
=========================  =====================================================================

"Idle" means a stream id above the highest the client used; every odd id at or below it that is
not live is closed (5.1.1: using a new id implicitly closes the lower idle ones). A dropped
HEADERS frame is still HPACK-decoded and a dropped DATA frame still counted against the
connection window by the caller (the "minimal processing" of 5.1). Streams reset by us are
remembered up to ``remember_resets``, the oldest forgotten first; a DATA frame for one forgotten
gets one RST_STREAM STREAM_CLOSED, which clients ignore.

Invariants:

* A stream is live from the HEADERS that opened it until both sides ended it or either side
  reset it; ``open_streams`` counts exactly the live ones, and never exceeds
  ``max_concurrent_streams``.
* Every decision for a frame on a live stream that resets the stream says so (``live``), so
  the caller can end that stream's call.
* Connection errors are decided only for the frames the table above names.
"""

from __future__ import annotations

import collections
import enum

import attrs
from h2.errors import ErrorCodes

__all__ = ["Action", "Decision", "PASS", "StreamGate"]

_REMOTE_ENDED = 1
_LOCAL_ENDED = 2
_BOTH_ENDED = _REMOTE_ENDED | _LOCAL_ENDED


class Action(enum.Enum):
    """What the caller does with a frame."""

    #: Hand the frame to h2.
    PASS = "pass"
    #: Drop it (after the minimal processing: HPACK decode, connection window).
    DROP = "drop"
    #: Drop it and send RST_STREAM with ``Decision.code`` (a stream error).
    RESET = "reset"
    #: The stream was refused (RST_STREAM REFUSED_STREAM): never processed, safe to retry.
    REFUSE = "refuse"
    #: A connection error: GOAWAY with ``Decision.code``, then close.
    CONNECTION_ERROR = "connection-error"


@attrs.frozen
class Decision:
    """The gate's answer for one frame.

    Attributes:
        action: what to do.
        code: the error code for RESET, REFUSE and CONNECTION_ERROR.
        reason: why, for the log (and GOAWAY debug data).
        live: the frame was for a live stream that this decision resets: its call must end.
    """

    action: Action
    code: ErrorCodes = ErrorCodes.NO_ERROR
    reason: str = ""
    live: bool = False


#: The decision for almost every frame (one shared value: no allocation per frame).
PASS = Decision(Action.PASS)
_DROP = Decision(Action.DROP)


def _connection_error(reason: str) -> Decision:
    return Decision(Action.CONNECTION_ERROR, ErrorCodes.PROTOCOL_ERROR, reason)


class StreamGate:
    """The edge's record of the client's streams, and the decision for each received frame.

    Args:
        max_concurrent_streams: the advertised SETTINGS_MAX_CONCURRENT_STREAMS; a new stream
            past it is refused.
        remember_resets: how many streams reset by us are remembered (their late frames are
            ignored silently).
    """

    def __init__(self, max_concurrent_streams: int, *, remember_resets: int = 4096) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.remember_resets = remember_resets
        #: The highest stream id the client has used (opened, refused or malformed).
        self.highest = 0
        self._live: dict[int, int] = {}
        self._reset: collections.OrderedDict[int, None] = collections.OrderedDict()
        #: Streams refused for being over the limit (a statistic).
        self.refused = 0

    @property
    def open_streams(self) -> int:
        """Live streams: opened and not yet ended by both sides or reset by either."""
        return len(self._live)

    def is_live(self, sid: int) -> bool:
        """Whether ``sid`` is live."""
        return sid in self._live

    # --- received frames ---

    def receive_headers(self, sid: int, end_stream: bool, depends_on: int | None) -> Decision:
        """A HEADERS frame (its CONTINUATIONs merged) on ``sid``.

        Args:
            end_stream: the END_STREAM flag.
            depends_on: the priority dependency when the PRIORITY flag is set, else ``None``.
        """
        if not sid & 1:
            return _connection_error(f"HEADERS on even-numbered stream {sid}")
        state = self._live.get(sid)
        if state is not None:
            if state & _REMOTE_ENDED:
                return self._reset_live(sid, ErrorCodes.STREAM_CLOSED,
                                        f"HEADERS on stream {sid} after the client ended it")
            if not end_stream:
                return self._reset_live(sid, ErrorCodes.PROTOCOL_ERROR,
                                        f"trailers without END_STREAM on stream {sid}")
            if depends_on == sid:
                return self._reset_live(sid, ErrorCodes.PROTOCOL_ERROR,
                                        f"stream {sid} depends on itself")
            self._end_remote(sid, state)
            return PASS
        if sid <= self.highest:
            if sid in self._reset:
                return _DROP
            return _connection_error(f"HEADERS on closed stream {sid} (highest opened "
                                     f"{self.highest})")
        self.highest = sid
        if depends_on == sid:
            self._remember_reset(sid)
            return Decision(Action.RESET, ErrorCodes.PROTOCOL_ERROR,
                            f"stream {sid} depends on itself")
        if len(self._live) >= self.max_concurrent_streams:
            self.refused += 1
            self._remember_reset(sid)
            return Decision(Action.REFUSE, ErrorCodes.REFUSED_STREAM,
                            f"stream {sid} over the limit of {self.max_concurrent_streams} "
                            f"concurrent streams")
        self._live[sid] = _REMOTE_ENDED if end_stream else 0
        return PASS

    def receive_data(self, sid: int, end_stream: bool) -> Decision:
        """A DATA frame on ``sid`` (the caller counts a dropped one against the window)."""
        state = self._live.get(sid)
        if state is not None:
            if state & _REMOTE_ENDED:
                return self._reset_live(sid, ErrorCodes.STREAM_CLOSED,
                                        f"DATA on stream {sid} after the client ended it")
            if end_stream:
                self._end_remote(sid, state)
            return PASS
        if not sid & 1 or sid > self.highest:
            return _connection_error(f"DATA on idle stream {sid}")
        if sid in self._reset:
            return _DROP
        self._remember_reset(sid)
        return Decision(Action.RESET, ErrorCodes.STREAM_CLOSED, f"DATA on closed stream {sid}")

    def receive_window_update(self, sid: int, increment: int) -> Decision:
        """A WINDOW_UPDATE frame on ``sid`` != 0."""
        if sid in self._live:
            if increment == 0:
                return self._reset_live(sid, ErrorCodes.PROTOCOL_ERROR,
                                        f"WINDOW_UPDATE of 0 on stream {sid}")
            return PASS
        if not sid & 1 or sid > self.highest:
            return _connection_error(f"WINDOW_UPDATE on idle stream {sid}")
        return _DROP

    def receive_reset(self, sid: int) -> Decision:
        """A RST_STREAM frame on ``sid`` != 0."""
        if self._live.pop(sid, None) is not None:
            return PASS
        if not sid & 1 or sid > self.highest:
            return _connection_error(f"RST_STREAM on idle stream {sid}")
        return _DROP

    def receive_priority(self, sid: int, depends_on: int) -> Decision:
        """A PRIORITY frame on ``sid`` != 0 (priorities are not used; only checked)."""
        if depends_on != sid:
            return _DROP
        reason = f"stream {sid} depends on itself"
        if sid in self._live:
            return self._reset_live(sid, ErrorCodes.PROTOCOL_ERROR, reason)
        if sid in self._reset:
            return _DROP
        self._remember_reset(sid)
        return Decision(Action.RESET, ErrorCodes.PROTOCOL_ERROR, reason)

    # --- what the server did ---

    def local_end(self, sid: int) -> None:
        """The server sent END_STREAM on ``sid``."""
        state = self._live.get(sid)
        if state is None:
            return
        state |= _LOCAL_ENDED
        if state == _BOTH_ENDED:
            del self._live[sid]
        else:
            self._live[sid] = state

    def reset_sent(self, sid: int) -> None:
        """The server sent RST_STREAM on ``sid``: late frames for it are ignored."""
        self._live.pop(sid, None)
        self._remember_reset(sid)

    def closed(self, sid: int) -> None:
        """``sid`` closed for a reason the gate did not see (h2 reset it itself)."""
        if self._live.pop(sid, None) is not None:
            self._remember_reset(sid)

    # --- helpers ---

    def _end_remote(self, sid: int, state: int) -> None:
        state |= _REMOTE_ENDED
        if state == _BOTH_ENDED:
            del self._live[sid]
        else:
            self._live[sid] = state

    def _reset_live(self, sid: int, code: ErrorCodes, reason: str) -> Decision:
        self._live.pop(sid, None)
        self._remember_reset(sid)
        return Decision(Action.RESET, code, reason, live=True)

    def _remember_reset(self, sid: int) -> None:
        reset = self._reset
        reset[sid] = None
        reset.move_to_end(sid)
        while len(reset) > self.remember_resets:
            reset.popitem(last=False)
