"""Access tokens: HS256 JWTs issued and verified with a :class:`KeyRing` (PyJWT).

Invariants:

* Issued tokens have the header ``{"alg": "HS256", "typ": "JWT", "kid": <signing key id>}``
  and the claims ``iss``, ``sub`` (client id), ``tid`` (tenant), ``scope`` (space-separated
  scopes), ``iat``, ``nbf``, ``exp`` (whole seconds since the epoch) and ``jti`` (random).
* Verification accepts only what issue produces: the algorithm is pinned to HS256 (``none``,
  ``RS*``, ``ES*`` and every other ``alg`` are rejected before any key is used), the header
  holds only ``alg``, ``typ`` and ``kid``, the ``kid`` must name a key in the ring (no fallback
  to another key), the signature must verify with that key, the issuer must match, every claim
  above must be present with the right type, and the scopes must parse.
* Times are checked here, against the caller's ``now`` (an injectable clock), with a leeway
  (default 30 s): ``nbf <= now + leeway``, ``iat <= now + leeway`` and ``now < exp + leeway``.
  PyJWT's own clock checks are switched off so tests can move time freely.
* Every failure is an :class:`UnauthenticatedError` whose message says what was wrong (never
  echoing the token).
* Each codec keeps a bounded LRU cache of the tokens it verified (:class:`VerifiedTokenCache`),
  keyed by the exact token string. Everything verification checks except the times depends
  only on the token's text and the codec's fixed key ring and issuer, so a hit re-runs only the
  time checks, against the ``now`` of that call, and answers exactly what a full verification
  would: a cache never lets a token live past ``exp + leeway`` (an entry failing the time
  checks is dropped). Only successes are cached. A codec's key ring never changes; a new ring
  means a new codec (``Authenticator.update_keyring``) and so an empty cache, which is how a
  key removed from the ring stops verifying at once. The cache is not thread-safe: a codec
  verifies on one thread (the event loop's).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import attrs
import jwt

from ._errors import InvalidScopeError, UnauthenticatedError
from ._keys import KeyRing
from ._scopes import Grants

__all__ = [
    "DEFAULT_ISSUER",
    "DEFAULT_LEEWAY",
    "DEFAULT_TOKEN_CACHE_SIZE",
    "DEFAULT_TOKEN_LIFETIME",
    "TokenClaims",
    "TokenCodec",
    "VerifiedTokenCache",
]

#: Default ``iss`` claim.
DEFAULT_ISSUER = "anvil-trio"
#: Default token lifetime in seconds (15 minutes).
DEFAULT_TOKEN_LIFETIME = 900
#: Default clock leeway in seconds for ``exp``, ``nbf`` and ``iat``.
DEFAULT_LEEWAY = 30.0
#: Longest token accepted, in characters; longer ones are rejected before decoding.
MAX_TOKEN_CHARS = 16384
#: Default number of verified tokens a codec remembers (0 turns the cache off).
DEFAULT_TOKEN_CACHE_SIZE = 1024
#: Longest token the cache keeps, in characters (so it holds at most ~4 MiB of token text).
MAX_CACHED_TOKEN_CHARS = 4096

_ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ("iss", "sub", "tid", "scope", "iat", "nbf", "exp", "jti")
_ALLOWED_HEADER = frozenset({"alg", "typ", "kid"})
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


@attrs.frozen
class TokenClaims:
    """The verified content of a token.

    Attributes:
        issuer: ``iss``.
        client_id: ``sub``.
        tenant: ``tid``.
        scopes: ``scope``, parsed.
        issued_at: ``iat`` (seconds since the epoch).
        not_before: ``nbf``.
        expires_at: ``exp``.
        token_id: ``jti``.
        key_id: the ``kid`` of the key that signed it.
    """

    issuer: str
    client_id: str
    tenant: str
    scopes: Grants
    issued_at: float
    not_before: float
    expires_at: float
    token_id: str
    key_id: str


@attrs.define
class VerifiedTokenCache:
    """A bounded LRU map from exact token strings to the claims they verified to.

    It only remembers; the codec decides what a hit is worth (see the module docstring). Not
    thread-safe.

    Args:
        max_entries: how many tokens it holds at most (0: none); the least recently used one
            goes first.
        max_token_chars: tokens longer than this are never stored.
    """

    max_entries: int = attrs.field(default=DEFAULT_TOKEN_CACHE_SIZE, kw_only=True)
    max_token_chars: int = attrs.field(default=MAX_CACHED_TOKEN_CHARS, kw_only=True)
    _entries: OrderedDict[str, TokenClaims] = attrs.field(init=False, factory=OrderedDict)

    def __attrs_post_init__(self) -> None:
        if self.max_entries < 0 or self.max_token_chars < 0:
            raise ValueError("cache bounds must not be negative")

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> TokenClaims | None:
        """The claims ``token`` verified to, or None; a hit becomes the most recently used."""
        claims = self._entries.get(token)
        if claims is not None:
            self._entries.move_to_end(token)
        return claims

    def put(self, token: str, claims: TokenClaims) -> None:
        """Remember that ``token`` verified to ``claims`` (unless it is too long), evicting the
        least recently used entries past ``max_entries``."""
        if len(token) > self.max_token_chars or self.max_entries == 0:
            return
        self._entries[token] = claims
        self._entries.move_to_end(token)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard(self, token: str) -> None:
        """Forget ``token`` (no error if it is not held)."""
        self._entries.pop(token, None)

    def clear(self) -> None:
        """Forget every token."""
        self._entries.clear()


def _number(payload: Mapping[str, Any], name: str) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnauthenticatedError(f"token claim {name!r} is not a number")
    return float(value)


def _text(payload: Mapping[str, Any], name: str) -> str:
    value = payload[name]
    if not isinstance(value, str) or not value:
        raise UnauthenticatedError(f"token claim {name!r} is not a non-empty string")
    return value


@attrs.frozen
class TokenCodec:
    """Signs and verifies access tokens.

    Args:
        keyring: keys; the newest signs, all verify.
        issuer: the ``iss`` put in and required of tokens.
        lifetime: seconds from issue to expiry (whole seconds are used; at least 1).
        leeway: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
        cache_size: how many verified tokens to remember (0: verify every token in full).
    """

    keyring: KeyRing
    issuer: str = DEFAULT_ISSUER
    lifetime: float = DEFAULT_TOKEN_LIFETIME
    leeway: float = DEFAULT_LEEWAY
    cache_size: int = attrs.field(default=DEFAULT_TOKEN_CACHE_SIZE, kw_only=True)
    _jwt: jwt.PyJWT = attrs.field(
        init=False,
        repr=False,
        eq=False,
        factory=lambda: jwt.PyJWT(options={"enforce_minimum_key_length": True}),
    )
    _cache: VerifiedTokenCache = attrs.field(
        init=False,
        repr=False,
        eq=False,
        default=attrs.Factory(
            lambda self: VerifiedTokenCache(max_entries=max(self.cache_size, 0)), takes_self=True
        ),
    )

    def __attrs_post_init__(self) -> None:
        if self.lifetime < 1 or self.leeway < 0:
            raise ValueError("lifetime must be at least 1 s and leeway non-negative")
        if self.cache_size < 0:
            raise ValueError("cache_size must not be negative")

    @property
    def cache(self) -> VerifiedTokenCache:
        """The cache of verified tokens (for statistics and tests)."""
        return self._cache

    def encode(
        self, *, client_id: str, tenant: str, scopes: Grants, now: float | None = None
    ) -> tuple[str, TokenClaims]:
        """Issue a token.

        Args:
            client_id: goes into ``sub``.
            tenant: goes into ``tid``.
            scopes: goes into ``scope``; must be non-empty and every scope expressible.
            now: the issue time (seconds since the epoch); default ``time.time()``.

        Returns:
            ``(token, claims)``.

        Raises:
            ValueError: ``scopes`` is empty or holds a scope a token cannot carry, or
                ``client_id``/``tenant`` is empty.
        """
        if not scopes.scopes or not all(s.expressible for s in scopes):
            raise ValueError("a token needs a non-empty set of expressible scopes")
        if not client_id or not tenant:
            raise ValueError("a token needs a client id and a tenant")
        issued = int(time.time() if now is None else now)
        key = self.keyring.signing_key
        payload = {
            "iss": self.issuer,
            "sub": client_id,
            "tid": tenant,
            "scope": scopes.to_claim(),
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(self.lifetime),
            "jti": secrets.token_urlsafe(16),
        }
        token = self._jwt.encode(
            payload, key.secret, algorithm=_ALGORITHM, headers={"kid": key.kid, "typ": "JWT"}
        )
        claims = TokenClaims(
            issuer=self.issuer,
            client_id=client_id,
            tenant=tenant,
            scopes=scopes,
            issued_at=float(issued),
            not_before=float(issued),
            expires_at=float(payload["exp"]),
            token_id=payload["jti"],
            key_id=key.kid,
        )
        return token, claims

    def decode(self, token: str, *, now: float | None = None) -> TokenClaims:
        """Verify a token and return its claims.

        Args:
            token: the compact JWT (without ``Bearer``).
            now: the current time (seconds since the epoch); default ``time.time()``.

        Returns:
            The verified :class:`TokenClaims`.

        Raises:
            UnauthenticatedError: the token is malformed, uses another algorithm or an unknown
                key, is badly signed, has a wrong issuer or missing/ill-typed claims, is
                expired or not yet valid, or carries a scope that does not parse.
        """
        now = time.time() if now is None else float(now)
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            raise UnauthenticatedError("malformed token")
        cached = self._cache.get(token)
        if cached is not None:
            try:
                self._check_times(cached.issued_at, cached.not_before, cached.expires_at, now)
            except UnauthenticatedError:
                self._cache.discard(token)
                raise
            return cached
        claims = self._verify(token, now)
        self._cache.put(token, claims)
        return claims

    def _verify(self, token: str, now: float) -> TokenClaims:
        """The full verification of ``decode`` (no cache)."""
        if not set(token) <= _TOKEN_CHARS or token.count(".") != 2:
            raise UnauthenticatedError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UnauthenticatedError("malformed token") from None
        if header.get("alg") != _ALGORITHM:
            raise UnauthenticatedError("token algorithm is not allowed")
        if not set(header) <= _ALLOWED_HEADER:
            raise UnauthenticatedError("token header has unsupported parameters")
        kid = header.get("kid")
        key = self.keyring.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise UnauthenticatedError("token is signed with an unknown key")
        try:
            payload = self._jwt.decode(
                token,
                key.secret,
                algorithms=[_ALGORITHM],
                issuer=self.issuer,
                options={
                    "require": list(_REQUIRED_CLAIMS),
                    "verify_signature": True,
                    "verify_iss": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthenticatedError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise UnauthenticatedError("token issuer is not accepted") from None
        except jwt.PyJWTError:
            raise UnauthenticatedError("malformed token") from None
        return self._claims(payload, key.kid, now)

    def _check_times(self, issued: float, not_before: float, expires: float, now: float) -> None:
        """Raise UnauthenticatedError unless the token is valid at ``now`` (with the leeway)."""
        if now >= expires + self.leeway:
            raise UnauthenticatedError("token has expired")
        if not_before > now + self.leeway:
            raise UnauthenticatedError("token is not valid yet")
        if issued > now + self.leeway:
            raise UnauthenticatedError("token is issued in the future")

    def _claims(self, payload: Mapping[str, Any], kid: str, now: float) -> TokenClaims:
        issued, not_before, expires = (_number(payload, n) for n in ("iat", "nbf", "exp"))
        self._check_times(issued, not_before, expires, now)
        try:
            scopes = Grants.from_claim(payload["scope"])
        except InvalidScopeError:
            raise UnauthenticatedError("token scope claim is malformed") from None
        return TokenClaims(
            issuer=_text(payload, "iss"),
            client_id=_text(payload, "sub"),
            tenant=_text(payload, "tid"),
            scopes=scopes,
            issued_at=issued,
            not_before=not_before,
            expires_at=expires,
            token_id=_text(payload, "jti"),
            key_id=kid,
        )
