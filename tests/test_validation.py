"""Tests for anvil_trio.storage._validation: names, keys, blob keys, ranges, page tokens."""

from __future__ import annotations

import hashlib
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anvil_trio.storage import InvalidArgumentError, OutOfRangeError
from anvil_trio.storage._validation import (
    PageTokenCodec,
    check_range,
    decode_prefix,
    format_blob_key,
    normalize_max_keys,
    parse_blob_key,
    parse_expected_hash,
    resolve_range,
    validate_bucket_name,
    validate_metadata_map,
    validate_object_key,
    validate_upload_id,
)

SETTINGS = settings(max_examples=150, deadline=None)
BUCKET_CHARS = string.ascii_lowercase + string.digits + ".-"


def reference_bucket_ok(name: str) -> bool:
    """An independent statement of the API.md bucket-name rule."""
    if not 3 <= len(name) <= 63:
        return False
    if any(c not in BUCKET_CHARS for c in name):
        return False
    if not (name[0].isalnum() and name[-1].isalnum()):
        return False
    if ".." in name:
        return False
    parts = name.split(".")
    if len(parts) == 4 and all(1 <= len(p) <= 3 and p.isdigit() for p in parts):
        return False
    return True


@SETTINGS
@given(st.text(alphabet=BUCKET_CHARS + "A_/é", min_size=0, max_size=70))
def test_bucket_names_match_reference_rule(name: str) -> None:
    """validate_bucket_name accepts exactly the names the contract's rule accepts."""
    if reference_bucket_ok(name):
        assert validate_bucket_name(name) == name
    else:
        with pytest.raises(InvalidArgumentError):
            validate_bucket_name(name)


@pytest.mark.parametrize(
    "name", ["abc", "a-b.c", "0zz", "x" * 63, "1.2.3.4x", "1.2.3", "my.bucket.01"]
)
def test_bucket_names_accepted(name: str) -> None:
    """Typical valid names, including near-IPv4 shapes, pass."""
    assert validate_bucket_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["ab", "x" * 64, "Abc", "-abc", "abc-", ".abc", "abc.", "a..b", "192.168.0.1",
     "1.2.3.4", "a_b", "ab c", ""],
)
def test_bucket_names_rejected(name: str) -> None:
    """Each broken rule (length, case, ends, dots, IPv4, characters) is INVALID_ARGUMENT."""
    with pytest.raises(InvalidArgumentError):
        validate_bucket_name(name)


@SETTINGS
@given(st.text(min_size=0, max_size=600))
def test_object_keys_match_reference_rule(key: str) -> None:
    """A key is valid iff it is 1-1024 UTF-8 bytes without NUL; the stored form is its UTF-8."""
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raw = None
    if raw is not None and 1 <= len(raw) <= 1024 and b"\x00" not in raw:
        assert validate_object_key(key) == raw
    else:
        with pytest.raises(InvalidArgumentError):
            validate_object_key(key)


def test_object_key_limits() -> None:
    """1024 bytes pass, 1025 fail, multibyte characters count in bytes, lone surrogates fail."""
    assert len(validate_object_key("k" * 1024)) == 1024
    assert validate_object_key("é" * 512) == ("é" * 512).encode()
    for bad in ["k" * 1025, "é" * 513, "", "a\x00b", "\ud800"]:
        with pytest.raises(InvalidArgumentError):
            validate_object_key(bad)


@SETTINGS
@given(st.binary(min_size=0, max_size=64))
def test_blob_keys_round_trip(content: bytes) -> None:
    """format_blob_key and parse_blob_key are inverse for every SHA-256 digest, bytes or text."""
    digest = hashlib.sha256(content).hexdigest()
    key = format_blob_key(digest)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", key)
    assert parse_blob_key(key) == digest
    assert parse_blob_key(key.encode("ascii")) == digest


@pytest.mark.parametrize(
    "key",
    [b"", b"sha256:", b"sha256:" + b"A" * 64, b"sha256:" + b"a" * 63, b"sha256:" + b"a" * 65,
     b"md5:" + b"a" * 64, "sha256:" + "g" * 64, b"sha256:" + "é".encode() * 32, "a" * 64],
)
def test_blob_keys_rejected(key: bytes | str) -> None:
    """Uppercase, wrong length, wrong scheme, non-hex and non-ASCII keys are rejected."""
    with pytest.raises(InvalidArgumentError):
        parse_blob_key(key)


