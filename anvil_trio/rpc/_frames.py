"""Received bytes to HTTP/2 frames to gRPC messages, copying each payload byte as few times as
possible.

h2's ``FrameBuffer`` keeps received bytes in an immutable ``bytes`` and rebuilds it on every
read (``data += new``) and after every frame (``data = data[n:]``), and slices each frame body
out before parsing it; purerpc's ``MessageReadBuffer`` copies again to split the 5-byte gRPC
prefix from the message. For a 1 MiB message arriving in 64 KiB reads that is a dozen copies of
every byte, and on a two-core machine copies of cold memory are what a busy upload pays for.
This module does the same jobs with at most two copies of a payload byte: one into a growing
receive buffer, one out of it into the frame's own ``bytes``.

Invariants:

* :class:`FrameReader` yields exactly the frames h2's ``FrameBuffer`` would, with the same
  errors (bad preamble, bad header, overlong frame, header-block rules), from any split of
  the same bytes -- except that it refuses an overlong frame as soon as its 9-byte header
  arrives (h2 first buffers the whole announced body) and a header block whose HEADERS and
  CONTINUATION payloads together pass ``max_header_block`` bytes (ENHANCE_YOUR_CALM), so a
  connection never holds more than one read, one frame and one bounded header block. Its buffer is only resized while no ``memoryview`` of it is alive.
* :class:`MessageAssembler` yields exactly the messages purerpc's ``MessageReadBuffer`` would,
  and the flow-controlled lengths it reports add up to the flow-controlled bytes received,
  less those of a message still incomplete (padding counts toward the next message finished).
  A message lying inside one received piece is handed out as a ``memoryview`` of that piece
  (no copy); one spanning pieces is joined into ``bytes``.
* A message with the compressed flag (on a ``gzip`` or ``deflate`` stream) is inflated piece by
  piece as it arrives and handed out as an ``InflatedMessage``; its flow-controlled length is
  that of its compressed wire bytes. The assembler never holds more than the compressed bytes
  not yet fed plus ``max_message_length + 1`` inflated bytes, so a message that inflates past
  the limit is refused at that size (see ``_compression``).
"""

from __future__ import annotations

import collections
import struct

from h2.exceptions import DenialOfServiceError, FrameDataMissingError, ProtocolError
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidFrameError
from hyperframe.frame import DataFrame, HeadersFrame
from purerpc.grpclib.exceptions import MessageTooLargeError

from ._compression import Inflater

