"""Received bytes to HTTP/2 frames to gRPC messages, copying each payload byte as few times as
possible.

h2's ``FrameBuffer`` keeps received bytes in an immutable ``bytes`` and rebuilds it on every
read (``data += new``) and after every frame (``data = data[n:]``), and slices each frame body
out before parsing it; purerpc's ``MessageReadBuffer`` copies again to split the 5-byte gRPC
prefix from the message. For a 1 MiB message arriving in 64 KiB reads that is a dozen copies of
every byte, and on a two-core machine copies of cold memory are what a busy upload pays for.
This module does the same jobs with two copies of a payload byte: one into the receive buffer,
one out of it into the message it belongs to. DATA frames are built without hyperframe's generic
parsing (they are most of the frames), their payloads handed over as views of the receive
buffer, and consecutive DATA frames of one stream in one read come out as one
:class:`DataRun` -- with 16 KiB frames a 1 MiB message is 64 of them.

Invariants:

* :class:`FrameReader` yields the frames h2's ``FrameBuffer`` would, with the same errors (bad
  preamble, bad header, overlong frame, header-block rules), from any split of the same bytes
  -- except that consecutive unpadded DATA frames of one stream not ending it, complete in the
  buffer, come as one :class:`DataRun` (their payloads in order); that it refuses an overlong
  frame as soon as its 9-byte header arrives (h2 first buffers the whole announced body); and
  that a header block past ``max_header_block`` bytes or ``CONTINUATION_BACKLOG`` frames is
  ENHANCE_YOUR_CALM. So a connection holds at most one read, one frame and one bounded header
  block. The receive buffer is resized only while no view of it is alive (views of it are
  handed out); otherwise a read makes a new one of the unread rest and the new bytes.
* :class:`MessageAssembler` yields exactly the messages purerpc's ``MessageReadBuffer`` would,
  and the flow-controlled lengths it reports add up to the flow-controlled bytes received,
  less those of a message still incomplete (padding counts toward the next message finished).
  It keeps no view of a payload: a message inside one payload is copied out as ``bytes``, one
  spanning payloads is copied piece by piece into the ``bytearray`` it comes out as.
* A message with the compressed flag (on a ``gzip`` or ``deflate`` stream) is inflated piece by
  piece as it arrives and handed out as an ``InflatedMessage``; its flow-controlled length is
  that of its compressed wire bytes. The assembler never holds more than the compressed bytes
  not yet fed plus ``max_message_length + 1`` inflated bytes, so a message that inflates past
  the limit is refused at that size (see ``_compression``).
"""

from __future__ import annotations

import struct

from h2.exceptions import DenialOfServiceError, FrameDataMissingError, ProtocolError
from h2.frame_buffer import CONTINUATION_BACKLOG, FrameBuffer
from hyperframe.exceptions import InvalidFrameError
from hyperframe.flags import Flags
from hyperframe.frame import DataFrame, HeadersFrame
from purerpc.grpclib.exceptions import MessageTooLargeError

from ._compression import Inflater

__all__ = ["DataRun", "FrameReader", "MessageAssembler"]

_FRAME_HEADER = 9
_MESSAGE_PREFIX = struct.Struct(">?I")


