"""Outgoing header blocks, encoded once per connection and reused.

HPACK (RFC 7541) lets an encoder refer to a dynamic table that both ends update as header blocks
go by, so a block's bytes normally depend on every block sent before it, and the encoder must
work out each one afresh: hpack's ``Encoder`` searches the static and dynamic tables linearly,
in Python, for every header of every block. A unary gRPC call sends two header blocks (the
response headers and the trailers), and on a small call that search was a fifth of the server's
work per call. Yet a server sends the same few blocks over and over: ``:status 200`` with the
content type, ``grpc-status 0``.

:class:`ResponseHeaderEncoder` encodes header blocks only with representations that neither add
to nor refer to the dynamic table (a static-table index for a whole match, otherwise a literal
*without indexing*, with a static-table index for the name where there is one). A block's bytes
are then a pure function of its headers, so the encoder keeps them and hands the same bytes out
the next time.

Invariants:

* A block from the cache decodes to exactly its headers whatever either dynamic table holds, and
  changes neither table.
* A dynamic table size update that hpack's encoder owes the peer (the peer changed
  ``SETTINGS_HEADER_TABLE_SIZE``) goes out first: while one is pending, the block is encoded by
  hpack's own encoder, which emits the update at its start (RFC 7541 section 4.2). That block
  may add entries to the dynamic table; blocks from the cache never refer to them, so both ends
  stay in step.
* A header flagged sensitive (a ``NeverIndexedHeaderTuple`` or a ``(name, value, True)``
  triple) is sent as "never indexed", as hpack would.
* Only blocks of plain ``(name, value)`` pairs are cached (``HeaderTuple``\\ s compare equal to
  plain pairs whatever their flag). At most ``max_blocks`` blocks are kept per connection; the
  oldest goes first.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from hpack import Encoder
from hpack.struct import HeaderTuple
from hpack.table import HeaderTable

__all__ = [
    "ResponseHeaderEncoder",
    "check_response_metadata",
    "encode_grpc_message",
    "encode_static_block",
    "grpc_request_problem",
]

#: First static-table index (1-based) of each exact (name, value) pair, and of each name.
_STATIC_PAIRS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, _pair in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_PAIRS.setdefault(_pair, _index)
    _STATIC_NAMES.setdefault(_pair[0], _index)

_INDEXED = 0x80  # 1xxxxxxx: indexed header field, 7-bit index
_LITERAL = 0x00  # 0000xxxx: literal without indexing, 4-bit name index (0: literal name)
_NEVER_INDEXED = 0x10  # 0001xxxx: literal never indexed, 4-bit name index


#: gRPC metadata names (the PROTOCOL-HTTP2 spec): lowercase ASCII letters, digits, ``_ . -``.
_METADATA_NAME = re.compile(r"[0-9a-z_.-]+")
#: Values of ASCII metadata (names not ending in ``-bin``): printable ASCII and space.
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


def check_response_metadata(pairs: Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """Check custom metadata a handler asked to send, before it reaches the wire.

    The edge turns off h2's own checks of outgoing headers (it builds the rest itself), so this
    is where a handler's bad name or value is caught.

    Args:
        pairs: ``(name, value)`` pairs; values of ``-bin`` names are ``bytes``.

    Returns:
        The pairs, as a tuple.

    Raises:
        ValueError: a name that is not lowercase ``[0-9a-z_.-]``, starts with ``grpc-`` or is
            empty; an ASCII value that is not printable ASCII; a ``-bin`` value that is not bytes.
    """
    checked = tuple(pairs)
    for name, value in checked:
        if not isinstance(name, str) or not _METADATA_NAME.fullmatch(name):
            raise ValueError(f"invalid response metadata name {name!r}")
        if name.startswith("grpc-"):
            raise ValueError(f"response metadata name {name!r} uses the reserved grpc- prefix")
        if name.endswith("-bin"):
            if not isinstance(value, (bytes, bytearray)):
                raise ValueError(f"response metadata {name!r} must be bytes")
        elif not isinstance(value, str) or not _METADATA_VALUE.fullmatch(value):
            raise ValueError(f"response metadata {name!r} must be printable ASCII text")
    return checked


def _integer(value: int, prefix_bits: int, first_byte_flags: int) -> bytes:
    """RFC 7541 section 5.1 integer with an N-bit prefix, flags or-ed into the first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte_flags | value,))
    out = bytearray((first_byte_flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")


def _string(value: bytes, huffman_coder: Any) -> bytes:
    """RFC 7541 section 5.2 string literal: Huffman-coded when that is shorter."""
    if huffman_coder is not None:
        coded = huffman_coder.encode(value)
        if len(coded) < len(value):
            return _integer(len(coded), 7, 0x80) + coded
    return _integer(len(value), 7, 0x00) + value


def _is_sensitive(header: Any) -> bool:
    if isinstance(header, HeaderTuple):
        return not header.indexable
    return len(header) > 2 and bool(header[2])


def encode_static_block(headers: Iterable[Any], *, huffman_coder: Any = None) -> bytes:
    """Encode ``headers`` without the dynamic table (see the module doc).

    Args:
        headers: ``(name, value)`` pairs (``str`` or ``bytes``), ``HeaderTuple``\\ s, or
            ``(name, value, sensitive)`` triples, pseudo-headers first.
        huffman_coder: hpack's Huffman encoder to use where it makes a string shorter;
            ``None`` sends strings as they are.

    Returns:
        The header block.
    """
    out = []
    for header in headers:
        name, value = _to_bytes(header[0]), _to_bytes(header[1])
        sensitive = _is_sensitive(header)
        if not sensitive:
            index = _STATIC_PAIRS.get((name, value))
            if index is not None:
                out.append(_integer(index, 7, _INDEXED))
                continue
        flags = _NEVER_INDEXED if sensitive else _LITERAL
        name_index = _STATIC_NAMES.get(name)
        if name_index is not None:
            out.append(_integer(name_index, 4, flags))
        else:
            out.append(bytes((flags,)) + _string(name, huffman_coder))
        out.append(_string(value, huffman_coder))
    return b"".join(out)


class ResponseHeaderEncoder(Encoder):
    """hpack's encoder, made to encode each distinct header block once (see the module doc).

    Install it as ``H2Connection.encoder`` before the connection sends any header block.

    Args:
        max_blocks: how many distinct blocks to keep.
    """

    def __init__(self, *, max_blocks: int = 64) -> None:
        super().__init__()
        self.max_blocks = max_blocks
        self._blocks: dict[tuple, bytes] = {}
        #: Blocks served from the cache, and blocks encoded (for tests and statistics).
        self.hits = 0
        self.misses = 0

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        """The HPACK block for ``headers`` (as ``hpack.Encoder.encode``).

        Raises:
            Whatever hpack's encoder raises for headers it cannot encode.
        """
        if isinstance(headers, dict):
            return super().encode(headers, huffman)  # hpack reorders dicts; not cached
        key = headers if isinstance(headers, tuple) else tuple(headers)
        if self.header_table.resized:
            return super().encode(key, huffman)  # emits the table size update it owes
        coder = self.huffman_coder if huffman else None
        if not all(type(header) is tuple and len(header) == 2 for header in key):
            # HeaderTuples compare equal to plain pairs whatever their flag: keep them out of
            # the cache so a sensitive header is never served a block encoded as indexable.
            return encode_static_block(key, huffman_coder=coder)
        block = self._blocks.get((key, huffman))
        if block is not None:
            self.hits += 1
            return block
        block = encode_static_block(key, huffman_coder=coder)
        self.misses += 1
        if len(self._blocks) >= self.max_blocks:
            del self._blocks[next(iter(self._blocks))]
        self._blocks[(key, huffman)] = block
        return block


def encode_grpc_message(message: str) -> str:
    """``grpc-message`` as the gRPC HTTP/2 spec has it: the UTF-8 bytes, with every byte
    outside printable ASCII (0x20-0x7E) and ``%`` itself percent-encoded, the rest as they
    are (clients that decode only what must be encoded -- grpc-js -- read it back exactly)."""
    if message.isascii() and message.isprintable() and "%" not in message:
        return message
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}"
                   for b in message.encode("utf-8"))


