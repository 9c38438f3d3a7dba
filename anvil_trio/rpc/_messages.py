"""Response messages already in their wire form, for the bulk-data streams.

GetObject and GetBlob send mostly one field of bytes per message. Serializing such a message
with its protobuf class copies the bytes twice, and framing it into gRPC's length-prefixed form a
third time; :func:`bytes_field_message` builds the wire form directly with one copy, and
:class:`PreFramed` carries it to :meth:`~._wire.EdgeStream.send_message`, which sends it as it
is, cut into DATA frames by ``memoryview`` slicing.

Invariants:

* ``PreFramed.wire`` is exactly the 5-byte gRPC prefix (uncompressed) followed by the bytes
  protobuf would serialize for the same message (tested against protobuf for any input).
"""

from __future__ import annotations

import struct

__all__ = ["MESSAGE_HEADER", "PreFramed", "bytes_field_message", "varint_field"]

#: The gRPC message prefix: compressed flag, big-endian length.
MESSAGE_HEADER = struct.Struct(">?I")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class PreFramed:
    """A response message already in its wire form: the 5-byte gRPC prefix, then the
    serialized message. :meth:`EdgeStream.send_message` sends it as it is, in frames cut by
    ``memoryview`` slicing. Built by :func:`bytes_field_message` for the bulk data streams.

    Attributes:
        wire: prefix and message.
    """

    __slots__ = ("wire",)

    def __init__(self, wire: bytes) -> None:
        self.wire = wire

    def __len__(self) -> int:
        return len(self.wire) - MESSAGE_HEADER.size


def bytes_field_message(field_number: int, data: bytes, tail: bytes = b"") -> PreFramed:
    """A message holding ``data`` in its ``bytes`` field ``field_number``, followed by the
    already serialized fields ``tail``, ready to send: ``data`` is copied once (building the
    same bytes with a protobuf class copies it twice, and framing them a third time).

    Args:
        field_number: 1-15 (a one-byte tag).
        data: the field's bytes (any buffer).
        tail: serialized further fields, appended as they are.

    Raises:
        ValueError: ``field_number`` outside 1-15.
    """
    if not 1 <= field_number <= 15:
        raise ValueError("field_number must be 1-15")
    length = len(data)
    field = bytes(((field_number << 3) | 2,)) + _varint(length)
    size = len(field) + length + len(tail)
    return PreFramed(b"".join((MESSAGE_HEADER.pack(False, size), field, data, tail)))


def varint_field(field_number: int, value: int) -> bytes:
    """A serialized varint field (``int64``/``uint64`` >= 0), or nothing for 0 (proto3)."""
    if not value:
        return b""
    return _varint(field_number << 3) + _varint(value)
