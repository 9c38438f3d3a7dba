"""Resumable uploads in the S3 byte store: :class:`S3Uploads`, the ``upload_*`` methods of
:class:`~._s3.S3ByteStore`.

Layout under ``s3://BUCKET/PREFIX/``::

    uploads/<32 hex>/created         an empty marker: the resumable upload exists
    uploads/<32 hex>/<16 hex>        the bytes of one append, at that offset (hex, zero-padded)

Invariants:

- An upload exists while any of its objects does. Its size is the length of the contiguous
  chain of its segments from offset 0 (a listing sorted by offset, taken while each offset
  equals the running total; anything else is ignored).
- An append is one PutObject of a new segment, durable when it returns, made with
  ``If-None-Match: *`` so an offset is written at most once: a second writer at the same offset
  (another node, or a stale size cache) is refused instead of replacing acknowledged bytes; the
  same bytes sent again (a retried request) are recognised by size and MD5 and accepted.
- Sizes are cached per upload in this process (at most 4096, oldest evicted first); the cache
  is only a hint: a mismatch lists again.
- Creating, appending to, finishing and discarding one upload run one at a time in this
  process (a lock per upload id).
- Finishing streams the chain into a new location exactly as a write does (``_s3_write``), then
  deletes the upload; a checksum mismatch discards it and writes nothing; a failure of the byte
  store writes nothing and leaves the upload resumable. Discarding deletes every segment, then
  the marker.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    InvalidArgumentError,
    NotFoundError,
    StorageError,
    StorageIOError,
)
from ._pins import KeyedLocks, WrittenBlob
from ._s3_errors import (
    _UPLOAD_ID_RE,
    _blocking,
    _check_count,
    _check_sha256,
    _check_upload_id,
    _is_conflict,
    s3_error,
)
from ._s3_read import open_object
from ._s3_write import stream_write

__all__ = ["S3Uploads"]

logger = logging.getLogger("anvil_trio.storage.s3")

_SEGMENT_RE = re.compile(r"[0-9a-f]{16}")
_MARKER = "created"
_DELETE_BATCH = 1000  # keys per DeleteObjects
_SIZE_CACHE = 4096  # upload sizes remembered per process (a hint; evicted oldest first)


@attrs.frozen
class _Segment:
    offset: int
    size: int
    key: str
    etag: str


class S3Uploads:
    """The resumable uploads of an :class:`~._s3.S3ByteStore` (a base class of it, sharing its
    client and listing).

    What it uses of the store: ``bucket``, ``_client``, ``_uploads_prefix``, ``_upload_locks``
    (one lock per upload id), ``_upload_sizes`` (the size cache), ``_iter_objects`` and
    ``_head_size`` (for reading segments), and what :func:`~._s3_write.stream_write` needs.
    """

    bucket: str
    _client: Any
    _uploads_prefix: str
    _upload_locks: KeyedLocks
    _upload_sizes: dict[str, int]

    if TYPE_CHECKING:  # defined by the store
        def _iter_objects(self, prefix: str, what: str) -> Iterator[dict[str, Any]]: ...

    def _upload_prefix(self, upload_id: str) -> str:
        return f"{self._uploads_prefix}{_check_upload_id(upload_id)}/"

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
            async with await open_object(self, segment.key, 0, None, "upload") as reader:
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
                    written = await stream_write(self, segments, None, expected, total,
                                                 "upload")
            except ChecksumMismatchError:
                with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
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