class FrameReader(FrameBuffer):
    """h2's incoming frame buffer, with a growable buffer instead of rebuilt ``bytes``.

    Install it as ``H2Connection.incoming_buffer`` before any data arrives.

    Args:
        server: expect the client connection preface first.
    """

    def __init__(self, server: bool = True, *, max_header_block: int = 1 << 16) -> None:
        super().__init__(server=server)
        self._buffer = bytearray()
        self._pos = 0  # where the next frame starts in _buffer
        self.max_header_block = max_header_block
        self._header_block = 0

    def _update_header_buffer(self, frame):
        # One header block (HEADERS and its CONTINUATIONs) may not grow past max_header_block
        # encoded bytes, nor past CONTINUATION_BACKLOG frames: a peer cannot make the
        # connection hold an endless header block (ENHANCE_YOUR_CALM, not h2's PROTOCOL_ERROR).
        if self._headers_buffer or (isinstance(frame, HeadersFrame)
                                    and "END_HEADERS" not in frame.flags):
            if not self._headers_buffer:
                self._header_block = 0
            self._header_block += len(getattr(frame, "data", b""))
            if self._header_block > self.max_header_block:
                raise DenialOfServiceError(
                    f"header block over {self.max_header_block} bytes across CONTINUATION "
                    f"frames")
            if len(self._headers_buffer) >= CONTINUATION_BACKLOG:
                raise DenialOfServiceError(
                    f"header block of more than {CONTINUATION_BACKLOG} CONTINUATION frames")
        return super()._update_header_buffer(frame)

    def add_data(self, data: bytes) -> None:
        if self._preamble_len:
            super().add_data(data)  # checks and strips the preface into self.data
            data, self.data = self.data, b""
        # DATA payloads handed out are views of the buffer (see _data_frame). Once they are
        # gone (the usual case: the assembler copies out of them at once) the buffer is reused,
        # its memory warm; while one is alive it cannot be resized, so the unread rest and the
        # new bytes go into a new one.
        buffer = self._buffer
        try:
            if self._pos:
                del buffer[:self._pos]
            buffer += data
        except BufferError:
            self._buffer = buffer[self._pos:] + data
        self._pos = 0

    def next(self):
        buffer = self._buffer
        while True:
            pos = self._pos
            if len(buffer) - pos < _FRAME_HEADER:
                raise StopIteration()
            if buffer[pos + 3] == 0 and not buffer[pos + 4] & _PADDED and not self._headers_buffer:
                frame = self._data_frame(buffer, pos)
                if frame is None:
                    raise StopIteration()
                if frame is not _SLOW:
                    return frame
            try:
                frame, length = self._parse_frame_header(bytes(buffer[pos:pos + _FRAME_HEADER]))
            except InvalidFrameError:  # pragma: no cover - h2 treats it the same way
                raise ProtocolError("Received frame with invalid frame header.") from None
            # Checked before the body is waited for: a peer announcing an overlong frame is
            # refused at once, never buffered up to the size it announced.
            self._validate_frame_length(length)
            end = pos + _FRAME_HEADER + length
            if len(buffer) < end:
                raise StopIteration()
            if frame is not None:
                try:
                    # Frames other than unpadded DATA get a bytes copy of their body, as h2
                    # hands them over.
                    frame.parse_body(memoryview(bytes(buffer[pos + _FRAME_HEADER:end])))
                except InvalidFrameError:
                    raise FrameDataMissingError("Frame data missing or invalid") from None
            self._pos = end
            frame = self._update_header_buffer(frame)
            if frame is not None:
                return frame

    def _data_frame(self, buffer: bytearray, pos: int):
        """An unpadded DATA frame on a stream, built without hyperframe's generic machinery
        (it is most of the frames a busy connection receives): the same ``DataFrame`` with the
        same attributes, its payload a view of the receive buffer (copied once, later, by the
        stream's :class:`MessageAssembler`). ``None`` until the whole frame is buffered;
        ``_SLOW`` for stream 0 (an error h2 reports)."""
        length = int.from_bytes(buffer[pos:pos + 3], "big")
        sid = int.from_bytes(buffer[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        if not sid:
            return _SLOW
        self._validate_frame_length(length)
        start = pos + _FRAME_HEADER
        end = start + length
        if len(buffer) < end:
            return None
        end_stream = buffer[pos + 4] & _END_STREAM
        run = None
        if length and not end_stream:
            run = self._data_run(buffer, sid, end)
        if run is not None:
            parts, end = run
            frame = DataRun.__new__(DataRun)
            view = memoryview(buffer)
            frame.data = (view[start:start + length],
                          *(view[a:b] for a, b in parts))
            frame.flow_controlled_length = length + sum(b - a for a, b in parts)
            frame.body_len = frame.flow_controlled_length
        else:
            frame = DataFrame.__new__(DataFrame)
            frame.data = memoryview(buffer)[start:end]
            frame.body_len = length
        frame.stream_id = sid
        flags = Flags.__new__(Flags)
        flags._valid_flags = _DATA_FLAGS
        flags._flags = {"END_STREAM"} if end_stream else set()
        frame.flags = flags
        frame.pad_length = 0
        self._pos = end
        return frame

    def _data_run(self, buffer: bytearray, sid: int, pos: int):
        """The payload spans of the unpadded, non-empty DATA frames of stream ``sid`` that
        follow at ``pos``, complete in the buffer and not ending the stream, and where they end;
        ``None`` if there are none."""
        parts = []
        size = len(buffer)
        max_size = self.max_frame_size
        while size - pos >= _FRAME_HEADER:
            if buffer[pos + 3] != 0 or buffer[pos + 4] & (_PADDED | _END_STREAM):
                break
            length = int.from_bytes(buffer[pos:pos + 3], "big")
            if (not length or length > max_size
                    or int.from_bytes(buffer[pos + 5:pos + 9], "big") & 0x7FFFFFFF != sid):
                break
            start = pos + _FRAME_HEADER
            if size < start + length:
                break
            parts.append((start, start + length))
            pos = start + length
        return (parts, pos) if parts else None


class DataRun(DataFrame):
    """Consecutive unpadded DATA frames of one stream, none of which ends it, read as one:
    ``data`` is the tuple of their payloads (views of the receive buffer) and
    ``flow_controlled_length`` their total. The edge handles a run as it would each of its
    frames in turn (the same stream, no END_STREAM, no padding: the same decisions and the
    same window charges, made once)."""

    #: The payloads' total (an attribute here, not hyperframe's computed property).
    flow_controlled_length = 0

    def payload(self) -> bytes:
        """The payloads joined (for code that needs one contiguous buffer)."""
        return b"".join(self.data)


#: Stands for "parse this frame the general way" (see ``FrameReader._data_frame``).
_SLOW = object()
_PADDED = 0x08
_END_STREAM = 0x01
_DATA_FLAGS = frozenset(flag.name for flag in DataFrame.defined_flags)


class MessageAssembler:
    """gRPC length-prefixed messages out of DATA payloads, for one stream.

    A message with the compressed flag set is inflated as its bytes arrive (see
    ``_compression``): its compressed bytes are dropped once fed to the inflater, so the
    assembler holds at most the compressed bytes not yet fed plus ``max_message_length + 1``
    inflated bytes (:attr:`buffered`), and the message comes out as an ``InflatedMessage``.

    Args:
        max_message_length: larger messages (on the wire, or once inflated) are refused.
        encoding: the stream's ``grpc-encoding`` (``None``: absent); ``gzip`` and ``deflate``
            messages are inflated, the compressed flag with any other is refused.
    """

    def __init__(self, max_message_length: int, encoding: str | None = None) -> None:
        self._max = max_message_length
        self._encoding = encoding
        self._prefix = b""  # the first bytes of a 5-byte prefix split across payloads
        self._partial: bytearray | None = None  # a message that spans payloads, as it fills
        self._filled = 0
        self._owed = 0  # flow-controlled bytes received and not yet reported
        self._length: int | None = None  # length of the message whose prefix was read
        self._inflater: Inflater | None = None  # set while a compressed message arrives
        self._unfed = 0  # compressed bytes of that message not yet fed to the inflater

    @property
    def buffered(self) -> int:
        """Payload bytes held now: received and not yet handed out, plus inflated ones."""
        held = len(self._prefix) + self._filled
        return held + (self._inflater.buffered if self._inflater is not None else 0)

    def data_received(self, data, flow_controlled_length: int) -> list[tuple[object, int]]:
        """Take one DATA payload (any buffer; it is not kept: every byte of it that is kept is
        copied once); return the messages it completed, each with the flow-controlled bytes it
        accounts for (for a compressed message: its wire bytes).

        A message inside the payload comes out as ``bytes``; one that spanned payloads as the
        ``bytearray`` it was assembled in (copied into it as its pieces arrived).

        Raises:
            MessageTooLargeError: a prefix announces a message over the limit, or
                (``InflatedTooLargeError``) a compressed message inflates past it.
            UnsupportedMessageEncodingError: (``CompressedFlagError``) a message has the
                compressed flag set without a compressing encoding, or
                (``CorruptMessageError``) a compressed message does not inflate.
        """
        if type(data) is tuple:  # a DataRun's payloads, in order (unpadded: all flow-controlled)
            done: list[tuple[object, int]] = []
            for piece in data:
                done += self.data_received(piece, len(piece))
            return done
        self._owed += flow_controlled_length
        view = memoryview(data)
        size = len(view)
        pos = 0
        done = []
        while True:
            if self._length is None:
                need = _MESSAGE_PREFIX.size - len(self._prefix)
                if size - pos < need:
                    self._prefix += bytes(view[pos:])
                    return done
                if self._prefix:
                    prefix = self._prefix + bytes(view[pos:pos + need])
                    self._prefix = b""
                else:
                    prefix = view[pos:pos + need]
                pos += need
                compressed, length = _MESSAGE_PREFIX.unpack(prefix)
                if length > self._max:
                    raise MessageTooLargeError(
                        f"Received message larger than max: {length} > {self._max}"
                    )
                if compressed:
                    self._inflater = Inflater(self._encoding, self._max)
                    self._unfed = length
                self._length = length
            inflater = self._inflater
            if inflater is not None:
                if self._unfed and pos < size:
                    take = min(self._unfed, size - pos)
                    inflater.feed(view[pos:pos + take])
                    pos += take
                    self._unfed -= take
                if self._unfed:
                    return done
                message = inflater.finish()
                self._inflater = None
            else:
                length = self._length
                partial = self._partial
                if partial is None:
                    if size - pos >= length:  # the whole message is here: one copy out
                        message = bytes(view[pos:pos + length])
                        pos += length
                    else:  # it spans payloads: assemble it in place
                        partial = self._partial = bytearray(length)
                        take = size - pos
                        partial[:take] = view[pos:]
                        self._filled = take
                        return done
                else:
                    take = min(length - self._filled, size - pos)
                    partial[self._filled:self._filled + take] = view[pos:pos + take]
                    self._filled += take
                    pos += take
                    if self._filled < length:
                        return done
                    message = partial
                    self._partial = None
                    self._filled = 0
            # Everything received so far but the bytes of this payload not yet looked at
            # (padding included) is accounted to this message; the rest waits for the message
            # it belongs to.
            rest = size - pos
            done.append((message, self._owed - rest))
            self._owed = rest
            self._length = None
