"""The authenticator: client credentials in, tokens out; bearer headers in, principals out.

Invariants:

* The authenticator reads apps through the small :class:`AppStore` protocol (one async
  ``get_app``), so it knows nothing about how storage keeps them. Grants, revocations and new
  secrets take effect at the next ``issue_token``; tokens already issued stay valid until they
  expire.
* ``issue_token`` checks, in API.md's status order: the credentials (UNAUTHENTICATED), then the
  requested scopes' syntax (INVALID_ARGUMENT), then the narrowing (PERMISSION_DENIED).
* Secret verification (scrypt) runs in a worker thread, at most ``hash_concurrency`` at a time
  (each takes ~16 MiB at the default parameters). An unknown client id, or an app whose stored
  hash is malformed, costs the same scrypt work as a real check and fails with the same message
  as a wrong secret, so neither timing nor wording tells whether a client id exists.
* Sign-in is throttled before any scrypt work (``_throttle`` states the rules): an attempt for
  a client id backing off after failures — or for an id that failed, from an address backing
  off — is refused at once with :class:`TooManyAttemptsError`; so is one that finds no free
  hashing slot within ``hash_wait`` seconds. Unknown client ids are tracked exactly like known
  ones. An id with no failures on record is never refused by the backoff, so an attack on one
  app never delays another app's correct secret (only the shared hashing slots are shared).
  The throttle runs on the Trio clock (``trio.current_time()``), not on ``clock``.
* ``verify`` is synchronous and cheap: it parses ``Bearer <jwt>`` (scheme case-insensitive)
  and checks the token with the current key ring: one HMAC the first time, then (from the
  codec's cache of verified tokens) only the time checks, against the clock, until the token
  expires or is evicted. ``update_keyring`` starts a new codec with an empty cache, so a key
  that left the ring verifies nothing from then on.
* Time comes from ``now=`` when given, else from the ``clock`` knob (default ``time.time``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import trio

from ._errors import PermissionDeniedError, TooManyAttemptsError, UnauthenticatedError
from ._keys import KeyRing
from ._operations import required_scope_for
from ._scopes import Grants, Scope, narrow_scopes
from ._secrets import DEFAULT_SCRYPT, ScryptParams, dummy_verify, verify_secret
from ._throttle import Admission, SignInThrottle, peer_key
from ._tokens import (
    DEFAULT_ISSUER,
    DEFAULT_LEEWAY,
    DEFAULT_TOKEN_CACHE_SIZE,
    DEFAULT_TOKEN_LIFETIME,
    TokenCodec,
)

__all__ = [
    "AppRecord",
    "AppStore",
    "Authenticator",
    "IssuedToken",
    "Principal",
]

logger = logging.getLogger("anvil_trio.auth")

_BAD_CREDENTIALS = "invalid client credentials"
_SLOTS_BUSY = "too many sign-in attempts at once; retry later"
DEFAULT_HASH_WAIT = 1.0


def _refusal(admission: Admission, now: float) -> TooManyAttemptsError:
    if admission.reason == "busy":
        return TooManyAttemptsError(
            "a sign-in attempt for this client id is already being checked; retry shortly"
        )
    retry_after = max(0.0, admission.retry_at - now)
    # Round up to the next 0.1 s, so retrying after the stated time is never too early.
    shown = math.ceil(retry_after * 10) / 10
    where = "from this address" if admission.reason == "peer" else "for this client id"
    return TooManyAttemptsError(
        f"too many failed sign-in attempts {where}; retry in {shown:.1f} s",
        retry_after=retry_after,
    )


@attrs.frozen
class AppRecord:
    """What the authenticator needs to know about an app.

    Any object with these three attributes will do (the storage layer may return its own type).

    Attributes:
        tenant: the tenant the app belongs to (goes into ``tid``).
        secret_hash: the stored ``scrypt$...`` hash of its client secret.
        scopes: its granted scope strings.
    """

    tenant: str
    secret_hash: str = attrs.field(repr=False)
    scopes: tuple[str, ...] = attrs.field(converter=tuple)


class AppStore(Protocol):
    """Where apps are looked up; implemented by the storage layer."""

    async def get_app(self, client_id: str) -> AppRecord | None:
        """The app with this client id, or None if there is none."""
        ...


@attrs.frozen
class IssuedToken:
    """The answer to ``GetAccessToken``.

    Attributes:
        access_token: the JWT (hidden from ``repr``).
        token_type: always ``"Bearer"``.
        expires_in: seconds until it expires.
        scopes: the scopes it carries.
    """

    access_token: str = attrs.field(repr=False)
    token_type: str
    expires_in: int
    scopes: tuple[str, ...]


@attrs.frozen
class Principal:
    """The caller a verified token stands for.

    Attributes:
        client_id: the app's client id (``sub``).
        tenant: its tenant (``tid``); everything it reaches is inside this tenant.
        scopes: its scopes.
        expires_at: when the token expires (seconds since the epoch).
        token_id: the token's ``jti``.
    """

    client_id: str
    tenant: str
    scopes: Grants
    expires_at: float
    token_id: str = ""

    def permits(self, action: str, resource: str) -> bool:
        """Whether the scopes allow ``action`` on the concrete ``resource`` (see
        ``Grants.permits``)."""
        return self.scopes.permits(action, resource)

    def allows(self, required: Scope) -> bool:
        """Whether the scopes cover ``required``."""
        return self.scopes.allows(required)

    def require(self, action: str, resource: str) -> None:
        """Raise unless the scopes allow ``action`` on the concrete ``resource``.

        Raises:
            PermissionDeniedError: they do not.
        """
        if not self.permits(action, resource):
            raise PermissionDeniedError(f"the token does not permit {action} on {resource}")

    def require_scope(self, required: Scope) -> None:
        """Raise unless the scopes cover ``required``.

        Raises:
            PermissionDeniedError: they do not.
        """
        if not self.allows(required):
            raise PermissionDeniedError(
                f"the token does not permit {required.action} on"
                f" {required.resource}{'*' if required.wildcard else ''}"
            )

    def require_operation(
        self,
        operation: str,
        *,
        bucket: str | None = None,
        key: str | None = None,
        blob_key: str | bytes | None = None,
    ) -> None:
        """Raise unless the token may run ``operation`` (see ``required_scope_for``).

        Raises:
            InvalidResourceError: a name or key is invalid.
            PermissionDeniedError: the scopes do not cover the operation.
        """
        self.require_scope(
            required_scope_for(operation, bucket=bucket, key=key, blob_key=blob_key)
        )


def _bearer_token(authorization: str | bytes | None) -> str:
    if authorization is None:
        raise UnauthenticatedError("missing authorization")
    if isinstance(authorization, (bytes, bytearray)):
        try:
            authorization = bytes(authorization).decode("ascii")
        except UnicodeDecodeError:
            raise UnauthenticatedError("malformed authorization") from None
    if not isinstance(authorization, str) or not authorization.strip():
        raise UnauthenticatedError("missing authorization")
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise UnauthenticatedError("authorization is not 'Bearer <token>'")
    return parts[1]


@attrs.define
class Authenticator:
    """Issues and verifies access tokens.

    Args:
        keyring: JWT keys (the newest signs); replace with :meth:`update_keyring`.
        apps: where apps are looked up.
        issuer: the ``iss`` claim.
        token_lifetime: seconds a token lives (default 900).
        leeway: seconds of clock skew tolerated (default 30).
        scrypt_params: the cost of the stand-in work done for unknown client ids; match what
            new secrets are hashed with.
        hash_concurrency: how many secret verifications may run at once.
        hash_wait: seconds an attempt may wait for a hashing slot; past it,
            :class:`TooManyAttemptsError` (``inf``: wait as long as it takes).
        throttle: the sign-in backoff state (default: ``SignInThrottle()``, see ``_throttle``).
        clock: the time source when no ``now=`` is given (seconds since the epoch).
        token_cache_size: how many verified tokens to remember (0: verify each in full).
    """

    _keyring: KeyRing = attrs.field(alias="keyring")
    apps: AppStore
    issuer: str = attrs.field(default=DEFAULT_ISSUER, kw_only=True)
    token_lifetime: float = attrs.field(default=DEFAULT_TOKEN_LIFETIME, kw_only=True)
    leeway: float = attrs.field(default=DEFAULT_LEEWAY, kw_only=True)
    scrypt_params: ScryptParams = attrs.field(default=DEFAULT_SCRYPT, kw_only=True)
    hash_concurrency: int = attrs.field(default=2, kw_only=True)
    hash_wait: float = attrs.field(default=DEFAULT_HASH_WAIT, kw_only=True)
    throttle: SignInThrottle = attrs.field(factory=SignInThrottle, kw_only=True)
    clock: Callable[[], float] = attrs.field(default=time.time, kw_only=True)
    token_cache_size: int = attrs.field(default=DEFAULT_TOKEN_CACHE_SIZE, kw_only=True)
    _codec: TokenCodec = attrs.field(init=False)
    _limiter: trio.CapacityLimiter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if not self.hash_wait >= 0:
            raise ValueError(f"hash_wait must not be negative, got {self.hash_wait!r}")
        self._codec = self._make_codec(self._keyring)
        self._limiter = trio.CapacityLimiter(self.hash_concurrency)

    def _make_codec(self, keyring: KeyRing) -> TokenCodec:
        return TokenCodec(
            keyring, issuer=self.issuer, lifetime=self.token_lifetime, leeway=self.leeway,
            cache_size=self.token_cache_size,
        )

    @property
    def keyring(self) -> KeyRing:
        """The key ring in use."""
        return self._keyring

    def update_keyring(self, keyring: KeyRing) -> None:
        """Use a new key ring from now on (e.g. after the key file was rotated); tokens
        verified before are verified again, so one whose key is gone is rejected."""
        self._codec = self._make_codec(keyring)
        self._keyring = keyring

    async def _check_secret(
        self, client_id: str, peer: str | None, client_secret: str, secret_hash: str | None
    ) -> bool:
        def work() -> bool:
            if secret_hash is not None:
                try:
                    return verify_secret(client_secret, secret_hash)
                except ValueError:
                    logger.error("an app's stored secret hash is malformed; refusing it")
            dummy_verify(client_secret, params=self.scrypt_params)
            return False

        got_slot = False
        with trio.move_on_after(self.hash_wait):
            await self._limiter.acquire()
            got_slot = True
        if not got_slot:
            raise TooManyAttemptsError(_SLOTS_BUSY, retry_after=self.hash_wait)
        try:
            # Check again: while this attempt queued, others for the id may have failed.
            now = trio.current_time()
            admission = self.throttle.begin(client_id, peer, now=now)
            if not admission.allowed:
                raise _refusal(admission, now)
            ok: bool | None = None
            try:
                ok = await trio.to_thread.run_sync(work)
            finally:
                self.throttle.finish(client_id, peer, ok, now=trio.current_time())
        finally:
            self._limiter.release()
        return ok

    async def issue_token(
        self,
        client_id: str,
        client_secret: str,
        requested_scopes: Sequence[str] = (),
        *,
        now: float | None = None,
        peer: object = None,
    ) -> IssuedToken:
        """Check client credentials and issue a token (``GetAccessToken``).

        Args:
            client_id: the app's client id.
            client_secret: its secret.
            requested_scopes: scope strings; empty means all the app's grants.
            now: the issue time (seconds since the epoch); default ``clock()``.
            peer: the client's address as ``getpeername()`` gives it (``None``: unknown, no
                per-address throttling).

        Returns:
            The :class:`IssuedToken`.

        Raises:
            TooManyAttemptsError: the attempt was refused without checking the secret (the
                id or, for an id that failed, the address backs off; or no hashing slot came
                free within ``hash_wait``). Its ``retry_after`` says when to try again.
            UnauthenticatedError: unknown client id or wrong secret (indistinguishable).
            InvalidScopeError: a requested scope does not parse.
            PermissionDeniedError: none of the requested scopes is granted (or the app has no
                grants).
        """
        known_id = client_id if isinstance(client_id, str) else ""
        address = peer_key(peer)
        moment = trio.current_time()
        admission = self.throttle.check(known_id, address, now=moment)
        if not admission.allowed:
            raise _refusal(admission, moment)
        app = await self.apps.get_app(client_id) if isinstance(client_id, str) else None
        ok = await self._check_secret(
            known_id, address, client_secret, None if app is None else app.secret_hash
        )
        if app is None or not ok:
            raise UnauthenticatedError(_BAD_CREDENTIALS)
        scopes = narrow_scopes(app.scopes, requested_scopes)
        when = self.clock() if now is None else now
        token, claims = self._codec.encode(
            client_id=client_id, tenant=app.tenant, scopes=scopes, now=when
        )
        return IssuedToken(
            access_token=token,
            token_type="Bearer",
            expires_in=int(claims.expires_at - claims.issued_at),
            scopes=scopes.strings(),
        )

    def verify(self, authorization: str | bytes | None, *, now: float | None = None) -> Principal:
        """Authenticate a request from its ``authorization`` metadata value.

        Args:
            authorization: ``Bearer <jwt>`` (scheme case-insensitive), as str or ASCII bytes;
                None when the metadata entry is missing.
            now: the current time (seconds since the epoch); default ``clock()``.

        Returns:
            The :class:`Principal`.

        Raises:
            UnauthenticatedError: missing or malformed header, or a token that is malformed,
                expired, not yet valid, badly signed, signed with an unknown key or another
                algorithm, from another issuer, or missing claims.
        """
        token = _bearer_token(authorization)
        claims = self._codec.decode(token, now=self.clock() if now is None else now)
        return Principal(
            client_id=claims.client_id,
            tenant=claims.tenant,
            scopes=claims.scopes,
            expires_at=claims.expires_at,
            token_id=claims.token_id,
        )
