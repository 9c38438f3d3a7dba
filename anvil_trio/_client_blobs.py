"""Blob and upload methods of the client (mixed into :class:`~._client.AnvilClient`).

Invariants:
- ``upload_blob``'s source always describes the whole blob from byte 0. Each attempt opens an
  ``Upload`` stream with the current ``upload_id`` (empty for a new upload), learns from the
  start ack how many bytes the server holds, hashes the skipped prefix locally and sends only
  the rest, then ``CompleteUpload`` with the SHA-256 of the whole source.
- A retryable failure is retried under the client's schedule with the ``upload_id`` learned so
  far (bytes and path sources; an async iterable only before anything was read from it). If an
  upload this call started has vanished at the next start (it completed with the completion
  ack lost, or it was reaped), the call starts over once; the server deduplicates the content.
- Once a completion ack arrives the blob is stored: the result is returned even if the call
  breaks before its final status.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs
import trio

from ._client_sources import ByteSource, Source, open_source
from ._client_streams import ByteStream, replay_guard, with_sender
from ._client_types import (
    AnvilError,
    BlobInfo,
    InternalError,
    NotFoundError,
    OutOfRangeError,
    UploadProgress,
    UploadResult,
)
from ._client_wire import Call
from ._proto.anvil.v1 import blob_pb2, common_pb2, upload_pb2

__all__ = ["BlobMethods", "blob_key", "byte_range"]

_BLOBS = "anvil.v1.BlobService"
_UPLOADS = "anvil.v1.UploadService"


def blob_key(key: str | bytes) -> bytes:
    """A blob key as the wire carries it (ASCII bytes of ``sha256:<hex>``)."""
    return key if isinstance(key, bytes) else key.encode("ascii")


def byte_range(start: int | None, end: int | None) -> common_pb2.ByteRange | None:
    """``ByteRange(start, end)`` (``end`` exclusive, absent: to the end); ``None`` for all."""
    if start is None and end is None:
        return None
    if end is None:
        return common_pb2.ByteRange(start=start or 0)
    return common_pb2.ByteRange(start=start or 0, end=end)


class BlobMethods:
    """``upload_blob``, ``get_blob``, ``read_blob``, ``stat_blob``, ``delete_blob``,
    ``list_blobs`` and ``iter_blobs``; needs the client's ``_start``, ``_unary``, ``_retrying``
    and ``chunk_size``."""

    async def upload_blob(
        self,
        source: Source,
        *,
        attributes: Mapping[str, str] | None = None,
        upload_id: str | None = None,
        size: int | None = None,
        expected_sha256: bytes | None = None,
        on_progress: Callable[[UploadProgress], object] | None = None,
    ) -> UploadResult:
        """Upload a content-addressed blob over the bidi ``Upload`` stream.

        The source always describes the whole blob from byte 0. When ``upload_id`` names an
        unfinished upload, the server says how many bytes it holds and only the rest is sent.
        If the stream breaks with a retryable status, the upload resumes under its
        ``upload_id`` from the bytes the server acknowledged (bytes and path sources; an
        async iterable only before anything was read from it). The SHA-256 of the whole
        source is sent with ``CompleteUpload`` (``expected_sha256`` overrides it).

        Args:
            source: bytes-like, a path, or an async iterable of bytes (then ``size`` is needed).
            attributes: stored with the blob (``content-type`` sets its content type).
            upload_id: resume this upload.
            size: the exact size (known anyway for bytes and paths).
            expected_sha256: the raw 32-byte digest the server must see.
            on_progress: called with an :class:`UploadProgress` for every ack.

        Raises:
            InvalidArgumentError: size or checksum mismatch (the server discards the upload).
            NotFoundError: ``upload_id`` is unknown or expired.
            ValueError: no size for an async iterable, or the source's length differs from it.
        """
        src = open_source(source, size=size, chunk_size=self.chunk_size)
        if src.size is None:
            raise ValueError("upload_blob needs size= for an async-iterable source")
        state = _UploadState(upload_id=upload_id or "", given_id=upload_id is not None)
        attrs_map = dict(attributes or {})

        async def op(metadata):
            state.attempts += 1
            try:
                return await self._upload_once(src, state, attrs_map, expected_sha256,
                                               on_progress, metadata)
            except NotFoundError:
                if state.given_id or not state.upload_id or not state.starting:
                    raise
                # An upload this call started is gone (finished with a lost ack, or reaped):
                # start over; the server deduplicates identical content.
                state.upload_id = ""
                return await self._upload_once(src, state, attrs_map, expected_sha256,
                                               on_progress, metadata)

        return await self._retrying(op, on=replay_guard(src))

    async def _upload_once(self, src: ByteSource, state: "_UploadState", attributes, expected,
                           on_progress, metadata) -> UploadResult:
        total = src.size
        assert total is not None
        call = await self._start(_UPLOADS, "Upload", upload_pb2.UploadMessage,
                                 upload_pb2.UploadAck, metadata)
        async with call:
            start = upload_pb2.StartUpload(
                total_size=total, attributes=attributes, upload_id=state.upload_id
            )
            state.starting = True
            await call.send(upload_pb2.UploadMessage(start=start))
            ack = await call.receive()
            state.starting = False
            if ack is None:
                raise InternalError("Upload ended OK without acknowledging the start")
            state.upload_id = ack.upload_id
            held = ack.received_bytes
            if held > total:
                raise InternalError(f"server holds {held} bytes of a {total}-byte upload")

            def progress(message) -> None:
                if on_progress is not None:
                    on_progress(UploadProgress(state.upload_id, message.received_bytes, total))

            progress(ack)

            async def send() -> None:
                hasher = hashlib.sha256()
                position = 0
                async for chunk in src.chunks():
                    hasher.update(chunk)
                    end = position + len(chunk)
                    if end > held:
                        skip = max(0, held - position)
                        piece = chunk[skip:] if skip else chunk
                        message = upload_pb2.UploadChunk(data=piece, offset=position + skip)
                        if not await call.send(upload_pb2.UploadMessage(chunk=message)):
                            return
                    position = end
                if position != total:
                    raise ValueError(f"the source gave {position} bytes, expected {total}")
                digest = expected if expected is not None else hasher.digest()
                complete = upload_pb2.CompleteUpload(expected_hash=digest)
                if await call.send(upload_pb2.UploadMessage(complete=complete)):
                    await call.done_sending()

            async def receive() -> Any:
                while (message := await call.receive()) is not None:
                    progress(message)
                    if message.HasField("complete"):
                        # The blob is stored: a connection lost before the trailers changes
                        # nothing, so the result stands whatever the end of the call says.
                        with contextlib.suppress(AnvilError):
                            while await call.receive() is not None:
                                pass
                        return message.complete
                raise InternalError("Upload ended OK without a completion")

            done = await with_sender(send, receive)
        return UploadResult(
            key=done.key.decode("ascii", "replace"), size=done.size,
            deduplicated=done.deduplicated, upload_id=state.upload_id, attempts=state.attempts,
        )

    async def get_blob(
        self, key: str | bytes, *, start: int | None = None, end: int | None = None
    ) -> "ByteStream":
        """Start reading a blob (or ``[start, end)`` of it): an async iterator of ``bytes``
        that resumes after transient failures. Read it to the end or close it.

        Raises:
            NotFoundError, OutOfRangeError, InvalidArgumentError: as the server says.
        """
        raw_key = blob_key(key)

        async def open_at(offset: int | None) -> Call:
            request = blob_pb2.GetBlobRequest(key=raw_key)
            rng = byte_range(offset, end)
            if rng is not None:
                request.range.CopyFrom(rng)

            async def op(metadata):
                call = await self._start(_BLOBS, "GetBlob", blob_pb2.GetBlobRequest,
                                         blob_pb2.BlobChunk, metadata)
                try:
                    await call.send(request)
                    await call.done_sending()
                    first = await call.receive()
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await call.finish()
                    raise
                return call, first

            return await self._retrying(op)

        call, first = await open_at(start)
        stream = ByteStream(call, None, _blob_data, offset=start or 0, pending=first)

        async def reopen(offset: int):
            if end is not None and offset >= end:
                return None
            try:
                call, first = await open_at(offset)
            except OutOfRangeError:
                return None  # we already hold every byte up to the end
            stream.pending = first
            return call

        stream.reopen = reopen
        return stream

    async def read_blob(self, key: str | bytes) -> bytes:
        """The whole blob in memory (for small blobs); see :meth:`get_blob`."""
        chunks = await self.get_blob(key)
        async with chunks:
            return b"".join([chunk async for chunk in chunks])

    async def stat_blob(self, key: str | bytes) -> BlobInfo:
        """A blob's metadata.

        Raises:
            NotFoundError: the tenant holds no such blob.
        """
        request = blob_pb2.StatBlobRequest(key=blob_key(key))
        return BlobInfo.from_pb(await self._unary(_BLOBS, "StatBlob", request, blob_pb2.BlobMetadata))

    async def delete_blob(self, key: str | bytes) -> None:
        """Delete a blob.

        Raises:
            NotFoundError: the tenant holds no such blob.
        """
        request = blob_pb2.DeleteBlobRequest(key=blob_key(key))
        await self._unary(_BLOBS, "DeleteBlob", request, blob_pb2.DeleteBlobResponse)

    async def list_blobs(self, *, limit: int = 0, start_after: str | bytes = b"") -> list[BlobInfo]:
        """Up to ``limit`` blobs (0: the server's 1000) with keys after ``start_after``."""
        request = blob_pb2.ListBlobsRequest(limit=limit, start_after=blob_key(start_after))

        async def op(metadata):
            call = await self._start(_BLOBS, "ListBlobs", blob_pb2.ListBlobsRequest,
                                     blob_pb2.BlobMetadata, metadata)
            async with call:
                await call.send(request)
                await call.done_sending()
                found = []
                while (message := await call.receive()) is not None:
                    found.append(BlobInfo.from_pb(message))
                return found

        return await self._retrying(op)

    async def iter_blobs(self, *, page_size: int = 0) -> AsyncIterator[BlobInfo]:
        """Every blob of the tenant in key order, one ``ListBlobs`` page at a time."""
        after = b""
        while True:
            page = await self.list_blobs(limit=page_size, start_after=after)
            for info in page:
                yield info
            if not page or (page_size and len(page) < page_size):
                return
            after = blob_key(page[-1].key)


@attrs.define
class _UploadState:
    upload_id: str
    given_id: bool
    attempts: int = 0
    starting: bool = False


def _blob_data(message) -> bytes:
    return message.data
