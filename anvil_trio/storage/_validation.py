"""Validation of names, keys, ranges and page tokens: pure functions, no I/O.

Invariants (all from the wire contract, ``API.md``):

* A bucket name is 3-63 characters of ``a-z 0-9 . -``, starts and ends with a letter or digit,
  has no two adjacent dots and is not shaped like an IPv4 address (four dot-separated groups
  of 1-3 digits).
* An object key is 1-1024 bytes of UTF-8 without NUL. Keys are names, never file paths; they
  are stored as their UTF-8 bytes so that SQLite orders them bytewise. Since UTF-8 never
  contains the byte ``0xFF``, ``key + b"\\xff"`` is greater than every key that starts with
  ``key``; listing relies on that.
* A blob key is the ASCII text ``sha256:<64 lowercase hex>``; its digest is the 64-hex part.
* An upload id is 32 lowercase hex characters (it becomes a file name, so nothing else passes).
* A page token is ``v1.<payload>.<mac>`` (base64url without padding), where the MAC is an
  HMAC-SHA256 over the payload with a per-data-dir secret, truncated to 16 bytes, and the
  payload binds the token to the listing it came from. Anything the server did not issue, or a
  token used for a different listing, is an :class:`InvalidArgumentError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

from ._errors import InvalidArgumentError, OutOfRangeError

__all__ = [
    "DEFAULT_MAX_KEYS",
    "MAX_KEY_BYTES",
    "PageTokenCodec",
    "check_range",
    "decode_prefix",
    "parse_expected_hash",
    "format_blob_key",
    "normalize_max_keys",
    "parse_blob_key",
    "resolve_range",
    "validate_bucket_name",
    "validate_digest",
    "validate_metadata_map",
    "validate_object_key",
    "validate_upload_id",
]

#: Largest object key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: ``max_keys``/``limit`` 0 means this many; larger requests are capped to it.
DEFAULT_MAX_KEYS = 1000

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
_BLOB_PREFIX = "sha256:"
_TOKEN_VERSION = "v1"
_MAC_BYTES = 16


def validate_bucket_name(name: str) -> str:
    """Check a bucket name against the contract's rules.

    Args:
        name: the candidate name.

    Returns:
        ``name`` unchanged.

    Raises:
        InvalidArgumentError: the name breaks any rule (length, characters, first/last
            character, adjacent dots, IPv4 shape).
    """
    if not isinstance(name, str) or _BUCKET_RE.fullmatch(name) is None:
        raise InvalidArgumentError(
            f"invalid bucket name {name!r}: 3-63 characters of a-z 0-9 . -, "
            "starting and ending with a letter or digit"
        )
    if ".." in name:
        raise InvalidArgumentError(f"invalid bucket name {name!r}: two adjacent dots")
    if _IPV4_RE.fullmatch(name) is not None:
        raise InvalidArgumentError(f"invalid bucket name {name!r}: shaped like an IPv4 address")
    return name


def validate_object_key(key: str) -> bytes:
    """Check an object key and return its UTF-8 encoding (the form it is stored in).

    Args:
        key: the key as text.

    Returns:
        The key's UTF-8 bytes (1-1024 of them, no NUL).

    Raises:
        InvalidArgumentError: empty, longer than 1024 bytes, containing NUL, or not encodable
            as UTF-8 (lone surrogates).
    """
    if not isinstance(key, str):
        raise InvalidArgumentError("object key must be text")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError("object key is not valid UTF-8") from None
    if not raw:
        raise InvalidArgumentError("object key must not be empty")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidArgumentError(f"object key is {len(raw)} bytes; at most {MAX_KEY_BYTES}")
    if b"\x00" in raw:
        raise InvalidArgumentError("object key must not contain NUL")
    return raw


def validate_digest(digest: str) -> str:
    """Check a SHA-256 digest in lowercase hex.

    Raises:
        InvalidArgumentError: not exactly 64 lowercase hex characters.
    """
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        raise InvalidArgumentError("a SHA-256 digest is 64 lowercase hex characters")
    return digest


def parse_blob_key(key: bytes | str) -> str:
    """Parse a blob key ``sha256:<64 lowercase hex>``.

    Args:
        key: the key as ASCII bytes (as carried on the wire) or text.

    Returns:
        The 64-character lowercase hex digest.

    Raises:
        InvalidArgumentError: anything else.
    """
    if isinstance(key, (bytes, bytearray, memoryview)):
        try:
            key = bytes(key).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidArgumentError("a blob key is ASCII text sha256:<64 hex>") from None
    if not isinstance(key, str) or not key.startswith(_BLOB_PREFIX):
        raise InvalidArgumentError("a blob key is sha256:<64 lowercase hex>")
    digest = key[len(_BLOB_PREFIX):]
    if _DIGEST_RE.fullmatch(digest) is None:
        raise InvalidArgumentError("a blob key is sha256:<64 lowercase hex>")
    return digest


def format_blob_key(digest: str) -> str:
    """Return the blob key text ``sha256:<digest>`` (encode it as ASCII for the wire).

    Raises:
        InvalidArgumentError: ``digest`` is not 64 lowercase hex characters.
    """
    return _BLOB_PREFIX + validate_digest(digest)


def validate_upload_id(upload_id: str) -> str:
    """Check an upload id (32 lowercase hex characters, as the server issues them).

    Raises:
        InvalidArgumentError: anything else (no such upload could ever exist).
    """
    if not isinstance(upload_id, str) or _UPLOAD_ID_RE.fullmatch(upload_id) is None:
        raise InvalidArgumentError("an upload id is 32 lowercase hex characters")
    return upload_id


def validate_metadata_map(values: Mapping[str, str] | None, *, what: str) -> dict[str, str]:
    """Check a ``map<string,string>`` (user metadata, upload attributes) and copy it.

    Raises:
        InvalidArgumentError: a key or value is not text, or not encodable as UTF-8.
    """
    result: dict[str, str] = {}
    for k, v in (values or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgumentError(f"{what} keys and values must be text")
        try:
            k.encode("utf-8")
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"{what} must be valid UTF-8") from None
        result[k] = v
    return result


def normalize_max_keys(max_keys: int) -> int:
    """Apply the contract's page-size rule: 0 means 1000, larger values are capped at 1000.

    Raises:
        InvalidArgumentError: ``max_keys`` is negative.
    """
    if max_keys < 0:
        raise InvalidArgumentError("max_keys must not be negative")
    if max_keys == 0:
        return DEFAULT_MAX_KEYS
    return min(max_keys, DEFAULT_MAX_KEYS)


def check_range(start: int, end: int | None) -> None:
    """Reject a range that is malformed whatever the object's size.

    Raises:
        InvalidArgumentError: ``start`` is negative or ``end < start``.
    """
    if start < 0:
        raise InvalidArgumentError("range start must not be negative")
    if end is not None and end < start:
        raise InvalidArgumentError(f"range end {end} is before its start {start}")


def resolve_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    """Resolve a requested byte range against an object of ``size`` bytes.

    ``end`` is exclusive; ``None`` means the end of the object; an ``end`` past ``size`` is
    clamped.

    Returns:
        ``(start, end)`` with ``0 <= start <= end <= size``.

    Raises:
        InvalidArgumentError: ``start`` is negative or ``end < start``.
        OutOfRangeError: ``start >= size`` for a non-empty object.
    """
    check_range(start, end)
    if size > 0 and start >= size:
        raise OutOfRangeError(f"range start {start} is at or past the end ({size} bytes)")
    stop = size if end is None else min(end, size)
    start = min(start, stop)
    return start, stop


def decode_prefix(value: str, *, what: str) -> bytes:
    """Encode a listing prefix or delimiter (UTF-8, at most 1024 bytes; may be empty).

    Raises:
        InvalidArgumentError: not text, not UTF-8 encodable, or too long.
    """
    try:
        raw = value.encode("utf-8")
    except (UnicodeEncodeError, AttributeError):
        raise InvalidArgumentError(f"{what} must be UTF-8 text") from None
    if len(raw) > 1024:
        raise InvalidArgumentError(f"{what} is longer than 1024 bytes")
    return raw


def parse_expected_hash(value: bytes | str | None) -> str | None:
    """Normalize an expected SHA-256: raw 32 bytes or hex text -> lowercase hex; empty -> None.

    Raises:
        InvalidArgumentError: any other length or form.
    """
    if value is None or value in (b"", ""):
        return None
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 32:
            raise InvalidArgumentError("expected_hash is a raw 32-byte SHA-256")
        return bytes(value).hex()
    return validate_digest(value.lower())


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.frozen
class PageTokenCodec:
    """Issue and check opaque, tamper-evident page tokens.

    A token binds a listing ``context`` (which tenant, bucket, prefix, delimiter...) to a
    ``position`` (where the next page starts). Only tokens issued with the same secret *and*
    the same context decode.

    Args:
        secret: the HMAC key (per data dir; at least 16 bytes).
    """

    secret: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ValueError("page token secret must be at least 16 bytes")

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, context: Mapping[str, Any], position: Any) -> str:
        """Issue a token for ``position`` within the listing described by ``context``.

        Both must be JSON-serializable (bytes positions are the caller's to encode).
        """
        payload = json.dumps(
            {"c": dict(context), "p": position}, sort_keys=True, separators=(",", ":")
        ).encode("utf-8")
        return f"{_TOKEN_VERSION}.{_b64e(payload)}.{_b64e(self._mac(payload))}"

    def verify(self, token: str) -> dict[str, Any]:
        """Check that a token is well formed and was issued with this secret, whatever listing
        it belongs to (pure: no context, no data; callers may run it before authorization).

        Args:
            token: the client's token (non-empty).

        Returns:
            The token's payload: ``{"c": context, "p": position}``.

        Raises:
            InvalidArgumentError: malformed or not issued with this secret.
        """
        bad = InvalidArgumentError("invalid page token")
        if not isinstance(token, str):
            raise bad
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _TOKEN_VERSION:
            raise bad
        try:
            payload = _b64d(parts[1])
            mac = _b64d(parts[2])
        except (binascii.Error, ValueError):
            raise bad from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise bad
        try:
            decoded = json.loads(payload)
        except ValueError:
            raise bad from None
        if not isinstance(decoded, dict) or "c" not in decoded or "p" not in decoded:
            raise bad
        return decoded

    def decode(self, token: str, context: Mapping[str, Any]) -> Any:
        """Check a token (as :meth:`verify` does) and that it belongs to the listing described
        by ``context``; return its position.

        Args:
            token: the client's token (non-empty).
            context: the context of the listing it is used for.

        Raises:
            InvalidArgumentError: malformed, not issued with this secret, or issued for a
                different listing.
        """
        decoded = self.verify(token)
        want = json.loads(json.dumps(dict(context), sort_keys=True))
        if decoded["c"] != want:
            raise InvalidArgumentError("invalid page token")
        return decoded["p"]