__all__ = ["FrameReader", "MessageAssembler"]

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
        self.max_header_block = max_header_block
        self._header_block = 0

    def _update_header_buffer(self, frame):
        # One header block (HEADERS and its CONTINUATIONs) may not grow past max_header_block
        # encoded bytes: a peer cannot make the connection hold an endless header block.
        if self._headers_buffer or (isinstance(frame, HeadersFrame)
                                    and "END_HEADERS" not in frame.flags):
            if not self._headers_buffer:
                self._header_block = 0
            self._header_block += len(getattr(frame, "data", b""))
            if self._header_block > self.max_header_block:
                raise DenialOfServiceError(
                    f"header block over {self.max_header_block} bytes across CONTINUATION "
                    f"frames")
        return super()._update_header_buffer(frame)

    def add_data(self, data: bytes) -> None:
        if self._preamble_len:
            super().add_data(data)  # checks and strips the preface into self.data
            data, self.data = self.data, b""
        self._buffer += data

    def next(self):
        buffer = self._buffer
        while True:
            if len(buffer) < _FRAME_HEADER:
                raise StopIteration()
            try:
                frame, length = self._parse_frame_header(bytes(buffer[:_FRAME_HEADER]))
            except InvalidFrameError:  # pragma: no cover - h2 treats it the same way
                raise ProtocolError("Received frame with invalid frame header.") from None
            # Checked before the body is waited for: a peer announcing an overlong frame is
            # refused at once, never buffered up to the size it announced.
            self._validate_frame_length(length)
            end = _FRAME_HEADER + length
            if len(buffer) < end:
                raise StopIteration()
            if frame is not None:
                invalid = False
                view = memoryview(buffer)
                try:
                    # DATA bodies are copied once, by the frame itself (tobytes); smaller
                    # frames get a bytes copy first, exactly as h2 hands them over.
                    body = view[_FRAME_HEADER:end]
                    frame.parse_body(body if isinstance(frame, DataFrame) else
                                     memoryview(body.tobytes()))
                except InvalidFrameError:
                    invalid = True
                finally:
                    body = None
                    view.release()
                if invalid:  # raised here, so no traceback keeps a view of the buffer
                    raise FrameDataMissingError("Frame data missing or invalid")
            del buffer[:end]  # O(1) for the front of a bytearray
            frame = self._update_header_buffer(frame)
            if frame is not None:
                return frame


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
        self._pieces: collections.deque[memoryview] = collections.deque()
        self._size = 0
        self._owed = 0  # flow-controlled bytes received and not yet reported
        self._length: int | None = None  # length of the message whose prefix was read
        self._inflater: Inflater | None = None  # set while a compressed message arrives
        self._unfed = 0  # compressed bytes of that message not yet fed to the inflater

    @property
    def buffered(self) -> int:
        """Payload bytes held now: received and not yet handed out, plus inflated ones."""
        return self._size + (self._inflater.buffered if self._inflater is not None else 0)

    def data_received(self, data: bytes, flow_controlled_length: int) -> list[tuple[object, int]]:
        """Take one DATA payload; return the messages it completed, each with the
        flow-controlled bytes it accounts for (for a compressed message: its wire bytes).

        Raises:
            MessageTooLargeError: a prefix announces a message over the limit, or
                (``InflatedTooLargeError``) a compressed message inflates past it.
            UnsupportedMessageEncodingError: (``CompressedFlagError``) a message has the
                compressed flag set without a compressing encoding, or
                (``CorruptMessageError``) a compressed message does not inflate.
        """
        self._owed += flow_controlled_length
        if data:
            self._pieces.append(memoryview(data))
            self._size += len(data)
        done: list[tuple[object, int]] = []
        while True:
            if self._length is None:
                if self._size < _MESSAGE_PREFIX.size:
                    return done
                compressed, length = _MESSAGE_PREFIX.unpack(self._take(_MESSAGE_PREFIX.size))
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
                while self._unfed and self._size:
                    piece = self._take_piece(self._unfed)
                    self._unfed -= len(piece)
                    inflater.feed(piece)
                if self._unfed:
                    return done
                message = inflater.finish()
                self._inflater = None
            else:
                if self._size < self._length:
                    return done
                message = self._take(self._length)
            # Everything received so far but the bytes still buffered (padding included)
            # is accounted to this message; the rest waits for the message it belongs to.
            reported = self._owed - self._size
            self._owed = self._size
            self._length = None
            done.append((message, reported))

    def _take_piece(self, most: int) -> memoryview:
        """Remove and return the front piece, or its first ``most`` bytes (no copy)."""
        first = self._pieces[0]
        if len(first) > most:
            self._pieces[0] = first[most:]
            first = first[:most]
        else:
            self._pieces.popleft()
        self._size -= len(first)
        return first

    def _take(self, count: int) -> object:
        """Remove ``count`` bytes from the front: a view if one piece holds them, else bytes."""
        if not count:
            return b""
        self._size -= count
        first = self._pieces[0]
        if len(first) > count:
            self._pieces[0] = first[count:]
            return first[:count]
        if len(first) == count:
            self._pieces.popleft()
            return first
        parts = []
        while count:
            piece = self._pieces[0]
            if len(piece) <= count:
                parts.append(piece)
                self._pieces.popleft()
                count -= len(piece)
            else:
                parts.append(piece[:count])
                self._pieces[0] = piece[count:]
                count = 0
        return b"".join(parts)
