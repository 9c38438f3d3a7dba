"""Outgoing header blocks (rpc/_headers.py): every block decodes, with hpack's own decoder, to
exactly the headers given, leaves the peer's dynamic table alone, and is reused byte for byte."""

from __future__ import annotations

import pytest
from hpack import Decoder, Encoder
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable
from hypothesis import given, settings
from hypothesis import strategies as st

from anvil_trio.rpc._headers import (
    ResponseHeaderEncoder,
    check_response_metadata,
    encode_static_block,
)

STATIC = list(HeaderTable.STATIC_TABLE)
names = st.one_of(
    st.sampled_from([name for name, _ in STATIC]),
    st.sampled_from([b"grpc-status", b"grpc-message", b"content-type", b"x-reply"]),
    st.binary(min_size=1, max_size=40).map(lambda b: b.lower()),
)
values = st.one_of(
    st.sampled_from([value for _, value in STATIC]),
    st.sampled_from([b"0", b"200", b"application/grpc+proto"]),
    st.binary(max_size=300),
)
headers = st.lists(st.tuples(names, values), max_size=12)


def decoded(block: bytes, decoder: Decoder | None = None) -> list[tuple[bytes, bytes]]:
    decoder = decoder or Decoder()
    return [(bytes(name), bytes(value)) for name, value in decoder.decode(block, raw=True)]


@settings(max_examples=150, deadline=None)
@given(headers, st.booleans())
def test_static_blocks_decode_to_their_headers_without_touching_the_table(pairs, huffman):
    """Any headers, with or without Huffman coding, decode to themselves; the decoder's dynamic
    table stays empty however many blocks it reads."""
    encoder = Encoder()
    decoder = Decoder()
    block = encode_static_block(pairs, huffman_coder=encoder.huffman_coder if huffman else None)
    assert decoded(block, decoder) == pairs
    assert decoded(block, decoder) == pairs
    assert len(decoder.header_table.dynamic_entries) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(headers, min_size=1, max_size=8))
def test_cached_blocks_stay_in_step_with_a_decoder_that_saw_every_block(blocks):
    """A long-lived connection: blocks repeat (served from the cache) and the decoder, which
    has seen every block in order, reads each one back exactly."""
    encoder = ResponseHeaderEncoder(max_blocks=4)
    decoder = Decoder()
    for pairs in blocks + blocks:
        assert decoded(encoder.encode(pairs), decoder) == pairs
    assert encoder.hits + encoder.misses == 2 * len(blocks)


def test_same_block_is_reused_and_the_cache_is_bounded():
    """A repeated block is the same bytes from the cache; at most max_blocks are kept."""
    encoder = ResponseHeaderEncoder(max_blocks=2)
    ok = [(":status", "200"), ("content-type", "application/grpc+proto")]
    first = encoder.encode(ok)
    assert encoder.encode(list(ok)) is first
    assert (encoder.hits, encoder.misses) == (1, 1)
    for status in ("1", "2", "3"):
        encoder.encode([("grpc-status", status)])
    assert len(encoder._blocks) == 2
    assert encoder.encode(ok) == first  # evicted, encoded again: same bytes
    assert encoder.misses == 5


def test_a_pending_table_size_update_goes_out_first():
    """After the peer shrinks its table (SETTINGS_HEADER_TABLE_SIZE), the next block starts
    with the size update RFC 7541 requires; later blocks come from the cache and still decode
    for a decoder that enforces the new limit."""
    encoder = ResponseHeaderEncoder()
    decoder = Decoder()
    trailers = [("grpc-status", "0")]
    assert decoded(encoder.encode(trailers), decoder) == [(b"grpc-status", b"0")]
    encoder.header_table_size = 256
    decoder.max_allowed_table_size = 256
    block = encoder.encode(trailers)
    assert block[0] & 0xE0 == 0x20  # 001xxxxx: dynamic table size update
    assert decoded(block, decoder) == [(b"grpc-status", b"0")]
    assert decoder.header_table.maxsize == 256
    again = encoder.encode(trailers)
    assert again[0] & 0xE0 != 0x20
    assert decoded(again, decoder) == [(b"grpc-status", b"0")]


def test_sensitive_headers_are_sent_never_indexed_and_not_cached():
    """A header flagged sensitive arrives flagged never-indexed, even after the same pair was
    sent plainly (the cache cannot tell them apart, so it keeps neither kind mixed up)."""
    encoder = ResponseHeaderEncoder()
    plain = [("x-token", "abc")]
    encoder.encode(plain)
    sensitive = encoder.encode([NeverIndexedHeaderTuple("x-token", "abc")])
    [header] = Decoder().decode(sensitive)
    assert isinstance(header, NeverIndexedHeaderTuple)
    [header] = Decoder().decode(encoder.encode([("x-token", "abc", True)]))
    assert isinstance(header, NeverIndexedHeaderTuple)
    [header] = Decoder().decode(encoder.encode(plain))
    assert type(header) is HeaderTuple


@pytest.mark.parametrize(
    "pairs",
    [
        [("X-Upper", "v")],
        [("grpc-status", "0")],
        [("", "v")],
        [("x-reply", "line\r\nbreak")],
        [("x-reply", "caf\u00e9")],
        [("x-data-bin", "not bytes")],
        [("x-reply", b"bytes for a text name")],
    ],
)
def test_bad_response_metadata_is_refused(pairs):
    """Names outside lowercase [0-9a-z_.-], the grpc- prefix, and values that are not printable
    ASCII (or not bytes for -bin names) are refused before they reach the wire."""
    with pytest.raises(ValueError):
        check_response_metadata(pairs)


def test_good_response_metadata_passes():
    """Lowercase names with printable values, and bytes under -bin names, pass unchanged."""
    pairs = [("x-reply", "a b~"), ("x.data_1-bin", b"\x00\xff")]
    assert check_response_metadata(pairs) == tuple(pairs)