def test_upload_ids_and_hashes() -> None:
    """Upload ids must be 32 lowercase hex; expected hashes accept raw 32 bytes or hex."""
    assert validate_upload_id("0" * 32) == "0" * 32
    for bad in ["0" * 31, "A" * 32, "../" + "0" * 29, ""]:
        with pytest.raises(InvalidArgumentError):
            validate_upload_id(bad)
    raw = hashlib.sha256(b"x").digest()
    assert parse_expected_hash(raw) == raw.hex()
    assert parse_expected_hash(raw.hex().upper()) == raw.hex()
    assert parse_expected_hash(b"") is None and parse_expected_hash(None) is None
    for bad in [b"\x00" * 31, "abc"]:
        with pytest.raises(InvalidArgumentError):
            parse_expected_hash(bad)


def test_maps_prefixes_and_max_keys() -> None:
    """Metadata maps must be text; prefixes are capped at 1024 bytes; max_keys 0->1000, cap 1000."""
    assert validate_metadata_map({"a": "b"}, what="m") == {"a": "b"}
    with pytest.raises(InvalidArgumentError):
        validate_metadata_map({"a": 1}, what="m")  # type: ignore[dict-item]
    assert decode_prefix("", what="prefix") == b""
    with pytest.raises(InvalidArgumentError):
        decode_prefix("p" * 1025, what="prefix")
    assert [normalize_max_keys(n) for n in (0, 1, 999, 1000, 5000)] == [1000, 1, 999, 1000, 1000]
    with pytest.raises(InvalidArgumentError):
        normalize_max_keys(-1)


@SETTINGS
@given(
    st.integers(0, 50), st.one_of(st.none(), st.integers(0, 80)), st.integers(0, 60)
)
def test_resolve_range_rules(start: int, end: int | None, size: int) -> None:
    """Ranges clamp end, reject end < start, and are OUT_OF_RANGE past a non-empty end."""
    if end is not None and end < start:
        with pytest.raises(InvalidArgumentError):
            resolve_range(start, end, size)
    elif size > 0 and start >= size:
        with pytest.raises(OutOfRangeError):
            resolve_range(start, end, size)
    else:
        lo, hi = resolve_range(start, end, size)
        assert 0 <= lo <= hi <= size
        assert hi == (size if end is None else min(end, size))
        assert lo == min(start, hi)


def test_check_range_rejects_negative_start() -> None:
    """A negative start is INVALID_ARGUMENT whatever the size."""
    with pytest.raises(InvalidArgumentError):
        check_range(-1, None)
    check_range(0, 0)


@SETTINGS
@given(st.binary(max_size=40), st.text(max_size=10))
def test_page_tokens_round_trip(position: bytes, prefix: str) -> None:
    """A token decodes to its position under the context it was issued for."""
    codec = PageTokenCodec(b"s" * 32)
    context = {"b": "bucket", "p": prefix}
    token = codec.encode(context, position.hex())
    assert codec.decode(token, context) == position.hex()


def test_page_tokens_reject_foreign_and_tampered() -> None:
    """Garbage, tampered, other-secret and other-listing tokens are INVALID_ARGUMENT."""
    codec = PageTokenCodec(b"s" * 32)
    context = {"b": "bucket"}
    token = codec.encode(context, "6162")
    version, payload, mac = token.split(".")
    tampered_payload = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    candidates = [
        "", "garbage", "v1..", "v2." + payload + "." + mac, f"v1.{tampered_payload}.{mac}",
        f"v1.{payload}.{mac[:-2]}", f"v1.{payload}!.{mac}",
        PageTokenCodec(b"t" * 32).encode(context, "6162"),
    ]
    for bad in candidates:
        with pytest.raises(InvalidArgumentError):
            codec.decode(bad, context)
    with pytest.raises(InvalidArgumentError):
        codec.decode(token, {"b": "other"})
