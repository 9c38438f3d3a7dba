"""gRPC message compression at the edge: which encodings, how requests are inflated, and when
responses are compressed.

gRPC compresses message by message (``doc/compression.md`` and ``PROTOCOL-HTTP2.md`` in the grpc
repository): a call's ``grpc-encoding`` header names the algorithm, and each message's
compressed flag (the first byte of its 5-byte prefix) says whether that message is compressed
with it. The edge supports ``identity``, ``deflate`` and ``gzip``, and says so in
``grpc-accept-encoding`` on every response (:data:`ACCEPT_ENCODING`).

Requests (:class:`Inflater`, driven by ``_frames.MessageAssembler``):

* ``gzip`` is RFC 1952; ``deflate`` is RFC 1950 (zlib) as grpc core, grpc-java and grpc-js send
  it. Being tolerant, ``gzip`` also accepts a zlib stream, and ``deflate`` a gzip stream or a raw
  RFC 1951 stream (chosen from the first two bytes: a zlib or gzip header, else raw).
* A message is inflated as its compressed bytes arrive, :data:`INFLATE_STEP` bytes of output
  at a time, into at most ``limit + 1`` bytes: one that inflates past ``limit`` raises
  :class:`InflatedTooLargeError` (RESOURCE_EXHAUSTED) having held no more than that (plus one
  step and zlib's 32 KiB window), whatever its compression ratio (a "gzip bomb").
* The compressed flag on a call whose ``grpc-encoding`` is absent or ``identity`` raises
  :class:`CompressedFlagError` (INTERNAL, as the spec's test cases require); a truncated or
  corrupt stream, or bytes after its end, raise :class:`CorruptMessageError` (INTERNAL). An
  encoding the edge does not know is refused with the call's headers (UNIMPLEMENTED, listing
  the supported ones; :func:`unsupported_encoding_message`).
* An inflated message is an :class:`InflatedMessage` (a ``bytearray``): how the edge tells
  the handler that a message arrived compressed (``CallContext.request_compressed``).

Responses (:func:`response_encoding`, :func:`compress_message`) -- the rule:

* A call's responses may be compressed only if the client's ``grpc-accept-encoding`` lists
  ``gzip`` (preferred) or ``deflate``; the response headers then carry that ``grpc-encoding``,
  and each message's flag says whether it is compressed (0 is always allowed).
* Automatically (the handler's ``CallContext.compress_responses`` is ``None``), a message is
  compressed when it is at least :data:`MIN_COMPRESS_BYTES` long, is not a pre-framed bulk
  data chunk (object and blob bytes, usually incompressible, go out as ``PreFramed``), and its
  compressed form is smaller; otherwise it goes out as it is.
* ``compress_responses = True`` compresses every following message (pre-framed ones too) when
  the client accepts an encoding; ``False`` sends every following message uncompressed.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from purerpc import StatusCode
from purerpc.grpclib.exceptions import MessageTooLargeError, UnsupportedMessageEncodingError

__all__ = [
    "ACCEPT_ENCODING",
    "COMPRESSING_ENCODINGS",
    "SUPPORTED_ENCODINGS",
    "MIN_COMPRESS_BYTES",
    "CompressedFlagError",
    "CorruptMessageError",
    "InflatedMessage",
    "InflatedTooLargeError",
    "Inflater",
    "MessageDecodeError",
    "compress_message",
    "is_supported",
    "response_encoding",
    "unsupported_encoding_message",
]

#: Encodings the edge reads, in the order it advertises them.
SUPPORTED_ENCODINGS = ("identity", "deflate", "gzip")
#: The ``grpc-accept-encoding`` value of every response.
ACCEPT_ENCODING = ",".join(SUPPORTED_ENCODINGS)
#: Encodings that compress, in the order of preference for responses.
COMPRESSING_ENCODINGS = ("gzip", "deflate")
#: Smaller response messages are never compressed automatically.
MIN_COMPRESS_BYTES = 1024
#: zlib level for responses (zlib's default trade-off of speed and size).
COMPRESS_LEVEL = 6
#: Most bytes inflated by one zlib call.
INFLATE_STEP = 64 * 1024

_AUTO_HEADER = 32 + 15  # zlib or gzip header, detected by zlib
_RAW = -15  # raw deflate, no header
_WBITS = {"gzip": 16 + 15, "deflate": 15}


class MessageDecodeError(UnsupportedMessageEncodingError):
    """A request message whose compression is wrong; the call fails with :attr:`status_code`.

    (It subclasses purerpc's encoding error so that any handler of that error treats it as a
    failure of one call, never of the connection.)
    """

    status_code = StatusCode.INTERNAL


class CompressedFlagError(MessageDecodeError):
    """A message has the compressed flag set on a call without a compressing ``grpc-encoding``."""


class CorruptMessageError(MessageDecodeError):
    """A compressed message does not inflate: corrupt, truncated, or followed by extra bytes."""


class InflatedTooLargeError(MessageTooLargeError):
    """A compressed message inflates past the message limit (RESOURCE_EXHAUSTED)."""

    status_code = StatusCode.RESOURCE_EXHAUSTED


class InflatedMessage(bytearray):
    """The bytes of a request message that arrived compressed, after inflating (the buffer
    they were inflated into, handed out without a copy)."""

    __slots__ = ()


def is_supported(encoding: str | None) -> bool:
    """Whether requests with this ``grpc-encoding`` (``None``: absent) can be read."""
    return encoding is None or encoding.strip().lower() in SUPPORTED_ENCODINGS


def unsupported_encoding_message(encoding: str) -> str:
    """The UNIMPLEMENTED message for a request ``grpc-encoding`` the edge does not know."""
    return (f"grpc-encoding {encoding!r} is not supported; supported encodings: "
            f"{', '.join(SUPPORTED_ENCODINGS)}")


def _looks_like_header(head: bytes) -> bool:
    """Whether two bytes start a zlib (RFC 1950) or gzip (RFC 1952) stream."""
    if head[0] == 0x1F and head[1] == 0x8B:
        return True
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


class Inflater:
    """Inflates one compressed message, fed in pieces, into at most ``limit + 1`` bytes.

    Args:
        encoding: the call's ``grpc-encoding``: ``"gzip"`` or ``"deflate"``.
        limit: the largest inflated message accepted.

    Raises:
        CompressedFlagError: ``encoding`` is absent, ``identity`` or not a compressing one.
    """

    __slots__ = ("_encoding", "_limit", "_zlib", "_head", "_out", "_fed")

    def __init__(self, encoding: str | None, limit: int) -> None:
        name = encoding.strip().lower() if encoding is not None else None
        if name not in _WBITS:
            raise CompressedFlagError(
                f"compressed flag set without grpc-encoding (grpc-encoding {encoding!r}); "
                f"compressed messages need grpc-encoding gzip or deflate"
            )
        self._encoding = name
        self._limit = limit
        self._zlib = zlib.decompressobj(_AUTO_HEADER) if name == "gzip" else None
        self._head = b""  # deflate: the first bytes, until the stream's format is known
        self._out = InflatedMessage()
        self._fed = False

    @property
    def buffered(self) -> int:
        """Bytes held: inflated so far plus any undecided head (zlib's window aside)."""
        return len(self._out) + len(self._head)

    def feed(self, data) -> None:
        """Inflate the next piece of the compressed message (any buffer).

        Raises:
            InflatedTooLargeError: the message inflates past the limit.
            CorruptMessageError: the bytes are not a valid stream of the encoding.
        """
        if not data:
            return
        self._fed = True
        if self._zlib is None:
            if self._head or len(data) < 2:
                self._head += bytes(data)
                if len(self._head) < 2:
                    return
                data, self._head = self._head, b""
            head = bytes(data[:2])
            self._zlib = zlib.decompressobj(_AUTO_HEADER if _looks_like_header(head) else _RAW)
        if self._zlib.eof:
            raise CorruptMessageError(f"bytes after the end of a {self._encoding} stream")
        inflate, out_buffer = self._zlib, self._out
        while True:
            step = min(self._limit - len(out_buffer) + 1, INFLATE_STEP)
            try:
                out = inflate.decompress(data, step)
            except zlib.error as exc:
                raise CorruptMessageError(
                    f"request message does not inflate ({self._encoding}): {exc}"
                ) from None
            out_buffer += out
            if len(out_buffer) > self._limit:
                raise InflatedTooLargeError(
                    f"compressed request message inflates past {self._limit} bytes"
                )
            if inflate.eof or len(out) < step:
                break  # the input is used up (or the stream ended): nothing more comes out
            data = inflate.unconsumed_tail  # a full step: more output may be pending
        if inflate.unused_data:
            raise CorruptMessageError(f"bytes after the end of a {self._encoding} stream")

    def finish(self) -> InflatedMessage:
        """The inflated message, once every compressed byte was fed.

        Raises:
            CorruptMessageError: the stream is truncated. (An empty compressed message is
                taken as an empty message.)
        """
        if not self._fed:
            return InflatedMessage()
        if self._zlib is None or not self._zlib.eof:
            raise CorruptMessageError(f"truncated {self._encoding} stream in a request message")
        out, self._out = self._out, InflatedMessage()
        return out


def response_encoding(accept: Iterable[str] | str | None) -> str | None:
    """The encoding a call's responses may use, from the client's ``grpc-accept-encoding``
    (a list of names or the header's text): ``"gzip"`` if listed, else ``"deflate"`` if listed,
    else ``None`` (responses are never compressed)."""
    if accept is None:
        return None
    if isinstance(accept, str):
        accept = accept.split(",")
    names = {name.strip().lower() for name in accept}
    for name in COMPRESSING_ENCODINGS:
        if name in names:
            return name
    return None


def compress_message(data, encoding: str | None, *, mode: bool | None,
                     preframed: bool = False) -> bytes | None:
    """The compressed form of a response message to send, or ``None`` to send ``data`` as it
    is (see the rule in the module doc).

    Args:
        data: the serialized message (any buffer).
        encoding: the call's response encoding (:func:`response_encoding`), or ``None``.
        mode: the handler's wish: ``True`` always compress, ``False`` never, ``None`` the
            automatic rule.
        preframed: ``data`` is a pre-framed bulk data chunk (never compressed automatically).
    """
    if encoding is None or mode is False:
        return None
    size = len(data)
    if mode is None and (preframed or size < MIN_COMPRESS_BYTES):
        return None
    compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, _WBITS[encoding])
    packed = compressor.compress(data) + compressor.flush()
    if mode is None and len(packed) >= size:
        return None
    return packed
