"""Auth layer (layer 4): scopes, client secrets, JWT keys and tokens, the authenticator.

Invariants of the layer:

* Nothing here touches storage internals: apps are read through the :class:`AppStore`
  protocol (``async get_app(client_id) -> AppRecord | None``).
* Scopes are ``ACTION:RESOURCE`` with only a trailing ``*`` as wildcard; concrete resources are
  compared literally, so no object key can widen a scope (see ``_scopes``).
* Client secrets are stored only as ``scrypt$N$r$p$SALT$HASH`` and checked in constant time in
  a worker thread; unknown client ids cost the same work. Failed sign-ins back off per client
  id and per address, refused before any scrypt work (see ``_throttle``).
* Tokens are HS256 JWTs with a ``kid``; verification pins the algorithm, the issuer, the key
  ids of the ring and every claim, and checks times against an injectable clock with a leeway.

Errors all derive from :class:`AuthError`; the RPC layer maps them to status codes in one
table (see ``_errors``).
"""

from ._authenticator import AppRecord, AppStore, Authenticator, IssuedToken, Principal
from ._errors import (
    AuthError,
    InvalidResourceError,
    InvalidScopeError,
    KeyFileError,
    PermissionDeniedError,
    TooManyAttemptsError,
    UnauthenticatedError,
)
from ._keys import (
    KEY_FILE_NAME,
    KeyFileMonitor,
    SharedKeyMonitor,
    KeyRing,
    SigningKey,
    load_keyring,
    load_or_create_keyring,
    rotate_keyring,
)
from ._operations import (
    OPERATIONS,
    blob_resource,
    bucket_resource,
    object_resource,
    required_scope_for,
)
from ._scopes import (
    ACTIONS,
    Grants,
    Scope,
    covers,
    is_valid_blob_key,
    is_valid_bucket_name,
    is_valid_object_key,
    narrow_scopes,
    parse_scope,
)
from ._secrets import (
    DEFAULT_SCRYPT,
    ScryptParams,
    dummy_verify,
    generate_client_id,
    generate_client_secret,
    hash_secret,
    parse_secret_hash,
    verify_secret,
)
from ._throttle import (
    Admission,
    FailureBook,
    SignInThrottle,
    failure_schedule,
    peer_key,
)
from ._tokens import (
    DEFAULT_ISSUER,
    DEFAULT_LEEWAY,
    DEFAULT_TOKEN_CACHE_SIZE,
    DEFAULT_TOKEN_LIFETIME,
    TokenClaims,
    TokenCodec,
    VerifiedTokenCache,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_ISSUER",
    "DEFAULT_LEEWAY",
    "DEFAULT_SCRYPT",
    "DEFAULT_TOKEN_CACHE_SIZE",
    "DEFAULT_TOKEN_LIFETIME",
    "KEY_FILE_NAME",
    "OPERATIONS",
    "Admission",
    "AppRecord",
    "AppStore",
    "AuthError",
    "Authenticator",
    "FailureBook",
    "Grants",
    "InvalidResourceError",
    "InvalidScopeError",
    "IssuedToken",
    "KeyFileError",
    "KeyFileMonitor",
    "SharedKeyMonitor",
    "KeyRing",
    "PermissionDeniedError",
    "Principal",
    "Scope",
    "ScryptParams",
    "SignInThrottle",
    "SigningKey",
    "TokenClaims",
    "TokenCodec",
    "TooManyAttemptsError",
    "UnauthenticatedError",
    "VerifiedTokenCache",
    "blob_resource",
    "bucket_resource",
    "covers",
    "dummy_verify",
    "failure_schedule",
    "generate_client_id",
    "generate_client_secret",
    "hash_secret",
    "is_valid_blob_key",
    "is_valid_bucket_name",
    "is_valid_object_key",
    "load_keyring",
    "load_or_create_keyring",
    "narrow_scopes",
    "object_resource",
    "parse_scope",
    "peer_key",
    "required_scope_for",
    "rotate_keyring",
    "verify_secret",
]
