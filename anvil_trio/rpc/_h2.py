"""h2's server connection with the edge in front: the gate decides which frames h2 sees, and
request headers are checked by the edge (RFC 9113 section 8) before h2 builds a stream.

:class:`EdgeH2Connection` subclasses ``h2.connection.H2Connection`` at two receive points and
the four send points that end a stream:

* ``_receive_frame``: every frame on a stream other than 0 goes to the
  :class:`~._gate.StreamGate` first. Passed frames go on to h2; dropped HEADERS are still
  HPACK-decoded (the decoder's table must stay in step) and dropped DATA is still counted against
  the connection window and credited back (``on_discarded_data``); a stream error is one
  RST_STREAM; a connection error raises :class:`EdgeProtocolError`, which h2's ``receive_data``
  answers with GOAWAY before it re-raises. A stream error on a live stream also yields an
  ``h2.events.StreamReset`` (``remote_reset=False``), so the call above ends.
* ``_receive_headers_frame``: the header block is decoded once, checked by
  :func:`request_header_problem` (malformed: RST_STREAM PROTOCOL_ERROR for that stream only),
  and handed to h2's own processing already decoded. h2's own inbound header validation is off
  (its failures are connection errors).
* ``send_headers``, ``send_data``, ``end_stream``, ``reset_stream``: tell the gate when the
  server ended or reset a stream.
* Frames that cost work but move no call forward (early resets, PING/SETTINGS, PRIORITY, empty
  DATA, WINDOW_UPDATE) are charged to the connection's :class:`~._floods.FloodGuard`; past a
  budget the connection ends with GOAWAY(ENHANCE_YOUR_CALM).

Invariants:

* h2 never sees a frame for a stream the gate considers closed or idle, so h2's own
  (forgetful) closed-stream handling never runs.
* Every connection error raised while receiving is a ``ProtocolError`` with an error code, so
  h2 queues GOAWAY with that code first.
* A stream that h2 closes on its own (a stream-level flow-control error) is reported to the gate.
"""

from __future__ import annotations

import logging
import re

