"""Bytes in an S3-compatible bucket shared by every node: :class:`S3ByteStore`.

Layout under ``s3://BUCKET/PREFIX/``::

    data/<32 hex>                    the bytes of one write; the 32 hex name is its location
    uploads/<32 hex>/created         an empty marker: the resumable upload exists
    uploads/<32 hex>/<16 hex>        the bytes of one append, at that offset (hex, zero-padded)

Invariants:

- A location names one write and is never reused: it is 128 random bits, chosen by the write.
  The digest is only known once the bytes have streamed, so naming the object by its digest
  would need a server-side copy; a fresh name needs none, and (see ``_seams``) makes deleting a
  location that no metadata references safe without asking other nodes.
- An object in ``data/`` is complete and hashed to the digest its write reported: content of
  at most one part is hashed, checked and sent by one PutObject at the end; larger content by a
  multipart upload, which becomes an object only through CompleteMultipartUpload, after the
  digest was checked. On any failure or cancellation before the write returns, the multipart
  upload is aborted and the object deleted (shielded from cancellation) before the error
  propagates; what a crash leaves is an unfinished multipart upload, which
  :meth:`S3ByteStore.remove_stale_temp` aborts once older than its limit, or an object no
  metadata references, which the reaper finds through :meth:`S3ByteStore.iter_locations`.
- Pins are per process: a location is pinned from the start of its write until its
  :class:`~._pins.WrittenBlob` is released, and :meth:`S3ByteStore.delete_if_unpinned` (under the
  location's lock, as :meth:`S3ByteStore.pin`) refuses a pinned one. Other nodes never see the
  pins; they rely on the metadata and on only reaping what is older than ``temp_max_age``
  (``shared`` is True).
- An upload's size is the length of the contiguous chain of its segments from offset 0 (a
  listing sorted by offset, taken while each offset equals the running total; anything else is
  ignored). An append is one PutObject of a new segment, durable when it returns, made with
  ``If-None-Match: *`` so an offset is written at most once: a second writer at the same offset
  (another node, or a stale size cache) is refused instead of replacing acknowledged bytes. Sizes
  are cached per upload in this process; the cache is only a hint (a mismatch lists again).
- Caller input never becomes a key unchecked: locations match ``^[0-9a-f]{32}$``, upload ids
  ``^[0-9a-f]{32}$``; the prefix is validated once, in the constructor.
- Memory is bounded whatever the size: a write holds at most ``pipeline_depth + 1`` parts of
  ``part_size`` bytes (up to ``pipeline_depth`` handed to its worker threads, which hash them in
  order and upload them in parallel, and one filling), a read one chunk of at most
  ``chunk_size`` bytes.
- Every request runs in a worker thread (``trio.to_thread.run_sync`` or a write's
  :class:`~._pipeline.Lane` threads), never abandoned, through one botocore client per store
  (botocore clients are thread-safe). Signing, retries (3 attempts, standard mode) and payload
  checksums are botocore's.
- Errors go through :func:`s3_error`: unreachable endpoint, timeouts, broken connections, HTTP
  5xx and throttling are :class:`StorageUnavailableError` (retryable); a missing key is
  :class:`NotFoundError` where that means something; anything else :class:`StorageIOError`,
  with the original as ``__cause__``.

Timestamps (``iter_locations``, ``remove_stale_temp``) are the server's, compared with this
host's clock: keep clocks in sync, and the age limits well above any skew. Some servers date a
multipart object by the start of its upload rather than its completion (SeaweedFS uses the
completion); the reaper's ``temp_max_age`` must exceed the longest write either way.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import attrs
import botocore.config
import botocore.exceptions
import trio
import urllib3.exceptions

from ._errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    InvalidArgumentError,
    NotFoundError,
    ObjectTooLargeError,
    OutOfRangeError,
    StorageError,
    StorageIOError,
    StorageUnavailableError,
)
from ._pins import BlobPin, KeyedLocks, WrittenBlob
from ._pipeline import Lane

__all__ = ["S3ByteStore", "S3Reader", "parse_blob_url", "s3_error"]

_T = TypeVar("_T")

logger = logging.getLogger("anvil_trio.storage.s3")

_LOCATION_RE = re.compile(r"[0-9a-f]{32}")
_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_SEGMENT_RE = re.compile(r"[0-9a-f]{16}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART_RE = re.compile(r"[A-Za-z0-9._-]+")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_MARKER = "created"

_MIN_PART = 5 << 20  # S3's smallest part but the last
_MAX_PART = 5 << 30
_MAX_PARTS = 10_000
_DELETE_BATCH = 1000  # keys per DeleteObjects
_SIZE_CACHE = 4096  # upload sizes remembered per process (a hint; evicted oldest first)

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


def _check_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if prefix and any(
        part in (".", "..") or _PREFIX_PART_RE.fullmatch(part) is None
        for part in prefix.split("/")
    ):
        raise ValueError(
            f"invalid key prefix {prefix!r}: '/'-separated names of letters, digits, '.', '_', '-'"
        )
    return prefix


def _check_bucket(bucket: str) -> str:
    if (not isinstance(bucket, str) or _BUCKET_RE.fullmatch(bucket) is None
            or ".." in bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r}")
    return bucket


def parse_blob_url(url: str) -> tuple[str, str]:
    """Split ``s3://BUCKET[/PREFIX]`` into ``(bucket, prefix)`` (prefix without slashes at
    either end; ``""`` for none).

    Raises:
        ValueError: not an ``s3://`` URL, an invalid bucket name or prefix, or a query,
            fragment or credentials in it.
    """
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    rest = url[len("s3://"):]
    if any(c in rest for c in "?#@\\") or any(c.isspace() for c in rest):
        raise ValueError(f"an s3:// URL is s3://BUCKET[/PREFIX], not {url!r}")
    bucket, _, prefix = rest.partition("/")
    return _check_bucket(bucket), _check_prefix(prefix)


def _make_client(endpoint_url: str | None, region: str | None) -> Any:
    import boto3.session  # noqa: PLC0415 - heavy import, only when an S3 store is configured

    config = botocore.config.Config(
        max_pool_connections=64,
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    )


# -- reading --------------------------------------------------------------------------------


def _read_exactly(body: Any, length: int, last: bool) -> bytes:
    """Read ``length`` bytes of a response body (blocking); after the ``last`` chunk, read
    once more so the body sees its end (checking its length and checksum, and giving the
    connection back to the pool)."""
    try:
        data = body.read(length)
        if len(data) < length:
            pieces = [data]
            got = len(data)
            while got < length:
                more = body.read(length - got)
                if not more:
                    raise StorageIOError("a byte store object is shorter than its size")
                pieces.append(more)
                got += len(more)
            data = b"".join(pieces)
        if last and body.read(1):
            raise StorageIOError("a byte store object is longer than its size")
        return data
    except Exception as exc:
        raise s3_error(exc, "reading a blob") from exc


@attrs.define(eq=False)
class S3Reader:
    """An open byte range of an object: an async iterator of chunks of at most ``chunk_size``.

    ``size`` is the whole object's size, ``start``/``end`` the clamped, end-exclusive range
    and ``position`` the absolute offset of the next chunk. It holds one GetObject response
    (none for an empty range), read ``chunk_size`` at a time in worker threads and closed when
    the range is exhausted, on any error, on :meth:`aclose` (also ``async with``) and, as a
    last resort, when the reader is garbage-collected.
    """

    _body: Any = attrs.field(repr=False)
    size: int
    start: int
    end: int
    _chunk_size: int = attrs.field(repr=False)
    position: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.position = self.start

    def __aiter__(self) -> S3Reader:
        return self

    async def __anext__(self) -> bytes:
        body = self._body
        if body is None or self.position >= self.end:
            self._close()
            raise StopAsyncIteration
        length = min(self._chunk_size, self.end - self.position)
        last = self.position + length >= self.end
        try:
            data = await trio.to_thread.run_sync(_read_exactly, body, length, last)
        except BaseException:
            self._close()
            raise
        self.position += len(data)
        if last:
            self._close()
        return data

    def _close(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):
                body.close()

    async def aclose(self) -> None:
        """Close the response; further iteration yields nothing."""
        self._close()

    async def __aenter__(self) -> S3Reader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    def __del__(self) -> None:  # a reader dropped unfinished must not hold its connection
        self._close()


# -- writing --------------------------------------------------------------------------------


class _Write:
    """The S3 side of one write: a PutObject, or a multipart upload fed by worker lanes.

    ``ship`` hands a full part to the lanes (starting the multipart upload on the first), at
    most ``pipeline_depth`` parts ahead; ``cleanup`` (shielded by the caller) stops the lanes,
    aborts the upload and deletes the object if it may exist.
    """

    def __init__(self, store: S3ByteStore, key: str) -> None:
        self.store = store
        self.key = key
        self.upload_id: str | None = None
        self.etags: dict[int, str] = {}
        self.hashing: Lane | None = None
        self.uploading: list[Lane] = []
        self.parts = 0
        self.may_exist = False  # a PutObject or CompleteMultipartUpload was attempted

    @property
    def started(self) -> bool:
        return self.upload_id is not None

    def _upload_part(self, number: int, box: list[bytearray]) -> None:
        store = self.store
        body = box.pop()
        response = _blocking(
            "uploading a part", store._client.upload_part, Bucket=store.bucket, Key=self.key,
            UploadId=self.upload_id, PartNumber=number, Body=body,
        )
        self.etags[number] = response["ETag"]

    async def ship(self, part: bytearray, hasher: Any) -> None:
        store = self.store
        depth = store.pipeline_depth
        if self.parts >= _MAX_PARTS:
            raise ObjectTooLargeError(
                f"content exceeds the byte store's limit of {_MAX_PARTS * store.part_size} bytes"
            )
        if self.upload_id is None:
            response = await _run(
                "starting a multipart upload", store._client.create_multipart_upload,
                Bucket=store.bucket, Key=self.key,
            )
            self.upload_id = response["UploadId"]
            store._active_uploads.add(self.upload_id)
            # Parts are hashed in order by one lane and uploaded by ``depth`` lanes in turn.
            self.hashing = Lane("hashing a blob")
            self.uploading = [Lane("uploading a part") for _ in range(depth)]
        assert self.hashing is not None
        self.parts += 1
        lane = self.uploading[(self.parts - 1) % depth]
        # Keep at most ``depth`` parts in the lanes: the part ``depth`` before this one (this
        # lane's previous one) must be uploaded and hashed before this one goes in.
        await lane.wait(lane.submitted)
        await self.hashing.wait(self.parts - depth)
        # Each step takes its part out of a box of its own: a lane's thread keeps its last
        # step's arguments until the next step arrives, and must not keep a part alive.
        self.hashing.submit(_hash_boxed, hasher, [part])
        lane.submit(self._upload_part, self.parts, [part])

    async def finish(self, hasher: Any, expected: str | None, what: str) -> str:
        store = self.store
        assert self.hashing is not None
        for lane in self.uploading:
            await lane.wait(lane.submitted)
        await self.hashing.wait(self.hashing.submitted)
        await self.close_lanes()
        digest = hasher.hexdigest()
        _check_content(digest, expected, what)
        parts = [{"PartNumber": n, "ETag": self.etags[n]} for n in range(1, self.parts + 1)]
        self.may_exist = True
        await _run(
            "completing a multipart upload", store._client.complete_multipart_upload,
            Bucket=store.bucket, Key=self.key, UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )
        store._active_uploads.discard(self.upload_id)
        self.upload_id = None
        return digest

    def put_whole(self, body: bytearray, hasher: Any, expected: str | None, what: str) -> str:
        """Hash ``body``, check it, and PutObject it (blocking, one worker thread call)."""
        hasher.update(body)
        digest = hasher.hexdigest()
        _check_content(digest, expected, what)
        self.may_exist = True
        store = self.store
        _blocking("writing a blob", store._client.put_object, Bucket=store.bucket, Key=self.key,
                  Body=body)
        return digest

    async def close_lanes(self) -> None:
        lanes = [lane for lane in (self.hashing, *self.uploading) if lane is not None]
        self.hashing, self.uploading = None, []
        for lane in lanes:
            await lane.close()

    async def cleanup(self) -> None:
        store = self.store
        await self.close_lanes()  # no part upload runs any more
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                await _run("aborting a multipart upload", store._client.abort_multipart_upload,
                           Bucket=store.bucket, Key=self.key, UploadId=upload_id)
            except StorageError as exc:
                logger.warning("could not abort multipart upload of %s (left for the "
                               "reaper): %s", self.key, exc)
            store._active_uploads.discard(upload_id)
        if self.may_exist:
            try:
                await _run("deleting a blob", store._client.delete_object,
                           Bucket=store.bucket, Key=self.key)
            except StorageError as exc:
                logger.warning("could not delete %s after a failed write (left for the "
                               "reaper): %s", self.key, exc)


def _hash_boxed(hasher: Any, box: list[bytearray]) -> None:
    hasher.update(box.pop())


def _check_content(digest: str, expected: str | None, what: str) -> None:
    if expected is not None and digest != expected:
        raise ChecksumMismatchError(f"{what} has SHA-256 {digest}, not {expected}")


@attrs.frozen
class _Segment:
    offset: int
    size: int
    key: str
    etag: str


# -- the store ------------------------------------------------------------------------------


class S3ByteStore:
    """Bytes in ``s3://bucket/prefix/`` (see the module docstring); a :class:`~._seams.ByteStore`.

    Args:
        bucket: the bucket (it must exist; see :meth:`check`).
        prefix: keys go under ``prefix/`` (``""``: the bucket's root).
        endpoint_url: the S3 endpoint (``None``: AWS's for ``region``).
        region: the signing region (``None``: from the AWS configuration).
        chunk_size: the largest chunk a read yields (default 1 MiB).
        part_size: bytes gathered before a part is uploaded (default 8 MiB, at least S3's
            5 MiB); content of at most this size is one PutObject. Also ``batch_size``.
        pipeline_depth: parts a write may have being hashed or uploaded while more arrive
            (default 2): a write holds at most ``(pipeline_depth + 1) * part_size`` bytes.
        client: a boto3 S3 client to use instead of creating one (the caller closes it).

    Credentials come from the standard AWS environment variables and shared files. Creating
    the client loads botocore's models (blocking, about a tenth of a second).

    Raises:
        ValueError: an invalid bucket or prefix, or a size out of range.
    """

    shared = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None,
        region: str | None,
        chunk_size: int = 1 << 20,
        part_size: int = 8 << 20,
        pipeline_depth: int = 2,
        client: Any = None,
    ) -> None:
        if chunk_size <= 0 or pipeline_depth <= 0:
            raise ValueError("chunk_size and pipeline_depth must be positive")
        if not _MIN_PART <= part_size <= _MAX_PART:
            raise ValueError(f"part_size must be between {_MIN_PART} and {_MAX_PART} bytes")
        self.bucket = _check_bucket(bucket)
        self.prefix = _check_prefix(prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        self.chunk_size = chunk_size
        self.part_size = part_size
        self.batch_size = part_size
        self.pipeline_depth = pipeline_depth
        self._owns_client = client is None
        self._client = _make_client(endpoint_url, region) if client is None else client
        root = f"{self.prefix}/" if self.prefix else ""
        self._data_prefix = f"{root}data/"
        self._uploads_prefix = f"{root}uploads/"
        self._pins: dict[str, int] = {}
        self._location_locks = KeyedLocks()
        self._upload_locks = KeyedLocks()
        self._upload_sizes: dict[str, int] = {}
        self._active_uploads: set[str] = set()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3ByteStore:
        """A store for ``s3://BUCKET[/PREFIX]`` (other arguments as for the constructor)."""
        bucket, prefix = parse_blob_url(url)
        return cls(bucket, prefix, **kwargs)

    parse_blob_url = staticmethod(parse_blob_url)

    def __repr__(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"S3ByteStore({where!r}, endpoint_url={self.endpoint_url!r})"

    # -- keys -----------------------------------------------------------------------------

    def data_key(self, location: str) -> str:
        """The key of ``location`` (validated; the object need not exist)."""
        return self._data_prefix + _check_location(location)

    def _upload_prefix(self, upload_id: str) -> str:
        return f"{self._uploads_prefix}{_check_upload_id(upload_id)}/"

    def _iter_objects(self, prefix: str, what: str) -> Iterator[dict[str, Any]]:
        """Every object under ``prefix``, in key order (blocking; errors as storage errors)."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token is not None:
                kwargs["ContinuationToken"] = token
            page = _blocking(what, self._client.list_objects_v2, **kwargs)
            yield from page.get("Contents") or ()
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    # -- health ---------------------------------------------------------------------------

    async def check(self) -> None:
        """One HeadBucket: can this store reach its bucket?

        Raises:
            StorageUnavailableError: the endpoint cannot be reached (or answers 5xx).
            StorageError: the bucket does not exist, access is denied, or no credentials.
        """
        what = "checking the bucket"
        try:
            await trio.to_thread.run_sync(
                functools.partial(self._client.head_bucket, Bucket=self.bucket)
            )
        except botocore.exceptions.ClientError as exc:
            code, status, _ = _client_error_parts(exc)
            if status == 404 or code in ("NoSuchBucket", "NotFound"):
                raise StorageError(
                    f"S3 bucket {self.bucket!r} does not exist at {self._where()}"
                ) from exc
            if status == 403 or code in ("AccessDenied", "Forbidden"):
                raise StorageError(
                    f"access to S3 bucket {self.bucket!r} at {self._where()} is denied "
                    "(check the AWS credentials)"
                ) from exc
            raise s3_error(exc, what) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise StorageError(
                "no AWS credentials found for the S3 byte store (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or a shared credentials file)"
            ) from exc
        except Exception as exc:
            raise s3_error(exc, what) from exc

    def _where(self) -> str:
        return self.endpoint_url or "the default AWS endpoint"

    async def aclose(self) -> None:
        """Close the client's connections (only a client this store created)."""
        if self._owns_client:
            await trio.to_thread.run_sync(self._client.close)

    # -- pins -----------------------------------------------------------------------------

    def _add_pin(self, location: str) -> BlobPin:
        self._pins[location] = self._pins.get(location, 0) + 1
        return BlobPin(location, self._drop_pin)

    def _drop_pin(self, location: str) -> None:
        count = self._pins[location] - 1
        if count:
            self._pins[location] = count
        else:
            del self._pins[location]

    async def pin(self, location: str) -> BlobPin:
        """Pin ``location`` (whether or not it exists) until the returned pin is released.

        Raises:
            InvalidArgumentError: a malformed location.
        """
        location = _check_location(location)
        async with self._location_locks.hold(location):
            return self._add_pin(location)

    @contextlib.asynccontextmanager
    async def pinned(self, location: str) -> AsyncIterator[BlobPin]:
        """``async with store.pinned(location):`` keeps it from being deleted inside."""
        with await self.pin(location) as pin:
            yield pin

    def pin_count(self, location: str) -> int:
        """How many pins ``location`` holds in this process right now."""
        return self._pins.get(location, 0)

    # -- writing --------------------------------------------------------------------------

    async def write(
        self,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int | None = None,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> WrittenBlob:
        """Store the bytes of ``chunks`` under a new location and return their digest, pinned.

        Chunks are copied into a part buffer as they arrive (they may be reused afterwards).
        Content of at most ``part_size`` bytes is hashed, checked and sent in one PutObject at
        the end; larger content goes up as a multipart upload while it streams, at most
        ``pipeline_depth`` parts in flight, and is completed once its digest was checked.

        Args:
            chunks: the content, in pieces of any size (empty pieces are skipped).
            max_size: fail as soon as more bytes than this arrive.
            expected_sha256: hex SHA-256 the content must have (any case).
            expected_size: exact size the content must have.

        Returns:
            ``WrittenBlob(digest, size, created=True, location=<32 hex>)``; the caller must
            release its pin.

        Raises:
            ObjectTooLargeError: more than ``max_size`` bytes (or ``expected_size`` above it),
                or more than 10 000 parts.
            InvalidArgumentError: a bad argument, or the size differs from ``expected_size``.
            ChecksumMismatchError: the digest differs from ``expected_sha256``.
            StorageUnavailableError, StorageIOError: the byte store failed.
            Anything ``chunks`` raises, unchanged.
            In every error case (and on cancellation) the multipart upload is aborted and the
            object deleted before the error propagates.
        """
        expected = _check_sha256(expected_sha256)
        _check_count(max_size, "max_size")
        _check_count(expected_size, "expected_size")
        if max_size is not None and expected_size is not None and expected_size > max_size:
            raise ObjectTooLargeError(f"size {expected_size} exceeds the limit of {max_size} bytes")
        return await self._write(chunks, max_size, expected, expected_size, "content")

    async def _write(
        self, chunks: AsyncIterable[bytes], max_size: int | None, expected: str | None,
        expected_size: int | None, what: str,
    ) -> WrittenBlob:
        location = secrets.token_hex(16)
        pin = self._add_pin(location)  # nobody knows the name yet: no lock needed
        job = _Write(self, self.data_key(location))
        part_size = self.part_size
        try:
            hasher = hashlib.sha256()
            size = fill = 0
            part = bytearray()  # the first part grows; later ones are allocated whole
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if max_size is not None and size > max_size:
                    raise ObjectTooLargeError(f"content exceeds the limit of {max_size} bytes")
                if expected_size is not None and size > expected_size:
                    raise InvalidArgumentError(f"content exceeds its declared size {expected_size}")
                view = memoryview(chunk).cast("B")
                while view:
                    if fill == part_size:  # full, and more is coming: it goes up as a part
                        await job.ship(part, hasher)
                        part, fill = bytearray(part_size), 0
                    n = min(len(view), part_size - fill)
                    part[fill:fill + n] = view[:n]
                    fill += n
                    view = view[n:]
            if expected_size is not None and size != expected_size:
                raise InvalidArgumentError(
                    f"content has {size} bytes, not its declared size {expected_size}"
                )
            del part[fill:]
            if not job.started:
                digest = await trio.to_thread.run_sync(
                    job.put_whole, part, hasher, expected, what
                )
            else:
                if part:
                    await job.ship(part, hasher)
                del part
                digest = await job.finish(hasher, expected, what)
            return WrittenBlob(digest, size, True, pin, location=location)
        except BaseException:
            pin.release()
            with trio.CancelScope(shield=True):
                await job.cleanup()
            raise

    # -- reading and inspecting -----------------------------------------------------------

    async def open_range(self, location: str, start: int = 0, end: int | None = None) -> S3Reader:
        """Open ``[start, end)`` of the bytes at ``location`` (one GetObject; see
        :class:`S3Reader`).

        Range rules as :meth:`~._blobs.BlobStore.open_range`: ``end`` is exclusive; ``None``
        means to the end; an ``end`` past the size is clamped; ``start == end`` yields nothing;
        an empty object read from 0 yields nothing.

        Raises:
            InvalidArgumentError: malformed location, ``start < 0`` or ``end < start``.
            NotFoundError: no such location.
            OutOfRangeError: ``start`` at or past the end of a non-empty object, or past 0 of
                an empty one.
            StorageUnavailableError, StorageIOError: the byte store failed.
        """
        key = self.data_key(location)
        if not isinstance(start, int) or start < 0:
            raise InvalidArgumentError("range start must be a non-negative integer")
        if end is not None and (not isinstance(end, int) or end < start):
            raise InvalidArgumentError(f"range end {end} is before its start {start}")
        return await self._open(key, start, end, "blob")

    async def _open(self, key: str, start: int, end: int | None, what: str) -> S3Reader:
        if end == start:  # nothing to fetch; only the size decides between empty and error
            size = await self._head_size(key, what)
            return self._empty_reader(size, start)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if end is not None:
            kwargs["Range"] = f"bytes={start}-{end - 1}"
        elif start:
            kwargs["Range"] = f"bytes={start}-"
        try:
            response = await trio.to_thread.run_sync(
                functools.partial(self._client.get_object, **kwargs)
            )
        except botocore.exceptions.ClientError as exc:
            code, status, _ = _client_error_parts(exc)
            if status != 416 and code != "InvalidRange":
                raise s3_error(exc, f"reading a {what}", not_found=what) from exc
            # Past the end, or any range of an empty object (S3 refuses "bytes=0-" of zero bytes).
            size = await self._head_size(key, what)
            return self._empty_reader(size, start)
        except Exception as exc:
            raise s3_error(exc, f"reading a {what}", not_found=what) from exc
        body = response["Body"]
        try:
            length = int(response.get("ContentLength", 0))
            content_range = response.get("ContentRange")
            if content_range is None and ("Range" not in kwargs or start == 0):
                size, first = length, 0  # the whole object (a server may answer a range so)
            else:
                match = _CONTENT_RANGE_RE.fullmatch(content_range or "")
                if match is None:
                    raise StorageIOError("the byte store ignored a range request")
                first, last, size = (int(g) for g in match.groups())
                if last + 1 - first != length:
                    raise StorageIOError("the byte store sent a range of the wrong length")
            stop = size if end is None else min(end, size)
            if first != start or first + length != stop:
                raise StorageIOError("the byte store sent the wrong range")
        except BaseException:
            body.close()
            raise
        if stop == start:
            body.close()
            body = None
        return S3Reader(body, size, start, stop, self.chunk_size)

    def _empty_reader(self, size: int, start: int) -> S3Reader:
        if start >= size and (size > 0 or start > 0):
            raise OutOfRangeError(f"range start {start} is at or past the blob's size {size}")
        return S3Reader(None, size, start, start, self.chunk_size)

    async def _head_size(self, key: str, what: str) -> int:
        response = await _run(f"inspecting a {what}", self._client.head_object,
                              Bucket=self.bucket, Key=key, not_found=what)
        return int(response["ContentLength"])

    async def size(self, location: str) -> int:
        """The size of the bytes at ``location``.

        Raises:
            InvalidArgumentError: malformed location. NotFoundError: no such location.
        """
        return await self._head_size(self.data_key(location), "blob")

    async def exists(self, location: str) -> bool:
        """Whether ``location`` is stored (malformed location: InvalidArgumentError)."""
        try:
            await self.size(location)
        except NotFoundError:
            return False
        return True

    def iter_locations(self, older_than: float) -> Iterator[str]:
        """Locations in ``data/`` last modified more than ``older_than`` seconds ago (0: all),
        in key order (blocking listing, page by page: run it in a worker thread). Keys that do
        not belong there are skipped.

        Raises:
            InvalidArgumentError: negative ``older_than``.
            StorageUnavailableError, StorageIOError: a listing failed.
        """
        if older_than < 0:
            raise InvalidArgumentError("older_than must be >= 0")
        cutoff = time.time() - older_than
        skip = len(self._data_prefix)
        for obj in self._iter_objects(self._data_prefix, "listing blobs"):
            name = obj["Key"][skip:]
            if _LOCATION_RE.fullmatch(name) is None:
                continue
            if older_than > 0 and obj["LastModified"].timestamp() >= cutoff:
                continue
            yield name

    # -- deleting -------------------------------------------------------------------------

    async def delete_if_unpinned(
        self, location: str, *, defer_unlink: Callable[[Any], None] | None = None
    ) -> bool:
        """Delete the object at ``location`` unless this process pins it (``defer_unlink`` is
        ignored: a delete is one request, nothing is left to finish later).

        Returns:
            True if an object was deleted; False if it is pinned or does not exist.

        Raises:
            InvalidArgumentError: malformed location.
            StorageUnavailableError, StorageIOError: the byte store failed.
        """
        key = self.data_key(location)
        async with self._location_locks.hold(location):
            if self._pins.get(location):
                return False
            try:
                await self._head_size(key, "blob")
            except NotFoundError:
                return False
            await _run("deleting a blob", self._client.delete_object, Bucket=self.bucket, Key=key)
            return True

    def purge(self, dead: Any) -> None:
        """Nothing to do: :meth:`delete_if_unpinned` never defers."""

    def _list_stale_uploads(self, older_than: float) -> list[tuple[str, str]]:
        cutoff = time.time() - older_than
        skip = len(self._data_prefix)
        stale: list[tuple[str, str]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._data_prefix}
        while True:
            page = _blocking("listing multipart uploads",
                             self._client.list_multipart_uploads, **kwargs)
            for upload in page.get("Uploads") or ():
                key, upload_id = upload["Key"], upload["UploadId"]
                if _LOCATION_RE.fullmatch(key[skip:]) is None or upload_id in self._active_uploads:
                    continue
                if older_than > 0 and upload["Initiated"].timestamp() >= cutoff:
                    continue
                stale.append((key, upload_id))
            if not page.get("IsTruncated"):
                return stale
            kwargs["KeyMarker"] = page.get("NextKeyMarker") or ""
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker") or ""
            if not kwargs["KeyMarker"] and not kwargs["UploadIdMarker"]:
                return stale

    async def remove_stale_temp(self, older_than: float) -> int:
        """Abort the multipart uploads under ``data/`` started more than ``older_than``
        seconds ago (0: all), except those of writes still running in this store.

        Returns:
            How many were aborted.

        Raises:
            InvalidArgumentError: negative ``older_than``.
            StorageUnavailableError, StorageIOError: the byte store failed (what was aborted
                before stays aborted).
        """
        if older_than < 0:
            raise InvalidArgumentError("older_than must be >= 0")
        stale = await trio.to_thread.run_sync(self._list_stale_uploads, older_than)
        removed = 0
        for key, upload_id in stale:
            if upload_id in self._active_uploads:  # cannot be: listed before it started
                continue
            try:
                await _run("aborting a multipart upload", self._client.abort_multipart_upload,
                           Bucket=self.bucket, Key=key, UploadId=upload_id,
                           not_found="multipart upload")
            except NotFoundError:
                continue  # finished or aborted meanwhile
            removed += 1
        return removed

    # -- resumable uploads ----------------------------------------------------------------

    def _remember_size(self, upload_id: str, size: int) -> None:
        self._upload_sizes.pop(upload_id, None)
        self._upload_sizes[upload_id] = size
        while len(self._upload_sizes) > _SIZE_CACHE:
            del self._upload_sizes[next(iter(self._upload_sizes))]

    def _list_upload(self, upload_id: str) -> tuple[bool, list[_Segment]]:
        """``(exists, chain)``: whether any object of the upload exists, and the contiguous
        segments from offset 0 (blocking)."""
        prefix = self._upload_prefix(upload_id)
        exists = False
        segments: list[_Segment] = []
        for obj in self._iter_objects(prefix, "inspecting an upload"):
            exists = True
            name = obj["Key"][len(prefix):]
            if _SEGMENT_RE.fullmatch(name) and obj["Size"] > 0:
                segments.append(_Segment(int(name, 16), obj["Size"], obj["Key"],
                                         str(obj.get("ETag") or "").strip('"')))
        segments.sort(key=lambda s: s.offset)
        chain: list[_Segment] = []
        total = 0
        for segment in segments:
            if segment.offset > total:
                break  # a gap: nothing after it counts
            if segment.offset == total:
                chain.append(segment)
                total += segment.size
        return exists, chain

    async def _chain(self, upload_id: str) -> list[_Segment]:
        exists, chain = await trio.to_thread.run_sync(self._list_upload, upload_id)
        if not exists:
            self._upload_sizes.pop(upload_id, None)
            raise NotFoundError("upload not found")
        self._remember_size(upload_id, sum(s.size for s in chain))
        return chain

    async def upload_create(self, upload_id: str) -> None:
        """Create a new, empty upload (its marker object).

        Raises:
            InvalidArgumentError: malformed upload id. AlreadyExistsError: it exists.
            StorageUnavailableError, StorageIOError: the byte store failed.
        """
        key = self._upload_prefix(upload_id) + _MARKER
        async with self._upload_locks.hold(upload_id):
            try:
                await trio.to_thread.run_sync(functools.partial(
                    self._client.put_object, Bucket=self.bucket, Key=key, Body=b"",
                    IfNoneMatch="*",
                ))
            except Exception as exc:
                if _is_conflict(exc):
                    raise AlreadyExistsError("upload already exists") from None
                raise s3_error(exc, "creating an upload") from exc
            self._remember_size(upload_id, 0)

    def _put_segment(self, key: str, data: bytes) -> bool:
        """PutObject a new segment; False if one exists at that offset (blocking)."""
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as exc:
            if _is_conflict(exc):
                return False
            raise s3_error(exc, "appending to an upload") from exc
        return True

    async def upload_append(self, upload_id: str, offset: int, data: bytes) -> int:
        """Append ``data`` at ``offset`` as one new segment, durable when this returns.

        Returns:
            The new durable size.

        Raises:
            InvalidArgumentError: malformed id, or ``offset`` is not the current size (also
                when another writer stored a segment at ``offset`` first).
            NotFoundError: no such upload.
            StorageUnavailableError, StorageIOError: the byte store failed; the segment may
                or may not exist (an append at the same offset with the same bytes settles it).
        """
        prefix = self._upload_prefix(upload_id)
        _check_count(offset, "offset")
        if isinstance(data, memoryview):
            data = data.tobytes()
        async with self._upload_locks.hold(upload_id):
            size = self._upload_sizes.get(upload_id)
            if size != offset:
                size = sum(s.size for s in await self._chain(upload_id))
            if offset != size:
                raise InvalidArgumentError(f"offset {offset} does not match {size} bytes received")
            if not data:
                return size
            key = f"{prefix}{offset:016x}"
            if not await trio.to_thread.run_sync(self._put_segment, key, data):
                # Someone stored this offset first: ours, if a retried request landed twice.
                chain = await self._chain(upload_id)
                mine = next((s for s in chain if s.offset == offset), None)
                received = sum(s.size for s in chain)
                if mine is None or mine.size != len(data) or mine.etag != await (
                        trio.to_thread.run_sync(_md5_hex, data)):
                    raise InvalidArgumentError(
                        f"offset {offset} does not match {received} bytes received"
                    )
            self._remember_size(upload_id, offset + len(data))
            return offset + len(data)

    async def upload_size(self, upload_id: str) -> int:
        """Bytes durably received by an upload (one listing).

        Raises:
            InvalidArgumentError: malformed id. NotFoundError: no such upload.
        """
        self._upload_prefix(upload_id)
        return sum(s.size for s in await self._chain(upload_id))

    async def _read_segments(self, chain: list[_Segment]) -> AsyncIterator[bytes]:
        for segment in chain:
            async with await self._open(segment.key, 0, None, "upload") as reader:
                if reader.size != segment.size:
                    raise StorageIOError("an upload segment changed while it was being read")
                async for chunk in reader:
                    yield chunk

    async def upload_finish(
        self, upload_id: str, *, expected_sha256: str | None = None
    ) -> WrittenBlob:
        """Stream the upload's segments, in order, into a new location as :meth:`write` does,
        hashing them; then delete the upload.

        Returns:
            The pinned ``WrittenBlob``; the upload no longer exists.

        Raises:
            InvalidArgumentError: malformed id or ``expected_sha256``.
            NotFoundError: no such upload.
            ChecksumMismatchError: the bytes do not hash to ``expected_sha256``; the upload is
                discarded and nothing is written.
            StorageUnavailableError, StorageIOError: the byte store failed; nothing is written
                and the upload stays resumable.
        """
        self._upload_prefix(upload_id)
        expected = _check_sha256(expected_sha256)
        async with self._upload_locks.hold(upload_id):
            chain = await self._chain(upload_id)
            total = sum(s.size for s in chain)
            try:
                async with contextlib.aclosing(self._read_segments(chain)) as segments:
                    written = await self._write(segments, None, expected, total, "upload")
            except ChecksumMismatchError:
                with trio.CancelScope(shield=True):
                    with contextlib.suppress(StorageError):
                        await self._discard(upload_id)
                raise
            with trio.CancelScope(shield=True):
                try:
                    await self._discard(upload_id)
                except StorageError as exc:  # the bytes are safe; the segments are orphans
                    logger.warning("could not delete finished upload %s (left for the "
                                   "reaper): %s", upload_id, exc)
            return written

    def _delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = keys[i:i + _DELETE_BATCH]
            response = _blocking(
                "discarding an upload", self._client.delete_objects, Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = [e for e in response.get("Errors") or () if e.get("Code") != "NoSuchKey"]
            if errors:
                raise StorageIOError(
                    f"the byte store failed while discarding an upload: {errors[0].get('Code')}"
                )

    def _discard_blocking(self, upload_id: str) -> bool:
        prefix = self._upload_prefix(upload_id)
        keys = [obj["Key"] for obj in self._iter_objects(prefix, "discarding an upload")]
        marker = prefix + _MARKER
        keys.sort(key=lambda k: k == marker)  # the marker goes last
        self._delete_keys(keys)
        return bool(keys)

    async def _discard(self, upload_id: str) -> bool:
        self._upload_sizes.pop(upload_id, None)
        try:
            return await trio.to_thread.run_sync(self._discard_blocking, upload_id)
        finally:
            self._upload_sizes.pop(upload_id, None)

    async def upload_discard(self, upload_id: str) -> bool:
        """Delete every object of an upload. Returns whether any existed (InvalidArgumentError
        on a malformed id)."""
        self._upload_prefix(upload_id)
        async with self._upload_locks.hold(upload_id):
            return await self._discard(upload_id)

    def iter_upload_ids(self) -> Iterator[str]:
        """Ids of the uploads that have objects, in order (blocking listing, for the reaper).

        Lists keys rather than ``/``-delimited prefixes: some servers (SeaweedFS) keep
        reporting a prefix as a common prefix after its last object was deleted.
        """
        skip = len(self._uploads_prefix)
        last = None
        for obj in self._iter_objects(self._uploads_prefix, "listing uploads"):
            upload_id, slash, _ = obj["Key"][skip:].partition("/")
            if slash and upload_id != last and _UPLOAD_ID_RE.fullmatch(upload_id):
                last = upload_id
                yield upload_id


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
