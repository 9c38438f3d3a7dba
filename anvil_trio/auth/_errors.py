"""Errors of the auth layer.

Every error raised on purpose by ``anvil_trio.auth`` derives from :class:`AuthError`. Each class
names what happened; the RPC layer maps each to exactly one status code, in its one table:

=========================  ======================  ==========
class                      status                  retryable
=========================  ======================  ==========
UnauthenticatedError       UNAUTHENTICATED         no
InvalidScopeError          INVALID_ARGUMENT        no
InvalidResourceError       INVALID_ARGUMENT        no
PermissionDeniedError      PERMISSION_DENIED       no
TooManyAttemptsError       RESOURCE_EXHAUSTED      after ``retry_after`` seconds
KeyFileError               INTERNAL (at startup)   no
=========================  ======================  ==========

Messages are safe to show to the client: they never contain a secret, a token, a key or a hash,
and an :class:`UnauthenticatedError` raised for wrong credentials does not say whether the client
id exists.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "InvalidResourceError",
    "InvalidScopeError",
    "KeyFileError",
    "PermissionDeniedError",
    "TooManyAttemptsError",
    "UnauthenticatedError",
]


class AuthError(Exception):
    """Base class of every error the auth layer raises on purpose.

    Args:
        message: a human-readable explanation, safe to send to the requesting client.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnauthenticatedError(AuthError):
    """No token, or a malformed, expired, not-yet-valid or badly signed one; or wrong client
    credentials at token issue."""


class PermissionDeniedError(AuthError, PermissionError):
    """The caller is authenticated, but its scopes do not cover the operation; at token issue,
    none of the requested scopes is covered by the app's grants."""


class InvalidScopeError(AuthError, ValueError):
    """A scope string does not parse (bad action, bad resource, whitespace, NUL, ...)."""


class InvalidResourceError(AuthError, ValueError):
    """A concrete resource (bucket name, object key, blob key) cannot exist, so no scope can be
    checked against it; raised while building the scope an operation needs."""


class KeyFileError(AuthError, OSError):
    """The JWT key file is unreadable, malformed, or readable by other users than its owner."""


class TooManyAttemptsError(AuthError):
    """A sign-in attempt was refused without checking the secret: its client id (or, for an id
    that already failed, its address) is backing off after failed attempts, or every hashing
    slot stayed busy for the whole wait. The message says when to retry; it never says whether
    the client id exists.

    Args:
        message: safe to show to the client.
        retry_after: seconds after which a new attempt may be checked (0: no particular time).
    """

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