import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hyperframe.frame import (
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from ._floods import FloodGuard, FloodLimits
from ._frames import DataRun
from ._gate import PASS, Action, Decision, StreamGate

__all__ = ["EdgeH2Connection", "EdgeProtocolError", "request_header_problem"]

_OPEN = h2.connection.ConnectionState.SERVER_OPEN

log = logging.getLogger("anvil_trio.rpc")


class EdgeProtocolError(h2.exceptions.ProtocolError):
    """A connection error decided by the edge; h2 answers it with GOAWAY(``error_code``)."""

    def __init__(self, error_code: ErrorCodes, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code


#: Pseudo-header fields a request may carry (RFC 9113 8.3.1; no extended CONNECT).
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
#: Connection-specific fields (RFC 9113 8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
#: A regular field name may not hold controls, space, uppercase, DEL, non-ASCII or a colon.
_BAD_NAME = re.compile(rb"[\x00-\x20\x41-\x5a\x7f-\xff:]")
#: A field value may not hold NUL, CR or LF, nor start or end with whitespace (8.2.1).
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
#: Names already found well-formed (a bounded cache: names repeat on every call).
_GOOD_NAMES: set[bytes] = set()
_GOOD_NAMES_LIMIT = 512


def request_header_problem(headers: list[tuple[bytes, bytes]], *, trailers: bool) -> str | None:
    """Why a request header block is malformed (RFC 9113 8.1.1, 8.2, 8.3), or ``None``.

    Also refuses values that are not UTF-8 (gRPC metadata is ASCII; ``-bin`` values are
    base64), which the layers above cannot represent.

    Args:
        headers: the decoded ``(name, value)`` pairs, as bytes, in order.
        trailers: the block ends a stream whose request headers came before.

    Returns:
        A short reason for the log, or ``None`` when the block is well-formed.
    """
    seen_pseudo: set[bytes] = set()
    regular = False
    authority = host = None
    for name, value in headers:
        if not name:
            return "empty header name"
        if name[0] == 0x3A:  # b":"
            if trailers:
                return f"pseudo-header {name!r} in trailers"
            if regular:
                return f"pseudo-header {name!r} after a regular header"
            if name not in _REQUEST_PSEUDO:
                return f"unknown pseudo-header {name!r}"
            if name in seen_pseudo:
                return f"duplicate pseudo-header {name!r}"
            seen_pseudo.add(name)
            if name == b":authority":
                authority = value
        else:
            regular = True
            if name not in _GOOD_NAMES:
                if _BAD_NAME.search(name):
                    return f"invalid header name {name!r}"
                if name in _CONNECTION_SPECIFIC:
                    return f"connection-specific header {name!r}"
                if name != b"te" and name != b"host" and len(_GOOD_NAMES) < _GOOD_NAMES_LIMIT:
                    _GOOD_NAMES.add(name)
            if name == b"te" and value != b"trailers":
                return f"te header {value!r} (only 'trailers' is allowed)"
            if name == b"host":
                host = value
        if value and _BAD_VALUE.search(value):
            return f"invalid value for header {name!r}"
        if not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return f"value of header {name!r} is not UTF-8"
    if trailers:
        return None
    missing = [p.decode() for p in (b":method", b":scheme", b":path") if p not in seen_pseudo]
    if missing:
        return f"missing pseudo-header(s) {', '.join(missing)}"
    for name, value in headers:
        if name == b":path" and not value:
            return "empty :path"
        if not name.startswith(b":"):
            break
    if authority is not None and host is not None and authority != host:
        return "host header differs from :authority"
    return None


class _Decoded:
    """Stands in for h2's HPACK decoder while h2 processes a block the edge already decoded."""

    __slots__ = ("headers",)

    def __init__(self, headers: list) -> None:
        self.headers = headers

    def decode(self, data, raw: bool = False) -> list:
        return self.headers


class EdgeH2Connection(h2.connection.H2Connection):
    """h2's connection with the gate in front (see the module doc).

    Args:
        config: h2 configuration (server side). Its inbound header validation is turned off.
        max_concurrent_streams: streams past this many live ones are refused.
    """

    def __init__(self, config: h2.config.H2Configuration, *, max_concurrent_streams: int,
                 flood_limits: FloodLimits | None = None) -> None:
        super().__init__(config=config)
        self.config.validate_inbound_headers = False
        self.gate = StreamGate(max_concurrent_streams)
        self.floods = FloodGuard(flood_limits)
        #: Called with the flow-controlled length of every DATA frame the gate dropped, after
        #: it was counted against the connection window (the caller credits it back).
        self.on_discarded_data = lambda length: None
        #: Stream errors sent (a statistic, and for tests).
        self.stream_errors = 0

    # --- receiving ---

    def _receive_frame(self, frame):
        sid = frame.stream_id
        kind = type(frame)
        floods = self.floods
        if not sid:
            if kind is PingFrame or kind is SettingsFrame:
                if "ACK" not in frame.flags:
                    self._calm(floods.control_frame())
            elif kind is WindowUpdateFrame:
                self._calm(floods.window_update())
            return super()._receive_frame(frame)
        gate = self.gate
        if kind is DataFrame or kind is DataRun:
            end_stream = "END_STREAM" in frame.flags
            if not end_stream and not frame.data:
                self._calm(floods.empty_data_frame())
            decision = gate.receive_data(sid, end_stream)
        elif kind is HeadersFrame:
            decision = gate.receive_headers(
                sid, "END_STREAM" in frame.flags,
                frame.depends_on if "PRIORITY" in frame.flags else None,
            )
            if decision is PASS:
                floods.stream_opened()
        elif kind is WindowUpdateFrame:
            self._calm(floods.window_update())
            decision = gate.receive_window_update(sid, frame.window_increment)
        elif kind is RstStreamFrame:
            decision = gate.receive_reset(sid)
            if decision is PASS:  # a live stream reset by the client: Rapid Reset's unit
                self._calm(floods.early_reset())
        elif kind is PriorityFrame:
            self._calm(floods.priority_frame())
            decision = gate.receive_priority(sid, frame.depends_on)
        else:
            return super()._receive_frame(frame)  # PUSH_PROMISE, extensions: h2 decides
        if decision is PASS:
            if (kind is DataFrame or kind is DataRun) and not end_stream:
                events = self._data_fast(frame)
                if events is not None:
                    return events
                if kind is DataRun:  # h2 itself must look: one contiguous payload for it
                    frame.data = frame.payload()
            return self._pass(frame)
        return self._carry_out(frame, decision)

    def _data_fast(self, frame) -> list | None:
        """A DATA frame that does not end a live stream, done as h2 would do it minus its
        state machines (which have nothing to decide for it): both windows are charged and one
        ``DataReceived`` is returned. ``None`` when h2 itself must look (a content-length to
        track, the connection not plainly open)."""
        stream = self.streams.get(frame.stream_id)
        if (stream is None or stream._expected_content_length is not None
                or self.state_machine.state is not _OPEN):
            return None
        length = frame.flow_controlled_length
        self._inbound_flow_control_window_manager.window_consumed(length)
        stream._inbound_window_manager.window_consumed(length)
        # (h2 counts received bytes only to check a content-length, which this path excludes.)
        event = h2.events.DataReceived()
        event.stream_id = frame.stream_id
        event.data = frame.data
        event.flow_controlled_length = length
        return [event]

    @staticmethod
    def _calm(exceeded: str | None) -> None:
        """End the connection with ENHANCE_YOUR_CALM once a flood budget is exceeded."""
        if exceeded is not None:
            raise EdgeProtocolError(ErrorCodes.ENHANCE_YOUR_CALM, exceeded)

    def _pass(self, frame):
        sid = frame.stream_id
        try:
            events = super()._receive_frame(frame)
        except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
            # h2 closed the stream without the gate seeing it: a stream error, not more.
            return self._carry_out(frame, Decision(
                Action.RESET, ErrorCodes.STREAM_CLOSED, f"frame on stream {sid} closed by h2",
                live=self.gate.is_live(sid)))
        for event in events:
            if isinstance(event, h2.events.StreamReset) and not event.remote_reset:
                self.gate.closed(event.stream_id)  # h2 reset it (stream flow-control error)
        return events

    def _carry_out(self, frame, decision: Decision) -> list:
        sid = frame.stream_id
        kind = type(frame)
        if kind is HeadersFrame:
            self._decode(frame.data)
        elif kind is DataFrame or kind is DataRun:
            length = frame.flow_controlled_length
            # Counted against the connection window (raises FLOW_CONTROL_ERROR past it).
            self._inbound_flow_control_window_manager.window_consumed(length)
            self.on_discarded_data(length)
        action = decision.action
        if action is Action.DROP:
            return []
        if action is Action.CONNECTION_ERROR:
            raise EdgeProtocolError(decision.code, decision.reason)
        self.stream_errors += 1
        log.debug("stream error on stream %d: %s (%s)", sid, decision.reason, decision.code.name)
        if action is Action.RESET or action is Action.REFUSE:  # streams the client had reset
            self._calm(self.floods.early_reset())
        return self._stream_error(sid, decision.code, live=decision.live)

    def _stream_error(self, sid: int, code: ErrorCodes, *, live: bool) -> list:
        stream = self.streams.get(sid)
        if live and stream is not None and not stream.closed:
            super().reset_stream(sid, code)
        else:
            frame = RstStreamFrame(sid)
            frame.error_code = code
            self._data_to_send += frame.serialize()
        self.gate.reset_sent(sid)
        if not live:
            return []
        event = h2.events.StreamReset()
        event.stream_id = sid
        event.error_code = code
        event.remote_reset = False
        return [event]

    def _decode(self, block: bytes) -> list:
        try:
            return self.decoder.decode(block, raw=True)
        except OversizedHeaderListError as exc:
            raise h2.exceptions.DenialOfServiceError(f"oversized header block: {exc}") from None
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise EdgeProtocolError(ErrorCodes.COMPRESSION_ERROR,
                                    f"undecodable header block: {exc}") from None

    def _receive_headers_frame(self, frame):
        sid = frame.stream_id
        headers = self._decode(frame.data)
        trailers = sid in self.streams
        problem = request_header_problem(headers, trailers=trailers)
        if problem is not None:
            self.stream_errors += 1
            log.debug("malformed request headers on stream %d: %s", sid, problem)
            self._calm(self.floods.early_reset())
            return [], self._stream_error(sid, ErrorCodes.PROTOCOL_ERROR, live=trailers)
        decoder, self.decoder = self.decoder, _Decoded(headers)
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.TooManyStreamsError:  # pragma: no cover - the gate refuses first
            self.gate.refused += 1
            return [], self._stream_error(sid, ErrorCodes.REFUSED_STREAM, live=False)
        finally:
            self.decoder = decoder

    # --- sending ---

    def send_headers(self, stream_id, headers, end_stream=False, priority_weight=None,
                     priority_depends_on=None, priority_exclusive=None):
        super().send_headers(stream_id, headers, end_stream, priority_weight,
                             priority_depends_on, priority_exclusive)
        if end_stream:
            self.gate.local_end(stream_id)

    def send_data(self, stream_id, data, end_stream=False, pad_length=None):
        super().send_data(stream_id, data, end_stream, pad_length)
        self.floods.data_frames_sent()
        if end_stream:
            self.gate.local_end(stream_id)

    def end_stream(self, stream_id):
        super().end_stream(stream_id)
        self.gate.local_end(stream_id)

    def reset_stream(self, stream_id, error_code=0):
        super().reset_stream(stream_id, error_code)
        self.gate.reset_sent(stream_id)
