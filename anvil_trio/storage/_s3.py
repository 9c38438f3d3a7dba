"""Bytes in an S3-compatible bucket shared by every node: :class:`S3ByteStore`.

Layout under ``s3://BUCKET/PREFIX/``::

    data/<32 hex>                    the bytes of one write; the 32 hex name is its location
    uploads/<32 hex>/created         an empty marker: the resumable upload exists
    uploads/<32 hex>/<16 hex>        the bytes of one append, at that offset (hex, zero-padded)

The store is this module; the rest lives beside it, and its names are importable from here:

- ``_s3_errors``: what a failed request becomes (:func:`s3_error`), how a request runs, and
  the checks of caller input;
- ``_s3_write``: the streaming write (a PutObject, or a multipart upload);
- ``_s3_read``: ranged reads (:class:`S3Reader`);
- ``_s3_uploads``: resumable uploads (``uploads/``), a base class of the store.

Invariants:

- A location names one write and is never reused: it is 128 random bits, chosen by the write.
  The digest is only known once the bytes have streamed, so naming the object by its digest
  would need a server-side copy; a fresh name needs none, and (see ``_seams``) makes deleting a
  location that no metadata references safe without asking other nodes.
- An object in ``data/`` is complete and hashed to the digest its write reported; a failed
  write leaves nothing behind but what a crash would (``_s3_write``): an unfinished multipart
  upload, which :meth:`S3ByteStore.remove_stale_temp` aborts once older than its limit
  (never one of this store's running writes), or an object no metadata references, which the
  reaper finds through :meth:`S3ByteStore.iter_locations`.
- Pins are per process: a location is pinned from the start of its write until its
  :class:`~._pins.WrittenBlob` is released, and :meth:`S3ByteStore.delete_if_unpinned` (under the
  location's lock, as :meth:`S3ByteStore.pin`) refuses a pinned one. Other nodes never see the
  pins; they rely on the metadata and on only reaping what is older than ``temp_max_age``
  (``shared`` is True).
- Caller input never becomes a key unchecked (``_s3_errors``); the bucket and prefix are
  validated once, in the constructor. Listings skip keys that do not belong to the layout.
- Memory is bounded whatever the size: a write holds at most ``pipeline_depth + 1`` parts of
  ``part_size`` bytes, a read one chunk of at most ``chunk_size`` bytes.
- Every request runs in a worker thread (``trio.to_thread.run_sync`` or a write's
  :class:`~._pipeline.Lane` threads), never abandoned, through one botocore client per store
  (botocore clients are thread-safe). Signing, retries (3 attempts, standard mode) and payload
  checksums are botocore's. Errors go through :func:`s3_error`.

Timestamps (``iter_locations``, ``remove_stale_temp``) are the server's, compared with this
host's clock: keep clocks in sync, and the age limits well above any skew. Some servers date a
multipart object by the start of its upload rather than its completion (SeaweedFS uses the
completion); the reaper's ``temp_max_age`` must exceed the longest write either way.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

import botocore.config
import botocore.exceptions
import trio

from ._errors import (
    InvalidArgumentError,
    NotFoundError,
    ObjectTooLargeError,
    StorageError,
)
from ._pins import BlobPin, KeyedLocks, WrittenBlob
from ._s3_errors import (
    _LOCATION_RE,
    _blocking,
    _check_count,
    _check_location,
    _check_sha256,
    _client_error_parts,
    _run,
    s3_error,
)
from ._s3_read import S3Reader, open_object
from ._s3_uploads import S3Uploads
from ._s3_write import stream_write

__all__ = ["S3ByteStore", "S3Reader", "parse_blob_url", "s3_error"]

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART_RE = re.compile(r"[A-Za-z0-9._-]+")

_MIN_PART = 5 << 20  # S3's smallest part but the last
_MAX_PART = 5 << 30


# -- configuration --------------------------------------------------------------------------


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
    import boto3.session  # heavy import, only when an S3 store is configured

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


# -- the store ------------------------------------------------------------------------------


class S3ByteStore(S3Uploads):
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
    the client loads botocore's models (blocking, about a tenth of a second). The resumable
    uploads (``upload_*``, ``iter_upload_ids``) are those of the base class
    :class:`~._s3_uploads.S3Uploads`.

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
        return await stream_write(self, chunks, max_size, expected, expected_size, "content")

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
        return await open_object(self, key, start, end, "blob")

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