#: ``grpc-timeout``: at most 8 digits and a unit (the gRPC HTTP/2 protocol spec).
_GRPC_TIMEOUT = re.compile(r"[0-9]{1,8}[HMSmun]")


def grpc_request_problem(headers) -> str | None:
    """Why well-formed HTTP/2 request headers are not a gRPC request, or ``None``.

    Args:
        headers: the ``(name, value)`` pairs h2 decoded (``str``).

    Returns:
        A message for the client (INVALID_ARGUMENT), naming the header at fault.
    """
    fields: dict[str, str] = {}
    for name, value in headers:
        fields.setdefault(name, value)
    if fields.get(":method") != "POST":
        return f"gRPC requests use POST, not {fields.get(':method')!r}"
    if fields.get(":scheme") not in ("http", "https"):
        return f"unsupported :scheme {fields.get(':scheme')!r}"
    path = fields.get(":path", "")
    if not path.startswith("/") or path.count("/") != 2:
        return f"malformed :path {path!r}; gRPC paths are /service/method"
    if fields.get("te") != "trailers":
        return "the te: trailers header is missing (a proxy that drops it cannot carry gRPC)"
    if not fields.get("content-type", "").startswith("application/grpc"):
        return f"content-type {fields.get('content-type')!r} is not application/grpc"
    timeout = fields.get("grpc-timeout")
    if timeout is not None and not _GRPC_TIMEOUT.fullmatch(timeout):
        return (f"malformed grpc-timeout header {timeout!r}: expected 1-8 digits and a unit "
                f"(H, M, S, m, u or n)")
    return None
