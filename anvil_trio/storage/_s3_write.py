"""The streaming write of the S3 byte store: :func:`stream_write` takes the bytes of an async
iterable into a new location (``data/<32 hex>``) as they arrive, hashing them on the way.

Invariants:

- An object in ``data/`` is complete and hashed to the digest its write reported: content of
  at most one part is hashed, checked and sent by one PutObject at the end; larger content by a
  multipart upload, which becomes an object only through CompleteMultipartUpload, after the
  digest was checked.
- On any failure or cancellation before the write returns, the multipart upload is aborted and
  the object deleted (shielded from cancellation) before the error propagates; what a crash
  leaves is an unfinished multipart upload, which ``S3ByteStore.remove_stale_temp`` aborts once
  older than its limit, or an object no metadata references, which the reaper finds through
  ``S3ByteStore.iter_locations``. A running write's multipart upload is in the store's
  ``_active_uploads`` from its start until it is completed or its abort was tried, so no
  reaping in this process aborts it.
- The location is pinned from the start of the write until its :class:`~._pins.WrittenBlob` is
  released (on error: before the cleanup).
- Memory is bounded whatever the size: a write holds at most ``pipeline_depth + 1`` parts of
  ``part_size`` bytes (up to ``pipeline_depth`` handed to its worker threads, which hash them in
  order and upload them in parallel, and one filling). A lane's thread never keeps a part alive
  once its step is done (each step takes its part out of a box of its own).
- At most 10 000 parts: more is :class:`ObjectTooLargeError`.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Any

import trio

from ._errors import (
    ChecksumMismatchError,
    InvalidArgumentError,
    ObjectTooLargeError,
    StorageError,
)
from ._pins import WrittenBlob
from ._pipeline import Lane
from ._s3_errors import _blocking, _run

if TYPE_CHECKING:
    from ._s3 import S3ByteStore

__all__ = ["stream_write"]

logger = logging.getLogger("anvil_trio.storage.s3")

_MAX_PARTS = 10_000


async def stream_write(
    store: S3ByteStore, chunks: AsyncIterable[bytes], max_size: int | None,
    expected: str | None, expected_size: int | None, what: str,
) -> WrittenBlob:
    """Store the bytes of ``chunks`` under a new location of ``store`` and return them pinned
    (arguments already checked; ``what`` names the content in errors). Chunks are copied into
    a part buffer as they arrive (they may be reused afterwards).

    Raises:
        ObjectTooLargeError: more than ``max_size`` bytes, or more than 10 000 parts.
        InvalidArgumentError: the size differs from ``expected_size``.
        ChecksumMismatchError: the digest differs from ``expected``.
        StorageUnavailableError, StorageIOError: the byte store failed.
        Anything ``chunks`` raises, unchanged; in every case after the cleanup (module
        docstring).
    """
    location = secrets.token_hex(16)
    pin = store._add_pin(location)  # nobody knows the name yet: no lock needed
    job = _Write(store, store.data_key(location))
    part_size = store.part_size
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

