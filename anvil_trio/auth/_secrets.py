"""Client ids, client secrets and their hashes at rest.

Invariants:

* Ids and secrets come from :mod:`secrets`. A secret is shown once, at creation or rotation;
  only its hash is stored.
* A hash is one ASCII string ``scrypt$N$r$p$SALT$HASH`` (SALT and HASH unpadded base64url), so
  the parameters travel with it and can be raised later without breaking stored hashes.
* Verification recomputes scrypt with the stored parameters and salt and compares with
  :func:`hmac.compare_digest` (constant time). Parameters read from a stored hash are bounded
  so a corrupted row cannot make the server allocate gigabytes.
* :func:`dummy_verify` does the same work as a real verification against a hash made with the
  given parameters and always fails; the authenticator uses it for unknown client ids, so the
  response time does not tell whether a client id exists.
* Everything here is synchronous and CPU-bound (tens of milliseconds per scrypt at the default
  parameters): async callers run it in a worker thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

import attrs

__all__ = [
    "DEFAULT_SCRYPT",
    "ScryptParams",
    "dummy_verify",
    "generate_client_id",
    "generate_client_secret",
    "hash_secret",
    "parse_secret_hash",
    "verify_secret",
]

_SCHEME = "scrypt"
#: Longest client secret accepted for verification (generated ones are 43 characters).
MAX_SECRET_CHARS = 1024
# Bounds on parameters read back from stored hashes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16


@attrs.frozen
class ScryptParams:
    """Cost parameters of scrypt (RFC 7914).

    Memory used is about ``128 * n * r * p`` bytes (16 MiB at the default n=2**14, r=8, p=1).

    Attributes:
        n: CPU/memory cost, a power of two greater than 1.
        r: block size.
        p: parallelism.
        salt_bytes: length of the random salt.
        hash_bytes: length of the derived key.
    """

    n: int = 2**14
    r: int = 8
    p: int = 1
    salt_bytes: int = 16
    hash_bytes: int = 32

    def __attrs_post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.n > _MAX_N:
            raise ValueError(f"scrypt n must be a power of two in [2, {_MAX_N}], got {self.n}")
        if not 1 <= self.r <= _MAX_R or not 1 <= self.p <= _MAX_P:
            raise ValueError("scrypt r or p out of range")
        if not 8 <= self.salt_bytes <= 64 or not 16 <= self.hash_bytes <= 64:
            raise ValueError("scrypt salt or hash length out of range")

    def derive(self, secret: str, salt: bytes) -> bytes:
        """Run scrypt on ``secret`` (UTF-8) with ``salt``; returns ``hash_bytes`` bytes."""
        return hashlib.scrypt(
            secret.encode("utf-8", "surrogatepass"),
            salt=salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=128 * self.n * self.r * (self.p + 2) + (1 << 20),
            dklen=self.hash_bytes,
        )


#: The parameters new hashes use.
DEFAULT_SCRYPT = ScryptParams()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not text.isascii():
        raise ValueError("empty or non-ASCII base64")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("bad base64") from None


def generate_client_id() -> str:
    """A new client id: ``app_`` and 20 lowercase hex digits (80 random bits)."""
    return "app_" + secrets.token_hex(10)


def generate_client_secret() -> str:
    """A new client secret: 43 URL-safe characters (256 random bits). Show it once."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, *, params: ScryptParams = DEFAULT_SCRYPT) -> str:
    """Hash a client secret for storage.

    Args:
        secret: the client secret.
        params: scrypt cost; tests pass cheap ones.

    Returns:
        ``scrypt$N$r$p$SALT$HASH`` with a fresh random salt (so two hashes of one secret differ).
    """
    salt = secrets.token_bytes(params.salt_bytes)
    digest = params.derive(secret, salt)
    return f"{_SCHEME}${params.n}${params.r}${params.p}${_b64(salt)}${_b64(digest)}"


def parse_secret_hash(encoded: str) -> tuple[ScryptParams, bytes, bytes]:
    """Split a stored hash into its parameters, salt and digest.

    Raises:
        ValueError: the string is not a well-formed ``scrypt$...`` hash or its parameters are
            out of bounds.
    """
    if not isinstance(encoded, str):
        raise ValueError("a secret hash must be a string")
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise ValueError("not a scrypt secret hash")
    if not all(x.isascii() and x.isdigit() and len(x) <= 8 for x in parts[1:4]):
        raise ValueError("bad scrypt parameters")
    n, r, p = (int(x) for x in parts[1:4])
    salt, digest = _unb64(parts[4]), _unb64(parts[5])
    params = ScryptParams(n=n, r=r, p=p, salt_bytes=len(salt), hash_bytes=len(digest))
    return params, salt, digest


def verify_secret(secret: str, encoded: str) -> bool:
    """Whether ``secret`` matches the stored hash ``encoded``, compared in constant time.

    Args:
        secret: the client secret presented.
        encoded: a hash made by :func:`hash_secret`.

    Returns:
        True on a match. False for a wrong secret or one longer than 1024 characters.

    Raises:
        ValueError: ``encoded`` is malformed (see :func:`parse_secret_hash`).
    """
    params, salt, digest = parse_secret_hash(encoded)
    if not isinstance(secret, str) or len(secret) > MAX_SECRET_CHARS:
        params.derive("", salt)
        return False
    return hmac.compare_digest(params.derive(secret, salt), digest)


def dummy_verify(secret: str, *, params: ScryptParams = DEFAULT_SCRYPT) -> bool:
    """Do the work of a verification with ``params`` and fail; for unknown client ids.

    Returns:
        Always False.
    """
    salt = secrets.token_bytes(params.salt_bytes)
    text = secret if isinstance(secret, str) and len(secret) <= MAX_SECRET_CHARS else ""
    derived = params.derive(text, salt)
    hmac.compare_digest(derived, secrets.token_bytes(params.hash_bytes))
    return False
