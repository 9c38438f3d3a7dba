"""Where the S3 byte store meets botocore: what a failed request becomes (:func:`s3_error`), how
a request runs (:func:`_blocking`, :func:`_run`), and the checks that refuse caller input
before it becomes part of a key. Used by ``_s3`` and its siblings.

Invariants:

- Errors go through :func:`s3_error`: unreachable endpoint, timeouts, broken connections, HTTP
  5xx and throttling are :class:`StorageUnavailableError` (retryable); a missing key is
  :class:`NotFoundError` where that means something; anything else :class:`StorageIOError`,
  with the original as ``__cause__``. A :class:`StorageError` passes through unchanged.
- A request runs in a worker thread (:func:`_run`, or a write's :class:`~._pipeline.Lane`
  threads calling :func:`_blocking`) and is never abandoned: cancellation waits for it.
- Caller input never becomes a key unchecked: locations match ``^[0-9a-f]{32}$``, upload ids
  ``^[0-9a-f]{32}$``, digests ``^[0-9a-f]{64}$`` (after lowercasing); a bad one is
  :class:`InvalidArgumentError`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar

import botocore.exceptions
import trio
import urllib3.exceptions

from ._errors import (
    InvalidArgumentError,
    NotFoundError,
    StorageError,
    StorageIOError,
    StorageUnavailableError,
)

__all__ = ["s3_error"]

_T = TypeVar("_T")

_LOCATION_RE = re.compile(r"[0-9a-f]{32}")
_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")

_UNAVAILABLE_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestLimitExceeded",
})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})

_UNREACHABLE = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ...
    botocore.exceptions.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, streaming
    botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.NewConnectionError,
    ConnectionError,
    TimeoutError,
)


# -- errors ---------------------------------------------------------------------------------


def _client_error_parts(exc: botocore.exceptions.ClientError) -> tuple[str, int, str]:
    response = exc.response or {}
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
    return str(error.get("Code") or ""), int(status), str(error.get("Message") or "")


def s3_error(exc: BaseException, what: str, *, not_found: str | None = None) -> StorageError:
    """The storage error for an exception of boto3/botocore/urllib3 raised while ``what``.

    Unreachable endpoint, timeouts, broken connections, HTTP 5xx and throttling codes:
    :class:`StorageUnavailableError`. A missing key (404, ``NoSuchKey``) when ``not_found``
    names the thing looked for: :class:`NotFoundError` (``"<not_found> not found"``). A
    :class:`StorageError` unchanged. Anything else: :class:`StorageIOError`. The caller raises
    the result ``from exc``.
    """
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status, message = _client_error_parts(exc)
        if status >= 500 or code in _UNAVAILABLE_CODES:
            return StorageUnavailableError(
                f"the byte store is unavailable ({what}: {code or status}); retry shortly"
            )
        if not_found is not None and (status == 404 and code != "NoSuchBucket"
                                      or code in _NOT_FOUND_CODES):
            return NotFoundError(f"{not_found} not found")
        detail = f"{code or status}" + (f" ({message})" if message else "")
        return StorageIOError(f"the byte store failed while {what}: {detail}")
    if isinstance(exc, _UNREACHABLE):
        return StorageUnavailableError(f"the byte store is unreachable ({what}); retry shortly")
    if isinstance(exc, botocore.exceptions.FlexibleChecksumError):
        return StorageIOError(f"bytes from the byte store failed their checksum ({what})")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StorageIOError(f"no credentials for the byte store ({what})")
    return StorageIOError(f"the byte store failed while {what}: {type(exc).__name__}")


def _is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``If-None-Match`` refusal (the key exists, or is being written)."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    code, status, _ = _client_error_parts(exc)
    return status == 412 or code in _CONFLICT_CODES


def _blocking(what: str, fn: Callable[..., _T], /, *args: Any, not_found: str | None = None,
              **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` with its errors turned into storage errors (blocking)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise s3_error(exc, what, not_found=not_found) from exc


async def _run(what: str, fn: Callable[..., _T], /, *args: Any, not_found: str | None = None,
               **kwargs: Any) -> _T:
    """:func:`_blocking` in a worker thread (never abandoned on cancellation)."""
    return await trio.to_thread.run_sync(
        functools.partial(_blocking, what, fn, *args, not_found=not_found, **kwargs)
    )


# -- argument checks ------------------------------------------------------------------------


def _check_location(location: object) -> str:
    if not isinstance(location, str) or _LOCATION_RE.fullmatch(location) is None:
        raise InvalidArgumentError("a blob location is 32 lowercase hex characters")
    return location


def _check_upload_id(upload_id: object) -> str:
    if not isinstance(upload_id, str) or _UPLOAD_ID_RE.fullmatch(upload_id) is None:
        raise InvalidArgumentError("an upload id is 32 lowercase hex characters")
    return upload_id


def _check_sha256(expected: str | None) -> str | None:
    if expected is None:
        return None
    value = expected.lower() if isinstance(expected, str) else expected
    if not isinstance(value, str) or _DIGEST_RE.fullmatch(value) is None:
        raise InvalidArgumentError("a blob digest is 64 lowercase hex characters")
    return value


def _check_count(value: int | None, name: str) -> None:
    if value is not None and (not isinstance(value, int) or value < 0):
        raise InvalidArgumentError(f"{name} must be a non-negative integer")
