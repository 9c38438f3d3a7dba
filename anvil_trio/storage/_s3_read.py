"""Reading from the S3 byte store: :func:`open_object` (one ranged GetObject, its answer
checked) and the :class:`S3Reader` it returns.

Invariants:

- Range rules as :meth:`~._blobs.BlobStore.open_range`: ``end`` is exclusive; ``None`` means to
  the end; an ``end`` past the size is clamped; ``start == end`` yields nothing; an empty object
  read from 0 yields nothing; a ``start`` at or past the end of a non-empty object (past 0 of
  an empty one) is :class:`OutOfRangeError`.
- The server's answer is checked before a byte is yielded: a range it ignored, or one of the
  wrong start or length, is :class:`StorageIOError`; so is a body shorter or longer than its
  size when it is read to the end.
- Memory is bounded whatever the size: a reader holds one GetObject response (none for an empty
  range) and one chunk of at most ``chunk_size`` bytes. The response is closed when the range
  is exhausted, on any error, on :meth:`S3Reader.aclose` (also ``async with``) and, as a last
  resort, when the reader is garbage-collected, so no connection is kept from the pool.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import TYPE_CHECKING, Any, Self

import attrs
import botocore.exceptions
import trio

from ._errors import OutOfRangeError, StorageIOError
from ._s3_errors import _client_error_parts, s3_error

if TYPE_CHECKING:
    from ._s3 import S3ByteStore

__all__ = ["S3Reader", "open_object"]

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    def __del__(self) -> None:  # a reader dropped unfinished must not hold its connection
        self._close()



async def open_object(
    store: S3ByteStore, key: str, start: int, end: int | None, what: str
) -> S3Reader:
    """Open ``[start, end)`` of the object at ``key`` of ``store`` (a ``what``: ``"blob"``,
    ``"upload"``) with one GetObject; ``start`` and ``end`` are already checked
    (``0 <= start <= end``).

    Raises:
        NotFoundError: no such object.
        OutOfRangeError: ``start`` past the end (module docstring).
        StorageUnavailableError, StorageIOError: the byte store failed, or answered wrongly.
    """
    if end == start:  # nothing to fetch; only the size decides between empty and error
        size = await store._head_size(key, what)
        return _empty_reader(size, start, store.chunk_size)
    kwargs: dict[str, Any] = {"Bucket": store.bucket, "Key": key}
    if end is not None:
        kwargs["Range"] = f"bytes={start}-{end - 1}"
    elif start:
        kwargs["Range"] = f"bytes={start}-"
    try:
        response = await trio.to_thread.run_sync(
            functools.partial(store._client.get_object, **kwargs)
        )
    except botocore.exceptions.ClientError as exc:
        code, status, _ = _client_error_parts(exc)
        if status != 416 and code != "InvalidRange":
            raise s3_error(exc, f"reading a {what}", not_found=what) from exc
        # Past the end, or any range of an empty object (S3 refuses "bytes=0-" of zero bytes).
        size = await store._head_size(key, what)
        return _empty_reader(size, start, store.chunk_size)
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
    return S3Reader(body, size, start, stop, store.chunk_size)


def _empty_reader(size: int, start: int, chunk_size: int) -> S3Reader:
    if start >= size and (size > 0 or start > 0):
        raise OutOfRangeError(f"range start {start} is at or past the blob's size {size}")
    return S3Reader(None, size, start, start, chunk_size)
